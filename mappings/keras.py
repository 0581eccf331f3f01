"""Keras ``keras.applications`` EfficientNetB0-B7 layer names <-> official TensorFlow layer names.

Each row: (Keras layer name, official layer under the model scope, layer kind). Keras names
blocks ``block{stage + 1}{chr(97 + j)}_`` (stage: which block string, j: repeat within it) and
creates the layers of a block in the order below (keras/src/applications/efficientnet.py,
``EfficientNet`` and ``block``); the official names are those of mappings/efficientnet.py, so
that a Keras file read under them goes through the native table unchanged. Expanded per
variant over the decoded blocks of converter/arch.py by ``converter.keras.keras_layers``.
Symbols: ``{name}`` the Keras block prefix (``block2a``), ``{i}`` the official block index.
"""
from .kinds import BN, CONV, CONV_BIAS, DENSE, DWCONV

STEM = (
    # Keras layer               official layer                          kind
    ("stem_conv",               "stem/conv2d",                          CONV),
    ("stem_bn",                 "stem/tpu_batch_normalization",         BN),
)

# keras efficientnet.block(), expand_ratio != 1
BLOCK_EXPAND = (
    ("{name}_expand_conv",      "blocks_{i}/conv2d",                    CONV),
    ("{name}_expand_bn",        "blocks_{i}/tpu_batch_normalization",   BN),
    ("{name}_dwconv",           "blocks_{i}/depthwise_conv2d",          DWCONV),
    ("{name}_bn",               "blocks_{i}/tpu_batch_normalization_1", BN),
    ("{name}_se_reduce",        "blocks_{i}/se/conv2d",                 CONV_BIAS),
    ("{name}_se_expand",        "blocks_{i}/se/conv2d_1",               CONV_BIAS),
    ("{name}_project_conv",     "blocks_{i}/conv2d_1",                  CONV),
    ("{name}_project_bn",       "blocks_{i}/tpu_batch_normalization_2", BN),
)

# expand_ratio == 1: no expand conv; TF's layer counters start one lower
BLOCK_NO_EXPAND = (
    ("{name}_dwconv",           "blocks_{i}/depthwise_conv2d",          DWCONV),
    ("{name}_bn",               "blocks_{i}/tpu_batch_normalization",   BN),
    ("{name}_se_reduce",        "blocks_{i}/se/conv2d",                 CONV_BIAS),
    ("{name}_se_expand",        "blocks_{i}/se/conv2d_1",               CONV_BIAS),
    ("{name}_project_conv",     "blocks_{i}/conv2d",                    CONV),
    ("{name}_project_bn",       "blocks_{i}/tpu_batch_normalization_1", BN),
)

# keras.applications EfficientNetV2 (keras/src/applications/efficientnet_v2.py): blocks named
# ``block{stage + 1}{chr(97 + j)}_`` as V1's. FusedMBConvBlock (block kind fused_v2): expand_conv
# (kxk, strided), expand_bn, [se_reduce, se_expand], project_conv, project_bn; expand ratio 1:
# project_conv is the strided kxk conv. MBConvBlock: V1's layers, the depthwise conv named dwconv2.
BLOCK_FUSED_V2_EXPAND = (
    ("{name}_expand_conv",      "blocks_{i}/conv2d",                    CONV),
    ("{name}_expand_bn",        "blocks_{i}/tpu_batch_normalization",   BN),
    ("{name}_se_reduce",        "blocks_{i}/se/conv2d",                 CONV_BIAS),
    ("{name}_se_expand",        "blocks_{i}/se/conv2d_1",               CONV_BIAS),
    ("{name}_project_conv",     "blocks_{i}/conv2d_1",                  CONV),
    ("{name}_project_bn",       "blocks_{i}/tpu_batch_normalization_1", BN),
)

BLOCK_FUSED_V2_NO_EXPAND = (
    ("{name}_se_reduce",        "blocks_{i}/se/conv2d",                 CONV_BIAS),
    ("{name}_se_expand",        "blocks_{i}/se/conv2d_1",               CONV_BIAS),
    ("{name}_project_conv",     "blocks_{i}/conv2d",                    CONV),
    ("{name}_project_bn",       "blocks_{i}/tpu_batch_normalization",   BN),
)

BLOCK_V2_EXPAND = tuple((k.replace("_dwconv", "_dwconv2"), o, kind) for k, o, kind in BLOCK_EXPAND)
BLOCK_V2_NO_EXPAND = tuple((k.replace("_dwconv", "_dwconv2"), o, kind) for k, o, kind in BLOCK_NO_EXPAND)

HEAD = (
    ("top_conv",                "head/conv2d",                          CONV),
    ("top_bn",                  "head/tpu_batch_normalization",         BN),
    ("predictions",             "head/dense",                           DENSE),  # include_top=True only
)

# The Keras variables of each kind, in creation order (Keras 3 `.weights.h5` numbers them
# 0..n in this order: trainable first, then non-trainable), paired with mappings/kinds.py's
# official variables in the same order. Keras 3 calls the depthwise kernel ``kernel``,
# Keras 2 (tf.keras) ``depthwise_kernel``.
KERAS_VARIABLES = {
    CONV: ("kernel",),
    CONV_BIAS: ("kernel", "bias"),
    DWCONV: ("kernel",),
    BN: ("gamma", "beta", "moving_mean", "moving_variance"),
    DENSE: ("kernel", "bias"),
}
KERAS2_ALIASES = {"depthwise_kernel": "kernel"}

# Keras class of each kind: Keras 3 `.weights.h5` keys layers by snake-cased class name
# (``conv2d``, ``conv2d_1``, ...) in model.layers order (keras/src/saving/saving_lib.py,
# _save_container_state)
KERAS_CLASSES = {
    CONV: "conv2d",
    CONV_BIAS: "conv2d",
    DWCONV: "depthwise_conv2d",
    BN: "batch_normalization",
    DENSE: "dense",
}

# The input preprocessing layer (keras EfficientNet: Rescaling(1/255) -> Normalization): not a
# network weight; its mean/variance become the metadata's mean/std. Named by Keras's automatic
# naming (``normalization``, ``normalization_1`` when several models were built in one process).
NORMALIZATION_CLASS = "normalization"
NORMALIZATION_VARIABLES = ("mean", "variance", "count")
