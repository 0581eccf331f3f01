"""Layout 'native': our own ``converter.model.EfficientNet``.

Each row: (official layer under the model scope, module path in the PyTorch model,
layer kind, TensorFlow kernel shape in symbols). Kinds decide which variables a layer has and
how each is laid out (converter/reorder.py); symbols are filled from the block being expanded:
  in, mid, out, se, k  (a block)     stem, head, last, classes  (the whole model)
A row whose shape uses ``se`` exists only in blocks with squeeze-excitation.
CondConv rows also use  experts  and the layer names  cce, ccd, ccp  (the model-wide Keras
counters, filled by converter.mapping.expand); their shape is (experts, kh, kw, in, out): the
variable is [experts, kh*kw*in*out] (kinds.FLATTENED).
"""
from .kinds import BN, CONDCONV, CONV, CONV_BIAS, DENSE, DWCONDCONV, DWCONV
from .layout import Layout

# every variant; computes the fused-stride placement the spec says; a plain state_dict file
LAYOUT = Layout("native", summary="converter.load_model", native=True)

STEM = (
    # official layer                     module                kind       TF kernel shape
    ("stem/conv2d",                      "stem.conv",          CONV,      (3, 3, 3, "stem")),
    ("stem/tpu_batch_normalization",     "stem.bn",            BN,        ("stem",)),
)

# Blocks with an expand conv (expand ratio != 1): efficientnet_model.MBConvBlock creation order
BLOCK_EXPAND = (
    ("blocks_{i}/conv2d",                    "blocks.{i}.expand_conv",  CONV,      (1, 1, "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{i}.bn0",          BN,        ("mid",)),
    ("blocks_{i}/depthwise_conv2d",          "blocks.{i}.dw_conv",      DWCONV,    ("k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization_1", "blocks.{i}.bn1",          BN,        ("mid",)),
    ("blocks_{i}/se/conv2d",                 "blocks.{i}.se.reduce",    CONV_BIAS, (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               "blocks.{i}.se.expand",    CONV_BIAS, (1, 1, "se", "mid")),
    ("blocks_{i}/conv2d_1",                  "blocks.{i}.project_conv", CONV,      (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_2", "blocks.{i}.bn2",          BN,        ("out",)),
)

# Blocks without one (expand ratio 1): TF's layer counters start one lower
BLOCK_NO_EXPAND = (
    ("blocks_{i}/depthwise_conv2d",          "blocks.{i}.dw_conv",      DWCONV,    ("k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{i}.bn1",          BN,        ("mid",)),
    ("blocks_{i}/se/conv2d",                 "blocks.{i}.se.reduce",    CONV_BIAS, (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               "blocks.{i}.se.expand",    CONV_BIAS, (1, 1, "se", "mid")),
    ("blocks_{i}/conv2d",                    "blocks.{i}.project_conv", CONV,      (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_1", "blocks.{i}.bn2",          BN,        ("out",)),
)

# EdgeTPU fused blocks (block string c1): efficientnet_model.MBConvBlockWithoutDepthwise,
# a kxk expand conv then the 1x1 project conv (which one strides: arch.FUSED_STRIDES); no depthwise conv, no SE
BLOCK_FUSED_EXPAND = (
    ("blocks_{i}/conv2d",                    "blocks.{i}.expand_conv",  CONV,      ("k", "k", "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{i}.bn0",          BN,        ("mid",)),
    ("blocks_{i}/conv2d_1",                  "blocks.{i}.project_conv", CONV,      (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_1", "blocks.{i}.bn1",          BN,        ("out",)),
)

BLOCK_FUSED_NO_EXPAND = (
    ("blocks_{i}/conv2d",                    "blocks.{i}.project_conv", CONV,      (1, 1, "in", "out")),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{i}.bn1",          BN,        ("out",)),
)

# EfficientNetV2 fused blocks (block kind fused_v2, V2 block string c1): google/automl
# efficientnetv2 effnetv2_model.FusedMBConvBlock, the kxk expand conv carrying the stride,
# [SE], the 1x1 project conv; expand ratio 1: [SE], one kxk conv carrying the stride (+ act)
BLOCK_FUSED_V2_EXPAND = (
    ("blocks_{i}/conv2d",                    "blocks.{i}.expand_conv",  CONV,      ("k", "k", "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{i}.bn0",          BN,        ("mid",)),
    ("blocks_{i}/se/conv2d",                 "blocks.{i}.se.reduce",    CONV_BIAS, (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               "blocks.{i}.se.expand",    CONV_BIAS, (1, 1, "se", "mid")),
    ("blocks_{i}/conv2d_1",                  "blocks.{i}.project_conv", CONV,      (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_1", "blocks.{i}.bn1",          BN,        ("out",)),
)

BLOCK_FUSED_V2_NO_EXPAND = (
    ("blocks_{i}/se/conv2d",                 "blocks.{i}.se.reduce",    CONV_BIAS, (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               "blocks.{i}.se.expand",    CONV_BIAS, (1, 1, "se", "mid")),
    ("blocks_{i}/conv2d",                    "blocks.{i}.project_conv", CONV,      ("k", "k", "in", "out")),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{i}.bn1",          BN,        ("out",)),
)

# CondConv blocks (block string cc): routing dense first, then MBConvBlock's layers with the
# expand / depthwise / project convs conditional. The kernels' official names carry model-wide
# counters (and an extra model/ element when built with tf_keras); this is the inventory's form,
# converter.mapping.resolve_condconv_names matches a checkpoint's by block and order.
BLOCK_CONDCONV_EXPAND = (
    ("blocks_{i}/dense",                     "blocks.{i}.routing",      DENSE,     ("in", "experts")),
    ("model/blocks_{i}/{cce}",               "blocks.{i}.expand_conv",  CONDCONV,  ("experts", 1, 1, "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{i}.bn0",          BN,        ("mid",)),
    ("model/blocks_{i}/{ccd}",               "blocks.{i}.dw_conv",      DWCONDCONV, ("experts", "k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization_1", "blocks.{i}.bn1",          BN,        ("mid",)),
    ("blocks_{i}/se/conv2d",                 "blocks.{i}.se.reduce",    CONV_BIAS, (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               "blocks.{i}.se.expand",    CONV_BIAS, (1, 1, "se", "mid")),
    ("model/blocks_{i}/{ccp}",               "blocks.{i}.project_conv", CONDCONV,  ("experts", 1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_2", "blocks.{i}.bn2",          BN,        ("out",)),
)

BLOCK_CONDCONV_NO_EXPAND = (
    ("blocks_{i}/dense",                     "blocks.{i}.routing",      DENSE,     ("in", "experts")),
    ("model/blocks_{i}/{ccd}",               "blocks.{i}.dw_conv",      DWCONDCONV, ("experts", "k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{i}.bn1",          BN,        ("mid",)),
    ("blocks_{i}/se/conv2d",                 "blocks.{i}.se.reduce",    CONV_BIAS, (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               "blocks.{i}.se.expand",    CONV_BIAS, (1, 1, "se", "mid")),
    ("model/blocks_{i}/{ccp}",               "blocks.{i}.project_conv", CONDCONV,  ("experts", 1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_1", "blocks.{i}.bn2",          BN,        ("out",)),
)

HEAD = (
    ("head/conv2d",                      "head.conv",          CONV,      (1, 1, "last", "head")),
    ("head/tpu_batch_normalization",     "head.bn",            BN,        ("head",)),
    ("head/dense",                       "classifier",         DENSE,     ("head", "classes")),
)
