"""The official checkpoints: the 33 of the OpenMMLab model zoo plus the two RandAugment ones.

Top-1 accuracies are the official published ones (tensorflow/tpu models/official/efficientnet
README.md at 7dc921f, and its lite/, edgetpu/, condconv/ READMEs); the zoo page's own top-1,
parameter counts, FLOPs and top-5 are the zoo's (shared/reference/model-zoo.csv); URLs are
tensorflow/tpu's.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from .arch import ArchSpec, architecture_name, get_arch, register_release, release_name
from .errors import ConversionError

# tensorflow/tpu efficientnet README: where the released checkpoints live; mnasnet/README.md and
# mixnet/README.md: MnasNet and MixNet beside efficientnet/ in the same bucket
OFFICIAL_ROOT_URL = "https://storage.googleapis.com/cloud-tpu-checkpoints/"
OFFICIAL_BASE_URL = OFFICIAL_ROOT_URL + "efficientnet/"
BASE_URL_ENV = "EFFNET_BASE_URL"
_LEGACY_BASE_SEGMENT = "efficientnet"  # a $EFFNET_BASE_URL ending in it mirrors efficientnet/, not the root


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

# tensorflow/tpu efficientnet main.py / preprocessing: MEAN_RGB, STDDEV_RGB on the 0-255 scale
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# AdvProp checkpoints expect x * 2 / 255 - 1 (tensorflow/tpu efficientnet README, advprop section)
ADVPROP_MEAN = (0.5, 0.5, 0.5)
ADVPROP_STD = (0.5, 0.5, 0.5)
CROP_PADDING = 32  # tensorflow/tpu efficientnet preprocessing.py (pre-Nov 2021): CROP_PADDING = 32
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


@dataclass(frozen=True)
class Checkpoint:
    """One released checkpoint and how to evaluate it."""

    variant: str
    flavor: str
    zoo_name: Optional[str]
    params_m: float
    flops_g: Optional[float]  # as the zoo page prints it (mmcv's counter); see arch.count_macs
    top1: Optional[float]  # the official published ImageNet top-1 (%)
    top5: Optional[float]  # the zoo page's (no official top-5 is published)
    # beyond the main family: the tarball's path below the official base URL, and the
    # normalization (0-1 scale) when it is not decided by the flavor
    path: Optional[str] = None
    norm: Optional[Tuple[Tuple[float, float, float], Tuple[float, float, float]]] = None
    zoo_top1: Optional[float] = None  # the OpenMMLab zoo page's top-1 of its conversion (%)
    # the resolution it was released at when not its architecture's (the NoisyStudent L2 at 475 px);
    # ``variant`` is then its release name (converter.arch.RELEASES)
    release_resolution: Optional[int] = None

    @property
    def zoo_top1_differs(self) -> bool:
        """Whether the zoo's top-1 differs from the official one beyond the official figure's rounding."""
        if self.zoo_top1 is None or self.top1 is None:
            return False
        return abs(self.zoo_top1 - self.top1) > 0.5 * 10.0 ** -_decimals(self.top1) + 1e-9

    @property
    def arch(self) -> ArchSpec:
        return get_arch(self.variant)

    @property
    def name(self) -> str:
        return f"efficientnet-{self.variant}_{self.flavor}"

    @property
    def resolution(self) -> int:
        return self.release_resolution or self.arch.resolution

    @property
    def arch_name(self) -> str:
        """The architecture's registry name (``l2`` for the L2 released at 475 px)."""
        return architecture_name(self.variant)

    @property
    def crop_pct(self) -> float:
        res = self.resolution
        return res / (res + CROP_PADDING)

    @property
    def interpolation(self) -> str:
        return "bicubic"

    @property
    def mean(self) -> Tuple[float, float, float]:
        if self.norm:
            return self.norm[0]
        return ADVPROP_MEAN if self.flavor == "advprop" else IMAGENET_MEAN

    @property
    def std(self) -> Tuple[float, float, float]:
        if self.norm:
            return self.norm[1]
        return ADVPROP_STD if self.flavor == "advprop" else IMAGENET_STD

    @property
    def family(self) -> str:
        return self.arch.family

    @property
    def relative_path(self) -> str:
        if self.path:
            return self.path
        # official file names spell a release at another resolution efficientnet-<arch>_<resolution>
        v = f"{self.arch_name}_{self.release_resolution}" if self.release_resolution else self.variant
        return _PATHS[self.flavor].format(v=v)

    @property
    def bucket_path(self) -> str:
        """The tarball's path below the bucket root (and below the cache): ``efficientnet/...``."""
        return "efficientnet/" + self.relative_path

    @property
    def url(self) -> str:
        return OFFICIAL_ROOT_URL + self.bucket_path

    def download_url(self) -> str:
        """The URL to fetch: ``mirror_root()`` + ``bucket_path`` (``$EFFNET_BASE_URL``: mirrors, tests)."""
        return mirror_root() + self.bucket_path

    def pretrained_cfg(self) -> Dict[str, object]:
        return {
            "variant": self.variant,
            "flavor": self.flavor,
            "input_size": [3, self.resolution, self.resolution],
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }


