"""A TensorFlow-free reader of TF tensor-bundle checkpoints (``PREFIX.index`` + ``PREFIX.data-*``).

The format (tensorflow/core/util/tensor_bundle/tensor_bundle.{h,cc}):

- ``PREFIX.index`` is a LevelDB-format table (tensorflow/core/lib/io/table*.cc, same layout as
  leveldb table/format.{h,cc}, table/block_builder.cc): data blocks of prefix-compressed
  ``key -> value`` entries with restart points, a metaindex block, an index block, a 48-byte
  footer. Every block is followed by a 1-byte compression type and the masked crc32c of the
  block and that byte. Key ``""`` holds a ``BundleHeaderProto``; every other key is a tensor
  name whose value is a ``BundleEntryProto`` (tensorflow/core/protobuf/tensor_bundle.proto).
- ``PREFIX.data-SSSSS-of-NNNNN`` hold the raw little-endian tensor bytes; each entry gives
  shard, offset, size and the masked crc32c of those bytes.

:class:`BundleReader` checks everything it reads (every index block's checksum, the layout of
the table, every tensor's checksum) and turns any problem into a one-line
:class:`~converter.errors.ConversionError`. It reads tensors with positioned reads into fresh
numpy arrays (no memory map: a file that shrinks under a map kills the process with SIGBUS,
and mapped pages would count towards the process's memory).

crc32c: the C extension of the optional ``google-crc32c`` package when it is installed,
otherwise a vectorized numpy implementation (about 0.3-0.8 GB/s on one core for tensors of
1 MB and more, slower for small ones).
"""
from __future__ import annotations

import os
import struct
from typing import Dict, List, Tuple

import numpy as np

from ..errors import ConversionError

try:  # optional, exact
    import ml_dtypes as _ml_dtypes  # noqa: WPS433
except ImportError:  # pragma: no cover - depends on the install
    _ml_dtypes = None

try:  # optional, fast (SSE4.2 / ARMv8 crc32 instructions)
    import google_crc32c as _google_crc32c  # noqa: WPS433
    if getattr(_google_crc32c, "implementation", "") != "c":  # its pure-Python fallback is slow
        _google_crc32c = None
except ImportError:  # pragma: no cover - depends on the install
    _google_crc32c = None

__all__ = ["BundleReader", "BFLOAT16", "SUPPORTED_DTYPES", "crc32c", "crc32c_numpy", "data_filename",
           "mask_crc", "masked_crc32c"]

# --- constants --------------------------------------------------------------------------------

# leveldb table/format.h: Footer::kEncodedLength = 2 * BlockHandle::kMaxEncodedLength + 8
FOOTER_SIZE = 48
HANDLES_SIZE = 40  # 2 * BlockHandle::kMaxEncodedLength (2 varint64s of at most 10 bytes each)
# leveldb table/format.h: kTableMagicNumber (tensorflow/core/lib/io/format.h: the same value)
TABLE_MAGIC = 0xDB4775248B80FB57
# leveldb table/format.h: kBlockTrailerSize (1-byte type + 4-byte crc)
BLOCK_TRAILER_SIZE = 5
# leveldb include/leveldb/options.h: CompressionType kNoCompression = 0 (kSnappyCompression = 1)
NO_COMPRESSION = 0
COMPRESSION_NAMES = {1: "snappy", 2: "zstd"}  # leveldb include/leveldb/options.h
# leveldb util/crc32c.h (tensorflow/core/lib/hash/crc32c.h): kMaskDelta
CRC_MASK_DELTA = 0xA282EAD8
# tensorflow/core/util/tensor_bundle/tensor_bundle.cc: kHeaderEntryKey = ""
HEADER_KEY = b""
# tensorflow/core/util/tensor_bundle/tensor_bundle.cc: kTensorBundleMinProducer,
# kTensorBundleMinConsumer, kTensorBundleVersion (checked as framework/versions.cc CheckVersions)
BUNDLE_MIN_PRODUCER = 0
BUNDLE_VERSION = 1
# tensorflow/core/protobuf/tensor_bundle.proto: BundleHeaderProto.Endianness
LITTLE_ENDIAN, BIG_ENDIAN = 0, 1

