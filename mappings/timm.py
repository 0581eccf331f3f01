"""Layout 'timm': ``timm.create_model("tf_efficientnet_{variant}")`` (timm 1.0, efficientnet.py).

Same row format as mappings/efficientnet.py (official layer, module path, kind, TF kernel shape
in symbols). timm's EfficientNet builder names blocks ``blocks.{stage}.{j}`` (one ``nn.Sequential``
per official block string): ``DepthwiseSeparableConv`` for expand ratio 1 (conv_dw, bn1, se,
conv_pw, bn2) and ``InvertedResidual`` otherwise (conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3).
Its BatchNorm2d layers carry ``num_batches_tracked`` (kind BN_TRACKED). The ``tf_`` models use
TF 'SAME' padding and BN eps 1e-3, so the official numerics carry over unchanged.
"""
from .kinds import BN_TRACKED, CONV, CONV_BIAS, DENSE, DWCONV

LAYOUT = "timm"

# our variant -> the timm model name it loads into (timm.list_models("tf_efficientnet_*"));
# the 475 px L2 release has the L2 architecture (timm tag tf_efficientnet_l2.ns_jft_in1k_475)
VARIANTS = {
    **{f"b{n}": f"tf_efficientnet_b{n}" for n in range(9)},
    "l2": "tf_efficientnet_l2",
    "l2-475": "tf_efficientnet_l2",
}

STEM = (
    # official layer                     module          kind        TF kernel shape
    ("stem/conv2d",                      "conv_stem",    CONV,       (3, 3, 3, "stem")),
    ("stem/tpu_batch_normalization",     "bn1",          BN_TRACKED, ("stem",)),
)

# InvertedResidual (expand ratio != 1)
BLOCK_EXPAND = (
    ("blocks_{i}/conv2d",                    "blocks.{stage}.{j}.conv_pw",         CONV,       (1, 1, "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{stage}.{j}.bn1",             BN_TRACKED, ("mid",)),
    ("blocks_{i}/depthwise_conv2d",          "blocks.{stage}.{j}.conv_dw",         DWCONV,     ("k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization_1", "blocks.{stage}.{j}.bn2",             BN_TRACKED, ("mid",)),
    ("blocks_{i}/se/conv2d",                 "blocks.{stage}.{j}.se.conv_reduce",  CONV_BIAS,  (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               "blocks.{stage}.{j}.se.conv_expand",  CONV_BIAS,  (1, 1, "se", "mid")),
    ("blocks_{i}/conv2d_1",                  "blocks.{stage}.{j}.conv_pwl",        CONV,       (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_2", "blocks.{stage}.{j}.bn3",             BN_TRACKED, ("out",)),
)

# DepthwiseSeparableConv (expand ratio 1)
BLOCK_NO_EXPAND = (
    ("blocks_{i}/depthwise_conv2d",          "blocks.{stage}.{j}.conv_dw",         DWCONV,     ("k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{stage}.{j}.bn1",             BN_TRACKED, ("mid",)),
    ("blocks_{i}/se/conv2d",                 "blocks.{stage}.{j}.se.conv_reduce",  CONV_BIAS,  (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               "blocks.{stage}.{j}.se.conv_expand",  CONV_BIAS,  (1, 1, "se", "mid")),
    ("blocks_{i}/conv2d",                    "blocks.{stage}.{j}.conv_pw",         CONV,       (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_1", "blocks.{stage}.{j}.bn2",             BN_TRACKED, ("out",)),
)

HEAD = (
    ("head/conv2d",                      "conv_head",    CONV,       (1, 1, "last", "head")),
    ("head/tpu_batch_normalization",     "bn2",          BN_TRACKED, ("head",)),
    ("head/dense",                       "classifier",   DENSE,      ("head", "classes")),
)