def _decimals(x: float) -> int:
    """Decimals of a published figure as written (78.8 -> 1, 77.23 -> 2)."""
    text = repr(float(x))
    return len(text.split(".")[1].rstrip("0")) if "." in text else 0


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
        res = int(px.group(1)) if px and int(px.group(1)) != get_arch(variant).resolution else None
        if res:
            variant = register_release(variant, res)
        rows.append(Checkpoint(variant, flavor, name, float(params), float(flops), OFFICIAL_TOP1[variant, flavor],
                               float(top5), zoo_top1=float(top1), release_resolution=res))
    # Beyond the zoo: RandAugment checkpoints (tensorflow/tpu efficientnet README:
    # B5 83.7% and B7 84.7% top-1 with RandAugment; no top-5 published).
    rows.append(Checkpoint("b5", "randaug", None, 30.39, None, OFFICIAL_TOP1["b5", "randaug"], None))
    rows.append(Checkpoint("b7", "randaug", None, 66.35, None, OFFICIAL_TOP1["b7", "randaug"], None))
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
        rows.append(Checkpoint(variant, "standard", None, float(params), float(madds) if madds else None,
                               float(top1), None, path=path, norm=(FAMILY_MEAN, FAMILY_STD)))
    return rows


CHECKPOINTS: Tuple[Checkpoint, ...] = tuple(_rows())
# Other families' checkpoints (converter/zoo_v2.py: EfficientNetV2), registered when their
# module is imported (converter/__init__.py), and their finders: (variant, flavor) -> a
# checkpoint, or None when the pair is not theirs
EXTRA_CHECKPOINTS: List[Checkpoint] = []
FINDERS: List[Callable[[Optional[str], Optional[str]], Optional[Checkpoint]]] = []


def all_checkpoints() -> List[Checkpoint]:
    """CHECKPOINTS, then the other families' (``--list``, ``--all --only``)."""
    return list(CHECKPOINTS) + list(EXTRA_CHECKPOINTS)


def normalize_flavor(flavor: str) -> str:
    """Canonical flavor name for an alias (``ns`` -> ``noisystudent``)."""
    f = flavor.strip().lower()
    f = FLAVOR_ALIASES.get(f, f)
    if f not in FLAVORS:
        raise ConversionError(
            f"unknown flavor {flavor!r}; use one of {', '.join(FLAVORS)} or a zoo model name (see --list)")
    return f


def find_by_name(name: str) -> Optional[Checkpoint]:
    """The checkpoint ``--list`` shows under ``name`` (its name or its zoo name, any case), or None."""
    key = name.strip().lower()
    for c in all_checkpoints():
        if key == c.name.lower() or (c.zoo_name and key == c.zoo_name.lower()):
            return c
    return None


def named_match(variant: Optional[str], flavor: Optional[str], named: Optional[Checkpoint]):
    """For a family's finder: (``variant``'s architecture or None, ``named``: the checkpoint whose name
    was given as ``flavor``, refused when ``--variant`` names another architecture)."""
    arch = None
    if variant:
        try:
            arch = get_arch(variant)
        except ConversionError:
            arch = None
    if named is not None and variant and (arch is None or arch.name != named.variant):
        raise ConversionError(f"--flavor {flavor} is a {named.variant} checkpoint but --variant is {variant}")
    return arch, named


def find_checkpoint(variant: Optional[str] = None, flavor: Optional[str] = None) -> Checkpoint:
    """The registry entry for (variant, flavor); ``flavor`` may also be any name ``--list`` shows
    (``efficientnet-b0_aa``, the zoo's ``efficientnet-b0_3rdparty_8xb32-aa_in1k``), ``variant`` then optional."""
    if flavor:
        c = find_by_name(flavor)
        if c is not None:
            if variant and get_arch(variant).name != c.variant:
                raise ConversionError(
                    f"--flavor {flavor} is a {c.variant} checkpoint but --variant is {variant}")
            return c
    for finder in FINDERS:
        hit = finder(variant, flavor)
        if hit is not None:
            return hit
    if not variant:
        raise ConversionError("--variant is required (e.g. --variant b4), or give a zoo model name as --flavor")
    arch = get_arch(variant)
    matches = [c for c in CHECKPOINTS if c.variant == arch.name]
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


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.{max(1, _decimals(x))}f}"


LIST_HEADER = ("name", "zoo name", "params(M)", "GFLOPs", "res", "top1", "top1(zoo)", "url")
LIST_NOTES = (
    "name or zoo name: either one is a valid --flavor (then --variant may be left out).",
    "top1: the published ImageNet top-1 % (the official READMEs: tensorflow/tpu models/official/efficientnet and "
    "its lite/, edgetpu/, condconv/ ...; '-': none published).",
    "top1(zoo): the OpenMMLab model zoo's own figure for its conversion, shown where it differs from the published "
    "one beyond rounding (e.g. NoisyStudent b0: zoo 77.63, published 78.8).",
    "GFLOPs: multiply-adds of one image at the native resolution, computed from the architecture.",
)


def list_lines(checkpoints=None) -> List[str]:
    """The ``--list`` table (aligned columns, LIST_HEADER) and its notes, one string per line."""
    from .arch import count_macs, count_params

    rows = [LIST_HEADER]
    for c in all_checkpoints() if checkpoints is None else checkpoints:
        rows.append((c.name, c.zoo_name or "-", f"{count_params(c.arch) / 1e6:.2f}", f"{count_macs(c.arch) / 1e9:.2f}",
                     str(c.resolution), _pct(c.top1), f"{c.zoo_top1:.2f}" if c.zoo_top1_differs else "", c.url))
    widths = [max(len(r[i]) for r in rows) for i in range(len(LIST_HEADER))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return lines + list(LIST_NOTES)
