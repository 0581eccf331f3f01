"""EfficientNet (V1) and its variants Lite, EdgeTPU and CondConv (tensorflow/tpu models/official/efficientnet).

The family's declaration: architectures (arch.py; their blocks built by converter.arch.ArchSpec),
checkpoints (checkpoints.py), its block kinds ``mbconv`` (also EfficientNetV2's), ``fused`` and
``condconv`` with their modules (modules.py; MBConv: converter.blocks), table rows
(mappings/efficientnet.py and the library tables) and TF reference (reference.py).
"""
import importlib

from ... import arch as base
from ...family import DROPPED, HEAD_1X1, LAST_BLOCK, LOGITS, POOLED, Family, Kind
from ...keras_names import counter_name
from . import arch, checkpoints, training


def _modules():
    return importlib.import_module(f"{__name__}.modules")


def _reference():
    return importlib.import_module(f"{__name__}.reference")


def _condconv_fields(spec):
    """The CondConv kernels' layer names (the tables' ``{cce}``, ``{ccp}``, ``{ccd}``): Keras counters
    over the whole model. efficientnet_model.MBConvBlock._build creates three CondConv2D per block
    (fused, expand, project; only expand and project get variables) and one depthwise."""
    out, cc = {}, 0
    for b in spec.blocks():
        if b.kind == base.KIND_CONDCONV:
            out[b.index] = {"cce": counter_name("cond_conv2d", 3 * cc + 1), "ccp": counter_name("cond_conv2d", 3 * cc + 2),
                            "ccd": counter_name("depthwise_cond_conv2d", cc)}
            cc += 1
    return out


KINDS = (
    Kind(base.KIND_MBCONV, "MBConv", base.mbconv_params, base.mbconv_macs,
         module=lambda: importlib.import_module("converter.blocks").MBConv, reference=lambda: _reference().MBCONV,
         rows=("BLOCK_EXPAND", "BLOCK_NO_EXPAND")),
    Kind(base.KIND_FUSED, "fused (EdgeTPU)", arch.fused_params, arch.fused_macs,
         module=lambda: _modules().FusedMBConv, reference=lambda: _reference().FUSED,
         rows=("BLOCK_FUSED_EXPAND", "BLOCK_FUSED_NO_EXPAND")),
    Kind(base.KIND_CONDCONV, "CondConv", arch.condconv_params, arch.condconv_macs,
         module=lambda: _modules().CondConvMBConv, reference=lambda: _reference().CONDCONV,
         rows=("BLOCK_CONDCONV_EXPAND", "BLOCK_CONDCONV_NO_EXPAND"), fields=_condconv_fields),
)

_OWN_NORM = (checkpoints.FAMILY_MEAN, checkpoints.FAMILY_STD)  # Lite, EdgeTPU, CondConv: (x - 127) / 128

FAMILY = Family(
    name="efficientnet",
    labels=("efficientnet", "lite", "edgetpu", "condconv"),
    kinds=KINDS,
    archs=arch.ARCHS,
    lookup=arch.lookup,
    variant_names=arch.variant_names,
    variants_help=arch.variants_help(),
    checkpoints=lambda: checkpoints.CHECKPOINTS,
    finder=checkpoints.find,
    reference=lambda: _reference().MODEL,
    name_prefixes={"efficientnet-": ""},
    batch_default=True,  # the 33 checkpoints of the OpenMMLab model zoo
    keras_rows=lambda b: "BLOCK_EXPAND" if b.has_expand else "BLOCK_NO_EXPAND",
    synthetic_norm={"lite": _OWN_NORM, "edgetpu": _OWN_NORM, "condconv": _OWN_NORM},
    training=training.training,  # official batch norm, drop-connect, dropout (training.py)
    # efficientnet_model.Model.call (tensorflow/tpu 7dc921f; Lite, EdgeTPU and CondConv build this Model):
    # 'features' before the head conv, 'global_pool' after dropout, 'head' the logits
    head_endpoints=(("features", LAST_BLOCK), ("head_1x1", HEAD_1X1), ("pooled_features", POOLED),
                    ("global_pool", DROPPED), ("head", LOGITS)),
)
