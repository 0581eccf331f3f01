"""EfficientNet (V1) and its variants Lite, EdgeTPU and CondConv (tensorflow/tpu models/official/efficientnet).

The family's declaration: architectures (converter/arch.py), checkpoints (converter/zoo.py), its
block kinds ``mbconv`` (also used by EfficientNetV2), ``fused`` and ``condconv`` with their
modules (converter/model.py), table rows (mappings/efficientnet.py and the library tables) and TF
reference (reference.py here).
"""
import importlib

from ... import arch, zoo
from ...family import Family, Kind
from ...keras_names import counter_name


def _modules():
    return importlib.import_module("converter.model")


def _reference():
    return importlib.import_module(f"{__name__}.reference")


def _condconv_fields(spec):
    """The CondConv kernels' layer names (the tables' ``{cce}``, ``{ccp}``, ``{ccd}``): Keras counters
    over the whole model. efficientnet_model.MBConvBlock._build creates three CondConv2D per block
    (fused, expand, project; only expand and project get variables) and one depthwise."""
    out, cc = {}, 0
    for b in spec.blocks():
        if b.kind == arch.KIND_CONDCONV:
            out[b.index] = {"cce": counter_name("cond_conv2d", 3 * cc + 1), "ccp": counter_name("cond_conv2d", 3 * cc + 2),
                            "ccd": counter_name("depthwise_cond_conv2d", cc)}
            cc += 1
    return out


KINDS = (
    Kind(arch.KIND_MBCONV, "MBConv", arch.mbconv_params, arch.mbconv_macs,
         module=lambda: _modules().MBConv, reference=lambda: _reference().MBCONV,
         rows=("BLOCK_EXPAND", "BLOCK_NO_EXPAND")),
    Kind(arch.KIND_FUSED, "fused (EdgeTPU)", arch.fused_params, arch.fused_macs,
         module=lambda: _modules().FusedMBConv, reference=lambda: _reference().FUSED,
         rows=("BLOCK_FUSED_EXPAND", "BLOCK_FUSED_NO_EXPAND")),
    Kind(arch.KIND_CONDCONV, "CondConv", arch.condconv_params, arch.condconv_macs,
         module=lambda: _modules().CondConvMBConv, reference=lambda: _reference().CONDCONV,
         rows=("BLOCK_CONDCONV_EXPAND", "BLOCK_CONDCONV_NO_EXPAND"), fields=_condconv_fields),
)

_OWN_NORM = (zoo.FAMILY_MEAN, zoo.FAMILY_STD)  # Lite, EdgeTPU, CondConv: (x - 127) / 128

FAMILY = Family(
    name="efficientnet",
    labels=("efficientnet", "lite", "edgetpu", "condconv"),
    kinds=KINDS,
    archs=arch.ARCHS,
    lookup=arch.lookup,
    variant_names=arch.variant_names,
    variants_help=arch.variants_help(),
    checkpoints=lambda: zoo.CHECKPOINTS,
    finder=zoo.find,
    reference=lambda: _reference().MODEL,
    name_prefixes={"efficientnet-": ""},
    batch_default=True,  # the 33 checkpoints of the OpenMMLab model zoo
    keras_rows=lambda b: "BLOCK_EXPAND" if b.has_expand else "BLOCK_NO_EXPAND",
    synthetic_norm={"lite": _OWN_NORM, "edgetpu": _OWN_NORM, "condconv": _OWN_NORM},
)
