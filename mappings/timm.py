"""Layout 'timm': ``timm.create_model("tf_efficientnet_{variant}")`` (timm 1.0, efficientnet.py).

Same row format as mappings/efficientnet.py (official layer, module path, kind, TF kernel shape
in symbols). timm's EfficientNet builder names blocks ``blocks.{stage}.{j}`` (one ``nn.Sequential``
per official block string): ``DepthwiseSeparableConv`` for expand ratio 1 (conv_dw, bn1, se,
conv_pw, bn2) and ``InvertedResidual`` otherwise (conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3).
Its BatchNorm2d layers carry ``num_batches_tracked`` (kind BN_TRACKED). The ``tf_`` models use
TF 'SAME' padding and BN eps 1e-3, so the official numerics carry over unchanged.

The family (timm/models/efficientnet.py ``_gen_efficientnet_lite/_edge/_condconv``): Lite uses the
same blocks without SE; EdgeTPU's fused blocks are ``EdgeResidual`` (conv_exp, bn1, conv_pwl, bn2);
CondConv blocks are ``CondConvResidual`` (InvertedResidual's names plus ``routing_fn``, its
CondConv2d weights flattened per expert in PyTorch order: kinds CONDCONV_OIHW / DWCONDCONV_OIHW).
"""
from .kinds import BN_TRACKED, CONDCONV_OIHW, CONV, CONV_BIAS, DENSE, DWCONDCONV_OIHW, DWCONV
from .layout import Layout

# our variant -> the timm model name it loads into (timm.list_models("tf_efficientnet_*"));
# the 475 px L2 release has the L2 architecture (timm tag tf_efficientnet_l2.ns_jft_in1k_475)
VARIANTS = {
    **{f"b{n}": f"tf_efficientnet_b{n}" for n in range(9)},
    "l2": "tf_efficientnet_l2",
    **{f"lite{n}": f"tf_efficientnet_lite{n}" for n in range(5)},
    "edgetpu-s": "tf_efficientnet_es", "edgetpu-m": "tf_efficientnet_em", "edgetpu-l": "tf_efficientnet_el",
    "condconv-b0-4e": "tf_efficientnet_cc_b0_4e", "condconv-b0-8e": "tf_efficientnet_cc_b0_8e",
    # the depth-scaled b0-8e (width 1.0, depth 1.1) is timm's cc_b1_8e
    "condconv-b0-8e-depth": "tf_efficientnet_cc_b1_8e",
    # EfficientNetV2 (timm/models/efficientnet.py _gen_efficientnetv2_base / _s / _m / _l / _xl)
    **{f"v2-{n}": f"tf_efficientnetv2_{n}" for n in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")},
}

# timm's EdgeResidual puts a fused block's stride on its kxk conv, as the official block
# (MBConvBlockWithoutDepthwise) does since tensorflow/tpu 32572cb (the 2019 placement,
# --fused-stride project, differs: Layout.caveat)
LAYOUT = Layout("timm", summary="tf_efficientnet_*, the family too: lite*, es/em/el, cc_*", variants=VARIANTS,
                fused_stride_on="kxk")

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

# EdgeResidual (EdgeTPU fused blocks, block string c1: all of them have an expand conv)
BLOCK_FUSED_EXPAND = (
    ("blocks_{i}/conv2d",                    "blocks.{stage}.{j}.conv_exp",        CONV,       ("k", "k", "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{stage}.{j}.bn1",             BN_TRACKED, ("mid",)),
    ("blocks_{i}/conv2d_1",                  "blocks.{stage}.{j}.conv_pwl",        CONV,       (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_1", "blocks.{stage}.{j}.bn2",             BN_TRACKED, ("out",)),
)

# CondConvResidual (block string cc: all of them have an expand conv); routing_fn comes last in
# its state_dict (added after InvertedResidual's layers)
BLOCK_CONDCONV_EXPAND = (
    ("model/blocks_{i}/{cce}",               "blocks.{stage}.{j}.conv_pw",         CONDCONV_OIHW,   ("experts", 1, 1, "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{stage}.{j}.bn1",             BN_TRACKED,      ("mid",)),
    ("model/blocks_{i}/{ccd}",               "blocks.{stage}.{j}.conv_dw",         DWCONDCONV_OIHW, ("experts", "k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization_1", "blocks.{stage}.{j}.bn2",             BN_TRACKED,      ("mid",)),
    ("blocks_{i}/se/conv2d",                 "blocks.{stage}.{j}.se.conv_reduce",  CONV_BIAS,       (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               "blocks.{stage}.{j}.se.conv_expand",  CONV_BIAS,       (1, 1, "se", "mid")),
    ("model/blocks_{i}/{ccp}",               "blocks.{stage}.{j}.conv_pwl",        CONDCONV_OIHW,   ("experts", 1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_2", "blocks.{stage}.{j}.bn3",             BN_TRACKED,      ("out",)),
    ("blocks_{i}/dense",                     "blocks.{stage}.{j}.routing_fn",      DENSE,           ("in", "experts")),
)

# EfficientNetV2 fused blocks (block kind fused_v2): EdgeResidual (conv_exp carries the stride,
# as the official FusedMBConvBlock), and expand ratio 1: ConvBnAct (conv, bn1; with skip).
# V2's MBConv blocks are InvertedResidual: BLOCK_EXPAND.
BLOCK_FUSED_V2_EXPAND = (
    ("blocks_{i}/conv2d",                    "blocks.{stage}.{j}.conv_exp",        CONV,       ("k", "k", "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{stage}.{j}.bn1",             BN_TRACKED, ("mid",)),
    ("blocks_{i}/conv2d_1",                  "blocks.{stage}.{j}.conv_pwl",        CONV,       (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_1", "blocks.{stage}.{j}.bn2",             BN_TRACKED, ("out",)),
)

BLOCK_FUSED_V2_NO_EXPAND = (
    ("blocks_{i}/conv2d",                    "blocks.{stage}.{j}.conv",            CONV,       ("k", "k", "in", "out")),
    ("blocks_{i}/tpu_batch_normalization",   "blocks.{stage}.{j}.bn1",             BN_TRACKED, ("out",)),
)

HEAD = (
    ("head/conv2d",                      "conv_head",    CONV,       (1, 1, "last", "head")),
    ("head/tpu_batch_normalization",     "bn2",          BN_TRACKED, ("head",)),
    ("head/dense",                       "classifier",   DENSE,      ("head", "classes")),
)
