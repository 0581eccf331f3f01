"""Layout 'transformers': Hugging Face ``EfficientNetForImageClassification`` (transformers 5.24,
models/efficientnet/modeling_efficientnet.py), written as a ``from_pretrained`` folder by
converter/hf.py (config.json, model.safetensors, preprocessor_config.json, README.md).

Same row format as mappings/efficientnet.py (official layer, module path, kind, TF kernel shape
in symbols). transformers numbers its blocks globally (``efficientnet.encoder.blocks.{i}``, one
``EfficientNetBlock`` each: ``expansion`` only when the expand ratio is not 1, then
``depthwise_conv``, ``squeeze_excite``, ``projection``); every BatchNorm2d carries
``num_batches_tracked`` (kind BN_TRACKED). Its convs pad by a fixed rule, not TF 'SAME' from the
input size: converter/hf.py computes the config (``depthwise_padding``) that reproduces 'SAME' at
one input size and says where that is impossible.
"""
from .kinds import BN_TRACKED, CONV, CONV_BIAS, DENSE, DWCONV
from .layout import Layout

# the model class every variant loads into; the family has no transformers model (NOT_OFFICIAL)
_MODEL = "EfficientNetForImageClassification"
VARIANTS = {**{f"b{n}": _MODEL for n in range(9)}, "l2": _MODEL}

_NO_SE = "transformers' EfficientNet always has squeeze-excitation and swish"
NOT_OFFICIAL = {
    **{f"lite{n}": f"{_NO_SE} (Lite: ReLU6, no SE, unscaled stem/head)" for n in range(5)},
    **{f"edgetpu-{s}": f"{_NO_SE} and no fused blocks (EdgeTPU: ReLU, fused blocks, no SE)" for s in "sml"},
    **{f"condconv-b0-{e}": "transformers' EfficientNet has no CondConv blocks" for e in ("4e", "8e", "8e-depth")},
}
# a from_pretrained folder, its config padded for --resolution (converter/hf_write.py)
LAYOUT = Layout("transformers", summary="a from_pretrained folder: b0-b8, l2; padded for --resolution",
                variants=VARIANTS, not_official=NOT_OFFICIAL, file_form="folder",
                writer="converter.hf_write")

STEM = (
    # official layer                     module                              kind        TF kernel shape
    ("stem/conv2d",                      "efficientnet.embeddings.convolution", CONV,     (3, 3, 3, "stem")),
    ("stem/tpu_batch_normalization",     "efficientnet.embeddings.batchnorm",   BN_TRACKED, ("stem",)),
)

_B = "efficientnet.encoder.blocks.{i}"

# EfficientNetBlock with an EfficientNetExpansionLayer (expand ratio != 1)
BLOCK_EXPAND = (
    ("blocks_{i}/conv2d",                    _B + ".expansion.expand_conv",          CONV,       (1, 1, "in", "mid")),
    ("blocks_{i}/tpu_batch_normalization",   _B + ".expansion.expand_bn",            BN_TRACKED, ("mid",)),
    ("blocks_{i}/depthwise_conv2d",          _B + ".depthwise_conv.depthwise_conv",  DWCONV,     ("k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization_1", _B + ".depthwise_conv.depthwise_norm",  BN_TRACKED, ("mid",)),
    ("blocks_{i}/se/conv2d",                 _B + ".squeeze_excite.reduce",          CONV_BIAS,  (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               _B + ".squeeze_excite.expand",          CONV_BIAS,  (1, 1, "se", "mid")),
    ("blocks_{i}/conv2d_1",                  _B + ".projection.project_conv",        CONV,       (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_2", _B + ".projection.project_bn",          BN_TRACKED, ("out",)),
)

# without one (expand ratio 1): TF's layer counters start one lower
BLOCK_NO_EXPAND = (
    ("blocks_{i}/depthwise_conv2d",          _B + ".depthwise_conv.depthwise_conv",  DWCONV,     ("k", "k", "mid", 1)),
    ("blocks_{i}/tpu_batch_normalization",   _B + ".depthwise_conv.depthwise_norm",  BN_TRACKED, ("mid",)),
    ("blocks_{i}/se/conv2d",                 _B + ".squeeze_excite.reduce",          CONV_BIAS,  (1, 1, "mid", "se")),
    ("blocks_{i}/se/conv2d_1",               _B + ".squeeze_excite.expand",          CONV_BIAS,  (1, 1, "se", "mid")),
    ("blocks_{i}/conv2d",                    _B + ".projection.project_conv",        CONV,       (1, 1, "mid", "out")),
    ("blocks_{i}/tpu_batch_normalization_1", _B + ".projection.project_bn",          BN_TRACKED, ("out",)),
)

HEAD = (
    ("head/conv2d",                      "efficientnet.encoder.top_conv",  CONV,       (1, 1, "last", "head")),
    ("head/tpu_batch_normalization",     "efficientnet.encoder.top_bn",    BN_TRACKED, ("head",)),
    ("head/dense",                       "classifier",                     DENSE,      ("head", "classes")),
)
