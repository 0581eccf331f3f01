"""The official EfficientNet eval preprocessing without TensorFlow (numpy + simplejpeg + Pillow).

``mode="official"`` reproduces tensorflow/tpu efficientnet ``preprocessing.py`` (TF1-era eval
branch, the one behind the published accuracies): centre crop of ``int(res / (res + 32) *
min(h, w))`` px, JPEG decoded with libjpeg-turbo's fast integer DCT and fancy upsampling (what
``tf.image.decode_jpeg`` does by default), ``tf.compat.v1.image.resize_bicubic`` (legacy kernel,
re-implemented here bit for bit), then the mean/std normalization on the 0-255 scale.

TensorFlow decodes only the crop window (``tf.image.decode_and_crop_jpeg``); here the whole
image is decoded, then cropped. libjpeg-turbo's cropped decode upsamples the chroma of the
window's side columns as if they were image edges, so in JPEGs with 2x horizontal chroma
subsampling (most photos) the crop's first and/or last column come out differently: up to 0.024
levels on average per image after the resize on small odd-sided portraits, the narrower the crop
the more. Those columns are redone here as libjpeg-turbo does (:func:`_crop_edges_as_tf`), from
the raw chroma samples read back from two more decodes; only pixels whose samples cannot be told
apart because a channel clips at 0 or 255 may still differ (measured: at most 0.0011 levels on
average per image, most images exact; tests/test_preprocess.py). Grayscale and 4:4:4 JPEGs need
nothing. Everything else equals TensorFlow's ops bit for bit.

``mode="fixed-crop"``: the same, with the Nov 2021 crop rule (``CROP_FRACTION = 0.875``).
``mode="pil"``: plain Pillow (accurate-DCT decode, Pillow's antialiased bicubic), for comparison
only: 1-7 levels from the official input on average, depending on the photo and resolution.

EXIF orientation is ignored, as TensorFlow's decoders ignore it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from typing import Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .checkpoint import CROP_PADDING  # tensorflow/tpu efficientnet preprocessing.py (pre-Nov 2021)
from .errors import ConversionError, first_line
# tensorflow/tpu efficientnet preprocessing.py (Nov 2021 on): CROP_FRACTION = 0.875
CROP_FRACTION = 0.875
# tensorflow/core/kernels/image/resize_bicubic_op.cc: kTableSize = (1 << 10), and the legacy
# (half_pixel_centers=False) path's InitCoeffsTable(-0.75f)
BICUBIC_TABLE_SIZE = 1 << 10
BICUBIC_A_LEGACY = -0.75

MODES = ("official", "fixed-crop", "pil")
CROP_RULES = ("padding", "fixed")

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- decoding


def _read(src: Source) -> Tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), "<bytes>"
    try:
        with open(src, "rb") as fh:
            return fh.read(), os.fspath(src)
    except OSError as e:
        raise ConversionError(f"cannot read image {src}: {e.strerror or e}") from None


class JpegHeader(NamedTuple):
    """What the markers before the first scan say: components and size from the SOF marker (None
    when there is none), whether an Adobe APP14 marker was seen (and its colour transform byte),
    whether the frame is progressive, each component's (id, h, v) sampling factors."""

    components: Optional[int]
    adobe: bool
    progressive: bool = False
    height: int = 0
    width: int = 0
    sampling: Tuple[Tuple[int, int, int], ...] = ()
    adobe_transform: Optional[int] = None


# ITU T.81 table B.1: SOF0-3, 5-7, 9-11, 13-15; progressive: SOF2, 6, 10, 14
_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_PROGRESSIVE_SOF = frozenset((0xC2, 0xC6, 0xCA, 0xCE))
JPEG_EOI = b"\xff\xd9"


def _jpeg_markers(data: bytes) -> JpegHeader:
    """The :class:`JpegHeader` of a JPEG stream."""
    pos, n = 2, len(data)
    components, adobe, progressive, height, width = None, False, False, 0, 0
    sampling: Tuple[Tuple[int, int, int], ...] = ()
    transform = None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xEE and length - 2 >= 12 and body[:5] == b"Adobe":
            # libjpeg jdmarker.c examine_app14: saw_Adobe_marker needs APP14_DATA_LEN = 12 bytes
            adobe = True
            transform = body[11]
        elif marker in _SOF_MARKERS:
            if len(body) >= 6:  # P, Y (height), X (width), Nf
                height, width = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
                components = body[5]
                specs = body[6:6 + 3 * components]  # Ci, Hi << 4 | Vi, Tqi
                sampling = tuple((specs[i], specs[i + 1] >> 4, specs[i + 1] & 15) for i in range(0, len(specs) - 2, 3))
            progressive = marker in _PROGRESSIVE_SOF
        elif marker == 0xDA:  # start of scan: the header ends here
            break
        pos += 2 + length
    return JpegHeader(components, adobe, progressive, height, width, sampling, transform)


# ----------------------------------------------------------------------------- size limit

