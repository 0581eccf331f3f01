"""The released MnasNet and MixNet checkpoints: names, URLs, published figures, preprocessing.

Sources (tensorflow/tpu 7dc921f846c9e4071f3884b768a7ddf521272a49, models/official/mnasnet/):
README.md lines 11-54 (mnasnet-a1 and mnasnet-small links; the depth-multiplier x input-size
table with top-1/top-5, parameters and multiply-adds; ``.tgz`` files under
``cloud-tpu-checkpoints/mnasnet/``), mixnet/README.md line 22 (``mixnet-s/m/l.tar.gz`` under
``cloud-tpu-checkpoints/mixnet/``; only MixNet-L's 78.9 % top-1 is given there).
1000 classes, no background. Eval preprocessing (preprocessing.py, imagenet_input.py,
mnasnet_main.py): centre crop ``int(res / (res + 32) * min(h, w))`` at offsets
``((h - crop) + 1) // 2``, decode_and_crop_jpeg, ``tf.image.resize`` of tf.compat.v1 (BILINEAR,
half_pixel_centers=False), then ``(x - MEAN_RGB) / STDDEV_RGB`` with the ImageNet values * 255.
Importing this module registers them in converter.zoo (converter/__init__.py does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from . import zoo as _zoo
from .arch import get_arch
from .errors import ConversionError
from .mnasnet import A1_WIDTHS, GRID_RESOLUTIONS, INTERPOLATION, MIXNET, MNASNET, width_tag
from .zoo import CROP_PADDING, IMAGENET_MEAN, IMAGENET_STD, Checkpoint

PREPROCESSING = "mnasnet"  # pretrained_cfg["preprocessing"]: converter.preprocess's bilinear official path

# README.md (mnasnet) table: (depth multiplier, input size) -> (top-1, top-5, params M, MAdds M)
MNAS_TABLE: Dict[Tuple[float, int], Tuple[float, float, float, float]] = {
    (1.4, 224): (77.2, 93.5, 6.1, 591.5), (1.0, 224): (75.2, 92.5, 3.9, 315.2),
    (0.75, 224): (73.3, 91.3, 2.9, 226.7), (0.5, 224): (68.9, 88.4, 2.1, 105.2),
    (0.35, 224): (64.1, 85.1, 1.7, 63.2),
    (1.4, 192): (76.1, 93.0, 6.1, 435.1), (1.0, 192): (74.0, 91.6, 3.9, 232.0),
    (0.75, 192): (72.1, 90.5, 2.9, 166.9), (0.5, 192): (67.2, 87.4, 2.1, 77.6),
    (0.35, 192): (62.4, 83.8, 1.7, 46.8),
    (1.4, 160): (74.8, 92.1, 6.1, 302.8), (1.0, 160): (72.0, 90.5, 3.9, 161.6),
    (0.75, 160): (70.1, 89.3, 2.9, 116.4), (0.5, 160): (64.9, 85.8, 2.1, 54.4),
    (0.35, 160): (52.3, 81.5, 1.7, 32.9),
    (1.4, 128): (72.5, 90.6, 6.1, 194.5), (1.0, 128): (69.3, 88.9, 3.9, 104.1),
    (0.75, 128): (67.0, 87.3, 2.9, 75.0), (0.5, 128): (60.8, 83.0, 2.1, 35.3),
    (0.35, 128): (54.8, 78.1, 1.7, 21.6),
    (1.4, 96): (68.6, 88.1, 6.1, 110.3), (1.0, 96): (64.4, 85.8, 3.9, 59.3),
    (0.75, 96): (62.1, 84.0, 2.9, 42.9), (0.5, 96): (54.7, 78.1, 2.1, 20.5),
    (0.35, 96): (49.3, 73.4, 1.7, 12.7),
}
# README.md: the 224 px files of the multipliers are mnasnet-a1-140 / -075 / -050 / -035
_A1_224_FILES = {1.4: "mnasnet-a1-140", 1.0: "mnasnet-a1", 0.75: "mnasnet-a1-075", 0.5: "mnasnet-a1-050",
                 0.35: "mnasnet-a1-035"}


@dataclass(frozen=True)
class CheckpointMnas(Checkpoint):
    """One released MnasNet / MixNet checkpoint (flavor ``standard``); ``stem`` is the file's name."""

    stem: str = ""
    folder: str = "mnasnet"  # below cloud-tpu-checkpoints/
    suffix: str = ".tgz"

    @property
    def name(self) -> str:
        return self.stem

    @property
    def interpolation(self) -> str:
        return INTERPOLATION

    @property
    def mean(self) -> Tuple[float, float, float]:
        return IMAGENET_MEAN

    @property
    def std(self) -> Tuple[float, float, float]:
        return IMAGENET_STD

    @property
    def crop_pct(self) -> float:
        return self.resolution / (self.resolution + CROP_PADDING)  # preprocessing.py CROP_PADDING = 32

    @property
    def relative_path(self) -> str:
        return f"{self.folder}/{self.stem}{self.suffix}"

    @property
    def bucket_path(self) -> str:
        """Beside efficientnet/ in the bucket: ``mnasnet/...``, ``mixnet/...``."""
        return self.relative_path

    def pretrained_cfg(self) -> Dict[str, object]:
        cfg = super().pretrained_cfg()
        cfg.update(preprocessing=PREPROCESSING, official_name=self.stem)
        return cfg


