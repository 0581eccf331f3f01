"""EfficientNet's official checkpoints: the 33 of the OpenMMLab model zoo, the two RandAugment ones
and one each of Lite0-4, EdgeTPU S/M/L and CondConv (the family's ``FAMILY.checkpoints``).

Top-1 accuracies are the official published ones (tensorflow/tpu models/official/efficientnet
README.md at 7dc921f, and its lite/, edgetpu/, condconv/ READMEs); the zoo page's own top-1,
parameter counts, FLOPs and top-5 are the zoo's (shared/reference/model-zoo.csv); URLs are
tensorflow/tpu's.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from .arch import lookup, register_release, release_name
from ...checkpoint import IMAGENET_MEAN, IMAGENET_STD, OFFICIAL_ROOT_URL, Checkpoint
from ...errors import ConversionError

# tensorflow/tpu efficientnet README: where the released checkpoints live (below converter.checkpoint's
# OFFICIAL_ROOT_URL, the bucket)
FOLDER = "efficientnet/"
OFFICIAL_BASE_URL = OFFICIAL_ROOT_URL + FOLDER
# AdvProp checkpoints expect x * 2 / 255 - 1 (tensorflow/tpu efficientnet README, advprop section)
ADVPROP_MEAN = (0.5, 0.5, 0.5)
ADVPROP_STD = (0.5, 0.5, 0.5)
# Lite, EdgeTPU and CondConv: MEAN_RGB = [127.0]*3, STDDEV_RGB = [128.0]*3 on the 0-255 scale
# (shared/reference/family.csv; tensorflow/tpu lite/efficientnet_lite_builder.py MEAN_RGB/STDDEV_RGB)
FAMILY_MEAN = (127.0 / 255.0,) * 3
FAMILY_STD = (128.0 / 255.0,) * 3

FLAVORS = ("standard", "aa", "advprop", "noisystudent", "randaug")
FLAVOR_ALIASES = {
    "baseline": "standard", "std": "standard",
    "autoaugment": "aa", "autoaug": "aa",
    "ap": "advprop", "aa-advprop": "advprop",
    "ns": "noisystudent", "noisy-student": "noisystudent", "noisy_student": "noisystudent",
    "ra": "randaug", "randaugment": "randaug",
}

# (flavor, relative path pattern) -- shared/reference/README.md "Official downloads"
_PATHS = {
    "standard": "ckpts/efficientnet-{v}.tar.gz",
    "aa": "ckptsaug/efficientnet-{v}.tar.gz",
    "advprop": "advprop/efficientnet-{v}.tar.gz",
    "noisystudent": "noisystudent/noisy_student_efficientnet-{v}.tar.gz",
    "randaug": "randaug/efficientnet-{v}-randaug.tar.gz",
}


def _checkpoint(variant: str, flavor: str, zoo_name: Optional[str], params_m: float, flops_g: Optional[float],
                top1: Optional[float], top5: Optional[float], path: Optional[str] = None, norm=None,
                zoo_top1: Optional[float] = None, release_resolution: Optional[int] = None) -> Checkpoint:
    """One V1 checkpoint: named ``efficientnet-<variant>_<flavor>``; ``path`` below the official base URL
    (default by flavor, _PATHS); ``norm`` (mean, std) when the flavor does not decide it."""
    if path is None:
        # official file names spell a release at another resolution efficientnet-<arch>_<resolution>
        v = variant.rsplit("-", 1)[0] + f"_{release_resolution}" if release_resolution else variant
        path = _PATHS[flavor].format(v=v)
    mean, std = norm or ((ADVPROP_MEAN, ADVPROP_STD) if flavor == "advprop" else (IMAGENET_MEAN, IMAGENET_STD))
    return Checkpoint(variant, flavor, zoo_name, params_m, flops_g, top1, top5, name=f"efficientnet-{variant}_{flavor}",
                      arch=lookup(variant), folder=FOLDER, relative_path=path, mean=mean, std=std,
                      zoo_top1=zoo_top1)


# tensorflow/tpu models/official/efficientnet/README.md (HEAD 7dc921f), the checkpoint table: top-1 %
_OFFICIAL = {
    "standard": {"b0": 76.7, "b1": 78.7, "b2": 79.8, "b3": 81.1, "b4": 82.5, "b5": 83.1},
    "aa": {"b0": 77.1, "b1": 79.1, "b2": 80.1, "b3": 81.6, "b4": 82.9, "b5": 83.6, "b6": 84.0, "b7": 84.3},
    "randaug": {"b5": 83.7, "b7": 84.7},
    "advprop": {"b0": 77.6, "b1": 79.6, "b2": 80.5, "b3": 81.9, "b4": 83.3, "b5": 84.3, "b6": 84.8, "b7": 85.2,
                "b8": 85.5},
    "noisystudent": {"b0": 78.8, "b1": 81.5, "b2": 82.4, "b3": 84.1, "b4": 85.3, "b5": 86.1, "b6": 86.4, "b7": 86.9,
                     release_name("l2", 475): 88.2, "l2": 88.4},
}
OFFICIAL_TOP1: Dict[Tuple[str, str], float] = {(v, f): t for f, row in _OFFICIAL.items() for v, t in row.items()}


def _rows() -> List[Checkpoint]:
    # model, variant, flavor, params_m, flops_g, top1 (the zoo's), top5 -- shared/reference/model-zoo.csv
    zoo = """
