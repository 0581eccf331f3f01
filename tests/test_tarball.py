"""Converting straight from the official .tar.gz: a stream, no extraction to disk."""
import gzip
import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from converter.sources.bundle import BundleReader
from converter.cli import main
from converter.errors import ConversionError
from converter.sources.tarball import TarballReader
from converter.tfref.generate import make_tarball
from helpers import make_checkpoint

VARIANT = "b0"
OUT_NAME = "efficientnet-b0_aa.safetensors"


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck"), VARIANT)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tar(prefix: Path, dest: Path, order=("index", "data", "checkpoint"), folder="efficientnet-b0") -> Path:
    """A tarball of the checkpoint with its members in ``order`` (the official one has one order;
    the reader must not depend on it)."""
    files = {"index": Path(str(prefix) + ".index"),
             "data": next(prefix.parent.glob(prefix.name + ".data-*"))}
    with tarfile.open(dest, "w:gz", compresslevel=1) as tar:
        for what in order:
            if what == "checkpoint":
                text = b'model_checkpoint_path: "model.ckpt"\n'
                info = tarfile.TarInfo(f"{folder}/checkpoint")
                info.size = len(text)
                tar.addfile(info, io.BytesIO(text))
            else:
                tar.add(files[what], arcname=f"{folder}/model.ckpt{files[what].name[len(prefix.name):]}")
    return dest


def _tensors(path: Path):
    with safe_open(str(path), framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _convert(src, out: Path, *extra) -> int:
    return main(["--variant", VARIANT, "--flavor", "aa", "--checkpoint", str(src), "--output-dir", str(out),
                 "--quiet", *extra])


@pytest.mark.parametrize("order", [("index", "data", "checkpoint"), ("checkpoint", "data", "index")],
                         ids=["index-first", "data-first"])
def test_stream_equals_files_and_extracts_nothing(ck, tmp_path, cache, order):
    tarball = _tar(ck, tmp_path / "efficientnet-b0.tar.gz", order)
    assert _convert(ck, tmp_path / "from-files") == 0
    assert _convert(tarball, tmp_path / "from-tar") == 0
    a, meta_a = _tensors(tmp_path / "from-files" / OUT_NAME)
    b, meta_b = _tensors(tmp_path / "from-tar" / OUT_NAME)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert meta_b["source_sha256"] == hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert meta_b["source"] == str(tarball.resolve())
    # nothing was extracted: the cache holds no extraction folder
    assert not (cache / "extracted").exists() or not any((cache / "extracted").iterdir())


def test_reader_reads_in_archive_order_and_out_of_order(ck, tmp_path):
    tarball = make_tarball(str(ck), str(tmp_path / "t.tar.gz"), "efficientnet-b0")
    r, files = TarballReader(tarball), BundleReader(str(ck))
    assert r.names() == files.names()
    names = [n for n in r.names() if files.dtype(n).kind == "f"]
    order = r.read_order(names)
    offsets = [files._entry(n).offset for n in order]  # the data file's order
    assert offsets == sorted(offsets)
    for n in order[:50]:
        np.testing.assert_array_equal(r.read(n), files.read(n))
    for n in reversed(order[-5:]):  # behind the stream: restarts it, same bytes
        np.testing.assert_array_equal(r.read(n), files.read(n))
    assert r.shape(order[0]) == files.shape(order[0])


def test_tf_reader_extracts_for_the_run_only(ck, tmp_path, cache, monkeypatch):
    """TensorFlow reads files, so --reader tf extracts the tarball into the cache; the cache keeps one
    form, the tarball: the extracted copy is gone when the run ends (issue 25.9)."""
    pytest.importorskip("tensorflow")  # --reader tf: runs in the main environment, not in .venv-notf's pass
    from converter import sources

    seen = []
    real = sources.Extraction.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        seen.append((self.folder, Path(self.prefix + ".index").is_file()))
    monkeypatch.setattr(sources.Extraction, "__init__", spy)
    tarball = _tar(ck, tmp_path / "efficientnet-b0.tar.gz")
    assert _convert(tarball, tmp_path / "o", "--reader", "tf") == 0
    assert _convert(ck, tmp_path / "direct") == 0
    a, _ = _tensors(tmp_path / "o" / OUT_NAME)
    b, _ = _tensors(tmp_path / "direct" / OUT_NAME)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert len(seen) == 1 and seen[0][1] and cache / "extracted" in seen[0][0].parents
    assert not (cache / "extracted").exists() and tarball.is_file()


def _truncated(src: Path, dest: Path, keep: float) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest


def test_truncated_and_corrupt_tarballs_are_one_line(ck, tmp_path, cache, capsys):
    good = _tar(ck, tmp_path / "good.tar.gz")
    cases = {
        "truncated-in-data": _truncated(good, tmp_path / "t1.tar.gz", 0.6),
        "garbage-gzip": tmp_path / "t2.tar.gz",
    }
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)  # a hole in the deflate stream
    cases["garbage-gzip"].write_bytes(bytes(raw))
    for what, bad in cases.items():
        out = tmp_path / f"out-{what}"
        rc = _convert(bad, out)
        err = [l for l in capsys.readouterr().err.strip().splitlines() if not l.startswith("warning")]
        assert rc == 2 and len(err) == 1, (what, err)
        # the stream's own error, or the tensor checksum catching bytes a damaged stream decoded to
        assert str(bad) in err[0] and "download it again" in err[0], err[0]
        assert not out.exists() or not [p for p in out.iterdir()], what  # nothing half-written


