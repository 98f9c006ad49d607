"""`python -m satunet` runs the command-line interface."""

import sys

from satunet.cli import main

sys.exit(main())
