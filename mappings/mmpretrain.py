"""Layout 'mmpretrain': mmpretrain 1.2's ``ImageClassifier`` with the ``EfficientNet`` backbone.

Same row format as mappings/efficientnet.py. mmpretrain/models/backbones/efficientnet.py builds
``backbone.layers``: 0 the stem ConvModule, then one ``Sequential`` of ``InvertedResidual`` per
group of official stages (``model_scaling`` merges a stage whose first block has stride 1 into
the one before it: format fields ``group``/``group_j``), then the head ConvModule
(``head_group``). Every conv is a ConvModule (``.conv`` and, but in the SE, ``.bn``); the
tf-ported zoo configs use ``Conv2dAdaptivePadding`` (TF 'SAME') and BN eps 1e-3. The
classifier is ``LinearClsHead``'s ``head.fc``. BatchNorm2d carries ``num_batches_tracked``.
"""
from .kinds import BN_TRACKED, CONV, CONV_BIAS, DENSE, DWCONV
from .layout import Layout

# our variant -> mmpretrain's EfficientNet arch (EfficientNet.arch_settings); the 475 px L2
# release has the L2 architecture (zoo name efficientnet-l2_3rdparty-ra-noisystudent_in1k-475px)
VARIANTS = {**{f"b{n}": f"b{n}" for n in range(9)}, "l2": "l2",
            "edgetpu-s": "es", "edgetpu-m": "em",
            # EfficientNetV2 backbone (mmpretrain/models/backbones/efficientnet_v2.py arch_settings)
            **{f"v2-{n}": f"v2-{n}" for n in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")}}

# variants whose name the library has but whose model does not hold the official weights
NOT_OFFICIAL = {
    "edgetpu-l": "mmpretrain's arch el gives the first block 120 channels (3 x its 40-channel stem) where the "
                 "official EdgeTPU-L has 128 (4 x 32 input filters), so the official weights do not fit it",
}

# mmpretrain's EdgeResidual puts a fused block's stride on its kxk conv (conv1), as the official
# block does since tensorflow/tpu 32572cb (the 2019 placement, --fused-stride project, differs:
# Layout.caveat); its .pth is the form mmengine.runner.load_checkpoint /
# mmpretrain.get_model(name, pretrained=path) reads: {"state_dict": ..., "meta": ...}
LAYOUT = Layout("mmpretrain", summary="its EfficientNet: b0-b8, l2, EdgeTPU es/em", variants=VARIANTS,
                not_official=NOT_OFFICIAL, fused_stride_on="kxk", pth_form="mmengine")

STEM = (
    # official layer                     module                          kind        TF kernel shape
    ("stem/conv2d",                      "backbone.layers.0.conv",       CONV,       (3, 3, 3, "stem")),
    ("stem/tpu_batch_normalization",     "backbone.layers.0.bn",         BN_TRACKED, ("stem",)),
)

_B = "backbone.layers.{group}.{group_j}"

# InvertedResidual with expand_conv (mid_channels != in_channels)
BLOCK_EXPAND = (
    ("blocks_{i}/conv2d",                    _B + ".expand_conv.conv",     CONV,       (1, 1, "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   _B + ".expand_conv.bn",       BN_TRACKED, ("mid",)),
    ("blocks_{i}/depthwise_conv2d",          _B + ".depthwise_conv.conv",  DWCONV,     ("k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization_1", _B + ".depthwise_conv.bn",    BN_TRACKED, ("mid",)),
    ("blocks_{i}/se/conv2d",                 _B + ".se.conv1.conv",        CONV_BIAS,  (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               _B + ".se.conv2.conv",        CONV_BIAS,  (1, 1, "se", "mid")),
    ("blocks_{i}/conv2d_1",                  _B + ".linear_conv.conv",     CONV,       (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_2", _B + ".linear_conv.bn",       BN_TRACKED, ("out",)),
)

# InvertedResidual without expand_conv (expand ratio 1)
BLOCK_NO_EXPAND = (
    ("blocks_{i}/depthwise_conv2d",          _B + ".depthwise_conv.conv",  DWCONV,     ("k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization",   _B + ".depthwise_conv.bn",    BN_TRACKED, ("mid",)),
    ("blocks_{i}/se/conv2d",                 _B + ".se.conv1.conv",        CONV_BIAS,  (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               _B + ".se.conv2.conv",        CONV_BIAS,  (1, 1, "se", "mid")),
    ("blocks_{i}/conv2d",                    _B + ".linear_conv.conv",     CONV,       (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_1", _B + ".linear_conv.bn",       BN_TRACKED, ("out",)),
)

# EdgeResidual (arch es/em/el, block_type 1): conv1 the kxk expand ConvModule, conv2 the 1x1 project
BLOCK_FUSED_EXPAND = (
    ("blocks_{i}/conv2d",                    _B + ".conv1.conv",           CONV,       ("k", "k", "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   _B + ".conv1.bn",             BN_TRACKED, ("mid",)),
    ("blocks_{i}/conv2d_1",                  _B + ".conv2.conv",           CONV,       (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_1", _B + ".conv2.bn",             BN_TRACKED, ("out",)),
)

# EfficientNetV2 (EfficientNetV2 backbone: backbone.layers.{stage + 1}, the ArchSpec's
# groups_per_stage): fused blocks are EdgeResidual (conv1 the strided kxk conv, conv2 the 1x1),
# expand ratio 1 an EnhancedConvModule (conv, bn; with skip); MBConv blocks as BLOCK_EXPAND.
# Its stride-1 convs pad k // 2 on both sides, equal to 'SAME' for odd k; strided ones
# Conv2dAdaptivePadding (TF 'SAME'); BN eps 1e-3.
BLOCK_FUSED_V2_EXPAND = (
    ("blocks_{i}/conv2d",                    _B + ".conv1.conv",           CONV,       ("k", "k", "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   _B + ".conv1.bn",             BN_TRACKED, ("mid",)),
    ("blocks_{i}/conv2d_1",                  _B + ".conv2.conv",           CONV,       (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_1", _B + ".conv2.bn",             BN_TRACKED, ("out",)),
)

BLOCK_FUSED_V2_NO_EXPAND = (
    ("blocks_{i}/conv2d",                    _B + ".conv",                 CONV,       ("k", "k", "in", "out")),
    ("blocks_{i}/tpu_batch_normalization",   _B + ".bn",                   BN_TRACKED, ("out",)),
)

HEAD = (
    ("head/conv2d",                      "backbone.layers.{head_group}.conv", CONV,       (1, 1, "last", "head")),
    ("head/tpu_batch_normalization",     "backbone.layers.{head_group}.bn",   BN_TRACKED, ("head",)),
    ("head/dense",                       "head.fc",                           DENSE,      ("head", "classes")),
)