def _rows() -> List[CheckpointMnas]:
    rows: List[CheckpointMnas] = []
    for w in A1_WIDTHS:
        for res in (224,) + GRID_RESOLUTIONS:
            top1, top5, params, madds = MNAS_TABLE[(w, res)]
            if res == 224:
                variant, stem = ("mnasnet-a1" if w == 1.0 else f"mnasnet-a1_d{width_tag(w)}"), _A1_224_FILES[w]
            else:
                variant = stem = f"mnasnet-a1_d{width_tag(w)}_i{res}"
            rows.append(CheckpointMnas(variant, "standard", None, params, madds / 1000, top1, top5, stem=stem))
    # README.md: mnasnet-small "~66% top-1 ... 2.0M parameters and 68M Multiply-Adds"
    rows.append(CheckpointMnas("mnasnet-small", "standard", None, 2.0, 0.068, 66.0, None, stem="mnasnet-small"))
    # mixnet/README.md: MixNet-L 78.9 % top-1; the repository gives no S/M figures (None); parameters
    # as the official builder's variables count them
    for size, top1 in (("s", None), ("m", None), ("l", 78.9)):
        name = f"mixnet-{size}"
        params = round(_zoo_params(name) / 1e6, 2)
        rows.append(CheckpointMnas(name, "standard", None, params, None, top1, None, stem=name, folder=MIXNET,
                                   suffix=".tar.gz"))
    return rows


def _zoo_params(variant: str) -> int:
    from .arch import count_params

    return count_params(get_arch(variant))


CHECKPOINTS_MNAS: Tuple[CheckpointMnas, ...] = tuple(_rows())
_BY_VARIANT = {c.variant: c for c in CHECKPOINTS_MNAS}
_BY_STEM = {c.stem: c for c in CHECKPOINTS_MNAS}


def find_mnas(variant: Optional[str], flavor: Optional[str]) -> Optional[CheckpointMnas]:
    """The checkpoint of a MnasNet/MixNet ``variant`` (flavor none or ``standard``), or of the file
    name given as ``flavor`` (``mnasnet-a1-140``); None when neither is one of them."""
    arch, by_stem = _zoo.named_match(variant, flavor, _BY_STEM.get(flavor.strip().lower()) if flavor else None)
    if by_stem is not None:
        return by_stem
    if arch is None or arch.family not in (MNASNET, MIXNET):
        return None
    if flavor and _zoo.FLAVOR_ALIASES.get(flavor.strip().lower(), flavor.strip().lower()) != "standard":
        raise ConversionError(f"{arch.name} was released once (flavor standard, file {_BY_VARIANT[arch.name].stem}); "
                              f"drop --flavor {flavor}")
    return _BY_VARIANT[arch.name]


_zoo.FINDERS.append(find_mnas)
_zoo.EXTRA_CHECKPOINTS.extend(CHECKPOINTS_MNAS)
