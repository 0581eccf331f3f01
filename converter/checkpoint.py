"""One released checkpoint and how it is evaluated: what every family's checkpoint list is made of.

A family builds its ``Checkpoint`` rows from its sources (names, URLs, published figures, the
official eval preprocessing); converter.registry lists and finds them over every family.
"""
from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# tensorflow/tpu efficientnet README: where the released checkpoints live; mnasnet/README.md and
# mixnet/README.md: MnasNet and MixNet beside efficientnet/ in the same bucket
OFFICIAL_ROOT_URL = "https://storage.googleapis.com/cloud-tpu-checkpoints/"
BASE_URL_ENV = "EFFNET_BASE_URL"
_LEGACY_BASE_SEGMENT = "efficientnet"  # a $EFFNET_BASE_URL ending in it mirrors efficientnet/, not the root
# tensorflow/tpu models/official/efficientnet preprocessing.py (pre-Nov 2021): CROP_PADDING = 32; the
# same 32 in mnasnet/preprocessing.py and google/automl efficientnetv2 preprocessing.py
CROP_PADDING = 32
# tensorflow/tpu efficientnet main.py / preprocessing: MEAN_RGB, STDDEV_RGB on the 0-255 scale
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Norm = Tuple[float, float, float]


def mirror_root() -> str:
    """The bucket root every checkpoint is fetched below: ``$EFFNET_BASE_URL`` (a mirror of
    cloud-tpu-checkpoints/, with the official paths below it), else the official bucket.

    A base whose last path segment is ``efficientnet`` (the earlier documented form, a mirror of
    cloud-tpu-checkpoints/efficientnet/) stands for its parent: V1/V2 are found below it as
    before, MnasNet/MixNet beside it, as in the bucket.
    """
    base = (os.environ.get(BASE_URL_ENV) or "").strip()
    if not base:
        return OFFICIAL_ROOT_URL
    parts = urllib.parse.urlsplit(base)
    path = parts.path.rstrip("/")
    head, _, last = path.rpartition("/")
    if last == _LEGACY_BASE_SEGMENT:
        path = head
    return urllib.parse.urlunsplit(parts._replace(path=path + "/"))


@dataclass(frozen=True)
class Preprocessing:
    """An official eval pipeline, as a checkpoint's ``pretrained_cfg["preprocessing"]`` names it (its
    family declares the names): converter.preprocess (numpy) and converter.tfref.preprocess (TF) run it."""

    resize: str = "bicubic"  # the crop path's legacy resize: bicubic (EfficientNet), bilinear (MnasNet)
    v2: Optional[str] = None  # else EfficientNetV2's own eval: "v2" or "v2-ft" (preprocess_v2)


DEFAULT_PREPROCESSING = Preprocessing()  # tensorflow/tpu efficientnet preprocessing.py's eval


def official_crop(resolution: int) -> float:
    """The official eval crop fraction ``res / (res + CROP_PADDING)``."""
    return resolution / (resolution + CROP_PADDING)


@dataclass(frozen=True)
class Checkpoint:
    """One released checkpoint: its names, where it is, its published figures and its eval."""

    variant: str  # the registry name of its architecture (or of its release at another resolution)
    flavor: str
    zoo_name: Optional[str]  # the OpenMMLab zoo's name, if it has one
    params_m: float
    flops_g: Optional[float]  # as the zoo page prints it (mmcv's counter); see registry.count_macs
    top1: Optional[float]  # the official published ImageNet top-1 (%)
    top5: Optional[float]  # the zoo page's (no official top-5 is published)
    name: str  # what --list shows and the output files are named after
    arch: object  # its ArchSpec as evaluated (resolution, classes)
    folder: str  # the folder of the bucket its relative path is under ("efficientnet/", "" for MnasNet's)
    relative_path: str
    mean: Norm = IMAGENET_MEAN  # normalization on the 0-1 scale
    std: Norm = IMAGENET_STD
    crop: Optional[float] = None  # the eval crop fraction; None: the official one (official_crop)
    interpolation: str = "bicubic"
    zoo_top1: Optional[float] = None  # the OpenMMLab zoo page's top-1 of its conversion (%)
    preprocessing: Optional[str] = None  # converter.preprocess's eval path beyond the default one
    extra_cfg: Tuple[Tuple[str, object], ...] = ()  # more pretrained_cfg entries (official_name...)

    @property
    def resolution(self) -> int:
        return self.arch.resolution

    @property
    def release_resolution(self) -> Optional[int]:
        """The resolution it was released at when that is not its architecture's (the 475 px L2), else None."""
        return self.resolution if self.arch.base else None

    @property
    def crop_pct(self) -> float:
        return official_crop(self.resolution) if self.crop is None else self.crop

    @property
    def num_classes(self) -> int:
        return self.arch.num_classes

    @property
    def arch_name(self) -> str:
        """The architecture's registry name (``l2`` for the L2 released at 475 px)."""
        return self.arch.arch_name

    @property
    def family(self) -> str:
        return self.arch.family

    @property
    def zoo_top1_differs(self) -> bool:
        """Whether the zoo's top-1 differs from the official one beyond the official figure's rounding."""
        if self.zoo_top1 is None or self.top1 is None:
            return False
        return abs(self.zoo_top1 - self.top1) > 0.5 * 10.0 ** -decimals(self.top1) + 1e-9

    @property
    def bucket_path(self) -> str:
        """The tarball's path below the bucket root (and below the cache): ``efficientnet/...``, ``mnasnet/...``."""
        return self.folder + self.relative_path

    @property
    def url(self) -> str:
        return OFFICIAL_ROOT_URL + self.bucket_path

    def download_url(self) -> str:
        """The URL to fetch: ``mirror_root()`` + ``bucket_path`` (``$EFFNET_BASE_URL``: mirrors, tests)."""
        return mirror_root() + self.bucket_path

    def pretrained_cfg(self) -> Dict[str, object]:
        res = self.resolution
        cfg: Dict[str, object] = {
            "variant": self.variant,
            "flavor": self.flavor,
            "input_size": [3, res, res],
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }
        if self.preprocessing is not None:
            cfg["preprocessing"] = self.preprocessing
        cfg.update(self.extra_cfg)
        return cfg


def decimals(x: float) -> int:
    """Decimals of a published figure as written (78.8 -> 1, 77.23 -> 2)."""
    text = repr(float(x))
    return len(text.split(".")[1].rstrip("0")) if "." in text else 0