# Our own limit on decoded pixels per image (a guard against decompression bombs: a small file that
# decodes to gigabytes). TensorFlow's decoders have none; Pillow's own (MAX_IMAGE_PIXELS, an error
# above twice its 89.5 MP) is not used. 0 lifts it: --max-image-pixels, or this environment variable.
DEFAULT_MAX_PIXELS = 250_000_000  # 250 MP: 750 MB decoded as uint8 RGB, about 2.3 GB as the float32 crop
MAX_PIXELS_ENV = "EFFNET_MAX_IMAGE_PIXELS"


def max_pixels_limit(max_pixels: Optional[int] = None) -> int:
    """The limit in force: ``max_pixels`` when given, else $EFFNET_MAX_IMAGE_PIXELS, else the default (0: none)."""
    if max_pixels is None:
        env = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not env:
            return DEFAULT_MAX_PIXELS
        try:
            max_pixels = int(env)
        except ValueError:
            raise ConversionError(f"{MAX_PIXELS_ENV}={env!r} is not a whole number of pixels (0: no limit)") from None
    if max_pixels < 0:
        raise ConversionError(f"the image size limit must be 0 (none) or more pixels, got {max_pixels}")
    return int(max_pixels)


def _check_size(name: str, height: int, width: int, max_pixels: Optional[int]) -> None:
    limit = max_pixels_limit(max_pixels)
    if limit and height * width > limit:
        raise ConversionError(
            f"{name}: {width}x{height} px ({height * width / 1e6:.1f} megapixels) is over convert-effnet's limit of "
            f"{limit / 1e6:g} megapixels per image (a guard against decompression bombs); raise it with "
            f"--max-image-pixels N or {MAX_PIXELS_ENV}=N (0: no limit)")