# tensorflow/core/framework/types.proto: DataType (TensorFlow 2.21; for messages only)
DT_NAMES = {
    0: "DT_INVALID", 1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8", 5: "DT_INT16",
    6: "DT_INT8", 7: "DT_STRING", 8: "DT_COMPLEX64", 9: "DT_INT64", 10: "DT_BOOL", 11: "DT_QINT8",
    12: "DT_QUINT8", 13: "DT_QINT32", 14: "DT_BFLOAT16", 15: "DT_QINT16", 16: "DT_QUINT16",
    17: "DT_UINT16", 18: "DT_COMPLEX128", 19: "DT_HALF", 20: "DT_RESOURCE", 21: "DT_VARIANT",
    22: "DT_UINT32", 23: "DT_UINT64", 24: "DT_FLOAT8_E5M2", 25: "DT_FLOAT8_E4M3FN",
    26: "DT_FLOAT8_E4M3FNUZ", 27: "DT_FLOAT8_E4M3B11FNUZ", 28: "DT_FLOAT8_E5M2FNUZ", 29: "DT_INT4",
    30: "DT_UINT4", 31: "DT_INT2", 32: "DT_UINT2", 33: "DT_FLOAT4_E2M1FN",
}
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64, DT_BFLOAT16, DT_HALF = 1, 2, 3, 9, 14, 19
# the bfloat16 numpy dtype returned: ml_dtypes.bfloat16 (as TensorFlow returns) when ml_dtypes is
# importable; otherwise bfloat16 tensors are returned as float32 (exact: bfloat16 is the top half
# of a float32)
BFLOAT16 = np.dtype(_ml_dtypes.bfloat16) if _ml_dtypes is not None else np.dtype("<f4")
# DataType -> (numpy dtype returned, little-endian dtype of the stored bytes)
SUPPORTED_DTYPES = {
    DT_FLOAT: (np.dtype("float32"), np.dtype("<f4")),
    DT_DOUBLE: (np.dtype("float64"), np.dtype("<f8")),
    DT_INT32: (np.dtype("int32"), np.dtype("<i4")),
    DT_INT64: (np.dtype("int64"), np.dtype("<i8")),
    DT_HALF: (np.dtype("float16"), np.dtype("<f2")),
    DT_BFLOAT16: (BFLOAT16, BFLOAT16 if _ml_dtypes is not None else np.dtype("<u2")),
}
_SUPPORTED_TEXT = "float32, float64, float16, bfloat16, int32, int64"

# Protocol-buffer wire types (https://protobuf.dev/programming-guides/encoding/)
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _Corrupt(Exception):
    """A problem in the bytes of one file; the reader adds the file name."""


# --- crc32c -------------------------------------------------------------------------------------

# Castagnoli polynomial 0x1EDC6F41, bit-reflected (leveldb util/crc32c.cc, RFC 3720 B.4)
_CRC_POLY = 0x82F63B78
_SMALL = 4096  # bytes; below this a plain Python loop beats numpy's per-call overhead


def _crc_byte_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_CRC_POLY), t >> 1).astype(np.uint32)
    return t


_TABLE = _crc_byte_table()
_TABLE_LIST = _TABLE.tolist()
_BITS = np.uint32(1) << np.arange(32, dtype=np.uint32)


