"""``python -m satunet.benchmark SPEC.json``: the peak-memory child process (internal)."""

from __future__ import annotations

import sys

from satunet.benchmark.child import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
