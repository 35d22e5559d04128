"""bench.data.fetch against a real HTTP server on 127.0.0.1 and archives built here.

The server runs in a thread and serves bytes the test chose; it records every request (and its
Range header) so tests can say exactly what the client asked for. Nothing reaches the internet.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import socket
import stat
import struct
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import bench.download
from bench.data import fetch
from bench.data.fetch import MARKER, fetch_archive, is_extracted, safe_extract
from bench.download import download
from bench.errors import ConfigError, DataError, NetworkError

PAYLOAD = random.Random(0).randbytes(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
HINT = "Put ham.bin in ~/bench-data by hand."


# --------------------------------------------------------------------------- test server


@dataclass
class Served:
    """One running server: what it serves, how it misbehaves, and what it was asked."""

    files: dict[str, bytes]
    mode: str  # "range" | "ignore_range" | "drop_first" | "hang"
    base: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    release: threading.Event = field(default_factory=threading.Event)  # ends a "hang"

    def url(self, path: str) -> str:
        return self.base + path


def _handler(state: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one response per connection, so "drop" is just returning early.
        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            path = self.path.split("?")[0]
            state.requests.append((path, rng))
            body = state.files.get(path)
            if body is None:
                self.send_error(404)
                return
            if state.mode == "hang":
                self._head(200, len(body))
                state.release.wait(5)
                return
            if state.mode == "drop_first" and len(state.requests) == 1:
                self._head(200, len(body))
                self.wfile.write(body[: len(body) // 2])  # then hang up mid-body
                return
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m and state.mode != "ignore_range":
                start = int(m.group(1))
                if start >= len(body):
                    self._head(416, 0, {"Content-Range": f"bytes */{len(body)}"})
                    return
                self._head(206, len(body) - start, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
                self.wfile.write(body[start:])
                return
            self._head(200, len(body))
            self.wfile.write(body)

        def _head(self, code: int, length: int, extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(length))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

    return Handler


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    running: list[tuple[ThreadingHTTPServer, Served]] = []

    def start(files: dict[str, bytes], mode: str = "range") -> Served:
        state = Served(files=files, mode=mode)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        state.base = f"http://127.0.0.1:{httpd.server_port}"
        running.append((httpd, state))
        return state

    yield start
    for httpd, state in running:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- download


def test_full_download_verifies_sha256(serve, tmp_path):
    srv = serve({"/ham.bin": PAYLOAD})
    dest = tmp_path / "dl" / "ham.bin"
    got = download(srv.url("/ham.bin"), dest, sha256=PAYLOAD_SHA, chunk=64 * 1024)
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("ham.bin.part").exists()
    assert srv.requests == [("/ham.bin", None)]


def test_resume_after_connection_dropped(serve, tmp_path):
    srv = serve({"/ham.bin": PAYLOAD}, mode="drop_first")
    dest = tmp_path / "ham.bin"
    part = tmp_path / "ham.bin.part"
    with pytest.raises(NetworkError) as err:
        download(srv.url("/ham.bin"), dest, sha256=PAYLOAD_SHA, progress=False, manual_hint=HINT)
    half = len(PAYLOAD) // 2
    assert part.stat().st_size == half
    assert not dest.exists()
    assert str(part) in str(err.value) and HINT in str(err.value)

    download(srv.url("/ham.bin"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert srv.requests[1] == ("/ham.bin", f"bytes={half}-")
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()


def test_resume_when_part_already_holds_everything(serve, tmp_path):
    # A run that died between the last byte and the rename: the server answers 416.
    srv = serve({"/ham.bin": PAYLOAD})
    (tmp_path / "ham.bin.part").write_bytes(PAYLOAD)
    download(srv.url("/ham.bin"), tmp_path / "ham.bin", sha256=PAYLOAD_SHA, progress=False)
    assert (tmp_path / "ham.bin").read_bytes() == PAYLOAD
    assert srv.requests == [("/ham.bin", f"bytes={len(PAYLOAD)}-")]


def test_server_ignoring_range_restarts_from_zero(serve, tmp_path):
    srv = serve({"/ham.bin": PAYLOAD}, mode="ignore_range")
    # Garbage in the .part: appending the 200 body to it would fail the sha256.
    (tmp_path / "ham.bin.part").write_bytes(b"x" * 1000)
    download(srv.url("/ham.bin"), tmp_path / "ham.bin", sha256=PAYLOAD_SHA, progress=False)
    assert srv.requests == [("/ham.bin", "bytes=1000-")]
    assert (tmp_path / "ham.bin").read_bytes() == PAYLOAD


def test_sha256_mismatch_removes_the_file(serve, tmp_path):
    srv = serve({"/ham.bin": PAYLOAD})
    dest = tmp_path / "ham.bin"
    wrong = "0" * 64
    with pytest.raises(DataError) as err:
        download(srv.url("/ham.bin"), dest, sha256=wrong, progress=False)
    msg = str(err.value)
    assert str(dest) in msg and wrong in msg and PAYLOAD_SHA in msg
    assert not dest.exists()
    assert not dest.with_name("ham.bin.part").exists()


def test_connection_refused_is_a_network_error_with_the_hint(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/ham.bin"
    with pytest.raises(NetworkError) as err:
        download(url, tmp_path / "ham.bin", progress=False, manual_hint=HINT)
    assert url in str(err.value) and HINT in str(err.value)
    assert "refused" in str(err.value)
    assert not (tmp_path / "ham.bin").exists()


def test_http_error_is_a_network_error(serve, tmp_path):
    srv = serve({})
    with pytest.raises(NetworkError, match="HTTP 404") as err:
        download(srv.url("/missing.zip"), tmp_path / "m.zip", progress=False, manual_hint=HINT)
    assert HINT in str(err.value)


def test_timeout_is_a_network_error(serve, tmp_path):
    srv = serve({"/ham.bin": PAYLOAD}, mode="hang")
    with pytest.raises(NetworkError, match="timed out"):
        download(srv.url("/ham.bin"), tmp_path / "ham.bin", progress=False, timeout=0.3)


def test_bad_url_is_a_network_error(tmp_path):
    with pytest.raises(NetworkError, match="not a URL"):
        download("ham.bin", tmp_path / "ham.bin", progress=False)


def test_complete_file_makes_no_request(serve, tmp_path):
    srv = serve({"/ham.bin": PAYLOAD})
    dest = tmp_path / "ham.bin"
    dest.write_bytes(PAYLOAD)
    assert download(srv.url("/ham.bin"), dest, sha256=PAYLOAD_SHA) == dest
    assert download(srv.url("/ham.bin"), dest) == dest  # no sha256: an existing file is trusted
    assert srv.requests == []


def test_offline_download_fails_at_once_without_a_request(serve, tmp_path, monkeypatch):
    srv = serve({"/ham.bin": PAYLOAD})
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    with pytest.raises(NetworkError, match=r"ham\.bin is not here and bench is offline.*put it there by hand"):
        download(srv.url("/ham.bin"), tmp_path / "ham.bin", manual_hint="Or put it there by hand.")
    assert srv.requests == [] and not (tmp_path / "ham.bin.part").exists()
    (tmp_path / "ham.bin").write_bytes(PAYLOAD)  # a file already here is still used offline
    assert download(srv.url("/ham.bin"), tmp_path / "ham.bin", sha256=PAYLOAD_SHA) == tmp_path / "ham.bin"


def test_existing_file_with_wrong_digest_is_downloaded_again(serve, tmp_path):
    srv = serve({"/ham.bin": PAYLOAD})
    dest = tmp_path / "ham.bin"
    dest.write_bytes(b"stale")
    download(srv.url("/ham.bin"), dest, sha256=PAYLOAD_SHA.upper(), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_progress_bar_on_a_terminal(serve, tmp_path, monkeypatch):
    monkeypatch.setattr(bench.download, "_stderr_is_terminal", lambda: True)
    srv = serve({"/ham.bin": PAYLOAD})
    download(srv.url("/ham.bin"), tmp_path / "ham.bin", sha256=PAYLOAD_SHA, chunk=32 * 1024)
    assert (tmp_path / "ham.bin").read_bytes() == PAYLOAD


def test_malformed_sha256_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="64 hex"):
        download("http://127.0.0.1:9/x", tmp_path / "x", sha256="abc")


# --------------------------------------------------------------------------- archives

TREE = {
    "train/benign/a.png": b"A" * 100,
    "train/benign/b.png": b"B" * 200,
    "train/malignant/c.png": b"C" * 300,
    "test/benign/d.png": b"D" * 10,
    "test/malignant/deep/e.png": b"",
}


def _zip(path: Path, files: dict[str, bytes], *, dirs: bool = True) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted({str(Path(n).parent) + "/" for n in files} - {"./"} if dirs else ()):
            zf.writestr(name, b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _tar_with(path: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A tar.gz holding one good file, then ``info``, then a file that would follow through it."""
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        follow = tarfile.TarInfo(f"{info.name}/pwned.txt")
        follow.size = 1
        tf.addfile(follow, io.BytesIO(b"!"))
    return path


