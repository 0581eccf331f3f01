"""MnasNet's and MixNet's official training settings (no torch, no TensorFlow).

tensorflow/tpu models/official/mnasnet at 7dc921f: mnasnet_models.mnasnet_a1/_small and
mixnet/mixnet_builder.mixnet_s/_m (mixnet_l is mixnet_m(1.3)) set ``batch_norm_momentum=0.99``,
``batch_norm_epsilon=1e-3`` and the builder's ``dropout_rate`` (ArchSpec.dropout: 0.2; 0 for
mnasnet-small; 0.25 for mixnet-m/l). mnasnet_model.MnasBlock / MnasNetModel and
mixnet_model.MixnetBlock / MixnetModel have no drop-connect. Their batch norms are
tf.layers.BatchNormalization(fused=True): TensorFlow's fused batch norm, whose moving variance
takes the unbiased (Bessel-corrected) batch variance. (mnasnet_main.py overrides the builder's
dropout with ``--dropout_rate`` when given; configs/mnasnet_config.py's default 0.2, the
configs/cloud/*.yaml set it to null: the builder's.)
"""
from __future__ import annotations

from typing import Optional

from ...family import Training

BN_MOMENTUM = 0.99  # mnasnet_models.mnasnet_a1, mixnet_builder.mixnet_s: batch_norm_momentum=0.99
BN_EPS = 1e-3  # batch_norm_epsilon=1e-3
SOURCE = ("tensorflow/tpu 7dc921f models/official/mnasnet: mnasnet_models.py, mixnet/mixnet_builder.py, "
          "mnasnet_model.py / mixnet/mixnet_model.py (tf.layers.BatchNormalization fused=True, no drop-connect)")


def training(spec, flavor: Optional[str] = None) -> Training:
    """The official settings of ``spec`` (no drop-connect: survival_prob None)."""
    return Training(bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS, bessel=True, survival_prob=None,
                    drop_rate=float(spec.dropout), source=SOURCE)
