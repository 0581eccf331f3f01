"""MnasNet and MixNet (tensorflow/tpu models/official/mnasnet at 7dc921f).

The family's declaration: architectures and official names (arch.py), checkpoints
(checkpoints.py), its block kinds ``mnasblock`` (MnasBlock: MBConv's computation with ReLU,
converter.blocks.MBConv) and ``mixconv`` (MixnetBlock, modules.py), table rows (mappings/mnasnet.py,
mappings/timm_mnasnet.py: roles its names resolve) and TF reference (reference.py).
"""
import importlib

from ...checkpoint import Preprocessing
from ...family import LAST_BLOCK, LOGITS, Family, Kind
from . import arch as mnasnet
from . import checkpoints as zoo_mnasnet
from . import training as training_mnas


def _modules():
    return importlib.import_module(f"{__name__}.modules")


def _reference():
    return importlib.import_module(f"{__name__}.reference")


KINDS = (
    Kind(mnasnet.MNASBLOCK, "MnasNet", *mnasnet.COST[mnasnet.MNASBLOCK],
         module=lambda: importlib.import_module("converter.blocks").MBConv, reference=lambda: _reference().BLOCK, rows=("BLOCK_MNAS_EXPAND", "BLOCK_MNAS_NO_EXPAND"),
         fields=mnasnet.block_roles),
    Kind(mnasnet.MIXCONV, "MixConv (MixNet)", *mnasnet.COST[mnasnet.MIXCONV], module=lambda: _modules().MixConvBlock,
         reference=lambda: _reference().BLOCK, rows=("BLOCK_MIXCONV_EXPAND", "BLOCK_MIXCONV_NO_EXPAND"),
         fields=mnasnet.block_roles),
)

FAMILY = Family(
    name="mnasnet",
    labels=(mnasnet.MNASNET, mnasnet.MIXNET),
    kinds=KINDS,
    archs=mnasnet.MNAS_ARCHS,
    lookup=mnasnet.MNAS_ARCHS.get,
    variant_names=lambda: list(mnasnet.MNAS_ARCHS),
    variants_help="mnasnet-a1, mnasnet-a1-d<width>[-i<size>] (e.g. mnasnet-a1-d0.5-i160), mnasnet-small (MnasNet), "
                  "mixnet-s, mixnet-m, mixnet-l (MixNet)",
    checkpoints=lambda: zoo_mnasnet.CHECKPOINTS_MNAS,
    finder=zoo_mnasnet.find_mnas,
    reference=lambda: _reference().MODEL,
    roles=mnasnet.model_roles,
    preprocessing={zoo_mnasnet.PREPROCESSING: Preprocessing(resize=mnasnet.INTERPOLATION)},
    training=training_mnas.training,  # official batch norm and dropout, no drop-connect (training.py)
    # mnasnet_model.MnasNetModel.call and mixnet_model.MixnetModel.call (tensorflow/tpu 7dc921f):
    # 'global_pool' is the last block's output (before the head conv), 'head' the logits
    head_endpoints=(("global_pool", LAST_BLOCK), ("head", LOGITS)),
)
