"""Downloads end to end against a local HTTP server on 127.0.0.1 serving generated archives."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fakes import make_loveda
from satunet.cli import main
from satunet.data import LoveDA
from satunet.data import download as dl
from satunet.errors import ChecksumError, DataError, DatasetNotFoundError


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, rng = 0, self.headers.get("Range")
        if rng and srv.ranges:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_at is not None:  # simulate a dropped connection, once
            body, srv.cut_at = body[: srv.cut_at], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[tuple[str, str | None]]
    ranges: bool = True
    cut_at: int | None = None


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests = {}, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: _Server, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def _zip_tree(folder: Path, out: Path) -> bytes:
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(folder).as_posix())
    return out.read_bytes()


@pytest.fixture
def loveda_zips(tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Train.zip and Val.zip of a tiny LoveDA served locally, registered as LoveDA.resources."""
    src = make_loveda(tmp_path / "src", splits=("train", "val"), n=1, size=32)
    resources, blobs = [], {}
    for split, folder in (("train", "Train"), ("val", "Val")):
        tree = tmp_path / f"tree_{split}"
        (tree / folder).parent.mkdir(parents=True)
        (src / folder).rename(tree / folder)
        blob = _zip_tree(tree, tmp_path / f"{folder}.zip")
        server.files[f"/{folder}.zip"] = blob
        md5 = hashlib.md5(blob).hexdigest()
        resources.append(dl.Resource(_url(server, f"/{folder}.zip"), f"{folder}.zip", md5, split))
        blobs[split] = blob
    monkeypatch.setattr(LoveDA, "resources", tuple(resources))
    return blobs


def test_cli_download_then_load(tmp_path: Path, server: _Server, loveda_zips: dict) -> None:
    root = tmp_path / "data"
    assert main(["data", "download", "loveda", "--root", str(root), "--split", "train"]) == 0
    assert (root / "Train.zip").is_file() and not (root / "Val.zip").exists()
    assert len(LoveDA(root, "train", tile_size=None)) == 2
    # A second run finds the verified archive and does not fetch it again.
    n = len(server.requests)
    assert main(["data", "download", "loveda", "--root", str(root), "--split", "train"]) == 0
    assert len(server.requests) == n


def test_dataset_download_true(tmp_path: Path, loveda_zips: dict) -> None:
    ds = LoveDA(tmp_path / "data", "val", tile_size=None, download=True)
    assert len(ds) == 2 and not (tmp_path / "data" / "Train").exists()


def test_checksum_mismatch_keeps_the_file_aside(tmp_path: Path, server: _Server) -> None:
    server.files["/a.zip"] = b"not the archive you want"
    dest = tmp_path / "a.zip"
    with pytest.raises(ChecksumError, match="expected 0123.*kept as .*a.zip.bad-md5"):
        dl.download_url(_url(server, "/a.zip"), dest, "0123" + "0" * 28)
    assert not dest.exists()
    assert (tmp_path / "a.zip.bad-md5").read_bytes() == b"not the archive you want"


def test_cli_checksum_mismatch_exits_2(
    tmp_path: Path, server: _Server, loveda_zips: dict, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    bad = [dl.Resource(r.url, r.filename, "f" * 32, r.split) for r in LoveDA.resources]
    monkeypatch.setattr(LoveDA, "resources", tuple(bad))
    assert main(["data", "download", "loveda", "--root", str(tmp_path), "--split", "val"]) == 2
    assert "Val.zip has md5" in capsys.readouterr().err
    assert (tmp_path / "Val.zip.bad-md5").is_file() and not (tmp_path / "Val").exists()


def test_interrupted_download_resumes_with_range(tmp_path: Path, server: _Server) -> None:
    blob = bytes(range(256)) * 40_000  # ~10 MB, several chunks
    server.files["/big.zip"] = blob
    md5 = hashlib.md5(blob).hexdigest()
    dest = tmp_path / "big.zip"
    server.cut_at = 3_000_000
    with pytest.raises(DatasetNotFoundError, match="run the same command again to resume"):
        dl.download_url(_url(server, "/big.zip"), dest, md5)
    assert (tmp_path / "big.zip.part").stat().st_size == 3_000_000 and not dest.exists()
    assert dl.download_url(_url(server, "/big.zip"), dest, md5) == dest
    assert server.requests[-1] == ("/big.zip", "bytes=3000000-")
    assert dest.read_bytes() == blob and not (tmp_path / "big.zip.part").exists()


def test_server_without_range_restarts(tmp_path: Path, server: _Server) -> None:
    blob = b"x" * 5000
    server.files["/f.zip"], server.ranges = blob, False
    (tmp_path / "f.zip.part").write_bytes(b"x" * 1000)
    dl.download_url(_url(server, "/f.zip"), tmp_path / "f.zip", hashlib.md5(blob).hexdigest())
    assert (tmp_path / "f.zip").read_bytes() == blob


def test_complete_part_file_is_finished_on_416(tmp_path: Path, server: _Server) -> None:
    blob = b"y" * 3000
    server.files["/g.zip"] = blob
    (tmp_path / "g.zip.part").write_bytes(blob)
    dl.download_url(_url(server, "/g.zip"), tmp_path / "g.zip", hashlib.md5(blob).hexdigest())
    assert (tmp_path / "g.zip").read_bytes() == blob


def test_unreachable_url_is_a_clean_error(tmp_path: Path, server: _Server) -> None:
    with pytest.raises(DatasetNotFoundError, match="HTTP 404"):
        dl.download_url(_url(server, "/missing.zip"), tmp_path / "m.zip")


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/satunet-evil.txt", "a/../../evil.txt"])
def test_path_traversal_member_is_refused(tmp_path: Path, member: str) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Train/ok.txt", "fine")
        zf.writestr(member, "escaped")
    dest = tmp_path / "out"
    with pytest.raises(DataError, match="outside .*refusing"):
        dl.extract_archive(archive, dest)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/satunet-evil.txt").exists()
    assert not (dest / "Train" / "ok.txt").exists()  # checked before anything is written


def test_symlink_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("Train/link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="link"):
        dl.extract_archive(archive, tmp_path / "out")


def test_corrupt_zip_is_a_clean_error(tmp_path: Path) -> None:
    archive = tmp_path / "junk.zip"
    archive.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="not a valid zip"):
        dl.extract_archive(archive, tmp_path / "out")


def test_extract_merges_and_cleans_an_interrupted_staging(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Train/Rural/images_png/1.png", "new")
    dest = tmp_path / "out"
    (dest / "Train/Urban").mkdir(parents=True)
    (dest / "Train/Urban/keep.txt").write_text("kept")
    (dest / ".extracting-a.zip/junk").mkdir(parents=True)  # an earlier run died here
    dl.extract_archive(archive, dest)
    assert (dest / "Train/Rural/images_png/1.png").read_text() == "new"
    assert (dest / "Train/Urban/keep.txt").read_text() == "kept"
    assert not (dest / ".extracting-a.zip").exists()
