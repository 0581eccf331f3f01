"""The PyTorch network of every family: stem, the blocks (each by its kind's module), head, classifier.

Mirrors tensorflow/tpu models/official/efficientnet/efficientnet_model.py Model in eval mode (and
its families' models, which share its stem/blocks/head shape): TensorFlow 'SAME' padding computed
from the actual input size (any size, odd ones included), batch norm with epsilon 1e-3. Each
block's module comes from its kind (converter.registry.kind_of; converter/families/*/modules.py).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

import torch
from torch import nn

from .arch import ArchSpec, Block
from .blocks import ConvBNAct
from .registry import get_arch, kind_of


def make_block(b: Block, eps: float, act: str) -> nn.Module:
    """The module of one block, by its kind (converter.registry.kind_of: its family declares it)."""
    return kind_of(b).module()(b, eps, act)


class EfficientNet(nn.Module):
    """EfficientNet built from an ArchSpec; state_dict keys follow mappings/efficientnet.py."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        act, eps = spec.activation, spec.bn_eps
        blocks = spec.blocks()
        self.stem = ConvBNAct(3, spec.stem_channels, 3, 2, eps, act)
        self.blocks = nn.Sequential(*[make_block(b, eps, act) for b in blocks])
        self.head = ConvBNAct(blocks[-1].out_channels, spec.head_channels, 1, 1, eps, act)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(spec.head_channels, spec.num_classes)
        self.pretrained_cfg: Dict[str, object] = {}
        self.set_input_size(spec.resolution)  # static padding at the native size; others stay dynamic
        self.set_training_config(official=True)  # the family's batch norm, drop-connect, dropout (converter/training.py)

    def set_input_size(self, h: Optional[int], w: Optional[int] = None) -> "EfficientNet":
        """Freeze every Conv2dSame's padding for ``h`` x ``w`` inputs (``w`` defaults to ``h``).

        Other sizes still work (the dynamic path, identical numbers). ``None`` unfreezes all.
        """
        from .fast import set_input_size

        return set_input_size(self, h, w)

    def set_training_config(self, drop_rate: Optional[float] = None, survival_prob: Optional[float] = None,
                            bn_momentum: Optional[float] = None, bn_eps: Optional[float] = None,
                            official: bool = False, drop_path_rate: Optional[float] = None,
                            drop_connect_rate: Optional[float] = None) -> "EfficientNet":
        """What ``train()`` computes: dropout before the classifier, drop-connect's base survival
        probability (per block as the official code; 1.0: off; or as ``drop_path_rate`` (timm's name)
        / ``drop_connect_rate`` (the official override's), ``1 - survival_prob``), batch-norm momentum
        (TensorFlow's meaning) and epsilon; unset values kept (``official``: from the family's official
        settings for this checkpoint's flavor). Recorded in ``pretrained_cfg["training"]`` (converter/training.py)."""
        from .training import configure, official_settings, survival_from

        base = official_settings(self) if official else None
        survival_prob = survival_from(survival_prob, drop_path_rate, drop_connect_rate)
        return configure(self, drop_rate, survival_prob, bn_momentum, bn_eps, base=base)

    def get_classifier(self) -> nn.Module:
        """The classifier (timm's name)."""
        return self.classifier

    def training_config(self) -> Dict[str, object]:
        """The training settings now in force (``pretrained_cfg["training"]``)."""
        return dict(self.pretrained_cfg["training"])

    def survival_probs(self) -> List[float]:
        """Each block's drop-connect survival probability in training (1.0: never dropped)."""
        return [float(b.survival_prob) for b in self.blocks]

    def reset_classifier(self, num_classes: int, labels=None, keep=None) -> "EfficientNet":
        """A new classifier of ``num_classes`` outputs (official dense init; ``keep``: old rows to carry
        over), the rest kept; ``pretrained_cfg`` num_classes and labels updated (converter/training.py)."""
        from .training import reset_classifier

        return reset_classifier(self, num_classes, labels, keep)

    def fuse_bn(self) -> "EfficientNet":
        """Fold each batch norm into the conv before it (float64, then cast back); returns the model."""
        from .fast import fuse_bn

        return fuse_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and not isinstance(x, torch.Tensor):
            x = self._as_input(x)  # e.g. the numpy batch of converter.preprocess.preprocess_batch
        x = self.forward_features(x).mean((2, 3))
        return self.classifier(self.dropout(x))

    @torch.jit.unused
    def forward_endpoints(self, x) -> Dict[str, torch.Tensor]:
        """The official ``model.endpoints`` of ``x`` (NCHW): ``stem``, ``block_{i}``, ``reduction_{k}``,
        ``block_{i}/expansion_output``..., the family's head endpoints; official keys and order, by the
        same modules as forward (converter/endpoints.py; a backbone of some: ``features(endpoints)``)."""
        if not isinstance(x, torch.Tensor):
            x = self._as_input(x)
        f = self.features()
        return dict(zip(f.endpoints, f(x)))

    @torch.jit.unused
    def features(self, endpoints=None) -> nn.Module:
        """A module returning the official endpoints ``endpoints`` (names, ``"reductions"``; None: all)
        as a list in that order, with ``feature_info``; it shares this model's modules
        (converter.endpoints.EfficientNetFeatures)."""
        from .endpoints import EfficientNetFeatures

        return EfficientNetFeatures(self, endpoints)

    @torch.jit.unused
    def _as_input(self, x) -> torch.Tensor:
        """An NCHW array (numpy, or anything torch.as_tensor takes) on the model's device, in its dtype."""
        w = self.classifier.weight
        return torch.as_tensor(x, dtype=w.dtype, device=w.device)


def build_model(variant: Union[str, ArchSpec], num_classes: Optional[int] = None) -> EfficientNet:
    """An EfficientNet for ``variant`` (``b0``..``b8``, ``l2`` and its 475 px release, ``lite0``..``lite4``,
    ``edgetpu-s/m/l``, ``condconv-b0-4e``...) with random weights.

    ``num_classes``: default the architecture's own (1000; 1001 for EdgeTPU).
    """
    spec = variant if isinstance(variant, ArchSpec) else get_arch(variant)
    if num_classes is not None and num_classes != spec.num_classes:
        spec = spec.with_classes(num_classes)
    return EfficientNet(spec)
