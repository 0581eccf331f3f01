"""The official eval preprocessing, with TensorFlow's own ops (tensorflow/tpu efficientnet preprocessing.py).

TF1-era eval branch: crop `int(res / (res + 32) * min(h, w))` centred with offsets
`((h - crop) + 1) // 2`, `tf.image.decode_and_crop_jpeg` (default DCT: INTEGER_FAST), then
`tf.compat.v1.image.resize_bicubic` (legacy kernel, half_pixel_centers=False, not clamped),
then the flavor's mean/std. Other formats: decoded, then the same crop and resize.
``--resize bilinear``: MnasNet / MixNet (tensorflow/tpu models/official/mnasnet/preprocessing.py
at 7dc921f): the same crop, then ``tf.compat.v1.image.resize`` (BILINEAR, half_pixel_centers=False).

    python -m converter.tfref.preprocess --files A.jpg B.png --resolution 224 --out OUT.npz \
        --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 [--crop-pct 0.875] [--raw] [--resize bilinear]
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

from ..checkpoint import CROP_PADDING  # tensorflow/tpu efficientnet preprocessing.py
from ..errors import first_line


def _tf():
    from .tfimport import import_tensorflow

    return import_tensorflow()


def crop_window(height: int, width: int, resolution: int, crop_pct: Optional[float] = None):
    """(offset_h, offset_w, size) of the official centre crop."""
    frac = crop_pct if crop_pct is not None else resolution / (resolution + CROP_PADDING)
    # preprocessing._decode_and_center_crop: tf.cast(frac * float(min(h, w)), tf.int32)
    size = int(np.float32(frac) * np.float32(min(height, width)))
    return ((height - size) + 1) // 2, ((width - size) + 1) // 2, size


def preprocess_bytes(data: bytes, resolution: int, crop_pct: Optional[float] = None,
                     resize: str = "bicubic") -> np.ndarray:
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
    if resize == "bilinear":  # mnasnet preprocessing._decode_and_center_crop: tf.image.resize (compat.v1)
        out = tf.compat.v1.image.resize([image], [resolution, resolution])[0]
    else:
        out = tf.compat.v1.image.resize_bicubic([image], [resolution, resolution])[0]
    return out.numpy().astype(np.float32)


V2_NO_CROP_FROM = 320  # google/automl efficientnetv2 preprocessing.preprocess_for_eval


def preprocess_bytes_v2(data: bytes, resolution: int, kind: str) -> np.ndarray:
    """One encoded image -> float32 HWC, normalized, with the official EfficientNetV2 eval ops.

    google/automl efficientnetv2 (6a54c87) preprocessing.preprocess_image with is_training=False:
    ``kind="v2"`` (augname randaug/None): preprocess_for_eval (centre crop below 320 px,
    ``tf.image.resize``), then ``(image - 128.0) / 128.0``; ``kind="v2-ft"`` (augname 'ft'):
    preprocess_for_finetune, ``(tf.cast(image, tf.float32) / 255.0 - 0.5) / 0.5`` then
    ``tf.image.resize``. (``v1``, B0-B3 ImageNet-1k, is preprocess_legacy: :func:`preprocess_bytes`.)
    """
    tf = _tf()
    image = tf.image.decode_image(data, channels=3, expand_animations=False)
    if kind == "v2-ft":
        mean, std = 0.5, 0.5
        image = (tf.cast(image, tf.float32) / 255.0 - mean) / std
        image.set_shape([None, None, 3])
        return tf.image.resize(image, [resolution, resolution]).numpy().astype(np.float32)
    if kind != "v2":
        raise ValueError(f"unknown EfficientNetV2 preprocessing {kind!r}")
    if resolution < V2_NO_CROP_FROM:
        shape = tf.shape(image)
        height, width = shape[0], shape[1]
        ratio = resolution / (resolution + CROP_PADDING)
        crop_size = tf.cast((ratio * tf.cast(tf.minimum(height, width), tf.float32)), tf.int32)
        y, x = (height - crop_size) // 2, (width - crop_size) // 2
        image = tf.image.crop_to_bounding_box(image, y, x, crop_size, crop_size)
    image.set_shape([None, None, 3])
    image = tf.image.resize(image, [resolution, resolution])
    return ((image - 128.0) / 128.0).numpy().astype(np.float32)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="official EfficientNet eval preprocessing with TensorFlow")
    p.add_argument("--files", nargs="+", required=True)
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406))
    p.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225))
    p.add_argument("--crop-pct", type=float, default=None)
    p.add_argument("--raw", action="store_true", help="keep the 0-255 scale (no mean/std)")
    p.add_argument("--resize", choices=("bicubic", "bilinear"), default="bicubic",
                   help="legacy bicubic (EfficientNet) or bilinear (MnasNet, MixNet)")
    p.add_argument("--preprocessing", choices=("v2", "v2-ft"), default=None,
                   help="EfficientNetV2's own eval (normalized by its own rule: --mean/--std/--crop-pct ignored)")
    args = p.parse_args(argv)
    images = []
    for f in args.files:
        try:
            with open(f, "rb") as fh:
                if args.preprocessing:
                    images.append(preprocess_bytes_v2(fh.read(), args.resolution, args.preprocessing))
                    continue
                images.append(preprocess_bytes(fh.read(), args.resolution, args.crop_pct, args.resize))
        except Exception as e:  # TF decode errors come in several types
            msg = first_line(e)
            print(f"cannot read image {f}: {msg}", file=sys.stderr)
            return 2
    x = np.stack(images)
    if not args.raw and not args.preprocessing:
        mean = np.asarray(args.mean, np.float32) * 255.0
        std = np.asarray(args.std, np.float32) * 255.0
        x = (x - mean) / std
    with open(args.out, "wb") as fh:
        np.savez(fh, images=x.astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