def test_tarball_without_checkpoint_or_with_two(ck, tmp_path):
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ConversionError, match="no .index member"):
        TarballReader(empty)
    two = tmp_path / "two.tar.gz"
    data = next(ck.parent.glob(ck.name + ".data-*"))
    with tarfile.open(two, "w:gz", compresslevel=1) as tar:
        tar.add(data, arcname="a/model.ckpt.data-00000-of-00001")  # data first: the scan sees both
        tar.add(str(ck) + ".index", arcname="a/model.ckpt.index")
        tar.add(str(ck) + ".index", arcname="b/model.ckpt.index")
    with pytest.raises(ConversionError, match="holds 2 checkpoints"):
        TarballReader(two)


def test_missing_data_member(ck, tmp_path):
    only_index = tmp_path / "idx.tar.gz"
    with tarfile.open(only_index, "w:gz") as tar:
        tar.add(str(ck) + ".index", arcname="x/model.ckpt.index")
    r = TarballReader(only_index)
    name = r.names()[0]
    with pytest.raises(ConversionError, match="missing from the tarball"):
        r.read(name)


def test_source_resolved_once_by_kind(ck, tmp_path, cache):
    """sources.Source: a --checkpoint is classified once; a tarball is streamed unless TensorFlow needs
    files (then extracted); the sha256 is the tarball's, or the index + data shards' for a prefix."""
    import hashlib

    from converter import sources
    from converter.sources.bundle import BundleReader
    from converter.sources.tarball import TarballReader

    tarball = _tar(ck, tmp_path / "t.tar.gz")
    assert [sources.classify(p) for p in (tarball, ck.parent, ck, Path(str(ck) + ".index"))] == \
        ["tarball", "folder", "prefix", "prefix"]

    streamed = sources.Source.open(tarball)
    extracted = sources.Source.open(tarball, need_files=True)
    plain = sources.Source.open(ck)
    try:
        assert isinstance(streamed.reader, TarballReader) and streamed.prefix is None
        assert isinstance(extracted.reader, BundleReader) and Path(extracted.prefix + ".index").is_file()
        assert str(cache) in extracted.prefix  # extracted into the cache, not beside the tarball
        assert streamed.kind == extracted.kind == "tarball" and plain.kind == "prefix"
        assert streamed.origin == str(tarball.resolve())
        assert streamed.sha256.result() == extracted.sha256.result() == hashlib.sha256(tarball.read_bytes()).hexdigest()
        h = hashlib.sha256(Path(str(ck) + ".index").read_bytes())
        for shard in sorted(ck.parent.glob(ck.name + ".data-*")):
            h.update(shard.read_bytes())
        assert plain.sha256.result() == h.hexdigest() and plain.prefix == str(ck)
        assert sorted(streamed.reader.names()) == sorted(plain.reader.names())
    finally:
        for s in (streamed, extracted, plain):
            s.close()
    assert not Path(extracted.prefix + ".index").exists()  # closed: the extracted copy is gone


# --------------------------------------------------------------------------- downloads, pins, the cache


@pytest.fixture(scope="module")
def ck_tar(ck, tmp_path_factory):
    return _tar(ck, tmp_path_factory.mktemp("tar") / "efficientnet-b0.tar.gz")