def _op_apply(op: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Apply a GF(2)-linear map of 32-bit values (given by the images of the 32 bits) to ``v``."""
    r = np.zeros_like(v)
    for k in range(32):
        r ^= np.where((v >> np.uint32(k)) & np.uint32(1), op[k], np.uint32(0)).astype(np.uint32)
    return r


# _POW2[i]: the map "feed 2**i zero bytes" on the raw crc register
_POW2: List[np.ndarray] = [(_TABLE[_BITS & 0xFF] ^ (_BITS >> 8)).astype(np.uint32)]
_T16: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}


def _pow2(i: int) -> np.ndarray:
    while len(_POW2) <= i:
        _POW2.append(_op_apply(_POW2[-1], _POW2[-1]))
    return _POW2[i]


def _zeros_op(n: int) -> np.ndarray:
    op, i = _BITS.copy(), 0
    while n:
        if n & 1:
            op = _op_apply(_pow2(i), op)
        n, i = n >> 1, i + 1
    return op


def _shift(s: int, n: int) -> int:
    """The raw register ``s`` after ``n`` zero bytes."""
    i = 0
    while n and s:
        if n & 1:
            cols, r, k, x = _pow2(i), 0, 0, s
            while x:
                if x & 1:
                    r ^= int(cols[k])
                x, k = x >> 1, k + 1
            s = r
        n, i = n >> 1, i + 1
    return s


def _tables16(nbytes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Lookup tables of "feed ``nbytes`` zero bytes" for the low and the high 16 bits."""
    if nbytes not in _T16:
        op = _zeros_op(nbytes)
        lo, hi = np.zeros(65536, np.uint32), np.zeros(65536, np.uint32)
        for k in range(16):
            lo[1 << k: 2 << k] = lo[: 1 << k] ^ op[k]
            hi[1 << k: 2 << k] = hi[: 1 << k] ^ op[k + 16]
        _T16[nbytes] = (lo, hi)
    return _T16[nbytes]


_LO4, _HI4 = (t.tolist() for t in _tables16(4))


def _update_small(s: int, buf: np.ndarray) -> int:
    m = buf.size // 4
    if m:
        lo, hi = _LO4, _HI4
        for w in buf[: 4 * m].view("<u4").tolist():
            s ^= w
            s = lo[s & 0xFFFF] ^ hi[s >> 16]
    for b in buf[4 * m:].tolist():
        s = _TABLE_LIST[(s ^ b) & 0xFF] ^ (s >> 8)
    return s


def _update(s: int, buf: np.ndarray) -> int:
    """The raw crc register after feeding the bytes ``buf`` (uint8, 1-d) to register ``s``.

    The bulk is split into W rows of L little-endian words; lane j accumulates its words with
    ``a = Z(a) ^ row[i][j]``, Z being "feed 4L zero bytes" (two 16-bit table lookups), which
    leaves exactly the raw crc of the L accumulated words, computed the same way (recursion).
    """
    n = buf.size
    if n < _SMALL:
        return _update_small(s, buf)
    m = n // 4
    lanes = 1 << 14  # rows of 64 KiB: the working set stays in L2
    while lanes > 16 and m < 4 * lanes:
        lanes >>= 1
    rows = m // lanes
    body = 4 * rows * lanes
    head = n - body
    if head:
        s = _update(s, buf[:head])
    words = buf[head:].view("<u4").reshape(rows, lanes)
    lo, hi = _tables16(4 * lanes)
    a = words[0].astype(np.uint32)
    i_lo, i_hi, tmp = np.empty(lanes, np.intp), np.empty(lanes, np.intp), np.empty_like(a)
    for i in range(1, rows):
        np.bitwise_and(a, 0xFFFF, out=i_lo, casting="unsafe")
        np.right_shift(a, 16, out=i_hi, casting="unsafe")
        np.take(lo, i_lo, out=a)
        np.take(hi, i_hi, out=tmp)
        a ^= tmp
        a ^= words[i]
    return _shift(s, body) ^ _update(0, a.view(np.uint8))


def _as_bytes_array(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def crc32c_numpy(data, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of a bytes-like object or array, continuing from ``crc``; numpy only."""
    return _update((crc ^ 0xFFFFFFFF) & 0xFFFFFFFF, _as_bytes_array(data)) ^ 0xFFFFFFFF


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C of a bytes-like object or array (google-crc32c's C code when installed)."""
    if _google_crc32c is None:
        return crc32c_numpy(data, crc)
    if isinstance(data, np.ndarray):  # google_crc32c takes read-only buffers only
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if data.flags.writeable:
            data = data.view()
            data.flags.writeable = False
    elif not isinstance(data, bytes):
        data = bytes(data)
    return _google_crc32c.extend(crc, data)


def mask_crc(crc: int) -> int:
    """leveldb util/crc32c.h Mask: rotate right by 15 bits and add kMaskDelta (mod 2**32)."""
    return (((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data) -> int:
    """The masked CRC-32C stored in tensor bundles and LevelDB block trailers."""
    return mask_crc(crc32c(data))


# --- protocol buffers ---------------------------------------------------------------------------

def _varint(buf: bytes, p: int, limit: int, bits: int = 64) -> Tuple[int, int]:
    """Decode an unsigned varint of at most ``bits`` bits at ``p``; returns (value, next p)."""
    result = shift = 0
    while True:
        if p >= limit:
            raise _Corrupt("truncated varint")
        b = buf[p]
        p += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise _Corrupt("varint longer than 10 bytes")
    if result >> bits:
        raise _Corrupt(f"varint {result} does not fit in {bits} bits")
    return result, p


def _encode_varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _signed(v: int, bits: int) -> int:
    """Protobuf int32/int64 from a varint: two's complement of the low ``bits`` bits."""
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def _proto_fields(buf: bytes, what: str) -> List[Tuple[int, int, object]]:
    """Decode one serialized message into ``[(field number, wire type, int or bytes)]``."""
    try:
        return _proto_fields_unchecked(buf, what)
    except _Corrupt as e:
        raise _Corrupt(str(e) if str(e).startswith(what) else f"{what}: {e}") from None


def _proto_fields_unchecked(buf: bytes, what: str) -> List[Tuple[int, int, object]]:
    out = []
    p, n = 0, len(buf)
    while p < n:
        tag, p = _varint(buf, p, n, 32)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise _Corrupt(f"{what}: field number 0")
        if wire == _VARINT:
            value, p = _varint(buf, p, n)
        elif wire == _I64 or wire == _I32:
            size = 8 if wire == _I64 else 4
            if p + size > n:
                raise _Corrupt(f"{what}: truncated fixed{size * 8} field {field}")
            value = int.from_bytes(buf[p:p + size], "little")
            p += size
        elif wire == _LEN:
            size, p = _varint(buf, p, n)
            if size > n - p:
                raise _Corrupt(f"{what}: field {field} runs past the end of the message")
            value = buf[p:p + size]
            p += size
        else:
            raise _Corrupt(f"{what}: unsupported wire type {wire} (field {field})")
        out.append((field, wire, value))
    return out


def _expect(what: str, field: int, wire: int, expected: int) -> None:
    if wire != expected:
        raise _Corrupt(f"{what}: field {field} has wire type {wire}, expected {expected}")


def _parse_version(buf: bytes) -> Tuple[int, int, List[int]]:
    """tensorflow/core/framework/versions.proto VersionDef: (producer, min_consumer, bad_consumers)."""
    producer = min_consumer = 0
    bad: List[int] = []
    for field, wire, value in _proto_fields(buf, "VersionDef"):
        if field in (1, 2):
            _expect("VersionDef", field, wire, _VARINT)
            if field == 1:
                producer = _signed(value, 32)
            else:
                min_consumer = _signed(value, 32)
        elif field == 3:  # repeated int32: packed or not
            if wire == _LEN:
                p = 0
                while p < len(value):
                    try:
                        v, p = _varint(value, p, len(value))
                    except _Corrupt as e:
                        raise _Corrupt(f"VersionDef: bad_consumers: {e}") from None
                    bad.append(_signed(v, 32))
            else:
                _expect("VersionDef", field, wire, _VARINT)
                bad.append(_signed(value, 32))
    return producer, min_consumer, bad


def _parse_header(buf: bytes) -> Tuple[int, int, bytes]:
    """BundleHeaderProto: (num_shards, endianness, serialized VersionDef)."""
    num_shards = endianness = 0
    version = b""
    for field, wire, value in _proto_fields(buf, "bundle header"):
        if field in (1, 2):
            _expect("bundle header", field, wire, _VARINT)
            if field == 1:
                num_shards = _signed(value, 32)
            else:
                endianness = _signed(value, 32)
        elif field == 3:
            _expect("bundle header", field, wire, _LEN)
            version += value  # repeated occurrences of a message field merge
    return num_shards, endianness, version


def _parse_shape(buf: bytes, what: str) -> Tuple[int, ...]:
    """TensorShapeProto -> tuple of dimension sizes (all known, >= 0)."""
    dims: List[int] = []
    for field, wire, value in _proto_fields(buf, what):
        if field == 2:
            _expect(what, field, wire, _LEN)
            size = 0
            for f2, w2, v2 in _proto_fields(value, what):
                if f2 == 1:
                    _expect(what, f2, w2, _VARINT)
                    size = _signed(v2, 64)
            if size < 0:
                raise _Corrupt(f"{what}: dimension of size {size}")
            dims.append(size)
        elif field == 3:
            _expect(what, field, wire, _VARINT)
            if value:
                raise _Corrupt(f"{what}: shape of unknown rank")
    return tuple(dims)


class _Entry:
    """One parsed BundleEntryProto."""

    __slots__ = ("dtype", "shape", "shard", "offset", "size", "crc", "slices")

    def __init__(self, buf: bytes, what: str):
        self.dtype = self.shard = self.offset = self.size = self.crc = self.slices = 0
        shape = b""
        for field, wire, value in _proto_fields(buf, what):
            if field in (1, 3, 4, 5):
                _expect(what, field, wire, _VARINT)
                if field == 1:
                    self.dtype = _signed(value, 32)
                elif field == 3:
                    self.shard = _signed(value, 32)
                elif field == 4:
                    self.offset = _signed(value, 64)
                else:
                    self.size = _signed(value, 64)
            elif field == 2:
                _expect(what, field, wire, _LEN)
                shape += value  # repeated occurrences of a message field merge
            elif field == 6:
                _expect(what, field, wire, _I32)
                self.crc = value
            elif field == 7:
                _expect(what, field, wire, _LEN)
                self.slices += 1
        self.shape = _parse_shape(shape, what)


# --- LevelDB table ------------------------------------------------------------------------------

# Prefix-compressed keys of one block may add up to at most this many times the block's size
# (tensor names sharing long scopes reach about 5x); more is a crafted or garbled block that
# would otherwise take memory quadratic in its size.
_KEY_EXPANSION = 32


def _parse_block(block: bytes, what: str) -> List[Tuple[bytes, bytes]]:
    """leveldb table/block.cc: the ``[(key, value)]`` of one block, with the restarts checked."""
    n = len(block)
    if n < 4:
        raise _Corrupt(f"{what} is {n} bytes, too short for a block")
    num_restarts = struct.unpack_from("<I", block, n - 4)[0]
    if num_restarts > (n - 4) // 4:
        raise _Corrupt(f"{what} claims {num_restarts} restart points, more than fit in it")
    limit = n - 4 - 4 * num_restarts
    restarts = struct.unpack_from(f"<{num_restarts}I", block, limit)
    entries: List[Tuple[bytes, bytes]] = []
    fresh = set()  # offsets of entries that share nothing with the previous key
    key = b""
    p = decoded = 0
    most = _KEY_EXPANSION * n + 65536  # prefix compression cannot honestly gain more
    while p < limit:
        start = p
        try:
            shared, p = _varint(block, p, limit, 32)
            unshared, p = _varint(block, p, limit, 32)
            value_size, p = _varint(block, p, limit, 32)
        except _Corrupt as e:
            raise _Corrupt(f"{what}: entry at byte {start}: {e}") from None
        if shared > len(key):
            raise _Corrupt(f"{what}: entry at byte {start} shares {shared} bytes of a {len(key)}-byte key")
        if unshared + value_size > limit - p:
            raise _Corrupt(f"{what}: entry at byte {start} runs past the end of the block")
        decoded += shared + unshared
        if decoded > most:
            raise _Corrupt(f"{what}: its keys expand to more than {most} bytes: garbled block")
        key = key[:shared] + block[p:p + unshared]
        p += unshared
        entries.append((key, block[p:p + value_size]))
        p += value_size
        if shared == 0:
            fresh.add(start)
    if entries:
        if not restarts or restarts[0] != 0 or any(r not in fresh for r in restarts) \
                or any(a >= b for a, b in zip(restarts, restarts[1:])):
            raise _Corrupt(f"{what}: restart points do not match its entries")
    elif any(restarts):
        raise _Corrupt(f"{what}: restart points in an empty block")
    return entries


class _Table:
    """The entries of a LevelDB table file written by TensorFlow's TableBuilder, fully checked.

    Besides every block's checksum this checks the layout TableBuilder writes: data blocks back
    to back from byte 0 in index order, then the metaindex block, the index block and the
    footer, keys strictly increasing and bounded by the index's separator keys, so that a
    table with shuffled, repeated or misplaced blocks cannot pass.
    """

    def __init__(self, data: bytes):
        self.data = data
        n = len(data)
        if n < FOOTER_SIZE:
            raise _Corrupt(f"{n} bytes, too short for a table footer ({FOOTER_SIZE} bytes): truncated")
        footer = n - FOOTER_SIZE
        magic = int.from_bytes(data[n - 8:], "little")
        if magic != TABLE_MAGIC:
            raise _Corrupt(f"bad magic number 0x{magic:016x} at the end (expected 0x{TABLE_MAGIC:016x}): "
                           "not a checkpoint index, or truncated")
        handles, p = [], footer
        try:
            for _ in range(4):
                v, p = _varint(data, p, footer + HANDLES_SIZE)
                handles.append(v)
        except _Corrupt as e:
            raise _Corrupt(f"garbled footer ({e})") from None
        canonical = b"".join(_encode_varint(v) for v in handles)
        if data[footer:footer + HANDLES_SIZE] != canonical.ljust(HANDLES_SIZE, b"\0"):
            raise _Corrupt("garbled footer (block handles not in canonical form)")
        meta_off, meta_size, index_off, index_size = handles
        if index_off + index_size + BLOCK_TRAILER_SIZE != footer:
            raise _Corrupt("the index block does not end where the footer starts: truncated or garbled")
        if meta_off + meta_size + BLOCK_TRAILER_SIZE != index_off:
            raise _Corrupt("the metaindex block does not end where the index block starts: garbled footer")
        _parse_block(self._block(meta_off, meta_size, "metaindex block"), "metaindex block")
        index = _parse_block(self._block(index_off, index_size, "index block"), "index block")
        self.entries: List[Tuple[bytes, bytes]] = []
        expected_off = 0
        for i, (separator, handle) in enumerate(index):
            try:
                off, q = _varint(handle, 0, len(handle))
                size, q = _varint(handle, q, len(handle))
            except _Corrupt:
                q = -1
            if q != len(handle):
                raise _Corrupt(f"index entry {i}: malformed block handle")
            if off != expected_off:
                raise _Corrupt(f"data block {i} is at byte {off}, expected {expected_off}: garbled index")
            expected_off = off + size + BLOCK_TRAILER_SIZE
            what = f"data block {i}"
            block = _parse_block(self._block(off, size, what), what)
            if not block:
                raise _Corrupt(f"{what} is empty")
            if self.entries and block[0][0] <= self.entries[-1][0]:
                raise _Corrupt(f"{what}: keys out of order (repeated or shuffled blocks)")
            if i and block[0][0] <= index[i - 1][0]:
                raise _Corrupt(f"{what}: first key is not past the previous block's separator")
            for (a, _), (b, _) in zip(block, block[1:]):
                if a >= b:
                    raise _Corrupt(f"{what}: keys out of order")
            if block[-1][0] > separator:
                raise _Corrupt(f"{what}: keys past its index separator")
            self.entries.extend(block)
        if expected_off != meta_off:
            raise _Corrupt(f"the data blocks end at byte {expected_off} but the metaindex block starts "
                           f"at byte {meta_off}: garbled index")

    def _block(self, off: int, size: int, what: str) -> bytes:
        """leveldb table/format.cc ReadBlock: the block's bytes, checksum and type checked."""
        end = off + size
        if end + BLOCK_TRAILER_SIZE > len(self.data) - FOOTER_SIZE:
            raise _Corrupt(f"{what} (bytes {off}..{end}) runs past the end of the blocks: truncated")
        block_type = self.data[end]
        stored = struct.unpack_from("<I", self.data, end + 1)[0]
        actual = mask_crc(crc32c(self.data[off:end + 1]))
        if stored != actual:
            raise _Corrupt(f"checksum mismatch in {what} (bytes {off}..{end}): corrupt")
        if block_type != NO_COMPRESSION:
            name = COMPRESSION_NAMES.get(block_type, f"type {block_type}")
            raise _Corrupt(f"{what} is compressed ({name}); only uncompressed tables are supported")
        return self.data[off:end]


# --- the reader ---------------------------------------------------------------------------------

def data_filename(prefix: str, shard: int, num_shards: int) -> str:
    """tensorflow/core/util/tensor_bundle/naming.cc DataFilename: PREFIX.data-%05d-of-%05d."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


class BundleReader:
    """Reads a TF tensor-bundle checkpoint without TensorFlow (the ``CheckpointReader`` interface).

    Opening reads and checks the whole index and checks that every entry lies inside its data
    file; ``read`` returns a fresh array after checking the tensor's crc32c. Tensors of other
    dtypes (strings, resources, ...) are listed by ``names``/``shape``, but ``dtype`` and
    ``read`` refuse them; partitioned (sliced) variables are refused on opening.
    """

    def __init__(self, prefix: str):
        self.prefix = str(prefix)
        self._files: Dict[int, object] = {}
        self._index_path = self.prefix + ".index"
        try:
            with open(self._index_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ConversionError(f"checkpoint index {self._index_path} not found "
                                  f"(pass the checkpoint prefix, e.g. DIR/model.ckpt)") from None
        except OSError as e:
            raise ConversionError(f"cannot read checkpoint index {self._index_path}: {e.strerror or e}") from None
        self._load_index(data)
        self._check_data_files()

    def _load_index(self, data: bytes) -> None:
        """Parse the index bytes into the tensor entries; any problem is one ConversionError."""
        try:
            self._entries, self._num_shards = self._parse(data)
        except _Corrupt as e:
            raise ConversionError(f"checkpoint index {self._index_path}: {e}") from None
        except (IndexError, struct.error, ValueError, OverflowError) as e:  # safety net
            raise ConversionError(f"checkpoint index {self._index_path}: corrupt ({type(e).__name__}: {e})") from None
        self._names = sorted(self._entries)

    # parsing

    def _parse(self, data: bytes) -> Tuple[Dict[str, _Entry], int]:
        entries = _Table(data).entries
        if not entries or entries[0][0] != HEADER_KEY:
            raise _Corrupt("no bundle header (the entry with the empty key)")
        num_shards, endianness, version = _parse_header(entries[0][1])
        if endianness == BIG_ENDIAN:
            raise _Corrupt("the tensors are stored big-endian; only little-endian checkpoints are supported")
        if endianness != LITTLE_ENDIAN:
            raise _Corrupt(f"unknown endianness {endianness} in the bundle header")
        if num_shards < 1:
            raise _Corrupt(f"the bundle header says {num_shards} data files")
        producer, min_consumer, bad = _parse_version(version)
        if producer < BUNDLE_MIN_PRODUCER or min_consumer > BUNDLE_VERSION or BUNDLE_VERSION in bad:
            raise _Corrupt(f"written by tensor-bundle version {producer} (needs a reader of version >= "
                           f"{min_consumer}); this reader is version {BUNDLE_VERSION}")
        parsed = []
        for key, value in entries[1:]:
            shown = key[:200].decode("utf-8", "backslashreplace")
            entry = _Entry(value, f"entry {shown!r}")
            if entry.slices:  # before the names: the slices' own keys are not UTF-8
                raise _Corrupt(f"{shown!r} is a partitioned (sliced) variable; partitioned variables are not supported")
            parsed.append((key, entry))
        out: Dict[str, _Entry] = {}
        for key, entry in parsed:
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                raise _Corrupt(f"tensor name {key[:60]!r} is not UTF-8") from None
            if not 0 <= entry.shard < num_shards:
                raise _Corrupt(f"{name!r} is in data file {entry.shard}, but there are {num_shards}")
            if entry.offset < 0 or entry.size < 0:
                raise _Corrupt(f"{name!r} has offset {entry.offset} and size {entry.size}")
            if entry.dtype in SUPPORTED_DTYPES:
                expected = SUPPORTED_DTYPES[entry.dtype][1].itemsize * _numel(entry.shape)
                if entry.size != expected:
                    raise _Corrupt(f"{name!r} is {list(entry.shape)} {DT_NAMES[entry.dtype]} "
                                   f"({expected} bytes) but its entry says {entry.size} bytes")
            out[name] = entry
        return out, num_shards

    def _check_data_files(self) -> None:
        ends: Dict[int, Tuple[int, str]] = {}
        for name, e in self._entries.items():
            if e.shard not in ends or e.offset + e.size > ends[e.shard][0]:
                ends[e.shard] = (e.offset + e.size, name)
        for shard, (end, name) in sorted(ends.items()):
            path = data_filename(self.prefix, shard, self._num_shards)
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                raise ConversionError(f"checkpoint data file {path} is missing "
                                      f"(the index {self._index_path} refers to it)") from None
            except OSError as e:
                raise ConversionError(f"cannot open checkpoint data file {path}: {e.strerror or e}") from None
            if not os.path.isfile(path):
                raise ConversionError(f"checkpoint data file {path} is not a regular file")
            if end > size:
                raise ConversionError(f"checkpoint data file {path} is {size} bytes but {name!r} ends at byte "
                                      f"{end}: truncated download? download it again")

    # the CheckpointReader interface

    def names(self) -> List[str]:
        """Every tensor name, sorted."""
        return list(self._names)

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConversionError(f"no tensor {name!r} in checkpoint {self.prefix}") from None

    def shape(self, name: str) -> Tuple[int, ...]:
        """Shape of one tensor."""
        return self._entry(name).shape

    def _supported(self, name: str) -> Tuple[_Entry, np.dtype, np.dtype]:
        e = self._entry(name)
        if e.dtype not in SUPPORTED_DTYPES:
            kind = DT_NAMES.get(e.dtype, f"DataType {e.dtype}")
            raise ConversionError(f"{name} in {self.prefix} has dtype {kind}; only {_SUPPORTED_TEXT} "
                                  f"tensors can be read")
        return (e,) + SUPPORTED_DTYPES[e.dtype]

    def dtype(self, name: str) -> np.dtype:
        """numpy dtype of one tensor (``BFLOAT16`` for bfloat16 ones)."""
        return self._supported(name)[1]

    def read(self, name: str) -> np.ndarray:
        """A fresh array holding one tensor, its crc32c checked."""
        e, dtype, stored = self._supported(name)
        path = data_filename(self.prefix, e.shard, self._num_shards)
        out = np.empty(_numel(e.shape), dtype=stored)
        raw = out.view(np.uint8)
        try:
            self._read_into(e.shard, path, e.offset, raw)
        except OSError as err:
            raise ConversionError(f"cannot read {name} from {path}: {err.strerror or err}") from None
        except EOFError:
            raise self._damaged(f"{path} ends inside {name} (bytes {e.offset}..{e.offset + e.size}): "
                                f"truncated data file?", "download it again") from None
        actual = mask_crc(crc32c(raw))
        if actual != e.crc:
            raise self._damaged(f"checksum mismatch for {name} in {path} (bytes {e.offset}..{e.offset + e.size}): "
                                f"corrupt data file", "download it again")
        if stored != dtype:  # bfloat16 without ml_dtypes: widen exactly to float32
            out = (out.astype(np.uint32) << np.uint32(16)).view(np.float32)
        elif not dtype.isnative:  # pragma: no cover - big-endian hosts
            out = out.astype(dtype.newbyteorder("="))
        return out.reshape(e.shape)

    def _damaged(self, what: str, advice: str) -> ConversionError:
        """The error of damaged tensor bytes (TarballReader: a cached download's is set aside)."""
        return ConversionError(f"{what}; {advice}")

    # files

    def _read_into(self, shard: int, path: str, offset: int, raw: np.ndarray) -> None:
        if raw.size == 0:
            return
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(path, "rb", buffering=0)
        view = memoryview(raw)
        done = 0
        while done < raw.size:
            if hasattr(os, "preadv"):
                got = os.preadv(f.fileno(), [view[done:]], offset + done)
            else:  # pragma: no cover - platforms without preadv
                f.seek(offset + done)
                got = f.readinto(view[done:])
            if not got:
                raise EOFError
            done += got

    def close(self) -> None:
        """Close the data files (reading again reopens them)."""
        files, self._files = self._files, {}
        for f in files.values():
            f.close()

    def __del__(self) -> None:
        if getattr(self, "_files", None):
            self.close()

    def __enter__(self) -> "BundleReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BundleReader({self.prefix!r}: {len(self._names)} tensors, {self._num_shards} data file(s))"


def _numel(shape: Tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