efficientnet-b0_3rdparty_8xb32_in1k,b0,standard,5.29,0.42,76.74,93.17
efficientnet-b0_3rdparty_8xb32-aa_in1k,b0,aa,5.29,0.42,77.26,93.41
efficientnet-b0_3rdparty_8xb32-aa-advprop_in1k,b0,advprop,5.29,0.42,77.53,93.61
efficientnet-b0_3rdparty-ra-noisystudent_in1k,b0,noisystudent,5.29,0.42,77.63,94.00
efficientnet-b1_3rdparty_8xb32_in1k,b1,standard,7.79,0.74,78.68,94.28
efficientnet-b1_3rdparty_8xb32-aa_in1k,b1,aa,7.79,0.74,79.20,94.42
efficientnet-b1_3rdparty_8xb32-aa-advprop_in1k,b1,advprop,7.79,0.74,79.52,94.43
efficientnet-b1_3rdparty-ra-noisystudent_in1k,b1,noisystudent,7.79,0.74,81.44,95.83
efficientnet-b2_3rdparty_8xb32_in1k,b2,standard,9.11,1.07,79.64,94.80
efficientnet-b2_3rdparty_8xb32-aa_in1k,b2,aa,9.11,1.07,80.21,94.96
efficientnet-b2_3rdparty_8xb32-aa-advprop_in1k,b2,advprop,9.11,1.07,80.45,95.07
efficientnet-b2_3rdparty-ra-noisystudent_in1k,b2,noisystudent,9.11,1.07,82.47,96.23
efficientnet-b3_3rdparty_8xb32_in1k,b3,standard,12.23,1.95,81.01,95.34
efficientnet-b3_3rdparty_8xb32-aa_in1k,b3,aa,12.23,1.95,81.58,95.67
efficientnet-b3_3rdparty_8xb32-aa-advprop_in1k,b3,advprop,12.23,1.95,81.81,95.69
efficientnet-b3_3rdparty-ra-noisystudent_in1k,b3,noisystudent,12.23,1.95,84.02,96.89
efficientnet-b4_3rdparty_8xb32_in1k,b4,standard,19.34,4.66,82.57,96.09
efficientnet-b4_3rdparty_8xb32-aa_in1k,b4,aa,19.34,4.66,82.95,96.26
efficientnet-b4_3rdparty_8xb32-aa-advprop_in1k,b4,advprop,19.34,4.66,83.25,96.44
efficientnet-b4_3rdparty-ra-noisystudent_in1k,b4,noisystudent,19.34,4.66,85.25,97.52
efficientnet-b5_3rdparty_8xb32_in1k,b5,standard,30.39,10.80,83.18,96.47
efficientnet-b5_3rdparty_8xb32-aa_in1k,b5,aa,30.39,10.80,83.82,96.76
efficientnet-b5_3rdparty_8xb32-aa-advprop_in1k,b5,advprop,30.39,10.80,84.21,96.98
efficientnet-b5_3rdparty-ra-noisystudent_in1k,b5,noisystudent,30.39,10.80,86.08,97.75
efficientnet-b6_3rdparty_8xb32-aa_in1k,b6,aa,43.04,19.97,84.05,96.82
efficientnet-b6_3rdparty_8xb32-aa-advprop_in1k,b6,advprop,43.04,19.97,84.74,97.14
efficientnet-b6_3rdparty-ra-noisystudent_in1k,b6,noisystudent,43.04,19.97,86.47,97.87
efficientnet-b7_3rdparty_8xb32-aa_in1k,b7,aa,66.35,39.32,84.38,96.88
efficientnet-b7_3rdparty_8xb32-aa-advprop_in1k,b7,advprop,66.35,39.32,85.14,97.23
efficientnet-b7_3rdparty-ra-noisystudent_in1k,b7,noisystudent,66.35,39.32,86.83,98.08
efficientnet-b8_3rdparty_8xb32-aa-advprop_in1k,b8,advprop,87.41,65.00,85.38,97.28
efficientnet-l2_3rdparty-ra-noisystudent_in1k-800px,l2,noisystudent,480.31,174.20,88.33,98.65
efficientnet-l2_3rdparty-ra-noisystudent_in1k-475px,l2,noisystudent,480.31,484.98,88.18,98.55
"""
    rows = []
    for line in zoo.strip().splitlines():
        name, variant, flavor, params, flops, top1, top5 = line.split(",")
        # a zoo name ending in -<N>px at another than the architecture's resolution: a release at N px
        px = re.search(r"-(\d+)px$", name)
        res = int(px.group(1)) if px and int(px.group(1)) != lookup(variant).resolution else None
        if res:
            variant = register_release(variant, res)
        rows.append(_checkpoint(variant, flavor, name, float(params), float(flops), OFFICIAL_TOP1[variant, flavor],
                                float(top5), zoo_top1=float(top1), release_resolution=res))
    # Beyond the zoo: RandAugment checkpoints (tensorflow/tpu efficientnet README:
    # B5 83.7% and B7 84.7% top-1 with RandAugment; no top-5 published).
    rows.append(_checkpoint("b5", "randaug", None, 30.39, None, OFFICIAL_TOP1["b5", "randaug"], None))
    rows.append(_checkpoint("b7", "randaug", None, 66.35, None, OFFICIAL_TOP1["b7", "randaug"], None))
    # The rest of the family, one checkpoint each (flavor "standard"): model, params_m,
    # madds_g, top1 and the path of the URL -- shared/reference/family.csv (tensorflow/tpu
    # lite/README.md, edgetpu/README.md, condconv/README.md; no top-5 published)
    family = """