def _tree(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.mark.parametrize(
    "name, build",
    [
        ("ds.zip", _zip),
        ("ds.tar", lambda p, f: _tar(p, f, "w")),
        ("ds.tar.gz", _tar),
        ("ds.tgz", _tar),
        ("ds.tar.bz2", lambda p, f: _tar(p, f, "w:bz2")),
        ("ds.tar.xz", lambda p, f: _tar(p, f, "w:xz")),
    ],
)
def test_extracts_nested_class_folders(tmp_path, name, build):
    archive = build(tmp_path / name, TREE)
    target = tmp_path / "out" / "ds"
    files = safe_extract(archive, target)
    assert sorted(files) == sorted(target / n for n in TREE)
    for rel, data in TREE.items():
        assert (target / rel).read_bytes() == data
    marker = (target / MARKER).read_text().split()
    assert marker == [hashlib.sha256(archive.read_bytes()).hexdigest(), name]
    assert is_extracted(target) and is_extracted(target, marker[0]) and not is_extracted(target, "1" * 64)
    assert sorted(p.name for p in target.parent.iterdir()) == ["ds"]  # no temporary folders left


def test_archive_type_sniffed_when_the_name_says_nothing(tmp_path):
    archive = _zip(tmp_path / "download", TREE)
    safe_extract(archive, tmp_path / "ds")
    assert (tmp_path / "ds" / "train/benign/a.png").read_bytes() == TREE["train/benign/a.png"]


def test_unknown_archive_type(tmp_path):
    junk = tmp_path / "ds.rar"
    junk.write_bytes(b"Rar!\x1a\x07\x00" + b"\x00" * 600)
    with pytest.raises(DataError, match="not an archive bench can unpack"):
        safe_extract(junk, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("name, build", [("ds.zip", _zip), ("ds.tar.gz", _tar)])
def test_truncated_archive_is_a_data_error(tmp_path, name, build):
    full = build(tmp_path / ("full-" + name), {"a/x.bin": random.Random(1).randbytes(50_000)})
    cut = tmp_path / name
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=re.escape(str(cut))):
        safe_extract(cut, tmp_path / "out" / "ds")
    assert list((tmp_path / "out").iterdir()) == []


def _abs_zip(d: Path) -> tuple[Path, int]:
    with zipfile.ZipFile(d / "abs.zip", "w") as zf:
        zf.writestr("fine.txt", b"ok")
        zf.writestr(zipfile.ZipInfo(str(d / "escaped.txt")), b"evil")
    return d / "abs.zip", fetch.DEFAULT_MAX_BYTES


def _abs_tar(d: Path) -> tuple[Path, int]:
    return _tar(d / "abs.tar.gz", {"fine.txt": b"ok", str(d / "escaped.txt"): b"evil"}), fetch.DEFAULT_MAX_BYTES


def _dotdot_zip(d: Path) -> tuple[Path, int]:
    return _zip(d / "up.zip", {"fine.txt": b"ok", "a/../../../escaped.txt": b"evil"}, dirs=False), fetch.DEFAULT_MAX_BYTES


def _dotdot_tar(d: Path) -> tuple[Path, int]:
    return _tar(d / "up.tar.gz", {"fine.txt": b"ok", "../escaped.txt": b"evil"}), fetch.DEFAULT_MAX_BYTES


def _backslash_zip(d: Path) -> tuple[Path, int]:
    return _zip(d / "win.zip", {"..\\..\\escaped.txt": b"evil"}, dirs=False), fetch.DEFAULT_MAX_BYTES


def _symlink_tar(d: Path) -> tuple[Path, int]:
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, str(d)
    return _tar_with(d / "sym.tar.gz", link), fetch.DEFAULT_MAX_BYTES


def _hardlink_tar(d: Path) -> tuple[Path, int]:
    link = tarfile.TarInfo("hard")
    link.type, link.linkname = tarfile.LNKTYPE, str(d / "escaped.txt")
    return _tar_with(d / "hard.tar.gz", link), fetch.DEFAULT_MAX_BYTES


def _fifo_tar(d: Path) -> tuple[Path, int]:
    fifo = tarfile.TarInfo("pipe")
    fifo.type = tarfile.FIFOTYPE
    return _tar_with(d / "fifo.tar.gz", fifo), fetch.DEFAULT_MAX_BYTES


def _symlink_zip(d: Path) -> tuple[Path, int]:
    info = zipfile.ZipInfo("link")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(d / "sym.zip", "w") as zf:
        zf.writestr(info, str(d))
        zf.writestr("link/escaped.txt", b"evil")
    return d / "sym.zip", fetch.DEFAULT_MAX_BYTES


def _declared_too_big_zip(d: Path) -> tuple[Path, int]:
    # An honest bomb: 1 MB of zeros compresses to ~1 KB; the header says 1 MB.
    return _zip(d / "bomb.zip", {"fine.txt": b"ok", "bomb.bin": bytes(1_000_000)}), 100_000


def _declared_too_big_tar(d: Path) -> tuple[Path, int]:
    return _tar(d / "bomb.tar.gz", {"fine.txt": b"ok", "bomb.bin": bytes(1_000_000)}), 100_000


def _lying_zip(d: Path) -> tuple[Path, int]:
    # A bomb that lies: headers claim 100 bytes, the data inflates to 1 MB, past max_bytes.
    path = _zip(d / "liar.zip", {"bomb.bin": bytes(1_000_000)}, dirs=False)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 22, 100)  # the local header (the only member starts at 0)
    struct.pack_into("<I", raw, raw.index(b"PK\x01\x02") + 24, 100)  # the central directory
    path.write_bytes(bytes(raw))
    assert zipfile.ZipFile(path).getinfo("bomb.bin").file_size == 100
    return path, 10_000