@pytest.fixture
def mirror(ck_tar, tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 serving the b0 tarball at its bucket path below one root."""
    import shutil

    from helpers import BucketServer

    from converter.registry import find_checkpoint

    ckpt = find_checkpoint(VARIANT, "aa")
    bucket = tmp_path / "bucket"
    (bucket / ckpt.bucket_path).parent.mkdir(parents=True)
    served = Path(shutil.copy(ck_tar, bucket / ckpt.bucket_path))
    with BucketServer(bucket) as server:
        monkeypatch.setenv("EFFNET_BASE_URL", server.url)
        yield ckpt, served, server


def _download(out: Path, *extra) -> int:
    return main(["--variant", VARIANT, "--flavor", "aa", "--output-dir", str(out), *extra])


def _err_lines(capsys):
    return [l for l in capsys.readouterr().err.strip().splitlines() if l.strip()]


def test_wrong_pin_on_a_local_tarball_is_refused(ck, ck_tar, tmp_path, cache, capsys):
    """Issue 25.6: --sha256 pins a --checkpoint tarball as it pins a download."""
    tarball = ck_tar
    good = hashlib.sha256(tarball.read_bytes()).hexdigest()
    capsys.readouterr()
    assert _convert(tarball, tmp_path / "bad", "--sha256", "0" * 64) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "does not match the pinned sha256" in err[0] and good in err[0], err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    assert _convert(tarball, tmp_path / "good", "--sha256", good) == 0
    assert (tmp_path / "good" / OUT_NAME).is_file()
    assert _convert(ck, tmp_path / "prefix", "--sha256", good) == 2  # a prefix has no one file to pin
    err = _err_lines(capsys)
    assert len(err) == 1 and "--sha256 pins one file" in err[0], err


def test_damaged_cached_download_is_fetched_again(ck, mirror, tmp_path, cache, capsys):
    """Issue 25.7: a damaged tarball in the cache (matching its sidecar, as an earlier version kept a bad
    download) is set aside as NAME.corrupt and downloaded again in the same run, said in one line."""
    from converter import sources

    ckpt, served, server = mirror
    cached = cache / ckpt.bucket_path
    cached.parent.mkdir(parents=True)
    bad = served.read_bytes()[: served.stat().st_size * 6 // 10]
    cached.write_bytes(bad)
    sources._write_sidecar(cached, hashlib.sha256(bad).hexdigest())
    capsys.readouterr()
    assert _download(tmp_path / "out", "--quiet") == 0
    err = _err_lines(capsys)
    assert len(err) == 1 and "downloading it again" in err[0] and cached.name + ".corrupt" in err[0], err
    assert server.hits == ["/" + ckpt.bucket_path]
    assert cached.read_bytes() == served.read_bytes()
    assert cached.with_name(cached.name + ".corrupt").read_bytes() == bad
    assert _convert(ck, tmp_path / "direct") == 0
    a, meta = _tensors(tmp_path / "out" / OUT_NAME)
    b, _ = _tensors(tmp_path / "direct" / OUT_NAME)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert meta["source_sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()


def test_waiting_for_the_cache_lock_is_silent_with_quiet(ck, mirror, tmp_path, cache, capsys, monkeypatch):
    """Issue 29.8: --quiet keeps the "waiting for another process" line off stderr; without --quiet it
    shows. Another holder of the cache lock is played here; the conversion really waits for it."""
    import fcntl
    import threading

    from converter import sources

    ckpt, _, _ = mirror
    lock = Path(str(cache / ckpt.bucket_path) + ".lock")
    lock.parent.mkdir(parents=True)

    class Flock:  # fcntl as sources sees it: says when a blocking flock starts
        LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

        def __init__(self):
            self.blocking = threading.Event()

        def flock(self, fd, op):
            if not op & fcntl.LOCK_NB:
                self.blocking.set()
            return fcntl.flock(fd, op)

    for quiet in (True, False):
        shim = Flock()
        monkeypatch.setattr(sources, "fcntl", shim)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)  # the other process

        def release():
            shim.blocking.wait(120)
            os.close(fd)
        t = threading.Thread(target=release)
        t.start()
        capsys.readouterr()
        out = tmp_path / f"out-{quiet}"
        rc = _download(out, *(["--quiet"] if quiet else []))
        t.join()
        err = capsys.readouterr().err
        assert rc == 0 and shim.blocking.is_set() and (out / OUT_NAME).is_file()
        waited = [l for l in err.splitlines() if "waiting for another process" in l]
        assert waited == ([] if quiet else [f"waiting for another process using {lock}"]), err
        assert not lock.exists()  # the lock file goes when its last user is done (issue 25.9)
