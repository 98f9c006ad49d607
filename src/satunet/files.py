"""Files on disk, one scheme: atomic writes (temp file + fsync + rename) and output-path checks.

Standard library only, so every layer can use it. A crash at any moment leaves either the old
file or the new one, never a torn one, and no command writes over what a user made.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from satunet.errors import OutputError

PathLike = str | os.PathLike[str]


def umask_mode() -> int:
    """The mode a plainly created file gets (mkstemp alone would leave it owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_name(path: PathLike) -> Path:
    """A fresh hidden name beside ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def describe_os_error(error: OSError, path: PathLike) -> str:
    """A plain sentence for disk-full and permission errors, the ones users can act on."""
    path = Path(path)
    if error.errno == errno.ENOSPC:
        where = path.parent if path.parent.exists() else Path.cwd()
        free_mb = shutil.disk_usage(where).free / 1e6
        return (
            f"no space left on device while writing {path}: {free_mb:.0f} MB free at {where}; "
            "free some space or choose another --out"
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied writing {path}: choose a folder you can write to"
    return f"could not write {path}: {error.strerror or error}"


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path for a library that writes by name (savefig, rasterio, zipfile).

    On success the file is made a normal file (umask mode) and renamed over ``path``; on any
    error it is removed and the target is untouched.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS):
            raise OutputError(describe_os_error(e, path)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open ``path`` for writing through a temporary file, flushed to disk before the rename."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write a text file atomically: readers never see half of it."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write a binary file atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write JSON atomically, with NaN/inf as null (strict JSON readers reject NaN)."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def atomic_save(
    obj: Any, path: PathLike, save: Callable[[Any, IO[bytes]], None] | None = None
) -> None:
    """``torch.save`` (or ``save``) atomically; torch is imported only when it is needed."""
    if save is None:
        import torch

        save = torch.save
    try:
        with atomic_open(path, "wb") as f:
            save(obj, f)
    except RuntimeError as e:
        # torch reports a full disk as "enforce fail at inline_container.cc": say it plainly.
        if "inline_container" in str(e) or "file write failed" in str(e):
            raise OutputError(
                describe_os_error(OSError(errno.ENOSPC, "No space left"), path)
            ) from e
        raise


def append_json_line(path: PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line in a single write, flushed to disk (a kill cannot tear it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(jsonable(record), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def jsonable(value: Any) -> Any:
    """Floats that JSON can hold: nan and inf become None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def clean_temporaries(folder: PathLike) -> None:
    """Remove temporary files a killed process left behind (atomic writes never tear targets)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def check_output_file(
    path: PathLike, *, inputs: Iterable[PathLike] = (), what: str = "output"
) -> Path:
    """Refuse an output file path before any work: a folder, an input, or an unwritable place."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name such as {path / 'out'}")
    resolved = path.resolve()
    for source in inputs:
        if Path(source).resolve() == resolved:
            raise OutputError(
                f"{what} {path} is also an input; writing it would destroy the input: "
                "choose another name"
            )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is a file, not a folder")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise OutputError(
            f"permission denied: cannot write {what} under {parent}; "
            "choose a folder you can write to"
        )
    return path


def check_output_dir(
    path: PathLike, *, inputs: Iterable[PathLike] = (), what: str = "output folder"
) -> Path:
    """Refuse an output folder before any work: an existing file, or a folder holding an input."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is an existing file, not a folder: choose another --out")
    resolved = path.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if source == resolved or (source.parent == resolved and source.is_file()):
            raise OutputError(
                f"{what} {path} holds the input {source}; outputs there could replace inputs: "
                "choose another --out"
            )
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot create {what} {path}: {parent} is a file, not a folder")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise OutputError(
            f"permission denied: cannot write {what} {path}; choose a folder you can write to"
        )
    return path
