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

from converter import sources, zoo
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
def test_resolve_tarball(tmp_path, suffix, mode):
    prefix = make_ckpt(tmp_path / "src" / "noisy_student_efficientnet-b0")
    tarball = make_tarball(tmp_path / f"noisy_student_efficientnet-b0{suffix}", prefix.parent,
                           "noisy_student_efficientnet-b0", mode)
    root = tmp_path / "extract"
    got = Path(sources.resolve_checkpoint(tarball, extract_root=root))
    assert got.name == "model.ckpt"
    assert root in got.parents
    for ext in (".index", ".data-00000-of-00001"):
        assert Path(str(got) + ext).read_bytes() == Path(str(prefix) + ext).read_bytes()
    # one final folder, keyed by the tarball's sha256; no temp folder left
    digest = sources.sha256_file(tarball)
    assert dirs_in(root) == [f"noisy_student_efficientnet-b0-{digest[:16]}"]


def test_resolve_tarball_default_goes_to_cache(tmp_path):
    prefix = make_ckpt(tmp_path / "src" / "efficientnet-b0")
    tarball = make_tarball(tmp_path / "efficientnet-b0.tar.gz", prefix.parent, "efficientnet-b0")
    got = Path(sources.resolve_checkpoint(tarball))
    assert (tmp_path / "cache" / "extracted") in got.parents


def test_resolve_tarball_reuses_complete_extraction(tmp_path, monkeypatch):
    prefix = make_ckpt(tmp_path / "src" / "efficientnet-b0")
    tarball = make_tarball(tmp_path / "efficientnet-b0.tar.gz", prefix.parent, "efficientnet-b0")
    first = sources.resolve_checkpoint(tarball, extract_root=tmp_path / "x")

    def boom(*a, **k):
        raise AssertionError("extracted again")
    monkeypatch.setattr(sources, "_extract_into", boom)
    assert sources.resolve_checkpoint(tarball, extract_root=tmp_path / "x") == first


def test_same_tarball_name_different_content_do_not_collide(tmp_path):
    root = tmp_path / "x"
    got = []
    for seed, flavor in enumerate(("ckpts", "ckptsaug")):
        prefix = make_ckpt(tmp_path / flavor / "src" / "efficientnet-b0", seed=seed)
        tarball = make_tarball(tmp_path / flavor / "efficientnet-b0.tar.gz", prefix.parent, "efficientnet-b0")
        got.append(Path(sources.resolve_checkpoint(tarball, extract_root=root)))
    assert got[0] != got[1]
    assert Path(str(got[0]) + ".index").read_bytes() != Path(str(got[1]) + ".index").read_bytes()


def test_failed_extraction_leaves_nothing_taken_as_complete(tmp_path, monkeypatch):
    prefix = make_ckpt(tmp_path / "src" / "efficientnet-b0")
    tarball = make_tarball(tmp_path / "efficientnet-b0.tar.gz", prefix.parent, "efficientnet-b0")
    root = tmp_path / "x"
    real = sources._extract_into

    def half_then_fail(tb, dest):
        (dest / "efficientnet-b0").mkdir()
        (dest / "efficientnet-b0" / "model.ckpt.index").write_bytes(b"partial")
        raise ConversionError("simulated failure")
    monkeypatch.setattr(sources, "_extract_into", half_then_fail)
    with pytest.raises(ConversionError, match="simulated"):
        sources.resolve_checkpoint(tarball, extract_root=root)
    assert dirs_in(root) == []

    monkeypatch.setattr(sources, "_extract_into", real)
    got = sources.resolve_checkpoint(tarball, extract_root=root)
    assert Path(got + ".index").read_bytes() == Path(str(prefix) + ".index").read_bytes()
    assert Path(got + ".data-00000-of-00001").is_file()


def test_leftover_target_without_marker_is_redone(tmp_path):
    prefix = make_ckpt(tmp_path / "src" / "efficientnet-b0")
    tarball = make_tarball(tmp_path / "efficientnet-b0.tar.gz", prefix.parent, "efficientnet-b0")
    root = tmp_path / "x"
    target = root / f"efficientnet-b0-{sources.sha256_file(tarball)[:16]}"
    (target / "efficientnet-b0").mkdir(parents=True)
    (target / "efficientnet-b0" / "model.ckpt.index").write_bytes(b"stale")
    (target / "efficientnet-b0" / "model.ckpt.data-00000-of-00001").write_bytes(b"stale")
    got = sources.resolve_checkpoint(tarball, extract_root=root)
    assert Path(got + ".index").read_bytes() == Path(str(prefix) + ".index").read_bytes()


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
        sources.resolve_checkpoint(tarball, extract_root=root)
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
        sources.resolve_checkpoint(tarball, extract_root=root)
    msg = str(ei.value)
    assert "corrupt" in msg and str(tarball) in msg and "\n" not in msg
    assert dirs_in(root) == []


