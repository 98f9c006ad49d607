"""Fetch the official dataset archives: md5-checked, resumable, and extracted safely.

A download goes to ``{file}.part`` and is renamed only once complete and verified; an
interrupted one resumes with an HTTP Range request where the server allows it. An archive with
the wrong checksum is moved aside to ``{file}.bad-md5`` (kept for inspection, not deleted), and
an archive member that would land outside the target folder stops the extraction before any file
is written.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from satunet.errors import (
    ChecksumError,
    DataError,
    DatasetNotFoundError,
    OutputError,
    UnknownNameError,
)

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One archive of a dataset: where it lives, its file name and md5, the split it holds."""

    url: str
    filename: str
    md5: str
    split: str | None = None


def _md5_of(path: PathLike):  # noqa: ANN202 - hashlib's hash type is private
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest


def md5sum(path: PathLike) -> str:
    """Hex md5 of a file, read in chunks."""
    return _md5_of(path).hexdigest()


def _keep_aside(path: Path, expected: str, actual: str) -> ChecksumError:
    bad = path.with_name(path.name + ".bad-md5")
    os.replace(path, bad)
    return ChecksumError(
        f"{path.name} has md5 {actual}, expected {expected}: the download is corrupt or the "
        f"file changed upstream. It was kept as {bad} (delete it, then download again; if it "
        "fails again, check the dataset's home page for a new release)."
    )


def download_url(
    url: str,
    path: PathLike,
    md5: str | None = None,
    *,
    resume: bool = True,
    progress: bool | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``path`` via ``path.part``, resuming a partial file, checking md5.

    ``progress=None`` shows a bar only on a terminal. Returns ``path``. An existing ``path``
    with the right md5 is not downloaded again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        if md5 is None or md5sum(path) == md5:
            log.info("%s already downloaded", path)
            return path
        raise _keep_aside(path, md5, md5sum(path))
    part = path.with_name(path.name + ".part")
    offset = part.stat().st_size if resume and part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "satunet"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to fetch: the .part file is complete
            response = None
        else:
            raise DatasetNotFoundError(
                f"downloading {url} failed: HTTP {e.code} {e.reason}. Check the address and "
                f"your connection, or download it by hand to {path}."
            ) from e
    except (urllib.error.URLError, OSError) as e:
        raise DatasetNotFoundError(
            f"cannot reach {url}: {e}. Check your connection, or download the file by hand "
            f"to {path}."
        ) from e
    if response is None:
        digest = _md5_of(part)
    else:
        with response:
            digest = _stream_to(response, part, offset, url, progress)
    os.replace(part, path)
    actual = digest.hexdigest()
    if md5 is not None and actual != md5:
        raise _keep_aside(path, md5, actual)
    return path


def _stream_to(response, part: Path, offset: int, url: str, progress: bool | None):  # noqa: ANN001, ANN202
    """Append the response body to ``part`` (from ``offset``); returns the md5 of the whole file."""
    from tqdm.auto import tqdm

    digest = hashlib.md5()
    if offset and response.status != 206:
        log.info("%s ignores Range requests: downloading %s from the start", url, part.name)
        offset = 0
    if offset:
        log.info("resuming %s at byte %d", part.name, offset)
        digest = _md5_of(part)
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length is not None else None
    bar = tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        desc=part.name.removesuffix(".part"),
        disable=None if progress is None else not progress,
    )
    interrupted = False
    with open(part, "ab" if offset else "wb") as f, bar:
        try:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            log.debug("download of %s interrupted: %r", url, e)
            interrupted = True
    if interrupted or (total is not None and part.stat().st_size < total):
        raise DatasetNotFoundError(
            f"download of {url} stopped at {part.stat().st_size} of {total or '?'} "
            f"bytes; run the same command again to resume from {part}."
        )
    return digest


def _check_members(archive: Path, names: Iterable[zipfile.ZipInfo], dest: Path) -> None:
    root = dest.resolve()
    for info in names:
        name = info.filename
        pure = PurePosixPath(name.replace("\\", "/"))
        mode = info.external_attr >> 16
        unsafe = (
            pure.is_absolute()
            or ".." in pure.parts
            or (len(name) > 1 and name[1] == ":")  # C:\... on Windows
            or (mode & 0o170000) == 0o120000  # a symlink could point anywhere
            or not (root / pure).resolve().is_relative_to(root)
        )
        if unsafe:
            raise DataError(
                f"archive {archive} holds member {name!r}, which would be written outside "
                f"{dest} (absolute path, '..' or link): refusing to extract anything. The "
                "archive is not the official one; delete it and download again."
            )


def _merge(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``; folders that exist on both sides are merged file by file."""
    if dst.is_dir() and src.is_dir():
        for child in src.iterdir():
            _merge(child, dst / child.name)
        src.rmdir()
    else:
        os.replace(src, dst)


def extract_archive(archive: PathLike, dest: PathLike) -> Path:
    """Extract a zip into ``dest`` after checking that every member stays inside it.

    Members are extracted into a hidden folder beside the data and moved into place at the
    end, so an interrupted extraction never leaves a half-filled dataset folder behind.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".extracting-{archive.name}"
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted extraction: start over
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            _check_members(archive, members, dest)
            staging.mkdir()
            for info in members:
                zf.extract(info, staging)
    except zipfile.BadZipFile as e:
        raise DataError(
            f"{archive} is not a valid zip archive ({e}): delete it and download again."
        ) from e
    for entry in list(staging.iterdir()):
        _merge(entry, dest / entry.name)
    staging.rmdir()
    return dest


def download_resources(
    name: str,
    resources: Sequence[Resource],
    root: PathLike,
    *,
    splits: Iterable[str] | None = None,
    checksum: bool = True,
    keep_archives: bool = True,
    progress: bool | None = None,
) -> list[Path]:
    """Download and extract ``name``'s official archives into ``root``; returns the archives.

    ``splits`` picks LoveDA's per-split archives (all when None). ``checksum=False`` skips the
    md5 check of archives already on disk (fresh downloads are always checked: it is free).
    """
    if not resources:
        raise DataError(f"dataset {name!r} has no official archives to download")
    root = Path(root)
    blocker = next((p for p in (root, *root.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputError(
            f"cannot download into {root}: {blocker} is a file, not a folder; choose another --root"
        )
    if splits is not None:
        wanted = set(splits)
        known = {r.split for r in resources}
        for split in wanted - known:
            raise UnknownNameError(f"split of {name}", split, [s for s in known if s])
        resources = [r for r in resources if r.split is None or r.split in wanted]
    archives = []
    for resource in resources:
        archive = root / resource.filename
        fresh = not archive.is_file()
        md5 = resource.md5 if (fresh or checksum) else None
        download_url(resource.url, archive, md5, progress=progress)
        log.info("extracting %s into %s", archive, root)
        extract_archive(archive, root)
        if not keep_archives:
            archive.unlink()
        archives.append(archive)
    return archives