def _too_many_members(d: Path) -> tuple[Path, int]:
    return _tar(d / "many.tar.gz", {f"f{i}.txt": b"x" for i in range(5)}), fetch.DEFAULT_MAX_BYTES


MALICIOUS = [
    (_abs_zip, "escaped.txt"),
    (_abs_tar, "escaped.txt"),
    (_dotdot_zip, "../escaped.txt"),
    (_dotdot_tar, "../escaped.txt"),
    (_backslash_zip, "escaped.txt"),
    (_symlink_tar, "'link'"),
    (_hardlink_tar, "'hard'"),
    (_fifo_tar, "'pipe'"),
    (_symlink_zip, "'link'"),
    (_declared_too_big_zip, "'bomb.bin'"),
    (_declared_too_big_tar, "'bomb.bin'"),
    (_lying_zip, "'bomb.bin'"),
    (_too_many_members, "'f3.txt'"),
]


@pytest.mark.parametrize("build, member", [pytest.param(b, m, id=b.__name__.strip("_")) for b, m in MALICIOUS])
def test_malicious_archives_are_refused(tmp_path, build, member):
    src = tmp_path / "src"
    src.mkdir()
    archive, max_bytes = build(src)
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "ds"
    before = _tree(tmp_path)
    with pytest.raises(DataError) as err:
        safe_extract(archive, target, max_bytes=max_bytes, max_files=3)
    assert str(archive) in str(err.value) and member in str(err.value)
    assert _tree(tmp_path) == before  # nothing outside target, and no target or temp folder either
    assert not (src / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


def test_copy_stops_at_the_cap_whatever_the_header_said():
    # zipfile itself stops at the declared size; this is the second line, for readers that don't.
    out = io.BytesIO()
    with pytest.raises(fetch._CapExceeded):
        fetch._copy_capped(io.BytesIO(bytes(5000)), out, cap=3000, chunk=1000)
    assert len(out.getvalue()) == 3000
    assert fetch._copy_capped(io.BytesIO(bytes(3000)), io.BytesIO(), cap=3000) == 3000


def test_earlier_extraction_is_replaced(tmp_path):
    target = tmp_path / "ds"
    safe_extract(_zip(tmp_path / "v1.zip", {"old/x.png": b"1"}), target)
    safe_extract(_zip(tmp_path / "v2.zip", {"new/y.png": b"2"}), target)
    assert _tree(target) == {Path("new"), Path("new/y.png"), Path(MARKER)}
    assert (target / MARKER).read_text().endswith("v2.zip\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "v1.zip", "v2.zip"]


def test_foreign_folder_is_left_alone(tmp_path):
    target = tmp_path / "ds"
    (target / "mine").mkdir(parents=True)
    (target / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not extracted by bench"):
        safe_extract(_zip(tmp_path / "ds.zip", TREE), target)
    assert _tree(target) == {Path("mine"), Path("mine/notes.txt")}


def test_symlinked_target_is_followed(tmp_path):
    real = tmp_path / "big-disk" / "ds"
    real.parent.mkdir()
    link = tmp_path / "data" / "ds"
    link.parent.mkdir()
    link.symlink_to(real, target_is_directory=True)
    safe_extract(_zip(tmp_path / "ds.zip", TREE), link)
    assert link.is_symlink()
    assert (real / "train/benign/a.png").read_bytes() == TREE["train/benign/a.png"]


# --------------------------------------------------------------------------- fetch_archive


def test_fetch_archive_downloads_extracts_and_then_skips(serve, tmp_path):
    blob = _zip(tmp_path / "built.zip", TREE).read_bytes()
    srv = serve({"/files/ds.zip": blob})
    target = tmp_path / "data" / "ds"
    sha = hashlib.sha256(blob).hexdigest()
    assert fetch_archive(srv.url("/files/ds.zip?download=1"), sha, target, progress=False) == target
    assert (tmp_path / "data" / "downloads" / "ds" / "ds.zip").read_bytes() == blob
    for rel, data in TREE.items():
        assert (target / rel).read_bytes() == data
    assert len(srv.requests) == 1
    assert fetch_archive(srv.url("/files/ds.zip"), sha, target) == target
    assert len(srv.requests) == 1


def test_fetch_archive_network_error_says_where_to_put_the_file(tmp_path):
    target = tmp_path / "data" / "ds"
    url = f"http://127.0.0.1:{_closed_port()}/ds.tar.gz"
    with pytest.raises(NetworkError) as err:
        fetch_archive(url, None, target, progress=False, manual_hint=HINT)
    assert str(tmp_path / "data" / "downloads" / "ds" / "ds.tar.gz") in str(err.value)
    assert HINT in str(err.value)
    assert not target.exists()


def test_fetch_archive_uses_an_archive_put_there_by_hand(tmp_path):
    (tmp_path / "data" / "downloads" / "ds").mkdir(parents=True)
    archive = _tar(tmp_path / "data" / "downloads" / "ds" / "ds.tgz", TREE)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    url = f"http://127.0.0.1:{_closed_port()}/ds.tgz"  # would fail if it were asked
    target = fetch_archive(url, sha, tmp_path / "data" / "ds", progress=False)
    assert (target / "test/benign/d.png").read_bytes() == TREE["test/benign/d.png"]