lite0,4.65,0.407,75.1,lite/efficientnet-lite0.tar.gz
lite1,5.42,0.631,76.7,lite/efficientnet-lite1.tar.gz
lite2,6.09,0.899,77.6,lite/efficientnet-lite2.tar.gz
lite3,8.20,1.44,79.8,lite/efficientnet-lite3.tar.gz
lite4,13.01,2.64,81.5,lite/efficientnet-lite4.tar.gz
edgetpu-s,5.44,,77.23,efficientnet-edgetpu-S.tar.gz
edgetpu-m,6.90,,78.69,efficientnet-edgetpu-M.tar.gz
edgetpu-l,10.59,,80.62,efficientnet-edgetpu-L.tar.gz
condconv-b0-4e,13.31,0.402,77.8,condconv/efficientnet-condconv-b0-4e.tar.gz
condconv-b0-8e,24.01,0.413,78.3,condconv/efficientnet-condconv-b0-8e.tar.gz
condconv-b0-8e-depth,39.72,0.614,79.5,condconv/efficientnet-condconv-b0-8e-depth.tar.gz
"""
    for line in family.strip().splitlines():
        variant, params, madds, top1, path = line.split(",")
        rows.append(_checkpoint(variant, "standard", None, float(params), float(madds) if madds else None,
                                float(top1), None, path=path, norm=(FAMILY_MEAN, FAMILY_STD)))
    return rows


CHECKPOINTS: Tuple[Checkpoint, ...] = tuple(_rows())


def normalize_flavor(flavor: str) -> str:
    """Canonical flavor name for an alias (``ns`` -> ``noisystudent``)."""
    f = flavor.strip().lower()
    f = FLAVOR_ALIASES.get(f, f)
    if f not in FLAVORS:
        raise ConversionError(
            f"unknown flavor {flavor!r}; use one of {', '.join(FLAVORS)} or a zoo model name (see --list)")
    return f


def find(arch, flavor: Optional[str]) -> Optional[Checkpoint]:
    """The V1 checkpoint of architecture ``arch`` and ``flavor``; None when ``arch`` is not one of
    this family's (``flavor`` a --list name was looked up before, by converter.registry.find_checkpoint)."""
    matches = [c for c in CHECKPOINTS if c.variant == arch.name]
    if not matches:
        return None
    if flavor:
        f = normalize_flavor(flavor)
        hit = [c for c in matches if c.flavor == f]
        if not hit:
            have = ", ".join(c.flavor for c in matches)
            raise ConversionError(
                f"no official {f} checkpoint of {arch.name}; {arch.name} was released as: {have}")
        return hit[0]
    if len(matches) == 1:
        return matches[0]
    have = ", ".join(c.flavor for c in matches)
    raise ConversionError(f"--flavor is required for {arch.name}: one of {have}")
