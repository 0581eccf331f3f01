"""converter.sources: checkpoint resolution, safe extraction, downloads and the cache.

Every download test talks to a real HTTP server on 127.0.0.1 started inside the test; nothing
here touches the network.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from converter import registry, sources
from converter.errors import ConversionError

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fake checkpoints


def make_ckpt(folder: Path, prefix: str = "model.ckpt", shards: int = 1, seed: int = 0,
              checkpoint_file: bool = True, skip_shards=()) -> Path:
    """A checkpoint-shaped folder: PREFIX.index, PREFIX.data-*-of-*, a `checkpoint` text file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    (folder / f"{prefix}.index").write_bytes(b"fake-index" + rng.randbytes(100))
    for i in range(shards):
        if i not in skip_shards:
            (folder / f"{prefix}.data-{i:05d}-of-{shards:05d}").write_bytes(rng.randbytes(20_000))
    if checkpoint_file:
        (folder / "checkpoint").write_text(
            f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n')
    return folder / prefix


def make_tarball(path: Path, src: Path, arcname: str, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        tf.add(src, arcname=arcname)
    return path


def tarball_bytes(tmp: Path, name: str = "efficientnet-b0", seed: int = 0) -> bytes:
    src = make_ckpt(tmp / f"src-{name}-{seed}" / name, seed=seed).parent
    out = make_tarball(tmp / f"{name}-{seed}.tar.gz", src, name)
    return out.read_bytes()


def dirs_in(folder: Path) -> List[str]:
    """Sub-folders (hidden ones included) of folder; lock files do not count."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


# --------------------------------------------------------------------------- fake server


@dataclass
class Entry:
    data: bytes
    honour_range: bool = False        # answer "Range: bytes=N-" with 206
    cut_once_at: Optional[int] = None  # first response: send this many body bytes, then drop
    fail_500: int = 0                  # answer 500 this many times first
    status: Optional[int] = None       # always answer this error status (e.g. 404)
    chunk_delay: float = 0.0           # seconds between 4 KiB chunks
    hits: int = 0
    range_headers: List[Optional[str]] = field(default_factory=list)
    _cut_done: bool = False


class FakeServer:
    def __init__(self) -> None:
        self.files: Dict[str, Entry] = {}
        self.lock = threading.Lock()
        self.base = ""

    def add(self, path: str, data: bytes, **kw) -> Entry:
        entry = Entry(data, **kw)
        self.files["/" + path.lstrip("/")] = entry
        return entry

    def url(self, path: str) -> str:
        return self.base + "/" + path.lstrip("/")


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        entry = fake.files.get(urllib.parse.urlsplit(self.path).path)
        if entry is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        with fake.lock:
            entry.hits += 1
            entry.range_headers.append(rng)
            fail = entry.fail_500 > 0
            if fail:
                entry.fail_500 -= 1
            cut = None
            if entry.cut_once_at is not None and not entry._cut_done:
                cut, entry._cut_done = entry.cut_once_at, True
        if entry.status:
            self.send_error(entry.status)
            return
        if fail:
            self.send_error(500)
            return
        data, start = entry.data, 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and entry.honour_range:
            start = int(m.group(1))
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
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        for i in range(0, len(body), 4096):
            self.wfile.write(body[i:i + 4096])
            if entry.chunk_delay:
                time.sleep(entry.chunk_delay)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # dropped connections are expected
        pass


@pytest.fixture
def server():
    fake = FakeServer()
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "RETRY_BASE_DELAY", 0.01)
    monkeypatch.setenv("EFFNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EFFNET_BASE_URL", raising=False)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------- cache_dir / sha256


def test_cache_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("EFFNET_CACHE", str(tmp_path / "c"))
    assert sources.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EFFNET_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sources.cache_dir() == tmp_path / "home" / ".cache" / "effnet-convert"


def test_sha256_file_streams_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_SIZE", 1000)  # several chunks
    data = random.Random(1).randbytes(5_500)
    (tmp_path / "f").write_bytes(data)
    assert sources.sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    with pytest.raises(ConversionError):
        sources.sha256_file(tmp_path / "missing")


# --------------------------------------------------------------------------- resolving paths


def test_resolve_prefix_index_data_and_checkpoint_file(tmp_path):
    prefix = make_ckpt(tmp_path / "ck")
    want = os.path.abspath(prefix)
    assert sources.resolve_checkpoint(str(prefix)) == want
    assert sources.resolve_checkpoint(str(prefix) + ".index") == want
    assert sources.resolve_checkpoint(Path(str(prefix) + ".data-00000-of-00001")) == want
    assert sources.resolve_checkpoint(tmp_path / "ck" / "checkpoint") == want
    assert Path(want + ".index").is_file()


def test_resolve_oddly_named_nested_folder(tmp_path):
    top = tmp_path / "My Weights (copy)!"
    prefix = make_ckpt(top / "a" / "b" / "noisy-student-efficientnet-b1")
    # macOS metadata twin that tarballs sometimes carry: not a checkpoint
    (prefix.parent / "._model.ckpt.index").write_bytes(b"junk")
    assert sources.resolve_checkpoint(top) == os.path.abspath(prefix)


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w")])
def test_extract_tarball(tmp_path, suffix, mode):
    prefix = make_ckpt(tmp_path / "src" / "noisy_student_efficientnet-b0")
    tarball = make_tarball(tmp_path / f"noisy_student_efficientnet-b0{suffix}", prefix.parent,
                           "noisy_student_efficientnet-b0", mode)
    root = tmp_path / "extract"
    ex = sources.Extraction(tarball, root)
    got = Path(ex.prefix)
    assert got.name == "model.ckpt"
    assert root in got.parents
    for ext in (".index", ".data-00000-of-00001"):
        assert Path(str(got) + ext).read_bytes() == Path(str(prefix) + ext).read_bytes()
    assert len(dirs_in(root)) == 1  # one private folder, no temp folder beside it
    ex.remove()
    assert not root.exists()  # the folder, and the emptied root with it
    ex.remove()  # idempotent
    with pytest.raises(ValueError, match="tarball"):  # no prefix on disk: a caller's mistake
        sources.resolve_checkpoint(tarball)


def test_cache_keeps_the_tarball_not_an_extracted_copy(tmp_path):
    """Issue 25.9: TensorFlow's files exist for the block (or until the Source is closed or dropped)."""
    import gc

    prefix = make_ckpt(tmp_path / "src" / "efficientnet-b0")
    tarball = make_tarball(tmp_path / "efficientnet-b0.tar.gz", prefix.parent, "efficientnet-b0")
    extracted = tmp_path / "cache" / "extracted"
    with sources.checkpoint_files(tarball) as got:
        assert extracted in Path(got).parents
        assert Path(got + ".index").read_bytes() == Path(str(prefix) + ".index").read_bytes()
    assert not extracted.exists() and tarball.is_file()
    with sources.checkpoint_files(prefix) as got:  # anything else: in place
        assert got == os.path.abspath(prefix)
    ex = sources.Extraction(tarball)  # dropped without remove(): removed when collected
    folder = ex.folder
    assert folder.is_dir()
    del ex
    gc.collect()
    assert not folder.exists() and not extracted.exists()


def test_stale_extractions_are_removed_live_ones_kept(tmp_path):
    """Folders of killed processes (and the copies and .lock files earlier versions kept) go; a folder
    a live process holds locked, or one just created, stays."""
    prefix = make_ckpt(tmp_path / "src" / "efficientnet-b0")
    tarball = make_tarball(tmp_path / "efficientnet-b0.tar.gz", prefix.parent, "efficientnet-b0")
    root = tmp_path / "cache" / "extracted"
    live = sources.Extraction(tarball)
    old = time.time() - 2 * sources.EXTRACT_MIN_AGE
    dead = root / "efficientnet-b0-dead"  # a killed process's: nobody holds it
    legacy = root / "efficientnet-b0-0123456789abcdef"  # an earlier version's copy and its lock file
    young = root / "efficientnet-b0-young"
    for d in (dead, legacy, young):
        (d / "efficientnet-b0").mkdir(parents=True)
        (d / "efficientnet-b0" / "model.ckpt.index").write_bytes(b"x")
    (root / (legacy.name + ".lock")).write_bytes(b"")
    for p in (dead, legacy, root / (legacy.name + ".lock"), live.folder):
        os.utime(p, (old, old))
    second = sources.Extraction(tarball)
    assert sorted(dirs_in(root)) == sorted([live.folder.name, second.folder.name, young.name])
    assert not (root / (legacy.name + ".lock")).exists()
    assert Path(live.prefix + ".index").is_file()
    live.remove()
    second.remove()


def test_failed_extraction_leaves_nothing(tmp_path, monkeypatch):
    prefix = make_ckpt(tmp_path / "src" / "efficientnet-b0")
    tarball = make_tarball(tmp_path / "efficientnet-b0.tar.gz", prefix.parent, "efficientnet-b0")
    root = tmp_path / "x"
    real = sources._extract_into

    def half_then_fail(tb, dest, on_corrupt=None):
        (dest / "efficientnet-b0").mkdir()
        (dest / "efficientnet-b0" / "model.ckpt.index").write_bytes(b"partial")
        raise ConversionError("simulated failure")
    monkeypatch.setattr(sources, "_extract_into", half_then_fail)
    with pytest.raises(ConversionError, match="simulated"):
        sources.Extraction(tarball, root)
    assert dirs_in(root) == []

    monkeypatch.setattr(sources, "_extract_into", real)
    ex = sources.Extraction(tarball, root)
    assert Path(ex.prefix + ".index").read_bytes() == Path(str(prefix) + ".index").read_bytes()
    assert Path(ex.prefix + ".data-00000-of-00001").is_file()
    ex.remove()


def _evil_tar(path: Path, tmp_path: Path, bad: List[tarfile.TarInfo], payload: bytes = b"pwned") -> Path:
    """A real checkpoint followed by the bad members (so a partial extraction must be cleaned up)."""
    src = make_ckpt(tmp_path / "evilsrc" / "efficientnet-b0").parent
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src, arcname="efficientnet-b0")
        for ti in bad:
            if ti.isreg():
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
            else:
                tf.addfile(ti)
    return path


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = target
    return ti


@pytest.mark.parametrize("case", ["dotdot", "nested-dotdot", "absolute", "symlink-passwd",
                                  "symlink-dir-write-through", "hardlink-passwd", "hardlink-outside",
                                  "device"])
def test_malicious_tarball_rejected(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "area" / "extract"
    if case == "dotdot":
        bad = [tarfile.TarInfo("../evil.txt")]
    elif case == "nested-dotdot":
        bad = [tarfile.TarInfo("efficientnet-b0/../../../evil.txt")]
    elif case == "absolute":
        bad = [tarfile.TarInfo(str(outside / "evil.txt"))]
    elif case == "symlink-passwd":
        bad = [_link("efficientnet-b0/passwd", "/etc/passwd", tarfile.SYMTYPE)]
    elif case == "symlink-dir-write-through":
        bad = [_link("efficientnet-b0/link", str(outside), tarfile.SYMTYPE),
               tarfile.TarInfo("efficientnet-b0/link/evil.txt")]
    elif case == "hardlink-passwd":
        bad = [_link("efficientnet-b0/passwd", "/etc/passwd", tarfile.LNKTYPE)]
    elif case == "hardlink-outside":
        (outside / "victim.txt").write_text("original")
        bad = [_link("efficientnet-b0/victim", "../../../outside/victim.txt", tarfile.LNKTYPE)]
    else:
        dev = tarfile.TarInfo("efficientnet-b0/null")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
        bad = [dev]
    tarball = _evil_tar(tmp_path / "efficientnet-b0.tar.gz", tmp_path, bad)
    passwd_before = Path("/etc/passwd").read_bytes() if Path("/etc/passwd").exists() else None

    with pytest.raises(ConversionError) as ei:
        sources.Extraction(tarball, root)
    msg = str(ei.value)
    assert "unsafe" in msg and "\n" not in msg

    # nothing extracted anywhere: no final or temp folder, no evil file, victim untouched
    assert dirs_in(root) == []
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    assert sorted(p.name for p in outside.iterdir()) == (["victim.txt"] if case == "hardlink-outside" else [])
    if case == "hardlink-outside":
        assert (outside / "victim.txt").read_text() == "original"
    if passwd_before is not None:
        assert Path("/etc/passwd").read_bytes() == passwd_before


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_tarball_clear_error_and_nothing_left(tmp_path, kind):
    good = tarball_bytes(tmp_path)
    tarball = tmp_path / "efficientnet-b0.tar.gz"
    tarball.write_bytes(good[: len(good) * 6 // 10] if kind == "truncated" else b"this is not a tarball" * 50)
    root = tmp_path / "x"
    with pytest.raises(ConversionError) as ei:
        sources.Extraction(tarball, root)
    msg = str(ei.value)
    assert "corrupt" in msg and str(tarball) in msg and "\n" not in msg
    assert dirs_in(root) == []


def test_tarball_without_checkpoint_is_rejected_and_not_cached(tmp_path):
    (tmp_path / "src" / "stuff").mkdir(parents=True)
    (tmp_path / "src" / "stuff" / "README").write_text("hello")
    tarball = make_tarball(tmp_path / "stuff.tar.gz", tmp_path / "src" / "stuff", "stuff")
    with pytest.raises(ConversionError, match="no usable checkpoint"):
        sources.Extraction(tarball, tmp_path / "x")
    assert dirs_in(tmp_path / "x") == []


def test_folder_with_two_checkpoints_uses_checkpoint_file(tmp_path):
    folder = tmp_path / "run"
    make_ckpt(folder, prefix="model.ckpt-100", seed=1, checkpoint_file=False)
    p200 = make_ckpt(folder, prefix="model.ckpt-200", seed=2, checkpoint_file=False)
    (folder / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt-200"\n'
        'all_model_checkpoint_paths: "model.ckpt-100"\nall_model_checkpoint_paths: "model.ckpt-200"\n')
    assert sources.resolve_checkpoint(folder) == os.path.abspath(p200)
    # a path from the training machine: matched by name
    (folder / "checkpoint").write_text('model_checkpoint_path: "/bigstore/train/model.ckpt-200"\n')
    assert sources.resolve_checkpoint(folder) == os.path.abspath(p200)


def test_folder_with_two_checkpoints_without_checkpoint_file_errors(tmp_path):
    folder = tmp_path / "run"
    make_ckpt(folder / "a", checkpoint_file=False)
    make_ckpt(folder / "b", checkpoint_file=False)
    with pytest.raises(ConversionError) as ei:
        sources.resolve_checkpoint(folder)
    msg = str(ei.value)
    assert "2 checkpoints" in msg and "a/model.ckpt" in msg and "b/model.ckpt" in msg
    assert "\n" not in msg


def test_folder_without_index_errors(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "model.ckpt.data-00000-of-00001").write_bytes(b"x")
    with pytest.raises(ConversionError, match=r"no TensorFlow checkpoint \(\*\.index"):
        sources.resolve_checkpoint(tmp_path / "empty")


def test_missing_path_errors(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        sources.resolve_checkpoint(tmp_path / "nope" / "model.ckpt")
    with pytest.raises(ConversionError, match="index .* not found"):
        sources.resolve_checkpoint(tmp_path / "nope" / "model.ckpt.index")


def test_unrelated_file_errors(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 100)
    with pytest.raises(ConversionError, match="not a TensorFlow checkpoint"):
        sources.resolve_checkpoint(tmp_path / "weights.bin")


def test_missing_data_shard_errors(tmp_path):
    prefix = make_ckpt(tmp_path / "ck")
    Path(str(prefix) + ".data-00000-of-00001").unlink()
    for arg in (prefix, Path(str(prefix) + ".index"), prefix.parent):
        with pytest.raises(ConversionError, match=r"model\.ckpt\.data-00000-of-00001 missing"):
            sources.resolve_checkpoint(arg)


def test_sharded_checkpoint_needs_every_shard(tmp_path):
    ok = make_ckpt(tmp_path / "ok", shards=3)
    assert sources.resolve_checkpoint(ok) == os.path.abspath(ok)
    broken = make_ckpt(tmp_path / "broken", shards=3, skip_shards=(1,))
    with pytest.raises(ConversionError, match=r"data-00001-of-00003"):
        sources.resolve_checkpoint(broken)


# --------------------------------------------------------------------------- download


def _payload(n: int = 300_000, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


def test_download_success_writes_sidecar(server, tmp_path):
    data = _payload()
    server.add("f.bin", data)
    dest = tmp_path / "new" / "f.bin"
    digest = sources.download(server.url("f.bin"), dest, progress=False)
    assert digest == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    assert (tmp_path / "new" / "f.bin.sha256").read_text().split()[0] == digest
    assert sorted(os.listdir(dest.parent)) == ["f.bin", "f.bin.sha256"]  # no temp file left


def test_download_with_matching_sha(server, tmp_path):
    data = _payload()
    server.add("f.bin", data)
    want = hashlib.sha256(data).hexdigest().upper()
    assert sources.download(server.url("f.bin"), tmp_path / "f.bin", expected_sha256=want,
                            progress=True) == want.lower()


def test_download_resumes_with_range_after_cut(server, tmp_path):
    data = _payload()
    entry = server.add("f.bin", data, honour_range=True, cut_once_at=100_000)
    dest = tmp_path / "f.bin"
    digest = sources.download(server.url("f.bin"), dest, progress=False)
    assert dest.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert entry.range_headers == [None, "bytes=100000-"]


def test_download_restarts_when_range_ignored(server, tmp_path):
    data = _payload()
    entry = server.add("f.bin", data, honour_range=False, cut_once_at=100_000)
    dest = tmp_path / "f.bin"
    sources.download(server.url("f.bin"), dest, progress=False)
    assert entry.range_headers == [None, "bytes=100000-"]  # asked to resume, got a full 200
    assert dest.read_bytes() == data  # not the first 100 kB twice
    assert (tmp_path / "f.bin.sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()


def test_download_retries_5xx_with_growing_backoff(server, tmp_path, monkeypatch):
    data = _payload(50_000)
    entry = server.add("f.bin", data, fail_500=3)
    slept: List[float] = []
    monkeypatch.setattr(sources.time, "sleep", slept.append)
    sources.download(server.url("f.bin"), tmp_path / "f.bin", progress=False, retry_delay=0.5)
    assert entry.hits == 4
    assert slept == [0.5, 1.0, 2.0]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_download_500_then_200(server, tmp_path):
    data = _payload(50_000)
    entry = server.add("f.bin", data, fail_500=1)
    sources.download(server.url("f.bin"), tmp_path / "f.bin", progress=False)
    assert entry.hits == 2
    assert (tmp_path / "f.bin").read_bytes() == data


def test_download_gives_up_after_retries(server, tmp_path):
    entry = server.add("f.bin", b"x", fail_500=100)
    with pytest.raises(ConversionError) as ei:
        sources.download(server.url("f.bin"), tmp_path / "f.bin", progress=False, retries=2)
    msg = str(ei.value)
    assert "500" in msg and "--checkpoint" in msg and "\n" not in msg
    assert entry.hits == 3
    assert os.listdir(tmp_path) == []


def test_download_404_is_not_retried_and_leaves_nothing(server, tmp_path):
    entry = server.add("missing.tar.gz", b"", status=404)
    url = server.url("missing.tar.gz")
    with pytest.raises(ConversionError) as ei:
        sources.download(url, tmp_path / "missing.tar.gz", progress=False)
    msg = str(ei.value)
    assert "404" in msg and url in msg and "\n" not in msg
    assert entry.hits == 1
    assert os.listdir(tmp_path) == []


def test_download_sha_mismatch_leaves_nothing(server, tmp_path):
    server.add("f.bin", _payload(50_000))
    with pytest.raises(ConversionError, match="does not match the pinned sha256") as ei:
        sources.download(server.url("f.bin"), tmp_path / "f.bin", expected_sha256="0" * 64, progress=False)
    assert "0" * 64 in str(ei.value) and hashlib.sha256(_payload(50_000)).hexdigest() in str(ei.value)
    assert os.listdir(tmp_path) == []


def test_download_offline(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/ckpts/efficientnet-b0.tar.gz"
    with pytest.raises(ConversionError) as ei:
        sources.download(url, tmp_path / "f.tar.gz", progress=False, retries=1)
    msg = str(ei.value)
    assert "offline" in msg and "cannot reach" in msg
    assert url in msg and "--checkpoint" in msg and "\n" not in msg
    assert os.listdir(tmp_path) == []


def test_download_rejects_bad_expected_sha(tmp_path):
    with pytest.raises(ConversionError, match="64 hexadecimal"):
        sources.download("http://127.0.0.1:1/x", tmp_path / "x", expected_sha256="abc")


# --------------------------------------------------------------------------- fetch_checkpoint


@pytest.fixture
def b0():
    return registry.find_checkpoint("b0", "standard")


def _serve_zoo(server, monkeypatch, ckpt, data, **kw) -> Entry:
    monkeypatch.setenv("EFFNET_BASE_URL", server.base)  # no trailing slash on purpose
    return server.add(ckpt.bucket_path, data, **kw)


def test_fetch_downloads_once_then_reuses(server, monkeypatch, tmp_path, b0):
    data = tarball_bytes(tmp_path)
    entry = _serve_zoo(server, monkeypatch, b0, data)
    first = sources.fetch_checkpoint(b0, progress=False)
    assert first == tmp_path / "cache" / "efficientnet" / "ckpts" / "efficientnet-b0.tar.gz"
    assert first.read_bytes() == data
    assert Path(str(first) + ".sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert sources.fetch_checkpoint(b0, progress=False) == first
    assert entry.hits == 1
    # the cache holds the tarball and its sidecar: no lock file, no extracted copy
    assert sorted(os.listdir(first.parent)) == [first.name, first.name + ".sha256"]
    assert sorted(os.listdir(tmp_path / "cache")) == ["efficientnet"]


def test_fetch_redownloads_tampered_or_unrecorded_file(server, monkeypatch, tmp_path, b0):
    data = tarball_bytes(tmp_path)
    entry = _serve_zoo(server, monkeypatch, b0, data)
    path = sources.fetch_checkpoint(b0, progress=False)
    path.write_bytes(data[:-10] + b"0123456789")  # same size, different bytes
    assert sources.fetch_checkpoint(b0, progress=False).read_bytes() == data
    assert entry.hits == 2
    Path(str(path) + ".sha256").unlink()  # e.g. an interrupted earlier run
    assert sources.fetch_checkpoint(b0, progress=False).read_bytes() == data
    assert entry.hits == 3


def test_fetch_with_sha256(server, monkeypatch, tmp_path, b0):
    data = tarball_bytes(tmp_path)
    entry = _serve_zoo(server, monkeypatch, b0, data)
    good = hashlib.sha256(data).hexdigest()
    with pytest.raises(ConversionError, match="does not match the pinned sha256"):
        sources.fetch_checkpoint(b0, sha256="f" * 64, progress=False)
    assert not (tmp_path / "cache" / "efficientnet" / "ckpts" / "efficientnet-b0.tar.gz").exists()
    assert sources.fetch_checkpoint(b0, sha256=good, progress=False).read_bytes() == data
    assert sources.fetch_checkpoint(b0, sha256=good, progress=False).read_bytes() == data
    assert entry.hits == 2
    # a wrong pin against the intact cached download: the pin is wrong, not the cache; nothing downloaded
    with pytest.raises(ConversionError) as ei:
        sources.fetch_checkpoint(b0, sha256="f" * 64, progress=False)
    msg = str(ei.value)
    assert "does not match the pinned sha256" in msg and good in msg and "f" * 64 in msg
    assert "again" not in msg and "incomplete" not in msg and entry.hits == 2
    assert sources.fetch_checkpoint(b0, progress=False).read_bytes() == data  # the cache is still good


def test_fetch_flavors_with_same_file_name_do_not_collide(server, monkeypatch, tmp_path):
    monkeypatch.setenv("EFFNET_BASE_URL", server.base + "/")
    got = {}
    for seed, flavor in enumerate(("standard", "aa", "advprop")):
        ck = registry.find_checkpoint("b0", flavor)
        data = tarball_bytes(tmp_path, seed=seed)
        server.add(ck.bucket_path, data)
        got[flavor] = (sources.fetch_checkpoint(ck, progress=False), data)
    assert len({p for p, _ in got.values()}) == 3
    assert {p.name for p, _ in got.values()} == {"efficientnet-b0.tar.gz"}
    for path, data in got.values():
        assert path.read_bytes() == data


@pytest.mark.parametrize("base", ["", "/", "/efficientnet", "/efficientnet/"])
def test_one_mirror_root_serves_every_family(server, monkeypatch, tmp_path, base):
    """Issue 25.4: $EFFNET_BASE_URL mirrors the bucket root (cloud-tpu-checkpoints/); V1, V2, MnasNet
    and MixNet are fetched below it at their official paths. The earlier form, a base ending in
    efficientnet/, still works: its parent is the root (MnasNet/MixNet beside it, as in the bucket)."""
    monkeypatch.setenv("EFFNET_BASE_URL", server.base + base)
    picks = [registry.find_checkpoint("b0", "aa"), registry.find_checkpoint("lite0"), registry.find_checkpoint("v2-b0", "21k"),
             registry.find_checkpoint("mnasnet-a1"), registry.find_checkpoint("mixnet-s")]
    paths = ["efficientnet/ckptsaug/efficientnet-b0.tar.gz", "efficientnet/lite/efficientnet-lite0.tar.gz",
             "efficientnet/v2/efficientnetv2-b0-21k.tgz", "mnasnet/mnasnet-a1.tgz", "mixnet/mixnet-s.tar.gz"]
    for i, (ck, rel) in enumerate(zip(picks, paths)):
        assert ck.bucket_path == rel
        assert ck.url == "https://storage.googleapis.com/cloud-tpu-checkpoints/" + rel  # the official URL
        assert ck.download_url() == server.base + "/" + rel
        data = tarball_bytes(tmp_path, seed=i)
        entry = server.add(rel, data)
        got = sources.fetch_checkpoint(ck, progress=False)
        assert got == tmp_path / "cache" / rel and got.read_bytes() == data and entry.hits == 1
    monkeypatch.delenv("EFFNET_BASE_URL")
    assert picks[3].download_url() == picks[3].url and picks[0].download_url() == picks[0].url


def test_tarball_cached_by_an_earlier_version_is_adopted(server, monkeypatch, tmp_path, b0):
    """Earlier versions cached V1 below the family folder (CACHE/ckpts/...): moved, not downloaded again."""
    data = tarball_bytes(tmp_path)
    entry = _serve_zoo(server, monkeypatch, b0, data)
    legacy = tmp_path / "cache" / b0.relative_path
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(data)
    sources._write_sidecar(legacy, hashlib.sha256(data).hexdigest())
    got = sources.fetch_checkpoint(b0, progress=False)
    assert got == tmp_path / "cache" / b0.bucket_path and got.read_bytes() == data and entry.hits == 0
    assert not legacy.exists() and not Path(str(legacy) + ".sha256").exists()


def test_fetch_404_names_url(server, monkeypatch, b0):
    monkeypatch.setenv("EFFNET_BASE_URL", server.base)
    with pytest.raises(ConversionError) as ei:
        sources.fetch_checkpoint(b0, progress=False)
    assert "404" in str(ei.value) and b0.bucket_path in str(ei.value)


def test_fetch_refuses_a_damaged_download_and_sets_it_aside(server, monkeypatch, tmp_path, b0):
    """A download that is not a whole archive is not kept as the cached tarball (the next run fetches
    it again instead of finding it "corrupt" every time); the bad bytes stay beside it."""
    good = tarball_bytes(tmp_path)
    bad = good[: len(good) // 2]  # served with a matching Content-Length: looks complete
    entry = _serve_zoo(server, monkeypatch, b0, bad)
    dest = tmp_path / "cache" / b0.bucket_path
    with pytest.raises(ConversionError) as ei:
        sources.fetch_checkpoint(b0, progress=False)
    msg = str(ei.value)
    assert "not a readable tarball" in msg and b0.bucket_path in msg and "\n" not in msg
    assert sorted(os.listdir(dest.parent)) == [dest.name + ".corrupt"]
    assert (dest.parent / (dest.name + ".corrupt")).read_bytes() == bad
    entry.data = good  # the server is fixed: the next fetch downloads it
    assert sources.fetch_checkpoint(b0, progress=False).read_bytes() == good
    assert entry.hits == 2


@pytest.mark.parametrize("kind", ["truncated", "hole", "not-a-tar", "tar-truncated"])
def test_archive_problem(tmp_path, kind):
    good = tarball_bytes(tmp_path)
    assert sources.archive_problem(_write(tmp_path / "good.tar.gz", good)) is None
    plain = make_tarball(tmp_path / "plain.tar", make_ckpt(tmp_path / "p" / "x").parent, "x", "w")
    assert sources.archive_problem(plain) is None
    if kind == "truncated":
        bad = good[:-9]  # only the gzip trailer's last bytes missing
    elif kind == "hole":
        raw = bytearray(good)
        raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
        bad = bytes(raw)
    elif kind == "not-a-tar":
        bad = b"<html>not found</html>" * 40
    else:
        with tarfile.open(plain) as tf:
            data = max(tf.getmembers(), key=lambda m: m.size)
        bad = plain.read_bytes()[: data.offset_data + data.size // 2]  # cut inside a member's data
    problem = sources.archive_problem(_write(tmp_path / "bad", bad))
    assert problem and "\n" not in problem


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_damaged_cached_download_is_set_aside_and_fetched_again(server, monkeypatch, tmp_path, b0):
    """Issue 25.7: a cached tarball that matches its sidecar but is damaged (an earlier version kept
    a bad download) is moved to NAME.corrupt when read, and the run downloads it again (one line)."""
    good = tarball_bytes(tmp_path)
    entry = _serve_zoo(server, monkeypatch, b0, good)
    dest = tmp_path / "cache" / b0.bucket_path
    dest.parent.mkdir(parents=True)
    bad = good[: len(good) * 6 // 10]
    dest.write_bytes(bad)
    sources._write_sidecar(dest, hashlib.sha256(bad).hexdigest())
    calls = []

    def run(tag):
        calls.append(tag)
        path = sources.fetch_checkpoint(b0, progress=False)
        # what Source.open does for a download TensorFlow reads (the extraction reads it all)
        ex = sources.Extraction(path, on_corrupt=sources._corrupt_download_hook(path))
        try:
            return Path(ex.prefix + ".index").read_bytes()
        finally:
            ex.remove()

    with pytest.raises(sources.CorruptDownload) as ei:
        run("once")
    assert ei.value.aside == dest.with_name(dest.name + ".corrupt") and ei.value.aside.read_bytes() == bad
    assert not dest.exists() and not Path(str(dest) + ".sha256").exists() and entry.hits == 0
    msg = str(ei.value)
    assert "damaged" in msg and "run again" in msg and "\n" not in msg
    # rerun_if_corrupt_download (the CLI's): says so once, then runs again, which downloads it
    dest.write_bytes(bad)
    sources._write_sidecar(dest, hashlib.sha256(bad).hexdigest())
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    sources.log.addHandler(handler)
    try:
        index = sources.rerun_if_corrupt_download(run, "x")
    finally:
        sources.log.removeHandler(handler)
    assert calls == ["once", "x", "x"] and entry.hits == 1
    assert dest.read_bytes() == good and index.startswith(b"fake-index")
    lines = [r.getMessage() for r in records]
    assert len(lines) == 1 and "moved it to efficientnet-b0.tar.gz.corrupt and downloading it again" in lines[0]


def test_local_tarball_pin(tmp_path):
    """Issue 25.6: --sha256 with a local tarball is checked (and refused on a folder or prefix)."""
    prefix = make_ckpt(tmp_path / "src" / "efficientnet-b0")
    tarball = make_tarball(tmp_path / "efficientnet-b0.tar.gz", prefix.parent, "efficientnet-b0")
    good = hashlib.sha256(tarball.read_bytes()).hexdigest()
    sources.check_pin(tarball, good.upper())
    with pytest.raises(ConversionError) as ei:
        sources.Source.open(tarball, sha256="0" * 64)
    msg = str(ei.value)
    assert "does not match the pinned sha256" in msg and good in msg and "0" * 64 in msg and "\n" not in msg
    for other in (prefix, prefix.parent):
        with pytest.raises(ConversionError, match="--sha256 pins one file"):
            sources.Source.open(other, sha256=good)
    with pytest.raises(ConversionError, match="64 hexadecimal"):
        sources.check_pin(tarball, "abc")


def test_fetch_concurrent_threads_download_once(server, monkeypatch, tmp_path, b0):
    data = tarball_bytes(tmp_path)
    entry = _serve_zoo(server, monkeypatch, b0, data, chunk_delay=0.08)  # ~0.4 s per download
    results, errors = [], []

    def worker():
        try:
            results.append(sources.fetch_checkpoint(b0, progress=False))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(results) == 4 and len(set(results)) == 1
    assert results[0].read_bytes() == data
    assert entry.hits == 1
    leftovers = [n for n in os.listdir(results[0].parent) if n.endswith(".part")]
    assert leftovers == []


def test_fetch_concurrent_processes_download_once(server, monkeypatch, tmp_path, b0):
    data = tarball_bytes(tmp_path, seed=3)
    entry = _serve_zoo(server, monkeypatch, b0, data, chunk_delay=0.08)
    code = ("from converter import registry, sources; "
            "p = sources.fetch_checkpoint(registry.find_checkpoint('b0', 'standard'), progress=False); "
            "print(p)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    want = tmp_path / "cache" / "efficientnet" / "ckpts" / "efficientnet-b0.tar.gz"
    assert [o.strip() for o, _ in outs] == [str(want)] * 2
    assert want.read_bytes() == data
    assert entry.hits == 1


def test_sha256_file_remembers_until_the_file_changes(tmp_path, monkeypatch):
    import hashlib

    f = tmp_path / "blob"
    f.write_bytes(b"a" * 1000)
    first = sources.sha256_file(f)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()

    class NoHash:
        def __init__(self, *a):
            raise AssertionError("hashed again")

    monkeypatch.setattr(sources.hashlib, "sha256", NoHash)
    assert sources.sha256_file(f) == first  # unchanged file: remembered
    monkeypatch.undo()
    f.write_bytes(b"b" * 1000)  # same size, new content
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert sources.sha256_file(f) == hashlib.sha256(b"b" * 1000).hexdigest()


# --------------------------------------------------------------------------- the cache lock


def test_lock_file_is_removed_and_a_waiter_on_a_removed_file_starts_over(tmp_path, caplog):
    """Issue 25.9: lock files do not stay, without breaking mutual exclusion: a process that waited
    on a lock file its holder removed must not enter while another holds the current lock file."""
    import fcntl
    import logging

    caplog.set_level(logging.INFO, logger=sources.log.name)
    path = tmp_path / "t.tar.gz.lock"
    with sources._file_lock(path, quiet=True):
        assert path.exists()
    assert not path.exists()

    waiting, inside = threading.Event(), threading.Event()
    handler = logging.Handler()
    handler.emit = lambda r: waiting.set() if "waiting for another process" in r.getMessage() else None
    sources.log.addHandler(handler)
    fd_a = os.open(path, os.O_RDWR | os.O_CREAT)  # "A" holds the lock
    fcntl.flock(fd_a, fcntl.LOCK_EX)

    def b():
        with sources._file_lock(path):
            inside.set()
    t = threading.Thread(target=b)
    try:
        t.start()
        assert waiting.wait(30)  # B has A's file open and waits on it
        os.unlink(path)  # A leaves as the protocol says: removes the file while holding it...
        fd_c = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)  # ...and "C" takes the new one
        fcntl.flock(fd_c, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd_a)  # A releases: B gets the removed file's lock, which guards nothing now
        assert not inside.wait(0.5)  # C holds the lock: B must not be inside
        os.unlink(path)
        os.close(fd_c)  # C leaves
        assert inside.wait(30)
    finally:
        sources.log.removeHandler(handler)
        t.join(30)
    assert not path.exists()
