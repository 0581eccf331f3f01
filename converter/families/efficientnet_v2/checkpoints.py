"""The 23 official EfficientNetV2 checkpoints: names, URLs, flavors, eval size, preprocessing.

Sources (google/automl ``efficientnetv2/`` at 6a54c87): README.md (the checkpoint tables, URLs
``efficientnet/v2/<name>.tgz``, top-1), effnetv2_model.get_model (the same URL list),
effnetv2_configs.efficientnetv2_params (eval sizes), datasets.py (ImageNet21k evaluates at 224
with ``augname=None``; ImagenetFt fine-tunes with ``augname='ft'``), preprocessing.py and
preprocess_legacy.py (what each ``augname`` does at eval). mmpretrain's zoo names: its
``configs/efficientnet_v2/metafile.yml`` (mmpretrain 1.2.0).

Flavors: ``1k`` (ImageNet-1k), ``21k`` (ImageNet-21k, 21843 sigmoid outputs), ``21k-ft1k``
(21k pre-trained, fine-tuned on 1k).

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

The family package (converter/families/efficientnet_v2/) declares them.
"""
from __future__ import annotations

from typing import Optional

from ...arch import params_with
from ...checkpoint import CROP_PADDING, IMAGENET_MEAN, IMAGENET_STD, Checkpoint
from ...errors import ConversionError
from .arch import COST, V2_ARCHS

# effnetv2_model.get_model: v2url, gs://cloud-tpu-checkpoints/efficientnet/v2/<name>.tgz
V2_FOLDER, V2_PATH = "efficientnet/", "v2/{name}.tgz"
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


_NORM = {"v1": (IMAGENET_MEAN, IMAGENET_STD), "v2": (V2_MEAN, V2_STD), "v2-ft": (FT_MEAN, FT_STD)}


def _checkpoint(size: str, flavor: str) -> Checkpoint:
    """One released V2 checkpoint, named as its official tarball: ``efficientnetv2-s``,
    ``efficientnetv2-s-21k``, ``efficientnetv2-s-21k-ft1k``; ``variant`` is ``v2-s`` etc."""
    spec = V2_ARCHS[f"v2-{size}"]
    classes = CLASSES_21K if flavor == "21k" else 1000
    eval_size = EVAL_SIZE_21K if flavor == "21k" else spec.resolution
    name = f"efficientnetv2-{size}" + ("" if flavor == "1k" else f"-{flavor}")
    prep = _preprocessing(size, flavor)
    crop = 1.0 if prep == "v2-ft" or (prep == "v2" and eval_size >= NO_CROP_FROM) else eval_size / (eval_size + CROP_PADDING)
    mean, std = _NORM[prep]
    arch = spec.at_resolution(eval_size).with_classes(classes)
    return Checkpoint(spec.name, flavor, MMPRETRAIN_NAMES.get((size, flavor)), round(params_with(arch, lambda b: COST[b.kind][0](b)) / 1e6, 2),
                      None, TOP1.get((size, flavor)), None, name=name, arch=arch, folder=V2_FOLDER,
                      relative_path=V2_PATH.format(name=name), mean=mean, std=std, crop=crop,
                      interpolation="bicubic" if prep == "v1" else "bilinear", preprocessing=prep,
                      extra_cfg=(("num_classes", classes), ("official_name", name)))


def _preprocessing(size: str, flavor: str) -> str:
    if flavor == "21k-ft1k":
        return "v2-ft"  # datasets.ImagenetFt: augname='ft'
    if flavor == "21k":
        return "v2"  # datasets.ImageNet21k: augname=None overrides the model's
    return "v1" if size.startswith("b") else "v2"  # effnetv2_configs: effnetv1_autoaug / randaug


CHECKPOINTS_V2 = tuple(_checkpoint(size, flavor) for flavor in FLAVORS_V2
                       for size in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")
                       if not (size == "xl" and flavor == "1k"))  # effnetv2_model.get_model: "no imagenet ckpt" for XL


def normalize_flavor_v2(flavor: str) -> str:
    f = flavor.strip().lower().replace("_", "-")
    if f not in FLAVOR_ALIASES_V2:
        raise ConversionError(f"unknown EfficientNetV2 flavor {flavor!r}; use one of {', '.join(FLAVORS_V2)}, "
                              "an official name such as efficientnetv2-s-21k-ft1k, or a zoo model name (see --list)")
    return FLAVOR_ALIASES_V2[f]


def find_v2(arch, flavor: Optional[str]) -> Optional[Checkpoint]:
    """The V2 checkpoint of architecture ``arch`` and ``flavor`` (``21k-ft1k``, ``imagenet21k``...), or
    None when ``arch`` is not a V2 one."""
    if arch.name not in V2_ARCHS:
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