@contextlib.contextmanager
def _pillow_unlimited():
    """Pillow's own decompression-bomb limit off (ours applies), restored afterwards."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


# ----------------------------------------------------------------------------- JPEG


def _simplejpeg(data: bytes, header: JpegHeader) -> np.ndarray:
    import simplejpeg

    if header.components == 4:
        # tensorflow/core/lib/jpeg/jpeg_mem.cc: CMYK/YCCK are decoded to CMYK, then
        # r = k * c / 255 (Adobe marker: inverted CMYK) or (255 - k) * (255 - c) / 255
        cmyk = simplejpeg.decode_jpeg(data, colorspace="CMYK", fastdct=True, fastupsample=False, strict=True)
        c = cmyk.astype(np.int32)
        k = c[..., 3:4]
        rgb = (k * c[..., :3]) // 255 if header.adobe else ((255 - k) * (255 - c[..., :3])) // 255
        return rgb.astype(np.uint8)
    # simplejpeg (libjpeg-turbo, fast integer DCT, fancy upsampling) equals
    # tf.image.decode_jpeg(channels=3) with its defaults bit for bit; grayscale comes out as
    # three equal channels, as libjpeg's JCS_GRAYSCALE -> JCS_RGB conversion does in TF
    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=False, strict=True)


def _missing_eoi(data: bytes, name: str, header: JpegHeader) -> Optional[np.ndarray]:
    """The image of a JPEG whose entropy data is complete but whose end-of-image marker is missing
    (warned in one line), as TensorFlow's decode_and_crop_jpeg (the official eval) decodes it; None
    when more than the marker is missing.

    TensorFlow reads the crop window's rows and never needs the marker; it refuses such a file only
    when the window reaches its last row of blocks (here the whole image is decoded: a few more files
    pass) and when it is progressive (all scans are read first: refused here too).
    """
    if data.endswith(JPEG_EOI):
        return None
    try:
        image = _simplejpeg(data + JPEG_EOI, header)
    except (ValueError, RuntimeError):  # more than the marker is missing: truncated
        return None
    if header.progressive:
        raise ConversionError(f"cannot decode JPEG {name}: a progressive JPEG without its end-of-image marker "
                              "(truncated?); TensorFlow's decoder refuses it too; re-encode or re-download it")
    log.warning("warning: %s: JPEG without its end-of-image marker (cut at the very end?); decoded anyway, "
                "as TensorFlow's decode_and_crop_jpeg in the official eval does", name)
    return image


def _decode_jpeg(data: bytes, name: str, max_pixels: Optional[int] = None) -> np.ndarray:
    header = _jpeg_markers(data)
    _check_size(name, header.height, header.width, max_pixels)
    try:
        return _simplejpeg(data, header)
    except (ValueError, RuntimeError) as e:  # strict=True: libjpeg warnings (truncation...) too
        msg = first_line(e, "invalid JPEG data")
        image = _missing_eoi(data, name, header) if "Premature end of JPEG file" in msg else None
        if image is None:
            raise ConversionError(f"cannot decode JPEG {name}: {msg}") from None
        return image


# ----------------------------------------------------------------------------- the cropped decode's edges

# libjpeg-turbo jdcolor.c build_ycc_rgb_table: SCALEBITS = 16, FIX(x) = (INT32)(x * (1 << 16) + 0.5)
_SCALEBITS = 16
_HALF = 1 << (_SCALEBITS - 1)


def _fix(x: float) -> int:
    return int(x * (1 << _SCALEBITS) + 0.5)


_X = np.arange(256, dtype=np.int64) - 128
_CRR = (_fix(1.40200) * _X + _HALF) >> _SCALEBITS  # Cr => R
_CBB = (_fix(1.77200) * _X + _HALF) >> _SCALEBITS  # Cb => B
_CRG = -_fix(0.71414) * _X  # Cr => G (before the shift)
_CBG = -_fix(0.34414) * _X + _HALF  # Cb => G (before the shift)


def _ycc_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """jdcolor.c ycc_rgb_convert: uint8 RGB of Y and (upsampled) Cb, Cr samples (int arrays)."""
    return np.clip(np.stack([y + _CRR[cr], y + ((_CBG[cb] + _CRG[cr]) >> _SCALEBITS), y + _CBB[cb]], -1),
                   0, 255).astype(np.uint8)


def _edge_columns(header: JpegHeader, width: int, ow: int, size: int) -> Tuple[Tuple[int, int], ...]:
    """Image columns where libjpeg-turbo's cropped decode (``jpeg_crop_scanline``, what TF's
    decode_and_crop_jpeg uses) upsamples chroma differently from a whole-image decode, each with its
    rounding bias: the window is widened left to an iMCU boundary and its side columns are then
    upsampled as image edges (jdsample.c h2v1/h2v2_fancy_upsample: first column ``c`` (h2v1) or
    ``(4 * s + 8) >> 4`` (h2v2), last ``c`` or ``(4 * s + 7) >> 4``). Only 2x horizontal chroma
    subsampling has such columns; none elsewhere."""
    if header.components != 3 or len(header.sampling) != 3:
        return ()
    (c0, h0, v0), (c1, h1, v1), (c2, h2, v2) = header.sampling
    rgb = (header.adobe and header.adobe_transform == 0) or (not header.adobe and (c0, c1, c2) == (82, 71, 66))
    if rgb or (h0, h1, h2) != (2, 1, 1) or v0 not in (1, 2) or (v1, v2) != (1, 1):
        return ()
    left = (ow // (8 * h0)) * (8 * h0)  # jdapistd.c jpeg_crop_scanline: align = DCT size * max h samp
    cols = []
    if left == ow and ow > 0:  # the window's first column is the crop's and not the image's first
        cols.append((ow, 8))
    if (ow + size - left) % 2 == 0 and ow + size < width:  # an odd output column ends the window
        cols.append((ow + size - 1, 7))
    return tuple(cols)


_INV_CRR = np.full(1024, -1, np.int64)
_INV_CRR[_CRR + 512] = np.arange(256)  # _CRR and _CBB are one-to-one (steps of 1.402, 1.772)
_INV_CBB = np.full(1024, -1, np.int64)
_INV_CBB[_CBB + 512] = np.arange(256)


def _chroma_samples(y: np.ndarray, rgb: np.ndarray) -> list:
    """Per chroma sample, the (Cb, Cr) pairs that give, with each pixel's Y, the pixels that share it
    (y: [n, P], rgb: [n, P, 3] ints of its P pixels): arrays (cb, cr); one pair when a pixel's R and
    one's B are unclipped (R - Y = Crr[Cr], B - Y = Cbb[Cb]), else every pair that fits (clipping)."""
    r_free = (rgb[..., 0] > 0) & (rgb[..., 0] < 255)
    b_free = (rgb[..., 2] > 0) & (rgb[..., 2] < 255)
    cr_all = _INV_CRR[np.clip(rgb[..., 0] - y + 512, 0, 1023)]
    cb_all = _INV_CBB[np.clip(rgb[..., 2] - y + 512, 0, 1023)]
    n = np.arange(len(y))
    cr1, cb1 = cr_all[n, r_free.argmax(1)], cb_all[n, b_free.argmax(1)]  # the first unclipped pixel's
    found = r_free.any(1) & b_free.any(1) & (cr1 >= 0) & (cb1 >= 0)
    out = []
    for i in range(len(y)):
        if found[i]:
            out.append((cb1[i:i + 1], cr1[i:i + 1]))
            continue
        ok = np.ones((256, 256), bool)  # [Cb, Cr]
        for p in range(y.shape[1]):
            yy = y[i, p]
            ok &= (np.clip(yy + _CBB, 0, 255) == rgb[i, p, 2])[:, None]
            ok &= (np.clip(yy + _CRR, 0, 255) == rgb[i, p, 0])[None, :]
            ok &= np.clip(yy + ((_CBG[:, None] + _CRG[None, :]) >> _SCALEBITS), 0, 255) == rgb[i, p, 1]
        out.append(np.nonzero(ok))
    return out


