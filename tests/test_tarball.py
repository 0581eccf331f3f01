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

from converter.bundle import BundleReader
from converter.cli import main
from converter.errors import ConversionError
from converter.tarball import TarballReader
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


def test_verify_and_tf_reader_still_extract(ck, tmp_path, cache):
    """TensorFlow reads files, so --reader tf extracts the tarball into the cache as before."""
    pytest.importorskip("tensorflow")
    tarball = _tar(ck, tmp_path / "efficientnet-b0.tar.gz")
    assert _convert(tarball, tmp_path / "o", "--reader", "tf") == 0
    assert any((cache / "extracted").iterdir())


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
    from converter.bundle import BundleReader
    from converter.tarball import TarballReader

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
