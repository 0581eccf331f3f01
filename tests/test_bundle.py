"""converter.sources.bundle: the TensorFlow-free tensor-bundle reader, checked against TensorFlow's own.

Cross-checks use tf.train.load_checkpoint on checkpoints TensorFlow wrote (SaveV2, MergeV2Checkpoints;
only the L2 index is written here, L2's 1.9 GB of data being too much for a test).
Hand-made tables (``_table`` below, a minimal LevelDB table writer) reach the checks that a
checksum would otherwise hide: they carry valid checksums around wrong contents.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from converter.sources import bundle
from converter.families.efficientnet.arch import ARCHS
from converter.registry import get_arch
from converter.errors import ConversionError
from converter.tfref.generate import plan, write_checkpoint
from helpers import make_checkpoint

tf = pytest.importorskip("tensorflow")
ml_dtypes = pytest.importorskip("ml_dtypes")

REPO = Path(__file__).resolve().parents[1]
EMA = "/ExponentialMovingAverage"
DATA = ".data-00000-of-00001"
FUZZ = settings(deadline=5000, suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("bundle")


# --- helpers ------------------------------------------------------------------------------------

def assert_matches_tf(prefix, values=True):
    """names, dtypes, shapes (and every tensor's bytes) equal TensorFlow's reading."""
    ref = tf.train.load_checkpoint(str(prefix))
    shapes = ref.get_variable_to_shape_map()
    dtypes = ref.get_variable_to_dtype_map()
    r = bundle.BundleReader(str(prefix))
    assert r.names() == sorted(shapes)
    for name in r.names():
        assert r.shape(name) == tuple(shapes[name]), name
        assert r.dtype(name) == np.dtype(dtypes[name].as_numpy_dtype), name
        if values:
            want = np.asarray(ref.get_tensor(name))
            got = r.read(name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert got.tobytes() == want.tobytes(), name
            assert got.flags.c_contiguous and got.flags.writeable
    r.close()
    return len(shapes)


def _varint(v: int) -> bytes:
    return bundle._encode_varint(v & ((1 << 64) - 1))


def _pb(field: int, value) -> bytes:
    """One protobuf field: int -> varint, bytes -> length-delimited, ('f32', int) -> fixed32."""
    if isinstance(value, tuple):
        return _varint(field << 3 | 5) + struct.pack("<I", value[1])
    if isinstance(value, bytes):
        return _varint(field << 3 | 2) + _varint(len(value)) + value
    return _varint(field << 3) + _varint(value)


def entry_proto(dtype=1, shape=(), shard=0, offset=0, size=None, crc=0, slices=0, unknown_rank=False) -> bytes:
    """A BundleEntryProto (tensorflow/core/protobuf/tensor_bundle.proto)."""
    dims = b"".join(_pb(2, _pb(1, d) if d else b"") for d in shape)
    if unknown_rank:
        dims += _pb(3, 1)
    if size is None:
        size = 4 * int(np.prod(shape, dtype=np.int64))
    out = _pb(1, dtype) + _pb(2, dims)
    out += (_pb(3, shard) if shard else b"") + (_pb(4, offset) if offset else b"") + (_pb(5, size) if size else b"")
    out += _pb(6, ("f32", crc)) + b"".join(_pb(7, b"") for _ in range(slices))
    return out


def header_proto(num_shards=1, endianness=0, producer=1, min_consumer=0, bad=()) -> bytes:
    """A BundleHeaderProto as TensorFlow writes it (num_shards, endianness, version)."""
    version = _pb(1, producer) + (_pb(2, min_consumer) if min_consumer else b"")
    version += b"".join(_pb(3, b) for b in bad)
    return _pb(1, num_shards) + (_pb(2, endianness) if endianness else b"") + _pb(3, version)


def _encode_entry(last: bytes, key: bytes, value: bytes, restart: bool) -> bytes:
    shared = 0
    if not restart:
        while shared < min(len(last), len(key)) and last[shared] == key[shared]:
            shared += 1
    return _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value


def _block(entries, restart_interval=16) -> bytes:
    """leveldb table/block_builder.cc: prefix-compressed entries, restart array, restart count."""
    out, restarts, last = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        if i % restart_interval == 0:
            restarts.append(len(out))
        out += _encode_entry(last, key, value, i % restart_interval == 0)
        last = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def _table(entries, block_size=262144, block_type=0, index_edit=None) -> bytes:
    """A LevelDB table as tensorflow/core/lib/io/table_builder.cc writes it (no compression;
    a data block is closed once its size estimate reaches ``block_size``)."""
    out, index, current = bytearray(), [], []

    def emit(contents: bytes, kind: int = block_type) -> bytes:
        off = len(out)
        out.extend(contents + bytes([kind]) + struct.pack("<I", bundle.masked_crc32c(contents + bytes([kind]))))
        return _varint(off) + _varint(len(contents))

    def flush():
        if current:
            index.append((current[-1][0], emit(_block(current))))
            current.clear()

    estimate, last = 0, b""
    for key, value in entries:
        restart = len(current) % 16 == 0
        estimate += len(_encode_entry(last if current else b"", key, value, restart)) + 4 * restart
        current.append((key, value))
        last = key
        if estimate + 4 >= block_size:
            flush()
            estimate = 0
    flush()
    if index_edit is not None:
        index = index_edit(index)
    meta = emit(_block([]), 0)
    handle = emit(_block(index, 1), 0)
    out += (meta + handle).ljust(bundle.HANDLES_SIZE, b"\0") + struct.pack("<Q", bundle.TABLE_MAGIC)
    return bytes(out)


def table_entries(index_path):
    """[(key, value)] of an index file, through the reader's table parser."""
    return bundle._Table(Path(index_path).read_bytes()).entries


def copy_checkpoint(prefix, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    prefix = Path(prefix)
    for f in prefix.parent.iterdir():
        if f.name.startswith(prefix.name + "."):
            shutil.copy(f, dest / f.name)
    return dest / prefix.name


E = re.escape


def raises(match=None, **kw):
    return pytest.raises(ConversionError, match=match, **kw)


@pytest.fixture
def numpy_crc(monkeypatch):
    """Force the numpy crc32c (as without google-crc32c)."""
    monkeypatch.setattr(bundle, "_google_crc32c", None)


# --- crc32c -------------------------------------------------------------------------------------

def _crc_reference(data: bytes, crc: int = 0) -> int:
    """Bitwise CRC-32C, straight from the definition (RFC 3720 B.4)."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _crc_table_reference(data: bytes) -> int:
    t = bundle._TABLE_LIST
    crc = 0xFFFFFFFF
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_values():
    # RFC 3720 B.4 test vectors and the usual check value
    vectors = {bytes(32): 0x8A9136AA, b"\xff" * 32: 0x62A8AB43, bytes(range(32)): 0x46DD794E,
               bytes(range(31, -1, -1)): 0x113FDB5C, b"123456789": 0xE3069283, b"": 0}
    for data, want in vectors.items():
        assert bundle.crc32c_numpy(data) == want
        assert bundle.crc32c(data) == want
        assert _crc_reference(data) == want
    # leveldb util/crc32c_test.cc: Mask is not the identity, Unmask(Mask(x)) == x
    assert bundle.mask_crc(0) == bundle.CRC_MASK_DELTA
    assert bundle.masked_crc32c(b"foo") != bundle.crc32c(b"foo")


@given(st.binary(max_size=3000), st.integers(0, 2 ** 32 - 1), st.integers(0, 7))
@settings(deadline=None, max_examples=60, database=None)
def test_crc32c_numpy_matches_the_definition(data, start, skip):
    data = data[skip:]  # unaligned starts
    assert bundle.crc32c_numpy(data, start) == _crc_reference(data, start)
    assert bundle.crc32c_numpy(np.frombuffer(data, np.uint8)) == _crc_reference(data)


@pytest.mark.parametrize("n", [1023, 1024, 1025, 4096 * 16 + 3, 1 << 20, (1 << 20) * 3 + 7])
def test_crc32c_numpy_large_and_split(n):
    data = np.random.default_rng(n).bytes(n)
    want = _crc_table_reference(data)
    assert bundle.crc32c_numpy(data) == want
    assert bundle.crc32c_numpy(data[n // 3:], bundle.crc32c_numpy(data[:n // 3])) == want
    assert bundle.crc32c(data) == want


def test_crc32c_fast_package_agrees():
    if bundle._google_crc32c is None:
        pytest.skip("google-crc32c (C extension) not installed")
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 5000, 1 << 22):
        a = np.frombuffer(rng.bytes(n), np.uint8).copy()  # writeable array, as read() checks
        assert bundle.crc32c(a) == bundle.crc32c_numpy(a) == bundle.crc32c(a.tobytes())


# --- agreement with TensorFlow ------------------------------------------------------------------

def test_b0_full_with_slots_bit_for_bit(root):
    prefix = make_checkpoint(root, "b0")  # raw + EMA twins + RMSProp slots + global_step
    assert assert_matches_tf(prefix) == 1049
    r = bundle.BundleReader(str(prefix))
    assert r.dtype("global_step") == np.int64 and r.read("global_step").shape == ()


def test_b0_bit_for_bit_with_numpy_crc(root, numpy_crc):
    assert assert_matches_tf(make_checkpoint(root, "b0"))


def test_b3_full_bit_for_bit(root):
    assert assert_matches_tf(make_checkpoint(root, "b3"))


@pytest.mark.parametrize("variant", [v for v in ARCHS if v not in ("l2", "l2-475")])
def test_every_architecture_names_dtypes_shapes(variant, tmp_path):
    """Official layout of every variant (EMA twins + global_step, as written by SaveV2).

    The values are zeros (cheap to write); generate_checkpoint's names, shapes and dtypes are
    the same. The first and last tensors are read and compared too.
    """
    entries = [(f"{n}{EMA}", np.zeros(s, np.float32)) for n, s in plan(get_arch(variant))]
    entries.append(("global_step", np.array(218_949, np.int64)))
    prefix = tmp_path / "model.ckpt"
    write_checkpoint(str(prefix), entries)
    del entries
    assert assert_matches_tf(prefix, values=False) > 200
    r, ref = bundle.BundleReader(str(prefix)), tf.train.load_checkpoint(str(prefix))
    for name in (r.names()[0], r.names()[-1], "global_step"):
        assert r.read(name).tobytes() == np.asarray(ref.get_tensor(name)).tobytes()


def _write_index_only(prefix: Path, tensors):
    """An index (written here) for ``[(name, shape)]`` float32 tensors and a sparse data file."""
    entries, offset = [(b"", header_proto())], 0
    for name, shape in sorted(tensors):
        size = 4 * int(np.prod(shape, dtype=np.int64))
        entries.append((name.encode(), entry_proto(1, shape, offset=offset, size=size)))
        offset += size
    Path(str(prefix) + ".index").write_bytes(_table(entries))
    with open(str(prefix) + DATA, "wb") as f:
        f.truncate(offset)  # sparse: no disk used


def test_l2_index_names_dtypes_shapes(tmp_path):
    """L2 (1.9 GB of data) is not generated: its index is written here, over a sparse data
    file, and TensorFlow reads the same names, shapes and dtypes from it."""
    prefix = tmp_path / "model.ckpt"
    tensors = [(f"{n}{EMA}", s) for n, s in plan(get_arch("l2"))]
    _write_index_only(prefix, tensors)
    assert assert_matches_tf(prefix, values=False) == len(tensors)


def test_every_dtype_scalars_and_empty_tensors(tmp_path, numpy_crc):
    rng = np.random.default_rng(0)
    entries = [
        ("f32", rng.standard_normal((3, 5)).astype(np.float32)),
        ("f32_big", rng.standard_normal((70, 33)).astype(np.float32)),  # > the numpy crc's small path
        ("f16_odd", rng.standard_normal(7).astype(np.float16)),  # odd size: what follows is unaligned
        ("f64", rng.standard_normal((2, 2, 3))),
        ("bf16", rng.standard_normal((4, 9)).astype(ml_dtypes.bfloat16)),
        ("i32", rng.integers(-2 ** 31, 2 ** 31, 11, dtype=np.int32)),
        ("i64", rng.integers(-2 ** 63, 2 ** 63 - 1, 5, dtype=np.int64)),
        ("scalar_f32", np.array(np.float32(-1.5))),
        ("scalar_i64", np.array(7, np.int64)),
        ("scalar_bf16", np.array(3.25, ml_dtypes.bfloat16)),
        ("empty", np.zeros((0,), np.float32)),
        ("empty_3d", np.zeros((3, 0, 2), np.float64)),
        ("nan_inf", np.array([np.nan, np.inf, -np.inf, -0.0], np.float32)),
        ("ünïcode/näme", np.ones(2, np.float16)),
    ]
    prefix = tmp_path / "model.ckpt"
    write_checkpoint(str(prefix), entries)
    assert assert_matches_tf(prefix) == len(entries)
    r = bundle.BundleReader(str(prefix))
    assert r.dtype("bf16") == np.dtype(ml_dtypes.bfloat16) == bundle.BFLOAT16
    first = r.read("f32")
    first[...] = 0  # a fresh array each time: changing one changes nothing else
    assert r.read("f32").tobytes() == entries[0][1].tobytes()
    for name, value in entries:
        assert r.read(name).tobytes() == value.tobytes() and r.read(name).shape == value.shape


def test_bfloat16_without_ml_dtypes_is_exact_float32(tmp_path):
    """Without ml_dtypes, bfloat16 tensors come back as float32 holding the same values; the
    module imports neither TensorFlow nor ml_dtypes then."""
    values = np.array([1.0, -2.5, 3.1415, 1e-30, 3e38, np.inf, np.nan, -0.0], np.float32).astype(ml_dtypes.bfloat16)
    prefix = tmp_path / "model.ckpt"
    write_checkpoint(str(prefix), [("bf", values), ("f", np.ones(2, np.float32))])
    np.save(tmp_path / "want.npy", values.astype(np.float32))
    code = (
        "import sys; sys.modules['ml_dtypes'] = None; sys.modules['tensorflow'] = None\n"
        "import numpy as np\n"
        "from converter.sources.bundle import BundleReader\n"
        f"r = BundleReader({str(prefix)!r}); got = r.read('bf'); want = np.load({str(tmp_path / 'want.npy')!r})\n"
        "assert r.dtype('bf') == np.float32 == got.dtype, got.dtype\n"
        "assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()\n"
        "assert r.read('f').tolist() == [1.0, 1.0]\n"
        "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_two_shards(tmp_path):
    a = [("x", np.arange(6, dtype=np.float32).reshape(2, 3)), ("z", np.arange(3, dtype=np.int64))]
    b = [("w", np.array(3.5)), ("y", np.ones(1000, np.float16))]
    write_checkpoint(str(tmp_path / "a" / "part"), a)
    write_checkpoint(str(tmp_path / "b" / "part"), b)
    prefix = tmp_path / "m" / "model.ckpt"
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=[str(tmp_path / "a" / "part"), str(tmp_path / "b" / "part")],
                                  destination_prefix=str(prefix), delete_old_dirs=False)
    assert sorted(os.listdir(prefix.parent)) == ["model.ckpt.data-00000-of-00002",
                                                 "model.ckpt.data-00001-of-00002", "model.ckpt.index"]
    assert assert_matches_tf(prefix) == 4
    os.remove(str(prefix) + ".data-00001-of-00002")
    with raises(r"data file .*model\.ckpt\.data-00001-of-00002 is missing"):
        bundle.BundleReader(str(prefix))


def test_multi_block_index_written_by_tensorflow(many):
    prefix, index, _ = many
    assert len(_index_handles(index)) >= 2
    assert assert_matches_tf(prefix) == 2500


def test_reencoded_index_reads_the_same_in_tensorflow(root, tmp_path):
    """The test's table writer is faithful: TensorFlow reads its (many-block) re-encoding of the
    b0 index exactly as the original; so do we."""
    src = make_checkpoint(root, "b0")
    prefix = copy_checkpoint(src, tmp_path / "re")
    entries = table_entries(str(src) + ".index")
    Path(str(prefix) + ".index").write_bytes(_table(entries, block_size=700))
    assert len(_index_handles(Path(str(prefix) + ".index").read_bytes())) > 50
    assert assert_matches_tf(prefix) == 1049


# --- what is refused, and how -------------------------------------------------------------------

def test_unsupported_dtypes_listed_but_refused(tmp_path):
    prefix = tmp_path / "model.ckpt"
    write_checkpoint(str(prefix), [("s", np.array([b"ab", b"c"])), ("b", np.array([True, False])),
                                   ("u8", np.arange(3, dtype=np.uint8)), ("c", np.ones(2, np.complex64)),
                                   ("ok", np.ones(3, np.float32))])
    r = bundle.BundleReader(str(prefix))
    assert r.names() == ["b", "c", "ok", "s", "u8"] and r.shape("s") == (2,)
    for name, kind in [("s", "DT_STRING"), ("b", "DT_BOOL"), ("u8", "DT_UINT8"), ("c", "DT_COMPLEX64")]:
        with raises(f"{name} in .* has dtype {kind}; only float32"):
            r.dtype(name)
        with raises(f"dtype {kind}"):
            r.read(name)
    assert r.read("ok").tolist() == [1, 1, 1]
    with raises("no tensor 'nope' in checkpoint"):
        r.read("nope")
    with raises("no tensor"):
        r.shape("nope")


def test_partitioned_variable_refused(tmp_path):
    prefix = str(tmp_path / "model.ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["part", "whole"], shape_and_slices=["4 0,2", ""],
                      tensors=[np.ones(2, np.float32), np.ones(3, np.float32)])
    assert "part" in tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    with raises(r"model\.ckpt\.index: 'part' is a partitioned \(sliced\) variable"):
        bundle.BundleReader(prefix)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small checkpoint: (prefix, {name: value}), 20 tensors of mixed dtypes and sizes."""
    rng = np.random.default_rng(7)
    values = {}
    for i in range(20):
        dtype = [np.float32, np.float16, np.float64, np.int32, np.int64][i % 5]
        shape = [(), (0,), (3,), (17, 5), (300,)][i % 5 if i % 3 else (i // 3) % 5]
        values[f"layer_{i:02d}/w"] = (rng.standard_normal(shape) * 100).astype(dtype)
    prefix = tmp_path_factory.mktemp("small") / "model.ckpt"
    write_checkpoint(str(prefix), sorted(values.items()))
    return prefix, values


def _craft(tmp_path: Path, entries, data=b"", **table_kw) -> str:
    """A checkpoint with a hand-made index over ``data``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    prefix = tmp_path / "model.ckpt"
    Path(str(prefix) + ".index").write_bytes(_table(entries, **table_kw))
    Path(str(prefix) + DATA).write_bytes(data)
    return str(prefix)


def _value(arr):
    return arr.tobytes(), bundle.masked_crc32c(arr.tobytes())


@pytest.mark.parametrize("header, match", [
    (header_proto(endianness=1), "stored big-endian; only little-endian"),
    (header_proto(endianness=5), "unknown endianness 5"),
    (header_proto(num_shards=0), "says 0 data files"),
    (header_proto(num_shards=-3), "says -3 data files"),
    (header_proto(min_consumer=2), "needs a reader of version >= 2"),
    (header_proto(bad=(1,)), "this reader is version 1"),
    (header_proto(producer=-1), "tensor-bundle version -1"),
    (b"\x0b", "unsupported wire type 3"),
    (b"\x08", "truncated varint"),
    (b"\x1a\x05\x08", "runs past the end of the message"),
    (b"\x12\x01\x00", "field 2 has wire type 2, expected 0"),
    (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
])
def test_bad_header(tmp_path, header, match):
    data, crc = _value(np.ones(2, np.float32))
    prefix = _craft(tmp_path, [(b"", header), (b"x", entry_proto(1, (2,), crc=crc))], data)
    with raises(match) as e:
        bundle.BundleReader(prefix)
    assert str(e.value).startswith(f"checkpoint index {prefix}.index: ") and "\n" not in str(e.value)


def test_crafted_reference_reads(tmp_path):
    """The crafted index of the next tests, unharmed, reads as intended (by TensorFlow too)."""
    data, crc = _value(np.arange(3, dtype=np.float32))
    prefix = _craft(tmp_path, [(b"", header_proto()), (b"x", entry_proto(1, (3,), crc=crc))], data)
    assert bundle.BundleReader(prefix).read("x").tolist() == [0, 1, 2]
    assert tf.train.load_checkpoint(prefix).get_tensor("x").tolist() == [0, 1, 2]


@pytest.mark.parametrize("entry, match", [
    (entry_proto(1, (4,), size=12), r"'x' is \[4\] DT_FLOAT \(16 bytes\) but its entry says 12 bytes"),
    (entry_proto(1, (3,), shard=1), "'x' is in data file 1, but there are 1"),
    (entry_proto(1, (3,), shard=-1), "in data file -1"),
    (entry_proto(1, (3,), offset=-4), "has offset -4"),
    (entry_proto(1, (-3,), size=12), "dimension of size -3"),
    (entry_proto(1, (3,), unknown_rank=True), "shape of unknown rank"),
    (entry_proto(1, (3,), slices=1), "partitioned"),
    (entry_proto(1, (3,)) + b"\x0f", "unsupported wire type 7"),
    (entry_proto(1, (3,)) + b"\x30\x80", "truncated varint"),
    (entry_proto(1, (3,)) + b"\x35\x00", "truncated fixed32"),
    (entry_proto(1, (3,)) + b"\x31\x00", "truncated fixed64"),
    (entry_proto(1, (3,)) + b"\x2d\x00\x00\x00\x00", "field 5 has wire type 5, expected 0"),
    (entry_proto(1, (3,)) + b"\x00", "field number 0"),
    (entry_proto(1, (2 ** 40, 2 ** 40)), "but its entry says"),
])
def test_bad_entry(tmp_path, entry, match):
    data, _ = _value(np.arange(3, dtype=np.float32))
    prefix = _craft(tmp_path, [(b"", header_proto()), (b"x", entry)], data)
    with raises(match) as e:
        bundle.BundleReader(prefix)
    assert "\n" not in str(e.value)


def test_unknown_fields_are_skipped_and_crc_is_checked(tmp_path):
    data, crc = _value(np.arange(3, dtype=np.float32))
    extra = _pb(99, 5) + _pb(100, b"junk") + _varint(101 << 3 | 1) + bytes(8)
    prefix = _craft(tmp_path, [(b"", header_proto() + extra), (b"x", entry_proto(1, (3,), crc=crc) + extra),
                               (b"y", entry_proto(1, (3,), crc=crc ^ 1))], data)
    r = bundle.BundleReader(prefix)
    assert r.read("x").tolist() == [0, 1, 2]
    with raises(rf"checksum mismatch for y in {E(prefix + DATA)} \(bytes 0\.\.12\)"):
        r.read("y")


@pytest.mark.parametrize("what, kw, match", [
    ("compressed data", dict(block_type=1), r"data block 0 is compressed \(snappy\)"),
    ("other compression", dict(block_type=7), r"compressed \(type 7\)"),
    ("no header", dict(entries=[(b"x", b"")]), "no bundle header"),
    ("empty table", dict(entries=[]), "no bundle header"),
    ("non-UTF-8 name", dict(entries=[(b"", header_proto()), (b"\xff\xfe", b"")]), "is not UTF-8"),
    ("repeated key", dict(entries=[(b"", header_proto()), (b"x", b""), (b"x", b"")]), "keys out of order"),
    ("unsorted keys", dict(entries=[(b"", header_proto()), (b"y", b""), (b"x", b"")]), "keys out of order"),
    ("index names block 0 twice", dict(index_edit=lambda ix: ix + [(b"zz", ix[0][1])]),
     "data block 1 is at byte 0, expected"),
])
def test_bad_table(tmp_path, what, kw, match):
    kw = dict(kw)
    kw.setdefault("entries", [(b"", header_proto())])
    prefix = _craft(tmp_path, kw.pop("entries"), b"", **kw)
    with raises(match):
        bundle.BundleReader(prefix)


def test_separators_must_bound_the_blocks(tmp_path):
    entries = [(b"", header_proto())] + [(f"t{i:03d}".encode(), entry_proto(1, (0,))) for i in range(40)]

    def low_separator(index):
        return [(b"t000", index[0][1])] + index[1:]

    def swapped(index):
        return [index[1], index[0]] + index[2:]

    assert bundle.BundleReader(_craft(tmp_path / "ok", entries, block_size=200)).names()[-1] == "t039"
    with raises("keys past its index separator"):
        bundle.BundleReader(_craft(tmp_path / "a", entries, block_size=200, index_edit=low_separator))
    with raises("garbled index"):  # handles out of file order
        bundle.BundleReader(_craft(tmp_path / "b", entries, block_size=200, index_edit=swapped))


def test_keys_that_expand_quadratically_refused(tmp_path):
    """A (checksum-valid) block whose keys each extend the previous one by a byte would decode
    to gigabytes: refused after a bounded amount of work."""
    header = header_proto()
    block = b"\0\0" + _varint(len(header)) + header  # then "a", "aa", ...: share all, add "a"
    block += b"".join(_varint(i) + b"\x01\x00a" for i in range(30000)) + struct.pack("<II", 0, 1)
    trailer = b"\0" + struct.pack("<I", bundle.masked_crc32c(block + b"\0"))
    prefix = tmp_path / "model.ckpt"
    Path(str(prefix) + ".index").write_bytes(_assemble([(b"a" * 30000, block + trailer)]))
    with raises("data block 0: its keys expand to more than"):
        bundle.BundleReader(str(prefix))


def test_missing_and_odd_files(tmp_path, small):
    prefix, _ = small
    with raises(r"checkpoint index .*nope\.index not found \(pass the checkpoint prefix"):
        bundle.BundleReader(str(tmp_path / "nope"))
    (tmp_path / "dir.index").mkdir()
    with raises("cannot read checkpoint index"):
        bundle.BundleReader(str(tmp_path / "dir"))
    p = copy_checkpoint(prefix, tmp_path / "c")
    os.remove(str(p) + DATA)
    with raises(rf"data file {E(str(p) + DATA)} is missing \(the index {E(str(p))}\.index refers to it\)"):
        bundle.BundleReader(str(p))
    os.mkdir(str(p) + DATA)
    with raises("is not a regular file"):
        bundle.BundleReader(str(p))


def test_data_file_truncated_after_opening(tmp_path, small):
    prefix, values = small
    p = copy_checkpoint(prefix, tmp_path / "c")
    r = bundle.BundleReader(str(p))
    last = max(values, key=lambda n: r._entries[n].offset + r._entries[n].size)
    r.read(last)
    with open(str(p) + DATA, "r+b") as f:
        f.truncate(r._entries[last].offset + 1)
    with raises(rf"{E(DATA)} ends inside {last} \(bytes \d+\.\.\d+\): truncated data file"):
        r.read(last)
    r.close()


# --- fuzzing --------------------------------------------------------------------------------------

def _many_names_checkpoint(tmp_path: Path) -> Path:
    """2500 scalars with long, random names: TensorFlow writes a 2-block index."""
    rnd = random.Random(3)
    names = sorted({"".join(rnd.choice("abcdefghijklmnopqrstuvwxyz/_0123456789") for _ in range(150))
                    for _ in range(2500)})
    prefix = tmp_path / "many" / "model.ckpt"
    write_checkpoint(str(prefix), [(n, np.array(i, np.float32)) for i, n in enumerate(names)])
    return prefix


def _index_handles(data: bytes):
    """(offset, size) of the data blocks, from the index block."""
    _, _, off, size = _footer_handles(data)
    index = bundle._parse_block(data[off:off + size], "index")
    out = []
    for _, h in index:
        off, q = bundle._varint(h, 0, len(h))
        size, _ = bundle._varint(h, q, len(h))
        out.append((off, size))
    return out


def _expect_all(prefix, values):
    r = bundle.BundleReader(str(prefix))
    assert r.names() == sorted(values)
    for name, value in values.items():
        got = r.read(name)
        assert got.dtype == value.dtype and got.shape == value.shape and got.tobytes() == value.tobytes()
    r.close()


@pytest.fixture(scope="module")
def small_index(small):
    prefix, _ = small
    return Path(str(prefix) + ".index").read_bytes()


@given(cut=st.integers(min_value=0))
@settings(FUZZ, max_examples=60)
def test_fuzz_truncated_index_always_refused(small, small_index, tmp_path_factory, cut):
    prefix, _ = small
    dest = copy_checkpoint(prefix, tmp_path_factory.mktemp("cut"))
    Path(str(dest) + ".index").write_bytes(small_index[:cut % len(small_index)])
    with raises(rf"checkpoint index {E(str(dest))}\.index: "):
        bundle.BundleReader(str(dest))


@given(flips=st.lists(st.integers(min_value=0), min_size=1, max_size=3))
@settings(FUZZ, max_examples=150)
def test_fuzz_index_bit_flips_always_refused(small, small_index, tmp_path_factory, flips):
    """Every byte of the index is covered by a block checksum (which catches any 1..3 flipped
    bits) or by the footer checks (canonical handles, exact layout, magic)."""
    prefix, _ = small
    data = bytearray(small_index)
    bits = {f % (8 * len(data)) for f in flips}
    for b in bits:
        data[b // 8] ^= 1 << (b % 8)
    dest = copy_checkpoint(prefix, tmp_path_factory.mktemp("flip"))
    Path(str(dest) + ".index").write_bytes(bytes(data))
    with raises(rf"checkpoint index {E(str(dest))}\.index: "):
        bundle.BundleReader(str(dest))


@given(start=st.integers(min_value=0), garbage=st.binary(min_size=1, max_size=64))
@settings(FUZZ, max_examples=100)
def test_fuzz_index_garbage_refused(small, small_index, tmp_path_factory, start, garbage):
    """Overwritten bytes (anywhere, including the whole footer) are refused."""
    prefix, _ = small
    data = bytearray(small_index)
    start %= len(data)
    end = min(len(data), start + len(garbage))
    assume(data[start:end] != garbage[:end - start])
    data[start:end] = garbage[:end - start]
    dest = copy_checkpoint(prefix, tmp_path_factory.mktemp("garbage"))
    Path(str(dest) + ".index").write_bytes(bytes(data))
    with raises(rf"checkpoint index {E(str(dest))}\.index: "):
        bundle.BundleReader(str(dest))


@given(footer=st.binary(min_size=bundle.FOOTER_SIZE, max_size=bundle.FOOTER_SIZE))
@settings(FUZZ, max_examples=60)
def test_fuzz_garbage_footer_refused(small, small_index, tmp_path_factory, footer):
    prefix, _ = small
    assume(footer != small_index[-bundle.FOOTER_SIZE:])
    dest = copy_checkpoint(prefix, tmp_path_factory.mktemp("footer"))
    Path(str(dest) + ".index").write_bytes(small_index[:-bundle.FOOTER_SIZE] + footer)
    with raises(rf"checkpoint index {E(str(dest))}\.index: "):
        bundle.BundleReader(str(dest))


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """The TensorFlow-written 2500-name checkpoint, its index bytes, and the separators and
    blocks (with trailers) of a re-encoding of that index into about 100 blocks."""
    prefix = _many_names_checkpoint(tmp_path_factory.mktemp("many"))
    index = Path(str(prefix) + ".index").read_bytes()
    small_blocks = _table(bundle._Table(index).entries, block_size=4096)
    pieces = list(zip(_index_separators(small_blocks), _blocks(small_blocks)))
    return prefix, index, pieces


def _footer_handles(data: bytes):
    footer = data[-bundle.FOOTER_SIZE:]
    handles, p = [], 0
    for _ in range(4):
        v, p = bundle._varint(footer, p, len(footer))
        handles.append(v)
    return handles


def _index_separators(data: bytes):
    _, _, off, size = _footer_handles(data)
    return [k for k, _ in bundle._parse_block(data[off:off + size], "index")]


def _blocks(data: bytes):
    return [data[off:off + size + bundle.BLOCK_TRAILER_SIZE] for off, size in _index_handles(data)]


def _assemble(blocks) -> bytes:
    """A table of ready-made data blocks ``[(separator, block bytes with trailer)]``: the index
    and footer are rebuilt with correct handles and checksums."""
    out, index = bytearray(), []
    for separator, block in blocks:
        index.append((separator, _varint(len(out)) + _varint(len(block) - bundle.BLOCK_TRAILER_SIZE)))
        out += block

    def emit(contents):
        off = len(out)
        out.extend(contents + b"\0" + struct.pack("<I", bundle.masked_crc32c(contents + b"\0")))
        return _varint(off) + _varint(len(contents))

    meta = emit(_block([]))
    handle = emit(_block(index, 1))
    out += (meta + handle).ljust(bundle.HANDLES_SIZE, b"\0") + struct.pack("<Q", bundle.TABLE_MAGIC)
    return bytes(out)


def test_assembled_blocks_in_order_read_fine(many, tmp_path):
    """The shuffling test's assembly, blocks in their order, is a valid index for TensorFlow too."""
    prefix, _, pieces = many
    assert len(pieces) >= 40
    dest = copy_checkpoint(prefix, tmp_path / "c")
    Path(str(dest) + ".index").write_bytes(_assemble(pieces))
    assert assert_matches_tf(dest, values=False) == 2500


@given(order=st.lists(st.integers(0, 199), min_size=1, max_size=60))
@settings(FUZZ, max_examples=50)
def test_fuzz_shuffled_or_repeated_blocks_refused(many, tmp_path_factory, order):
    """Data blocks (valid checksums, consistent handles) taken in another order, some repeated
    (those not named follow in their order): refused unless the order is unchanged."""
    prefix, _, pieces = many
    order = [i % len(pieces) for i in order]
    order += [i for i in range(len(pieces)) if i not in order]
    assume(order != list(range(len(pieces))))
    dest = copy_checkpoint(prefix, tmp_path_factory.mktemp("shuffle"))
    Path(str(dest) + ".index").write_bytes(_assemble([pieces[i] for i in order]))
    with raises(rf"checkpoint index {E(str(dest))}\.index: data block \d+: (keys out of order|first key)"):
        bundle.BundleReader(str(dest))


@given(flips=st.lists(st.integers(min_value=0), min_size=1, max_size=2),
       block=st.integers(0, 1))
@settings(FUZZ, max_examples=40)
def test_fuzz_multi_block_index_flips_refused(many, tmp_path_factory, flips, block):
    """Flips inside either block of the TensorFlow-written two-block index."""
    prefix, index, _ = many
    off, size = _index_handles(index)[block]
    data = bytearray(index)
    for f in flips:
        b = f % (8 * size)
        data[off + b // 8] ^= 1 << (b % 8)
    assume(bytes(data) != index)
    dest = copy_checkpoint(prefix, tmp_path_factory.mktemp("mflip"))
    Path(str(dest) + ".index").write_bytes(bytes(data))
    with raises(rf"checksum mismatch in data block {block}"):
        bundle.BundleReader(str(dest))


@given(mutations=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=6),
       which=st.integers(0, 2))
@settings(FUZZ, max_examples=150)
def test_fuzz_garbled_blocks_with_valid_checksums(small, small_index, tmp_path_factory, mutations, which):
    """Garbage inside a block whose checksum is then fixed (what a checksum cannot catch): the
    block and protobuf parsers must refuse it cleanly or read what it says; never crash, and
    any tensor read passes its own checksum."""
    prefix, values = small
    entries = bundle._Table(small_index).entries
    table = bytearray(_table(entries))
    handles = _footer_handles(bytes(table))
    off, size = [(0, _index_handles(bytes(table))[0][1]), (handles[0], handles[1]), (handles[2], handles[3])][which]
    for pos, byte in mutations:
        table[off + pos % size] = byte
    table[off + size + 1:off + size + 5] = struct.pack("<I", bundle.masked_crc32c(bytes(table[off:off + size + 1])))
    dest = copy_checkpoint(prefix, tmp_path_factory.mktemp("garbled"))
    Path(str(dest) + ".index").write_bytes(bytes(table))
    try:
        r = bundle.BundleReader(str(dest))
    except ConversionError as e:  # the index, or where it says a tensor lies
        assert str(e).startswith((f"checkpoint index {dest}.index: ", f"checkpoint data file {dest}{DATA} is "))
        assert "\n" not in str(e)
        return
    for name in r.names():
        try:
            got = r.read(name)
        except ConversionError:
            continue
        assert got.shape == r.shape(name) and got.dtype == r.dtype(name)
        if name in values and got.tobytes() == values[name].tobytes():
            continue
        e = r._entries[name]  # anything else read is exactly the bytes its entry's checksum covers
        raw = Path(str(dest) + DATA).read_bytes()[e.offset:e.offset + e.size]
        assert got.tobytes() == raw and bundle.masked_crc32c(raw) == e.crc
    r.close()


def _encode_fields(fields) -> bytes:
    out = b""
    for field, wire, number, blob in fields:
        out += _varint(field << 3 | wire)
        if wire == 0:
            out += _varint(number)
        elif wire == 1:
            out += struct.pack("<Q", number)
        elif wire == 5:
            out += struct.pack("<I", number & 0xFFFFFFFF)
        else:
            out += _varint(len(blob)) + blob
    return out


_FIELDS = st.lists(st.tuples(st.integers(1, 8), st.sampled_from([0, 1, 2, 5]),
                             st.one_of(st.integers(0, 40), st.integers(0, 2 ** 64 - 1)),
                             st.one_of(st.binary(max_size=12), st.builds(entry_proto, st.integers(0, 30),
                                                                         st.lists(st.integers(0, 5), max_size=3)))),
                   max_size=8)


_PROTO_DATA = np.arange(3, dtype=np.float32).tobytes()


def _consistent_entry(dtype: int, offset: int, n: int, dims: int) -> bytes:
    """An entry for ``n`` elements at ``offset`` of _PROTO_DATA with the right checksum."""
    size = n * {1: 4, 2: 8, 3: 4, 9: 8, 14: 2, 19: 2}[dtype]
    shape = (n,) if dims == 1 else (1, n) if dims == 2 else ()
    crc = bundle.masked_crc32c(_PROTO_DATA[offset:offset + size])
    return entry_proto(dtype, shape, offset=offset, size=size, crc=crc)


@given(header=st.one_of(st.none(), st.none(), st.binary(max_size=30), _FIELDS.map(_encode_fields)),
       entry=st.one_of(st.binary(max_size=60), _FIELDS.map(_encode_fields),
                       st.builds(_consistent_entry, st.sampled_from([1, 2, 3, 9, 14, 19]), st.integers(0, 8),
                                 st.integers(0, 2), st.integers(0, 2)),
                       st.builds(entry_proto, st.integers(0, 30), st.lists(st.integers(0, 4), max_size=3),
                                 st.integers(0, 1), st.integers(-2, 12), st.integers(0, 16))))
@settings(FUZZ, max_examples=200)
def test_fuzz_arbitrary_protos(tmp_path_factory, header, entry):
    """Any header and entry bytes (with valid checksums around them): a one-line ConversionError
    or a tensor that passed its own checksum."""
    data = _PROTO_DATA
    prefix = _craft(tmp_path_factory.mktemp("proto"), [(b"", header_proto() if header is None else header),
                                                        (b"x", entry)], data)
    try:
        r = bundle.BundleReader(prefix)
        got = r.read("x")
    except ConversionError as e:
        assert str(e).startswith((f"checkpoint index {prefix}.index: ", f"checkpoint data file {prefix}.data-",
                                  "x in ", f"checksum mismatch for x in {prefix}{DATA} "))
        assert "\n" not in str(e)
        event("refused")
        return
    event("read")
    e = r._entries["x"]
    assert got.tobytes() == data[e.offset:e.offset + e.size] and bundle.masked_crc32c(got.tobytes()) == e.crc
    assert got.shape == e.shape and got.dtype == r.dtype("x")
    if header is None and entry.startswith(b"\x08"):  # TensorFlow reads the same
        want = np.asarray(tf.train.load_checkpoint(prefix).get_tensor("x"))
        assert want.dtype == got.dtype and want.shape == got.shape and want.tobytes() == got.tobytes()


@given(flips=st.lists(st.integers(min_value=0), min_size=1, max_size=4))
@settings(FUZZ, max_examples=80)
def test_fuzz_data_bit_flips(small, tmp_path_factory, flips):
    """A flipped bit fails exactly the tensors whose bytes hold it; every other tensor reads
    correctly (TensorFlow writes tensors back to back: every data byte belongs to a tensor)."""
    prefix, values = small
    dest = copy_checkpoint(prefix, tmp_path_factory.mktemp("dflip"))
    path = Path(str(dest) + DATA)
    data = bytearray(path.read_bytes())
    bits = {f % (8 * len(data)) for f in flips}
    for b in bits:
        data[b // 8] ^= 1 << (b % 8)
    path.write_bytes(bytes(data))
    r = bundle.BundleReader(str(dest))
    covered = 0
    for name, value in values.items():
        e = r._entries[name]
        covered += e.size
        hit = any(e.offset <= b // 8 < e.offset + e.size for b in bits)
        if hit:
            with raises(rf"checksum mismatch for {name} in {E(str(dest) + DATA)}"):
                r.read(name)
        else:
            assert r.read(name).tobytes() == value.tobytes()
    assert covered == len(data)
    r.close()


@given(cut=st.integers(min_value=0))
@settings(FUZZ, max_examples=40)
def test_fuzz_truncated_data_file(small, tmp_path_factory, cut):
    """Refused on opening, naming the data file, iff some tensor ends past the cut; otherwise
    everything reads correctly."""
    prefix, values = small
    dest = copy_checkpoint(prefix, tmp_path_factory.mktemp("dcut"))
    path = Path(str(dest) + DATA)
    size = path.stat().st_size
    cut %= size + 1
    with open(path, "r+b") as f:
        f.truncate(cut)
    if cut == size:
        _expect_all(dest, values)
        return
    with raises(rf"data file {E(str(path))} is {cut} bytes but '.*' ends at byte {size}: truncated"):
        bundle.BundleReader(str(dest))
