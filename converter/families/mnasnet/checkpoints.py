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
The family package (converter/families/mnasnet/) declares them.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ...arch import params_with
from ...checkpoint import Checkpoint
from ...errors import ConversionError
from .arch import A1_WIDTHS, COST, GRID_RESOLUTIONS, INTERPOLATION, MIXNET, MNAS_ARCHS, registry_key, width_tag

STANDARD = ("standard", "baseline", "std")  # the one flavor, and its aliases as EfficientNet's --flavor takes them
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


def _checkpoint(variant: str, params: float, madds_g: Optional[float], top1: Optional[float], top5: Optional[float],
                stem: str, folder: str = "mnasnet", suffix: str = ".tgz") -> Checkpoint:
    """One released MnasNet / MixNet checkpoint (flavor ``standard``), named as its file ``stem``."""
    return Checkpoint(variant, "standard", None, params, madds_g, top1, top5, name=stem,
                      arch=MNAS_ARCHS[registry_key(variant)], folder="",
                      relative_path=f"{folder}/{stem}{suffix}", interpolation=INTERPOLATION,
                      preprocessing=PREPROCESSING, extra_cfg=(("official_name", stem),))


def _rows() -> List[Checkpoint]:
    rows: List[Checkpoint] = []
    for w in A1_WIDTHS:
        for res in (224,) + GRID_RESOLUTIONS:
            top1, top5, params, madds = MNAS_TABLE[(w, res)]
            if res == 224:
                variant, stem = ("mnasnet-a1" if w == 1.0 else f"mnasnet-a1_d{width_tag(w)}"), _A1_224_FILES[w]
            else:
                variant = stem = f"mnasnet-a1_d{width_tag(w)}_i{res}"
            rows.append(_checkpoint(variant, params, madds / 1000, top1, top5, stem))
    # README.md: mnasnet-small "~66% top-1 ... 2.0M parameters and 68M Multiply-Adds"
    rows.append(_checkpoint("mnasnet-small", 2.0, 0.068, 66.0, None, "mnasnet-small"))
    # mixnet/README.md: MixNet-L 78.9 % top-1; the repository gives no S/M figures (None); parameters
    # as the official builder's variables count them
    for size, top1 in (("s", None), ("m", None), ("l", 78.9)):
        name = f"mixnet-{size}"
        params = round(params_with(MNAS_ARCHS[name], lambda b: COST[b.kind][0](b)) / 1e6, 2)
        rows.append(_checkpoint(name, params, None, top1, None, name, folder=MIXNET, suffix=".tar.gz"))
    return rows


CHECKPOINTS_MNAS: Tuple[Checkpoint, ...] = tuple(_rows())
_BY_VARIANT = {c.variant: c for c in CHECKPOINTS_MNAS}



def find_mnas(arch, flavor: Optional[str]) -> Optional[Checkpoint]:
    """The checkpoint of a MnasNet/MixNet architecture ``arch`` (flavor none or ``standard``), or None
    when ``arch`` is not one of them (a file name given as ``flavor`` was looked up before)."""
    if arch.name not in _BY_VARIANT:
        return None
    if flavor and flavor.strip().lower() not in STANDARD:
        raise ConversionError(f"{arch.name} was released once (flavor standard, file {_BY_VARIANT[arch.name].name}); "
                              f"drop --flavor {flavor}")
    return _BY_VARIANT[arch.name]
