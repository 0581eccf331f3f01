"""Deterministic synthetic test images (numpy only; shared by the PyTorch and TensorFlow sides).

Random-weight checkpoints are only meaningful on the inputs their BN statistics were calibrated
on (shared/reference/README.md, "Known hazards"), so both the generator and the verification use
the same image kinds: uniform noise, smooth gradients, checkerboards of several periods, blurred
noise (blobs) and flat colours.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import numpy as np

from .errors import ConversionError

# tensorflow/tpu efficientnet main.py: MEAN_RGB / STDDEV_RGB (on the 0-255 scale there), here 0-1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# tensorflow/tpu efficientnet README, AdvProp: x * 2 / 255 - 1, i.e. mean = std = 0.5
ADVPROP_MEAN = (0.5, 0.5, 0.5)
ADVPROP_STD = (0.5, 0.5, 0.5)
# Seed of the images generated checkpoints are calibrated on (converter.tfref.generate). Random
# weights give sane logits only on the calibration images themselves: verify on
# ``calibration_images(res, n, mean, std)`` with the generator's resolution and count.
CALIBRATION_SEED = 1234


def _noise(rng: np.random.Generator, res: int) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=(res, res, 3))


def _linear_gradient(rng: np.random.Generator, res: int) -> np.ndarray:
    angle = rng.uniform(0.0, 2.0 * np.pi)
    yy, xx = np.mgrid[0:res, 0:res] / max(res - 1, 1)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-12)
    lo, hi = rng.uniform(0, 80, size=3), rng.uniform(175, 255, size=3)
    return lo + t[..., None] * (hi - lo)


def _radial_gradient(rng: np.random.Generator, res: int) -> np.ndarray:
    cy, cx = rng.uniform(0.2, 0.8, size=2) * res
    yy, xx = np.mgrid[0:res, 0:res]
    r = np.hypot(yy - cy, xx - cx)
    t = r / max(r.max(), 1e-12)
    inner, outer = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    return inner + t[..., None] * (outer - inner)


def _checkerboard(period: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    def make(rng: np.random.Generator, res: int) -> np.ndarray:
        yy, xx = np.mgrid[0:res, 0:res]
        cells = ((yy // period) + (xx // period)) % 2
        a, b = rng.uniform(0, 60, size=3), rng.uniform(195, 255, size=3)
        return np.where(cells[..., None] == 1, a, b)

    return make


def _upsample_matrix(src: int, dst: int) -> np.ndarray:
    """Linear interpolation weights, shape [dst, src] (align-corners style)."""
    pos = np.linspace(0.0, src - 1, dst)
    lo = np.clip(np.floor(pos).astype(int), 0, src - 1)
    hi = np.clip(lo + 1, 0, src - 1)
    frac = pos - lo
    m = np.zeros((dst, src))
    m[np.arange(dst), lo] += 1.0 - frac
    m[np.arange(dst), hi] += frac
    return m


def _blobs(rng: np.random.Generator, res: int) -> np.ndarray:
    low = max(2, res // 16 + 2)
    coarse = rng.uniform(0.0, 255.0, size=(low, low, 3))
    m = _upsample_matrix(low, res)
    return np.einsum("ij,jkc,lk->ilc", m, coarse, m)


def _flat(rng: np.random.Generator, res: int) -> np.ndarray:
    return np.broadcast_to(rng.uniform(0.0, 255.0, size=3), (res, res, 3))


def _kinds(res: int) -> List[Tuple[str, Callable[[np.random.Generator, int], np.ndarray]]]:
    big = max(2, res // 8)
    return [
        ("noise", _noise),
        ("linear-gradient", _linear_gradient),
        ("checkerboard-1", _checkerboard(1)),
        ("blobs", _blobs),
        ("checkerboard-4", _checkerboard(4)),
        ("flat", _flat),
        ("radial-gradient", _radial_gradient),
        (f"checkerboard-{big}", _checkerboard(big)),
    ]


def image_kinds(resolution: int, n: int = 8) -> List[str]:
    """Names of the kinds of the n images ``synthetic_images(resolution, n)`` returns, in order."""
    kinds = _kinds(resolution)
    return [kinds[i % len(kinds)][0] for i in range(n)]


def synthetic_images(resolution: int, n: int = 8, seed: int = 0) -> np.ndarray:
    """n deterministic square images, float32 NHWC in [0, 255], cycling through the kinds above."""
    if int(resolution) != resolution or resolution < 2:
        raise ConversionError(f"synthetic images: resolution must be an integer >= 2, got {resolution!r}")
    if int(n) != n or n < 1:
        raise ConversionError(f"synthetic images: n must be a positive integer, got {n!r}")
    resolution, n = int(resolution), int(n)
    kinds = _kinds(resolution)
    out = np.empty((n, resolution, resolution, 3), dtype=np.float32)
    for i in range(n):
        # one independent stream per image: image i does not depend on n
        rng = np.random.default_rng([seed, i])
        out[i] = np.clip(kinds[i % len(kinds)][1](rng, resolution), 0.0, 255.0)
    return out


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(x / 255 - mean) / std`` per channel (mean, std: 3-tuples on the 0-1 scale), float32."""
    mean_a = np.asarray(mean, dtype=np.float64).reshape(-1)
    std_a = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean_a.shape != (3,) or std_a.shape != (3,):
        raise ConversionError(f"normalize: mean and std must have 3 values each, got {mean!r}, {std!r}")
    if np.any(std_a <= 0):
        raise ConversionError(f"normalize: std must be positive, got {std!r}")
    x = np.asarray(images)
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ConversionError(f"normalize: images must be ...x3 (channels last), got shape {x.shape}")
    return ((x.astype(np.float64) / 255.0 - mean_a) / std_a).astype(np.float32)


def calibration_images(resolution: int, n: int = 8, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """The normalized images a generated checkpoint's BN statistics were calibrated on."""
    return normalize(synthetic_images(resolution, n, seed=CALIBRATION_SEED), mean, std)
