"""EfficientNet's (V1, Lite, EdgeTPU, CondConv) official training settings (no torch, no TensorFlow).

tensorflow/tpu models/official/efficientnet at 7dc921f: efficientnet_builder.efficientnet(),
lite/efficientnet_lite_builder.efficientnet_lite(), edgetpu/efficientnet_edgetpu_builder
.efficientnet_edgetpu(), condconv/efficientnet_condconv_builder.efficientnet_condconv() all set
``batch_norm_momentum=0.99``, ``batch_norm_epsilon=1e-3``, ``survival_prob=0.8`` and the variant's
``dropout_rate`` (their ``*_params`` tables: ArchSpec.dropout). Their batch norm in training is
utils.TpuBatchNormalization (``utils.train_batch_norm``; the Lite/EdgeTPU/CondConv builders name it
directly), a tf.layers.BatchNormalization forced to ``fused=False``: the batch variance is
tf.nn.moments' (biased) and the moving variance is updated with it.
"""
from __future__ import annotations

from typing import Optional

from ...family import Training

BN_MOMENTUM = 0.99  # efficientnet_builder.efficientnet: batch_norm_momentum=0.99
BN_EPS = 1e-3  # efficientnet_builder.efficientnet: batch_norm_epsilon=1e-3
SURVIVAL_PROB = 0.8  # efficientnet_builder.efficientnet(survival_prob=0.8)
SOURCE = ("tensorflow/tpu 7dc921f models/official/efficientnet: efficientnet_builder.py (and the lite/, edgetpu/, "
          "condconv/ builders), efficientnet_model.py, utils.TpuBatchNormalization (fused=False)")


def training(spec, flavor: Optional[str] = None) -> Training:
    """The official settings of ``spec`` (the same for every checkpoint flavor)."""
    return Training(bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS, bessel=False, survival_prob=SURVIVAL_PROB,
                    drop_rate=float(spec.dropout), source=SOURCE)