def _crop_edges_as_tf(data: bytes, header: JpegHeader, image: np.ndarray, oh: int, ow: int, size: int) -> np.ndarray:
    """The crop ``image[oh:oh+size, ow:ow+size]`` of a whole-image decode, with its side columns as
    TensorFlow's ``decode_and_crop_jpeg`` decodes them (see :func:`_edge_columns`).

    The raw chroma samples of those columns come from two more decodes (Y alone, and RGB without
    fancy upsampling, where a sample's pixels share it unfiltered): each (Cb, Cr) is the pair that
    gives those pixels. Where clipping at 0 or 255 leaves pairs that give different results, the
    whole-image decode's pixel stays (rare: saturated colours at the crop's edge).
    """
    import simplejpeg

    crop = image[oh:oh + size, ow:ow + size]
    cols = _edge_columns(header, image.shape[1], ow, size)
    if not cols:
        return crop
    crop = crop.copy()
    vs = header.sampling[0][2]
    height, width = image.shape[:2]
    # strict=False: the file has decoded already (a missing end-of-image marker is warned about there)
    luma = simplejpeg.decode_jpeg(data, colorspace="GRAY", fastdct=True, fastupsample=True, strict=False)
    luma = luma[..., 0].astype(np.int64)
    flat = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True, strict=False)
    flat = flat.astype(np.int64)
    rows = np.arange(oh, oh + size)
    near = rows // vs
    # h2v2: the nearer chroma row 3/4, the other 1/4 (above for even rows, below for odd; edges repeated)
    far = (np.where(rows % 2 == 0, np.maximum(near - 1, 0), np.minimum(near + 1, (height - 1) // vs))
           if vs == 2 else near)
    need = np.unique(np.concatenate([near, far]))
    at = np.searchsorted(need, near), np.searchsorted(need, far)
    for x, bias in cols:
        k = x // 2
        px = [(dy, dx) for dy in range(vs) for dx in (2 * k, 2 * k + 1) if dx < width]
        ys = np.stack([np.minimum(need * vs + dy, height - 1) for dy, _ in px], 1)
        xs = np.array([dx for _, dx in px])[None, :]
        samples = _chroma_samples(luma[ys, xs], flat[ys, xs])

        def upsampled(a, b, pairs=False):  # the window edge: h2v2 (thiscolsum * 4 + bias) >> 4, h2v1 the sample
            if vs == 1:
                return a
            return ((4 * (3 * a[:, None] + b[None, :]) + bias) >> 4).ravel() if pairs else (4 * (3 * a + b) + bias) >> 4

        one = np.array([len(cb) == 1 for cb, _ in samples])
        cb1 = np.array([cb[0] if len(cb) == 1 else 0 for cb, _ in samples])
        cr1 = np.array([cr[0] if len(cr) == 1 else 0 for _, cr in samples])
        sure = one[at[0]] & one[at[1]]  # most rows: one pair each, all at once
        crop[sure, x - ow] = _ycc_rgb(luma[rows[sure], x], upsampled(cb1[at[0][sure]], cb1[at[1][sure]]),
                                      upsampled(cr1[at[0][sure]], cr1[at[1][sure]]))
        for r in np.nonzero(~sure)[0]:
            (cb_a, cr_a), (cb_b, cr_b) = samples[at[0][r]], samples[at[1][r]]
            if not len(cb_a) or not len(cb_b):
                continue
            cb, cr = upsampled(cb_a, cb_b, True), upsampled(cr_a, cr_b, True)
            out = np.unique(_ycc_rgb(np.full(cb.shape, luma[rows[r], x]), cb, cr), axis=0)
            if len(out) == 1:
                crop[r, x - ow] = out[0]
    return crop


# ----------------------------------------------------------------------------- other formats (Pillow)


def _pil_rgb(im) -> np.ndarray:
    """An open Pillow image (first frame) -> uint8 HxWx3, 16-bit samples reduced as TensorFlow reduces them."""
    if im.mode.startswith("I;16"):
        # 16-bit grayscale: keep the high byte, as TF's decode_png / decode_image (dtype uint8) do:
        # tensorflow/core/lib/png/png_io.cc CommonInitDecode, "If we only want 8 bits, but are given
        # 16, strip off the LS 8 bits": png_set_strip_16. Pillow's convert("RGB") clips at 255 instead.
        # (16-bit RGB(A) and gray+alpha PNGs already open as 8-bit "RGB(A)" in Pillow, high byte kept.)
        g = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if im.mode in ("I", "F"):
        kind = "integer" if im.mode == "I" else "float"
        raise ConversionError(f"32-bit {kind} images are not supported; save it as 8-bit RGB")
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _decode_pillow(data: bytes, name: str, max_pixels: Optional[int] = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with _pillow_unlimited(), Image.open(io.BytesIO(data)) as im:
            _check_size(name, im.height, im.width, max_pixels)
            im.seek(0)  # animations: the first frame, like tf.io.decode_image(expand_animations=False)
            return _pil_rgb(im)
    except ConversionError as e:
        msg = str(e)
        raise ConversionError(msg if msg.startswith(f"{name}:") else f"cannot decode {name}: {msg}") from None
    except UnidentifiedImageError:
        raise ConversionError(f"cannot decode {name}: not an image format Pillow knows") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        msg = first_line(e)
        raise ConversionError(f"cannot decode {name}: {msg}") from None


def decode(src: Source, max_pixels: Optional[int] = None) -> np.ndarray:
    """An image file (path or encoded bytes) -> uint8 HxWx3 RGB, decoded as TensorFlow decodes it.

    JPEG: libjpeg-turbo via simplejpeg, fast integer DCT + fancy upsampling (TF's defaults);
    grayscale as 3 equal channels; CMYK/YCCK converted with TF's own formula. Other formats
    (PNG, BMP, GIF, WebP, ...): Pillow, converted to RGB (alpha dropped, not composited, as
    TF's channels=3 does); 16-bit PNGs keep the high byte of each sample (TF's decode_png with
    dtype=uint8). A JPEG missing only its end-of-image marker is decoded, with a warning, as the
    official eval's decode_and_crop_jpeg takes it. Images over ``max_pixels`` (:func:`max_pixels_limit`)
    are refused.
    """
    data, name = _read(src)
    return _decode_named(data, name, max_pixels)


# ----------------------------------------------------------------------------- crop


def crop_window(height: int, width: int, resolution: int, crop_pct: Optional[float] = None,
                crop: str = "padding") -> Tuple[int, int, int]:
    """(offset_h, offset_w, size) of the official centre crop.

    ``crop="padding"`` (pre-Nov 2021, the published accuracies): fraction
    ``res / (res + 32)``, or ``crop_pct`` when given. ``crop="fixed"`` (Nov 2021 on):
    ``res / (res + round(res * (1 / 0.875 - 1)))``. As preprocessing.py computes it:
    ``tf.cast(frac * tf.cast(min(h, w), tf.float32), tf.int32)`` (float32 product, truncated),
    offsets ``((h - size) + 1) // 2`` and ``((w - size) + 1) // 2``.
    """
    height, width, resolution = int(height), int(width), int(resolution)
    if height <= 0 or width <= 0 or resolution <= 0:
        raise ConversionError(f"crop_window: sizes must be positive, got {height}x{width} at {resolution}")
    if crop == "padding":
        frac = resolution / (resolution + CROP_PADDING) if crop_pct is None else float(crop_pct)
    elif crop == "fixed":
        if crop_pct is not None:
            raise ConversionError("crop_window: crop='fixed' has its own fraction; do not pass crop_pct")
        crop_padding = round(resolution * (1.0 / CROP_FRACTION - 1.0))
        frac = resolution / (resolution + crop_padding)
    else:
        raise ConversionError(f"crop_window: unknown crop rule {crop!r}; use one of {', '.join(CROP_RULES)}")
    if not 0.0 < frac <= 1.0:
        raise ConversionError(f"crop_window: crop fraction must be in (0, 1], got {frac}")
    size = int(np.float32(frac) * np.float32(min(height, width)))
    if size < 1:
        raise ConversionError(f"image of {height}x{width} px is too small to crop at fraction {frac:.4f}")
    return ((height - size) + 1) // 2, ((width - size) + 1) // 2, size


# ----------------------------------------------------------------------------- legacy bicubic


def _coeffs_table() -> np.ndarray:
    """resize_bicubic_op.cc InitCoeffsTable(-0.75): float32 [(kTableSize + 1), 2], computed in double."""
    a = BICUBIC_A_LEGACY
    x = (np.arange(BICUBIC_TABLE_SIZE + 1, dtype=np.float64) / BICUBIC_TABLE_SIZE).astype(np.float32)
    xd = x.astype(np.float64)
    t = np.empty((BICUBIC_TABLE_SIZE + 1, 2), np.float32)
    t[:, 0] = ((a + 2) * xd - (a + 3)) * xd * xd + 1
    x1 = (x + np.float32(1.0)).astype(np.float64)
    t[:, 1] = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
    return t


_TABLE = _coeffs_table()


def _weights_and_indices(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per output index: float32 weights [out, 4] and clamped source indices [out, 4] (legacy path)."""
    scale = np.float32(in_size) / np.float32(out_size)  # CalculateResizeScale, align_corners=False
    in_loc_f = np.arange(out_size, dtype=np.float32) * scale  # LegacyScaler: float(x) * scale
    in_loc = np.floor(in_loc_f)
    delta = (in_loc_f - in_loc).astype(np.float32)
    offset = np.rint(delta * np.float32(BICUBIC_TABLE_SIZE)).astype(np.int64)  # lrintf: half to even
    w = np.stack([_TABLE[offset, 1], _TABLE[offset, 0],
                  _TABLE[BICUBIC_TABLE_SIZE - offset, 0], _TABLE[BICUBIC_TABLE_SIZE - offset, 1]], axis=1)
    base = in_loc.astype(np.int64)
    idx = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    return w.astype(np.float32), idx


def resize_bicubic_legacy(image: np.ndarray, size: Union[int, Sequence[int]]) -> np.ndarray:
    """``tf.compat.v1.image.resize_bicubic(align_corners=False, half_pixel_centers=False)`` in numpy.

    ``image``: HxWxC or NxHxWxC, any real dtype (uint8 usual); ``size``: int or (height, width).
    Keys cubic with a = -0.75 taken from TF's 1025-entry coefficient table, source coordinate
    ``dst * (in / out)``, taps floor(x)-1..floor(x)+2 clamped to the edge; rows first, then
    columns, each as TF sums them (float32, in tap order). Output float32, not clamped:
    equal to TensorFlow's bit for bit.
    """
    x = np.asarray(image)
    if x.ndim not in (3, 4):
        raise ConversionError(f"resize_bicubic_legacy: image must be HxWxC or NxHxWxC, got shape {x.shape}")
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ConversionError(f"resize_bicubic_legacy: unsupported dtype {x.dtype}")
    out_h, out_w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    in_h, in_w = x.shape[-3], x.shape[-2]
    if min(out_h, out_w, in_h, in_w) <= 0:
        raise ConversionError(f"resize_bicubic_legacy: cannot resize {in_h}x{in_w} to {out_h}x{out_w}")
    x = x.astype(np.float32)  # static_cast<float>(value): exact for uint8 / float32
    wy, iy = _weights_and_indices(in_h, out_h)
    wx, ix = _weights_and_indices(in_w, out_w)
    # ComputeYInterpolation: v0 * w0 + v1 * w1 + v2 * w2 + v3 * w3, float32, left to right
    wy = wy[:, :, None, None]
    rows = x[..., iy[:, 0], :, :] * wy[:, 0]
    for t in range(1, 4):
        rows = rows + x[..., iy[:, t], :, :] * wy[:, t]
    # Compute (the x pass) on the cached column values, same order
    wx = wx[:, :, None]
    out = rows[..., ix[:, 0], :] * wx[:, 0]
    for t in range(1, 4):
        out = out + rows[..., ix[:, t], :] * wx[:, t]
    return out.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- legacy bilinear

# MnasNet / MixNet (tensorflow/tpu models/official/mnasnet/preprocessing.py at 7dc921f, since
# 867cc97 of 2019-07-06): ``tf.image.resize`` of tensorflow.compat.v1, i.e. resize_images with
# BILINEAR, align_corners=False, half_pixel_centers=False (checkpoint.Preprocessing ``resize``)
RESIZES = ("bicubic", "bilinear")


def _bilinear_taps(in_size: int, out_size: int, half_pixel: bool = False) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """resize_bilinear_op.cc compute_interpolation_weights: lower, upper, lerp; source coordinate by the
    LegacyScaler ``float(i) * scale`` or, ``half_pixel``, the HalfPixelScaler ``(i + 0.5) * scale - 0.5``."""
    scale = np.float32(in_size) / np.float32(out_size)  # CalculateResizeScale, align_corners=False
    if half_pixel:
        src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    else:
        src = np.arange(out_size, dtype=np.float32) * scale
    floor = np.floor(src)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    return lower, upper, (src - floor).astype(np.float32)


def resize_bilinear_legacy(image: np.ndarray, size: Union[int, Sequence[int]]) -> np.ndarray:
    """``tf.compat.v1.image.resize_bilinear(align_corners=False, half_pixel_centers=False)`` in numpy.

    Source coordinate ``dst * (in / out)`` (float32), taps floor / ceil clamped to the edge; per
    output pixel, as compute_lerp does it in float32: ``top = tl + (tr - tl) * x_lerp``, ``bottom``
    likewise, ``top + (bottom - top) * y_lerp``. Output float32: equal to TensorFlow's bit for bit.
    """
    x = np.asarray(image)
    if x.ndim not in (3, 4):
        raise ConversionError(f"resize_bilinear_legacy: image must be HxWxC or NxHxWxC, got shape {x.shape}")
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ConversionError(f"resize_bilinear_legacy: unsupported dtype {x.dtype}")
    out_h, out_w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    in_h, in_w = x.shape[-3], x.shape[-2]
    if min(out_h, out_w, in_h, in_w) <= 0:
        raise ConversionError(f"resize_bilinear_legacy: cannot resize {in_h}x{in_w} to {out_h}x{out_w}")
    return _bilinear(x.astype(np.float32), _bilinear_taps(in_h, out_h), _bilinear_taps(in_w, out_w))


def _bilinear(x: np.ndarray, rows, cols) -> np.ndarray:
    """resize_bilinear_op.cc compute_lerp in float32 over [..., H, W, C]: ``top = tl + (tr - tl) * x_lerp``,
    ``bottom`` likewise, ``top + (bottom - top) * y_lerp``."""
    (y0, y1, ly), (x0, x1, lx) = rows, cols
    top_rows, bottom_rows = x[..., y0, :, :], x[..., y1, :, :]
    lx = lx[:, None]
    top = top_rows[..., x0, :] + (top_rows[..., x1, :] - top_rows[..., x0, :]) * lx
    bottom = bottom_rows[..., x0, :] + (bottom_rows[..., x1, :] - bottom_rows[..., x0, :]) * lx
    return (top + (bottom - top) * ly[:, None, None]).astype(np.float32, copy=False)


def resize_legacy(image: np.ndarray, size: Union[int, Sequence[int]], resize: str = "bicubic") -> np.ndarray:
    """The official eval resize: legacy ``bicubic`` (EfficientNet) or ``bilinear`` (MnasNet, MixNet)."""
    if resize == "bicubic":
        return resize_bicubic_legacy(image, size)
    if resize == "bilinear":
        return resize_bilinear_legacy(image, size)
    raise ConversionError(f"unknown resize {resize!r}; use one of {', '.join(RESIZES)}")


def cfg_resize(cfg: Mapping[str, object]) -> str:
    """The official resize of a pretrained_cfg (its pipeline's: bilinear for MnasNet/MixNet, else bicubic)."""
    from .registry import preprocessing_of

    return preprocessing_of(cfg).resize


# ----------------------------------------------------------------------------- full pipeline


def _cfg_values(cfg: Mapping[str, object]) -> Tuple[int, np.ndarray, np.ndarray, Optional[float]]:
    try:
        input_size = list(cfg["input_size"])  # type: ignore[arg-type]
        res_h, res_w = int(input_size[-2]), int(input_size[-1])
        mean = np.asarray(cfg["mean"], np.float64).reshape(-1)
        std = np.asarray(cfg["std"], np.float64).reshape(-1)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ConversionError(f"preprocess: cfg needs input_size [3, H, W], mean and std (0-1 scale): {e}") from None
    if res_h != res_w:
        raise ConversionError(f"preprocess: the official eval crops a square; input_size {input_size} is not")
    if mean.shape != (3,) or std.shape != (3,) or np.any(std <= 0):
        raise ConversionError(f"preprocess: mean/std must be 3 values each, std > 0; got {cfg['mean']}, {cfg['std']}")
    crop_pct = cfg.get("crop_pct")
    return res_h, mean, std, (None if crop_pct is None else float(crop_pct))  # type: ignore[arg-type]


def _pil_resized(data: bytes, name: str, res: int, crop_pct: Optional[float], resize: str = "bicubic",
                 max_pixels: Optional[int] = None) -> np.ndarray:
    from PIL import Image

    try:
        array = _decode_pillow(data, name, max_pixels)
    except ConversionError as e:
        header = _jpeg_markers(data) if data[:2] == b"\xff\xd8" and "truncated" in str(e) else None
        if header is None or _missing_eoi(data, name, header) is None:
            raise
        array = _decode_pillow(data + JPEG_EOI, name, max_pixels)  # Pillow calls it truncated
    oh, ow, size = crop_window(array.shape[0], array.shape[1], res, crop_pct)
    method = Image.BILINEAR if resize == "bilinear" else Image.BICUBIC
    with _pillow_unlimited():  # Image.crop checks Pillow's limit too
        out = Image.fromarray(array).crop((ow, oh, ow + size, oh + size)).resize((res, res), method)
    return np.asarray(out, dtype=np.float32)


def preprocess_raw(src: Source, resolution: int, mode: str = "official",
                   crop_pct: Optional[float] = None, resize: str = "bicubic",
                   max_pixels: Optional[int] = None) -> np.ndarray:
    """One image -> float32 HxWx3 on the 0-255 scale at ``resolution`` (not normalized).

    ``crop_pct`` overrides res / (res + 32) in the ``official`` and ``pil`` modes; ``fixed-crop``
    always uses the Nov 2021 rule. ``resize``: ``bicubic`` (EfficientNet) or ``bilinear``
    (MnasNet, MixNet; ``cfg_resize``), both the legacy kernels. ``max_pixels``: see :func:`decode`.
    """
    if resize not in RESIZES:
        raise ConversionError(f"unknown resize {resize!r}; use one of {', '.join(RESIZES)}")
    if mode not in MODES:
        raise ConversionError(f"unknown preprocessing mode {mode!r}; use one of {', '.join(MODES)}")
    data, name = _read(src)
    if mode == "pil":
        return _pil_resized(data, name, resolution, crop_pct, resize, max_pixels)
    image = _decode_named(data, name, max_pixels)
    h, w = image.shape[:2]
    if mode == "fixed-crop":
        oh, ow, size = crop_window(h, w, resolution, crop="fixed")
    else:
        oh, ow, size = crop_window(h, w, resolution, crop_pct)
    if data[:2] == b"\xff\xd8":  # the official code decodes the window alone: its side columns as TF's
        crop = _crop_edges_as_tf(data, _jpeg_markers(data), image, oh, ow, size)
    else:
        crop = image[oh:oh + size, ow:ow + size]
    return resize_legacy(crop, resolution, resize)


def _decode_named(data: bytes, name: str, max_pixels: Optional[int] = None) -> np.ndarray:
    if not data:
        raise ConversionError(f"cannot decode {name}: empty file")
    if data[:2] == b"\xff\xd8":
        return _decode_jpeg(data, name, max_pixels)
    return _decode_pillow(data, name, max_pixels)


def normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """0-255 float HWC -> ``(x - 255 * mean) / (255 * std)`` in float32, as preprocessing.py does it.

    (MEAN_RGB / STDDEV_RGB of the official code are the 0-1 values times 255.)
    """
    m = (np.asarray(mean, np.float64) * 255.0).astype(np.float32)
    s = (np.asarray(std, np.float64) * 255.0).astype(np.float32)
    return ((np.asarray(x, np.float32) - m) / s).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- EfficientNetV2

# google/automl efficientnetv2 preprocessing.preprocess_for_eval: 'crop' if image_size < 320 else ''
V2_NO_CROP_FROM = 320
V2_PREPROCESSING = ("v2", "v2-ft")  # preprocess_v2's pipelines (checkpoint.Preprocessing ``v2``)


def resize_bilinear_half_pixel(image: np.ndarray, size: Union[int, Sequence[int]]) -> np.ndarray:
    """``tf.image.resize(image, size)`` (TF2: bilinear, antialias=False, i.e. ResizeBilinear with
    half_pixel_centers=True) in numpy, float32 as TensorFlow computes it.

    resize_bilinear_op.cc with the HalfPixelScaler: source ``(x + 0.5) * (in / out) - 0.5``, taps
    ``max(floor(src), 0)`` / ``min(ceil(src), in - 1)``, weight ``src - floor(src)``; then
    compute_lerp as in :func:`resize_bilinear_legacy`.
    """
    x = np.asarray(image)
    if x.ndim != 3:
        raise ConversionError(f"resize_bilinear_half_pixel: image must be HxWxC, got shape {x.shape}")
    out_h, out_w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    in_h, in_w = x.shape[0], x.shape[1]
    if min(out_h, out_w, in_h, in_w) <= 0:
        raise ConversionError(f"resize_bilinear_half_pixel: cannot resize {in_h}x{in_w} to {out_h}x{out_w}")
    return _bilinear(x.astype(np.float32), _bilinear_taps(in_h, out_h, half_pixel=True),
                     _bilinear_taps(in_w, out_w, half_pixel=True))


def crop_window_v2(height: int, width: int, resolution: int) -> Tuple[int, int, int]:
    """(offset_h, offset_w, size) of preprocessing.preprocess_for_eval's centre crop (below 320 px):
    ``tf.cast(res / (res + 32) * tf.cast(min(h, w), tf.float32), tf.int32)``, offsets
    ``(h - size) // 2`` (no +1, unlike V1's)."""
    size = int(np.float32(resolution / (resolution + CROP_PADDING)) * np.float32(min(height, width)))
    if size < 1:
        raise ConversionError(f"image of {height}x{width} px is too small to crop for {resolution} px")
    return (height - size) // 2, (width - size) // 2, size


def preprocess_v2(src: Source, resolution: int, kind: str, max_pixels: Optional[int] = None) -> np.ndarray:
    """One image -> float32 HxWx3, normalized, as google/automl efficientnetv2 evaluates it.

    ``v2`` (S/M/L ImageNet-1k, every 21k checkpoint): decode, centre crop when the size is
    below 320, bilinear resize, ``(x - 128) / 128``. ``v2-ft`` (21k-ft1k): decode,
    ``(x / 255 - 0.5) / 0.5``, bilinear resize, no crop.
    """
    if kind not in V2_PREPROCESSING:
        raise ConversionError(f"unknown EfficientNetV2 preprocessing {kind!r}; use one of {', '.join(V2_PREPROCESSING)}")
    data, name = _read(src)
    image = _decode_named(data, name, max_pixels)
    if kind == "v2-ft":
        x = (image.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
        return resize_bilinear_half_pixel(x, resolution)
    if resolution < V2_NO_CROP_FROM:
        oh, ow, size = crop_window_v2(image.shape[0], image.shape[1], resolution)
        image = image[oh:oh + size, ow:ow + size]
    x = resize_bilinear_half_pixel(image, resolution)
    return ((x - np.float32(128.0)) / np.float32(128.0)).astype(np.float32, copy=False)


def preprocess(src: Source, cfg: Mapping[str, object], mode: str = "official",
               max_pixels: Optional[int] = None) -> np.ndarray:
    """One image -> float32 3xHxW, normalized ``(x / 255 - mean) / std`` with the cfg's mean/std.

    ``cfg``: a pretrained_cfg (input_size, mean, std, crop_pct). Modes: ``official`` (crop
    fraction cfg["crop_pct"], else res / (res + 32)), ``fixed-crop`` (Nov 2021 rule; ignores
    crop_pct), ``pil`` (Pillow decode + bicubic, same crop window; for comparison).
    ``max_pixels``: the size limit per image (see :func:`max_pixels_limit`).
    """
    res, mean, std, crop_pct = _cfg_values(cfg)
    from .registry import preprocessing_of

    pipeline = preprocessing_of(cfg)
    if mode == "official" and pipeline.v2:  # EfficientNetV2's own eval
        return preprocess_v2(src, res, pipeline.v2, max_pixels).transpose(2, 0, 1).copy()
    x = preprocess_raw(src, res, mode, crop_pct, cfg_resize(cfg), max_pixels)
    return normalize(x, mean, std).transpose(2, 0, 1).copy()


def preprocess_batch(srcs: Sequence[Source], cfg: Mapping[str, object], mode: str = "official",
                     max_pixels: Optional[int] = None) -> np.ndarray:
    """Several images -> float32 NxCxHxW numpy array (see :func:`preprocess`).

    The converted model takes it as is (``load_model(f)(preprocess_batch(files, cfg))``: the model
    converts an array to a tensor on its device); this module itself needs no torch.
    """
    if isinstance(srcs, (str, bytes, os.PathLike)):
        raise ConversionError("preprocess_batch: pass a list of images, not a single one")
    items = list(srcs)
    if not items:
        raise ConversionError("preprocess_batch: no images given")
    return np.stack([preprocess(s, cfg, mode, max_pixels) for s in items])
