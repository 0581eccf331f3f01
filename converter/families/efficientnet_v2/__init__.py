"""EfficientNetV2 (google/automl efficientnetv2 at 6a54c87): B0-B3, S, M, L, XL and their 23 checkpoints.

The family's declaration: architectures (arch.py), checkpoints (checkpoints.py), its block kind
``fused_v2`` with its module (modules.py), table rows (mappings/) and TF reference (reference.py);
its MBConv blocks are EfficientNet's kind ``mbconv``.
"""
import importlib

from ...checkpoint import Preprocessing
from ...family import DROPPED, HEAD_1X1, LAST_BLOCK, POOLED, Family, Kind
from . import arch as arch_v2
from . import checkpoints as zoo_v2
from . import training as training_v2


def _reference():
    return importlib.import_module(f"{__name__}.reference")


_SIZES = "v2-b0..v2-b3, v2-s, v2-m, v2-l, v2-xl (EfficientNetV2)"

FAMILY = Family(
    name="efficientnet_v2",
    labels=(arch_v2.FAMILY,),
    kinds=(Kind(arch_v2.FUSED_V2, "fused (EfficientNetV2)", *arch_v2.COST[arch_v2.FUSED_V2],
                module=lambda: importlib.import_module(f"{__name__}.modules").FusedMBConvV2,
                reference=lambda: _reference().FUSED_V2, rows=("BLOCK_FUSED_V2_EXPAND", "BLOCK_FUSED_V2_NO_EXPAND")),),
    archs=arch_v2.V2_ARCHS,
    lookup=arch_v2.V2_ARCHS.get,
    variant_names=lambda: list(arch_v2.V2_ARCHS),
    variants_help=_SIZES,
    checkpoints=lambda: zoo_v2.CHECKPOINTS_V2,
    finder=zoo_v2.find_v2,
    reference=lambda: _reference().MODEL,
    name_prefixes={"efficientnetv2-": "v2-"},
    # mmpretrain's EfficientNetV2 backbone: one ``layers`` entry per block string
    groups_per_stage=True,
    # keras.applications EfficientNetV2 (mappings/keras.py): its own names for both kinds
    keras_rows=lambda b: ("BLOCK_FUSED_V2" if b.kind == arch_v2.FUSED_V2 else "BLOCK_V2")
    + ("_EXPAND" if b.has_expand else "_NO_EXPAND"),
    # zoo_v2.PREPROCESSING: "v1" is EfficientNet's eval, "v2"/"v2-ft" google/automl's (converter/preprocess.py)
    preprocessing={"v1": Preprocessing(), "v2": Preprocessing(v2="v2"), "v2-ft": Preprocessing(v2="v2-ft")},
    synthetic_norm={arch_v2.FAMILY: ((127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3)},  # the generator's inputs
    training=training_v2.training,  # official batch norm, drop-connect, dropout per flavor (training.py)
    # effnetv2_model.EffNetV2Model.call + Head.call (google/automl 6a54c87): no 'global_pool'; 'head'
    # is the pool after dropout (the logits are no endpoint)
    head_endpoints=(("features", LAST_BLOCK), ("head_1x1", HEAD_1X1), ("pooled_features", POOLED),
                    ("head", DROPPED)),
)
