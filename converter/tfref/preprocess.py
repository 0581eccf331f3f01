"""The official eval preprocessing, with TensorFlow's own ops (tensorflow/tpu efficientnet preprocessing.py).

TF1-era eval branch: crop `int(res / (res + 32) * min(h, w))` centred with offsets
`((h - crop) + 1) // 2`, `tf.image.decode_and_crop_jpeg` (default DCT: INTEGER_FAST), then
`tf.compat.v1.image.resize_bicubic` (legacy kernel, half_pixel_centers=False, not clamped),
then the flavor's mean/std. Other formats: decoded, then the same crop and resize.

    python -m converter.tfref.preprocess --files A.jpg B.png --resolution 224 --out OUT.npz \
        --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 [--crop-pct 0.875] [--raw]
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

CROP_PADDING = 32  # tensorflow/tpu efficientnet preprocessing.py: CROP_PADDING = 32


def _tf():
    from .tfimport import import_tensorflow

    return import_tensorflow()


def crop_window(height: int, width: int, resolution: int, crop_pct: Optional[float] = None):
    """(offset_h, offset_w, size) of the official centre crop."""
    frac = crop_pct if crop_pct is not None else resolution / (resolution + CROP_PADDING)
    # preprocessing._decode_and_center_crop: tf.cast(frac * float(min(h, w)), tf.int32)
    size = int(np.float32(frac) * np.float32(min(height, width)))
    return ((height - size) + 1) // 2, ((width - size) + 1) // 2, size


def preprocess_bytes(data: bytes, resolution: int, crop_pct: Optional[float] = None) -> np.ndarray:
    """One encoded image -> float32 HWC on the 0-255 scale at ``resolution`` (not normalized)."""
    tf = _tf()
    if data[:2] == b"\xff\xd8":  # JPEG: decode only the crop window, as the official code does
        h, w = (int(v) for v in tf.image.extract_jpeg_shape(data)[:2].numpy())
        oh, ow, size = crop_window(h, w, resolution, crop_pct)
        image = tf.image.decode_and_crop_jpeg(data, tf.stack([oh, ow, size, size]), channels=3)
    else:
        # decode_image returns uint8 (16-bit PNGs keep their high byte), as decode_png does
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        h, w = int(image.shape[0]), int(image.shape[1])
        oh, ow, size = crop_window(h, w, resolution, crop_pct)
        image = image[oh:oh + size, ow:ow + size]
    out = tf.compat.v1.image.resize_bicubic([image], [resolution, resolution])[0]
    return out.numpy().astype(np.float32)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="official EfficientNet eval preprocessing with TensorFlow")
    p.add_argument("--files", nargs="+", required=True)
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406))
    p.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225))
    p.add_argument("--crop-pct", type=float, default=None)
    p.add_argument("--raw", action="store_true", help="keep the 0-255 scale (no mean/std)")
    args = p.parse_args(argv)
    images = []
    for f in args.files:
        try:
            with open(f, "rb") as fh:
                images.append(preprocess_bytes(fh.read(), args.resolution, args.crop_pct))
        except Exception as e:  # TF decode errors come in several types
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"cannot read image {f}: {msg}", file=sys.stderr)
            return 2
    x = np.stack(images)
    if not args.raw:
        mean = np.asarray(args.mean, np.float32) * 255.0
        std = np.asarray(args.std, np.float32) * 255.0
        x = (x - mean) / std
    with open(args.out, "wb") as fh:
        np.savez(fh, images=x.astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