def test_tarball_without_checkpoint_is_rejected_and_not_cached(tmp_path):
    (tmp_path / "src" / "stuff").mkdir(parents=True)
    (tmp_path / "src" / "stuff" / "README").write_text("hello")
    tarball = make_tarball(tmp_path / "stuff.tar.gz", tmp_path / "src" / "stuff", "stuff")
    with pytest.raises(ConversionError, match="no usable checkpoint"):
        sources.resolve_checkpoint(tarball, extract_root=tmp_path / "x")
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
    return zoo.find_checkpoint("b0", "standard")


def _serve_zoo(server, monkeypatch, ckpt, data, **kw) -> Entry:
    monkeypatch.setenv("EFFNET_BASE_URL", server.base)  # no trailing slash on purpose
    return server.add(ckpt.relative_path, data, **kw)


def test_fetch_downloads_once_then_reuses(server, monkeypatch, tmp_path, b0):
    data = tarball_bytes(tmp_path)
    entry = _serve_zoo(server, monkeypatch, b0, data)
    first = sources.fetch_checkpoint(b0, progress=False)
    assert first == tmp_path / "cache" / "ckpts" / "efficientnet-b0.tar.gz"
    assert first.read_bytes() == data
    assert Path(str(first) + ".sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert sources.fetch_checkpoint(b0, progress=False) == first
    assert entry.hits == 1
    # and the cached tarball resolves to a checkpoint under the cache
    prefix = Path(sources.resolve_checkpoint(first))
    assert (tmp_path / "cache" / "extracted") in prefix.parents
    assert Path(str(prefix) + ".data-00000-of-00001").is_file()


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
    assert not (tmp_path / "cache" / "ckpts" / "efficientnet-b0.tar.gz").exists()
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
        ck = zoo.find_checkpoint("b0", flavor)
        data = tarball_bytes(tmp_path, seed=seed)
        server.add(ck.relative_path, data)
        got[flavor] = (sources.fetch_checkpoint(ck, progress=False), data)
    assert len({p for p, _ in got.values()}) == 3
    assert {p.name for p, _ in got.values()} == {"efficientnet-b0.tar.gz"}
    for path, data in got.values():
        assert path.read_bytes() == data


def test_fetch_404_names_url(server, monkeypatch, b0):
    monkeypatch.setenv("EFFNET_BASE_URL", server.base)
    with pytest.raises(ConversionError) as ei:
        sources.fetch_checkpoint(b0, progress=False)
    assert "404" in str(ei.value) and b0.relative_path in str(ei.value)


def test_fetch_corrupt_tarball_then_resolve_fails_cleanly(server, monkeypatch, tmp_path, b0):
    good = tarball_bytes(tmp_path)
    bad = good[: len(good) // 2]  # served with a matching Content-Length: looks complete
    _serve_zoo(server, monkeypatch, b0, bad)
    path = sources.fetch_checkpoint(b0, progress=False)
    assert path.read_bytes() == bad
    with pytest.raises(ConversionError, match="corrupt or truncated tarball"):
        sources.resolve_checkpoint(path)
    assert dirs_in(tmp_path / "cache" / "extracted") == []


def test_fetch_concurrent_threads_download_once(server, monkeypatch, tmp_path, b0):
    data = _payload(80_000)
    entry = _serve_zoo(server, monkeypatch, b0, data, chunk_delay=0.02)  # ~0.4 s per download
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
    data = _payload(80_000, seed=3)
    entry = _serve_zoo(server, monkeypatch, b0, data, chunk_delay=0.02)
    code = ("from converter import sources, zoo; "
            "p = sources.fetch_checkpoint(zoo.find_checkpoint('b0', 'standard'), progress=False); "
            "print(p)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    want = tmp_path / "cache" / "ckpts" / "efficientnet-b0.tar.gz"
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
