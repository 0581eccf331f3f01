"""EfficientNetV2's official training settings, per checkpoint flavor (no torch, no TensorFlow).

google/automl efficientnetv2 at 6a54c87: main.py builds the config as hparams.base_config, then
effnetv2_configs.get_model_config(model), then datasets.get_dataset_config(dataset_cfg) (later
overrides earlier). hparams.base_config.model: ``bn_momentum=0.9``, ``bn_epsilon=1e-3``,
``survival_prob=0.8``; effnetv2_configs.efficientnetv2_params: the variant's dropout
(ArchSpec.dropout). datasets.py: ImageNet21k sets ``dropout_rate=0.000001, survival_prob=1.0``,
ImagenetFt (the 21k-ft1k fine-tuning) ``dropout_rate=0.000001, survival_prob=0.8``; ImageNet
changes neither. Batch norm: on TPU (how the released checkpoints were trained) main.py sets
``bn_type='tpu_bn'``: utils.TpuBatchNormalization, a Keras BatchNormalization forced to
``fused=False``, whose moving variance takes the biased batch variance.
"""
from __future__ import annotations

from typing import Optional

from ...family import Training

BN_MOMENTUM = 0.9  # hparams.base_config.model.bn_momentum
BN_EPS = 1e-3  # hparams.base_config.model.bn_epsilon
SURVIVAL_PROB = 0.8  # hparams.base_config.model.survival_prob
# datasets.py: (survival_prob, dropout_rate or None for the variant's) per checkpoint flavor
BY_FLAVOR = {
    "1k": (SURVIVAL_PROB, None),  # datasets.ImageNet: no model overrides
    "21k": (1.0, 0.000001),  # datasets.ImageNet21k
    "21k-ft1k": (0.8, 0.000001),  # datasets.ImagenetFt
}
SOURCE = ("google/automl 6a54c87 efficientnetv2: hparams.py base_config, effnetv2_configs.efficientnetv2_params, "
          "datasets.py ({dataset}), main.py (bn_type 'tpu_bn': utils.TpuBatchNormalization, fused=False)")
_DATASET = {"1k": "ImageNet", "21k": "ImageNet21k", "21k-ft1k": "ImagenetFt"}


def training(spec, flavor: Optional[str] = None) -> Training:
    """The official settings of ``spec`` trained as the ``flavor`` checkpoint was (None: ``1k``)."""
    key = flavor if flavor in BY_FLAVOR else "1k"
    survival, dropout = BY_FLAVOR[key]
    return Training(bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS, bessel=False, survival_prob=survival,
                    drop_rate=float(spec.dropout if dropout is None else dropout),
                    source=SOURCE.format(dataset=_DATASET[key]))
