"""Layout 'efficientnet_pytorch': lukemelas' ``EfficientNet.from_name("efficientnet-{variant}")``
(PyPI efficientnet_pytorch 0.7.1, efficientnet_pytorch/model.py and utils.py).

Same row format as mappings/efficientnet.py. Its ``_blocks`` is one ModuleList over every block,
repeats included, in the official order, so ``_blocks.{i}`` is the official ``blocks_{i}``.
``MBConvBlock`` registers ``_expand_conv``/``_bn0`` (expand ratio != 1 only), ``_depthwise_conv``/
``_bn1``, ``_se_reduce``/``_se_expand`` (1x1 convs with bias, swish between, sigmoid gate; reduced
to max(1, int(input_filters * se_ratio)) channels, as the official block), ``_project_conv``/
``_bn2``; the model ``_conv_stem``/``_bn0``, ``_blocks``, ``_conv_head``/``_bn1``, ``_fc``. Every
BatchNorm2d carries ``num_batches_tracked`` (kind BN_TRACKED); eps is its ``batch_norm_epsilon``
1e-3, as the official one. Its convs are ``Conv2dStaticSamePadding``: TF 'SAME' pads computed once
from the ``image_size`` the model is built for (``from_name`` default: efficientnet_params' size,
b0 224 ... b8 672, l2 800), so the model computes the official logits at that input size, and at
another one only when built with ``image_size=`` that size (the 475 px L2 release:
``from_name("efficientnet-l2", image_size=475)``). Its ``efficientnet-l2`` (in VALID_MODELS since
0.7.0, (4.3, 5.3, 800, 0.5) as the official builder) has no weights of its own: these files are them.
segmentation_models_pytorch 0.6.0's ``efficientnet-b0..b7`` encoders vendor this model (their
``EfficientNetEncoder`` deletes ``_fc``): the same keys less ``_fc.*``.
"""
from .kinds import BN_TRACKED, CONV, CONV_BIAS, DENSE, DWCONV
from .layout import Layout

# our variant -> efficientnet_pytorch's model name (its VALID_MODELS); the 475 px L2 release has
# the L2 architecture (built with image_size=475)
VARIANTS = {**{f"b{n}": f"efficientnet-b{n}" for n in range(9)}, "l2": "efficientnet-l2"}

_ONLY = "efficientnet_pytorch 0.7.1 builds only efficientnet-b0..b8 and efficientnet-l2 (its VALID_MODELS)"
NOT_OFFICIAL = {
    **{f"lite{n}": f"{_ONLY}, always with squeeze-excitation and swish (Lite: ReLU6, no SE)" for n in range(5)},
    **{f"edgetpu-{s}": f"{_ONLY}, no fused blocks (EdgeTPU)" for s in "sml"},
    **{f"condconv-b0-{e}": f"{_ONLY}, no CondConv blocks" for e in ("4e", "8e", "8e-depth")},
    **{f"v2-{n}": f"{_ONLY}, no EfficientNetV2" for n in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")},
}
# MnasNet and MixNet have tables of their own (mappings/mnasnet.py, timm_mnasnet.py), none for this
# layout: converter.mapping refuses them by family
LAYOUT = Layout("efficientnet_pytorch", summary="EfficientNet.from_name('efficientnet-bN'): b0-b8, l2; "
                "smp's efficientnet-* encoders", variants=VARIANTS, not_official=NOT_OFFICIAL)

STEM = (
    # official layer                     module          kind        TF kernel shape
    ("stem/conv2d",                      "_conv_stem",   CONV,       (3, 3, 3, "stem")),
    ("stem/tpu_batch_normalization",     "_bn0",         BN_TRACKED, ("stem",)),
)

# MBConvBlock with an expand conv (expand_ratio != 1)
BLOCK_EXPAND = (
    ("blocks_{i}/conv2d",                    "_blocks.{i}._expand_conv",     CONV,       (1, 1, "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   "_blocks.{i}._bn0",             BN_TRACKED, ("mid",)),
    ("blocks_{i}/depthwise_conv2d",          "_blocks.{i}._depthwise_conv",  DWCONV,     ("k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization_1", "_blocks.{i}._bn1",             BN_TRACKED, ("mid",)),
    ("blocks_{i}/se/conv2d",                 "_blocks.{i}._se_reduce",       CONV_BIAS,  (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               "_blocks.{i}._se_expand",       CONV_BIAS,  (1, 1, "se", "mid")),
    ("blocks_{i}/conv2d_1",                  "_blocks.{i}._project_conv",    CONV,       (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_2", "_blocks.{i}._bn2",             BN_TRACKED, ("out",)),
)

# without one (expand_ratio 1): TF's layer counters start one lower
BLOCK_NO_EXPAND = (
    ("blocks_{i}/depthwise_conv2d",          "_blocks.{i}._depthwise_conv",  DWCONV,     ("k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization",   "_blocks.{i}._bn1",             BN_TRACKED, ("mid",)),
    ("blocks_{i}/se/conv2d",                 "_blocks.{i}._se_reduce",       CONV_BIAS,  (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               "_blocks.{i}._se_expand",       CONV_BIAS,  (1, 1, "se", "mid")),
    ("blocks_{i}/conv2d",                    "_blocks.{i}._project_conv",    CONV,       (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_1", "_blocks.{i}._bn2",             BN_TRACKED, ("out",)),
)

HEAD = (
    ("head/conv2d",                      "_conv_head",   CONV,       (1, 1, "last", "head")),
    ("head/tpu_batch_normalization",     "_bn1",         BN_TRACKED, ("head",)),
    ("head/dense",                       "_fc",          DENSE,      ("head", "classes")),
)
