"""The 23 official EfficientNetV2 checkpoints: names, URLs, flavors, eval size, preprocessing.

Sources (google/automl ``efficientnetv2/`` at 6a54c87): README.md (the checkpoint tables, URLs
``efficientnet/v2/<name>.tgz``, top-1), effnetv2_model.get_model (the same URL list),
effnetv2_configs.efficientnetv2_params (eval sizes), datasets.py (ImageNet21k evaluates at 224
with ``augname=None``; ImagenetFt fine-tunes with ``augname='ft'``), preprocessing.py and
preprocess_legacy.py (what each ``augname`` does at eval). mmpretrain's zoo names: its
``configs/efficientnet_v2/metafile.yml`` (mmpretrain 1.2.0).

Flavors: ``1k`` (ImageNet-1k), ``21k`` (ImageNet-21k, 21843 sigmoid outputs), ``21k-ft1k``
(21k pre-trained, fine-tuned on 1k). Importing this module registers them in converter.zoo.

Eval preprocessing per checkpoint kind, as main.py configures it (model config, then the
dataset config overrides ``data.augname``):

- ``v1`` -- B0-B3 ImageNet-1k (``augname='effnetv1_autoaug'``): preprocess_legacy, V1's eval
  (crop ``res/(res+32)``, decode_and_crop_jpeg, legacy bicubic, ImageNet mean/std);
- ``v2`` -- S/M/L ImageNet-1k (``'randaug'``) and every 21k checkpoint (``None``):
  preprocessing.preprocess_for_eval: decode_image, centre crop ``res/(res+32)`` with offsets
  ``(h - crop) // 2`` only when res < 320, ``tf.image.resize`` (bilinear, half-pixel), then
  ``(x - 128) / 128``;
- ``v2-ft`` -- every 21k-ft1k checkpoint (``'ft'``): preprocess_for_finetune: ``x / 255``, then
  ``(x - 0.5) / 0.5``, then ``tf.image.resize`` (bilinear) to the eval size; no crop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from . import zoo as _zoo
from .arch import ArchSpec, get_arch
from .arch_v2 import V2_ARCHS, with_resolution
from .errors import ConversionError
from .zoo import IMAGENET_MEAN, IMAGENET_STD, Checkpoint

V2_PATH = "v2/{name}.tgz"  # below zoo.OFFICIAL_BASE_URL (effnetv2_model.get_model: v2url)
FLAVORS_V2 = ("1k", "21k", "21k-ft1k")
FLAVOR_ALIASES_V2 = {
    "imagenet": "1k", "in1k": "1k", "imagenet1k": "1k", "1k": "1k",
    "imagenet21k": "21k", "in21k": "21k", "21k": "21k",
    "imagenet21k-ft1k": "21k-ft1k", "in21k-ft1k": "21k-ft1k", "21k-ft1k": "21k-ft1k", "21kft1k": "21k-ft1k",
    "in21k-ft-in1k": "21k-ft1k", "ft1k": "21k-ft1k",
}
CLASSES_21K = 21843  # datasets.ImageNet21kInput: num_classes=21843
EVAL_SIZE_21K = 224  # datasets.ImageNet21k: eval isize=224
NO_CROP_FROM = 320  # preprocessing.preprocess_for_eval: 'crop' if image_size < 320 else ''
CROP_PADDING = 32  # preprocessing.preprocess_for_eval / preprocess_legacy: image_size / (image_size + 32)

PREPROCESSING = ("v1", "v2", "v2-ft")
# the 0-1 scale mean/std that reproduce each kind's normalization (synthetic inputs, libraries)
V2_MEAN = (128.0 / 255.0,) * 3  # (x - 128) / 128
V2_STD = (128.0 / 255.0,) * 3
FT_MEAN = (0.5,) * 3  # (x / 255 - 0.5) / 0.5
FT_STD = (0.5,) * 3

# README.md tables: published top-1 (%); None where the README gives none
TOP1 = {
    ("s", "1k"): 83.9, ("m", "1k"): 85.2, ("l", "1k"): 85.7,
    ("b0", "1k"): 78.7, ("b1", "1k"): 79.8, ("b2", "1k"): 80.5, ("b3", "1k"): 82.1,
    ("s", "21k-ft1k"): 84.9, ("m", "21k-ft1k"): 86.2, ("l", "21k-ft1k"): 86.9, ("xl", "21k-ft1k"): 87.2,
}
# mmpretrain 1.2.0 configs/efficientnet_v2/metafile.yml: its 15 models of these checkpoints
MMPRETRAIN_NAMES = {
    **{(v, "1k"): f"efficientnetv2-{v}_3rdparty_in1k" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")},
    **{(v, "21k-ft1k"): f"efficientnetv2-{v}_in21k-pre_3rdparty_in1k" for v in ("s", "m", "l", "xl")},
    **{(v, "21k"): f"efficientnetv2-{v}_3rdparty_in21k" for v in ("s", "m", "l", "xl")},
}


@dataclass(frozen=True)
class CheckpointV2(Checkpoint):
    """One released EfficientNetV2 checkpoint; ``variant`` is ``v2-s`` etc."""

    eval_size: int = 0
    preprocessing: str = "v2"  # PREPROCESSING
    num_classes: int = 1000

    @property
    def size(self) -> str:
        return self.variant[len("v2-"):]

    @property
    def name(self) -> str:
        """The official tarball stem: ``efficientnetv2-s``, ``efficientnetv2-s-21k``, ``efficientnetv2-s-21k-ft1k``."""
        return f"efficientnetv2-{self.size}" + ("" if self.flavor == "1k" else f"-{self.flavor}")

    @property
    def arch(self) -> ArchSpec:
        return with_resolution(get_arch(self.variant), self.eval_size).with_classes(self.num_classes)

    @property
    def resolution(self) -> int:
        return self.eval_size

    @property
    def crop_pct(self) -> float:
        if self.preprocessing == "v2-ft" or (self.preprocessing == "v2" and self.eval_size >= NO_CROP_FROM):
            return 1.0
        return self.eval_size / (self.eval_size + CROP_PADDING)

    @property
    def interpolation(self) -> str:
        return "bicubic" if self.preprocessing == "v1" else "bilinear"

    @property
    def mean(self) -> Tuple[float, float, float]:
        return {"v1": IMAGENET_MEAN, "v2": V2_MEAN, "v2-ft": FT_MEAN}[self.preprocessing]

    @property
    def std(self) -> Tuple[float, float, float]:
        return {"v1": IMAGENET_STD, "v2": V2_STD, "v2-ft": FT_STD}[self.preprocessing]

    @property
    def family(self) -> str:
        return "efficientnetv2"

    @property
    def relative_path(self) -> str:
        return V2_PATH.format(name=self.name)

    def pretrained_cfg(self) -> Dict[str, object]:
        cfg = super().pretrained_cfg()
        cfg.update(preprocessing=self.preprocessing, num_classes=self.num_classes, official_name=self.name)
        return cfg


def _preprocessing(size: str, flavor: str) -> str:
    if flavor == "21k-ft1k":
        return "v2-ft"  # datasets.ImagenetFt: augname='ft'
    if flavor == "21k":
        return "v2"  # datasets.ImageNet21k: augname=None overrides the model's
    return "v1" if size.startswith("b") else "v2"  # effnetv2_configs: effnetv1_autoaug / randaug


def _rows() -> List[CheckpointV2]:
    rows = []
    for flavor in FLAVORS_V2:
        for size in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl"):
            if size == "xl" and flavor == "1k":
                continue  # effnetv2_model.get_model: "no imagenet ckpt" for XL
            spec = V2_ARCHS[f"v2-{size}"]
            classes = CLASSES_21K if flavor == "21k" else 1000
            eval_size = EVAL_SIZE_21K if flavor == "21k" else spec.resolution
            params = _params_m(spec.with_classes(classes))
            rows.append(CheckpointV2(
                variant=spec.name, flavor=flavor, zoo_name=MMPRETRAIN_NAMES.get((size, flavor)),
                params_m=params, flops_g=None, top1=TOP1.get((size, flavor)), top5=None,
                eval_size=eval_size, preprocessing=_preprocessing(size, flavor), num_classes=classes))
    return rows


def _params_m(spec: ArchSpec) -> float:
    from .arch import count_params

    return round(count_params(spec) / 1e6, 2)


CHECKPOINTS_V2: Tuple[CheckpointV2, ...] = tuple(_rows())


def normalize_flavor_v2(flavor: str) -> str:
    f = flavor.strip().lower().replace("_", "-")
    if f not in FLAVOR_ALIASES_V2:
        raise ConversionError(f"unknown EfficientNetV2 flavor {flavor!r}; use one of {', '.join(FLAVORS_V2)}, "
                              "an official name such as efficientnetv2-s-21k-ft1k, or a zoo model name (see --list)")
    return FLAVOR_ALIASES_V2[f]


def find_v2(variant: Optional[str], flavor: Optional[str]) -> Optional[CheckpointV2]:
    """The V2 checkpoint for (variant, flavor), or None when neither names a V2 one.

    ``flavor`` may be a flavor (``21k-ft1k``, ``imagenet21k``...), an official name
    (``efficientnetv2-s-21k-ft1k``) or an mmpretrain zoo name; ``variant`` may then be left out.
    """
    by_name = None
    if flavor:
        f = flavor.strip().lower()
        by_name = next((c for c in CHECKPOINTS_V2 if f in (c.name, (c.zoo_name or "").lower())), None)
    arch, by_name = _zoo.named_match(variant, flavor, by_name)
    if by_name is not None:
        return by_name
    if arch is None or arch.name not in V2_ARCHS:
        return None
    matches = [c for c in CHECKPOINTS_V2 if c.variant == arch.name]
    if not flavor:
        have = ", ".join(c.flavor for c in matches)
        raise ConversionError(f"--flavor is required for {arch.name}: one of {have}")
    f = normalize_flavor_v2(flavor)
    hit = [c for c in matches if c.flavor == f]
    if not hit:
        raise ConversionError(f"no official {f} checkpoint of {arch.name}; {arch.name} was released as: "
                              f"{', '.join(c.flavor for c in matches)}")
    return hit[0]


_zoo.FINDERS.append(find_v2)
_zoo.EXTRA_CHECKPOINTS.extend(CHECKPOINTS_V2)
