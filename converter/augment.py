"""The official training preprocessing, in numpy: a random crop of the image, resized, randomly flipped.

Each checkpoint's eval pipeline (``pretrained_cfg["preprocessing"]``, converter.preprocess) names
the training pipeline of the same code:

- tensorflow/tpu (7dc921f) efficientnet preprocessing.preprocess_for_train (and mnasnet's, its
  copy): ``distorted_bounding_box_crop`` (tf.image.sample_distorted_bounding_box with the whole
  image as the box, min_object_covered 0.1, aspect ratios 3/4..4/3, area 0.08..1, 10 attempts;
  no crop found: the eval centre crop), the legacy resize of the eval (bicubic; bilinear for
  MnasNet/MixNet), random left-right flip, then ``(x - mean) / std``;
- google/automl (6a54c87) efficientnetv2 preprocessing.preprocess_for_train (``v2``): a crop of
  area 0.05..1 (aspect 0.75..1.33, 100 attempts, no coverage bound), tf.image.resize (bilinear,
  half-pixel), random flip, ``(x - 128) / 128``; preprocess_for_finetune in training (``v2-ft``,
  datasets.ImagenetFt's ``augname='ft'``): ``(x / 255 - 0.5) / 0.5``, resize, random flip, cutout
  of a ``size // 4``-padded square filled with uniform noise.

AutoAugment / RandAugment and mixup are not reproduced. The random crop follows TensorFlow's
sample_distorted_bounding_box_op.cc (GenerateRandomCrop) with numpy's generator: the same
distribution, not TensorFlow's random stream.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Tuple

import numpy as np

from .preprocess import (Source, _cfg_values, _decode_named, _read, cfg_resize, normalize, preprocess_raw,
                         resize_bilinear_half_pixel, resize_legacy)

# tensorflow/tpu efficientnet preprocessing._decode_and_random_crop
TPU_CROP = dict(min_object_covered=0.1, aspect_ratio_range=(3.0 / 4, 4.0 / 3.0), area_range=(0.08, 1.0),
                max_attempts=10)
# google/automl efficientnetv2 preprocessing.preprocess_for_train (tf.image.sample_distorted_bounding_box defaults)
V2_CROP = dict(min_object_covered=0.0, aspect_ratio_range=(0.75, 1.33), area_range=(0.05, 1.0), max_attempts=100)


def _lrint(x: float) -> int:
    return int(np.rint(np.float32(x)))


def _random_crop(rng: np.random.Generator, width: int, height: int, min_area_frac: float,
                 max_area_frac: float, aspect: float) -> Optional[Tuple[int, int, int, int]]:
    """sample_distorted_bounding_box_op.cc GenerateRandomCrop: (y, x, h, w) or None."""
    min_area = min_area_frac * width * height
    max_area = max_area_frac * width * height
    h = _lrint(math.sqrt(min_area / aspect))
    max_h = _lrint(math.sqrt(max_area / aspect))
    if _lrint(max_h * aspect) > width:
        max_h = int((width + 0.5 - 1e-7) / aspect)
        if _lrint(max_h * aspect) > width:
            max_h -= 1
    max_h = min(max_h, height)
    h = min(h, max_h)
    if h < max_h:
        h += int(rng.integers(0, max_h - h + 1))
    w = _lrint(h * aspect)
    area = w * h
    if area < min_area:
        h += 1
        w = _lrint(h * aspect)
        area = w * h
    if area < min_area:
        return None
    if area > max_area:
        h -= 1
        w = _lrint(h * aspect)
        area = w * h
    if area < min_area or area > max_area or w > width or h > height or w <= 0 or h <= 0:
        return None
    y = int(rng.integers(0, height - h)) if h < height else 0
    x = int(rng.integers(0, width - w)) if w < width else 0
    return y, x, h, w


def sample_distorted_box(height: int, width: int, rng: np.random.Generator, min_object_covered: float,
                         aspect_ratio_range: Tuple[float, float], area_range: Tuple[float, float],
                         max_attempts: int) -> Tuple[int, int, int, int]:
    """tf.image.sample_distorted_bounding_box with the whole image as the box: (y, x, h, w); the
    whole image when no attempt gives a crop covering ``min_object_covered`` of it."""
    lo, hi = aspect_ratio_range
    for _ in range(max_attempts):
        aspect = float(np.float32(rng.random() * (hi - lo) + lo))
        rect = _random_crop(rng, width, height, area_range[0], area_range[1], aspect)
        if rect is not None and rect[2] * rect[3] >= min_object_covered * height * width:
            return rect
    return 0, 0, height, width


def _cutout(x: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """autoaugment.cutout (google/automl): a square of half-size ``pad`` around a random centre,
    clipped to the image, replaced by uniform [0, 1) noise (preprocess_for_finetune's ``replace``)."""
    h, w = x.shape[:2]
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, y1, x0, x1 = max(0, cy - pad), min(h, cy + pad), max(0, cx - pad), min(w, cx + pad)
    out = x.copy()
    out[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0, x.shape[2]), dtype=np.float32)
    return out


def preprocess_train(src: Source, cfg: Mapping[str, object], rng: Optional[np.random.Generator] = None,
                     max_pixels: Optional[int] = None) -> np.ndarray:
    """One training image -> float32 3xHxW, normalized as ``cfg``'s checkpoint was trained (module doc).

    ``cfg``: the model's pretrained_cfg (the same one its evaluation uses); ``rng``: numpy's
    generator (default: a fresh one).
    """
    from .registry import preprocessing_of

    res, mean, std, crop_pct = _cfg_values(cfg)
    rng = rng if rng is not None else np.random.default_rng()
    pipeline = preprocessing_of(cfg)
    data, name = _read(src)
    image = _decode_named(data, name, max_pixels)
    h, w = image.shape[:2]
    if pipeline.v2 == "v2-ft":
        x = (image.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
        x = resize_bilinear_half_pixel(x, res)
        if rng.random() < 0.5:
            x = x[:, ::-1]
        x = _cutout(x, res // 4, rng)
    elif pipeline.v2:
        y0, x0, ch, cw = sample_distorted_box(h, w, rng, **V2_CROP)
        x = resize_bilinear_half_pixel(image[y0:y0 + ch, x0:x0 + cw], res)
        if rng.random() < 0.5:
            x = x[:, ::-1]
        x = (x - np.float32(128.0)) / np.float32(128.0)
    else:
        y0, x0, ch, cw = sample_distorted_box(h, w, rng, **TPU_CROP)
        if (ch, cw) == (h, w):  # _decode_and_random_crop: no crop found -> the eval centre crop
            x = preprocess_raw(src, res, "official", crop_pct, cfg_resize(cfg), max_pixels)
        else:
            x = resize_legacy(image[y0:y0 + ch, x0:x0 + cw], res, cfg_resize(cfg))
        if rng.random() < 0.5:
            x = x[:, ::-1]
        x = normalize(x, mean, std)
    return np.ascontiguousarray(np.asarray(x, np.float32).transpose(2, 0, 1))
