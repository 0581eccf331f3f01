"""The official endpoints (``model.endpoints``) of the converted model, and a backbone module returning some.

The rule every family's official code shares (tensorflow/tpu 7dc921f efficientnet_model.Model.call,
mnasnet_model.MnasNetModel.call, mixnet/mixnet_model.MixnetModel.call; google/automl 6a54c87
efficientnetv2/effnetv2_model.EffNetV2Model.call): ``stem`` is the stem's output (conv, BN, act);
``block_{i}`` block i's output; block i is a *reduction* when it is the last block or block i+1 has
stride > 1, the k-th such block (k from 1; the stem is not counted) is also ``reduction_{k}``; a block's
own endpoints (``expansion_output``: its module's ``ENDPOINTS``, computed by its
``forward_with_endpoints``) appear as ``block_{i}/NAME`` and, for a reduction, ``reduction_{k}/NAME``.
After the blocks come the family's own (``Family.head_endpoints``: ``features``, ``head_1x1``,
``pooled_features``, ``global_pool``, ``head``; each family's dict is its own). Keys keep the official
dict's order; tensors are NCHW (``[N, C]`` where the official one is a vector).

:class:`EfficientNetFeatures` runs the model's own modules (shared, not copied) up to the deepest
requested endpoint and returns the requested tensors as a list, in the order asked: what
``converter.load_model(path, endpoints=[...])`` returns and ``EfficientNet.forward_endpoints`` runs.
"""
# (no ``from __future__ import annotations``: TorchScript reads EfficientNetFeatures' class annotations)
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .errors import ConversionError
from .family import DROPPED, HEAD_1X1, HEAD_TENSORS, LAST_BLOCK, LOGITS, POOLED
from .registry import family_of, kind_of

STEM, BLOCK, OWN = "stem", "block", "own"  # Endpoint.source besides the family's HEAD_TENSORS
REDUCTIONS = "reductions"  # endpoints="reductions": every reduction_{k}


@dataclass(frozen=True)
class Endpoint:
    """One official endpoint: its key, what computes it, its channels and stride from the input."""

    name: str
    source: str  # STEM, BLOCK, OWN (a block's own endpoint) or one of family.HEAD_TENSORS
    block: int = -1  # the block (BLOCK, OWN)
    own: int = -1  # OWN: its position in the block module's ENDPOINTS
    channels: int = 0
    reduction: Optional[int] = None  # None: a vector (pooled, logits)


def is_reduction(strides: Sequence[int], i: int) -> bool:
    """The official rule: block ``i`` is the last block, or the next one has stride > 1."""
    return i == len(strides) - 1 or strides[i + 1] > 1


def _definer(cls: type, name: str) -> Optional[type]:
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def block_endpoints(cls: type) -> Tuple[str, ...]:
    """The own endpoints a block module class declares (``ENDPOINTS``, by ``forward_with_endpoints``);
    a class overriding ``forward`` below its ``forward_with_endpoints`` would hand out tensors of another
    computation: a family package's bug, said here."""
    names = tuple(getattr(cls, "ENDPOINTS", ()))
    if names:
        fwe, fwd = _definer(cls, "forward_with_endpoints"), _definer(cls, "forward")
        if fwe is None or (fwd is not fwe and issubclass(fwd, fwe)):
            raise RuntimeError(f"{cls.__name__} declares ENDPOINTS {names} but its forward is not the one of its "
                               "forward_with_endpoints: define forward_with_endpoints beside forward")
    return names


def official_endpoints(spec) -> List[Endpoint]:
    """Every official endpoint of ``spec``'s model, in the official dict's order."""
    blocks = spec.blocks()
    strides = [b.stride for b in blocks]
    out = [Endpoint("stem", STEM, channels=spec.stem_channels, reduction=2)]
    reduction, k = 2, 0
    for b in blocks:
        cls = kind_of(b).module()
        names = block_endpoints(cls)
        own = list(zip(names, cls.endpoint_dims(b))) if names else []
        prefixes = [f"block_{b.index}"]
        if is_reduction(strides, b.index):
            k += 1
            prefixes.append(f"reduction_{k}")
        for p in prefixes:
            out.append(Endpoint(p, BLOCK, b.index, channels=b.out_channels, reduction=reduction * b.stride))
        for p in prefixes:
            out += [Endpoint(f"{p}/{name}", OWN, b.index, j, ch, reduction * s) for j, (name, (ch, s)) in enumerate(own)]
        reduction *= b.stride
    sizes = {LAST_BLOCK: (blocks[-1].out_channels, reduction), HEAD_1X1: (spec.head_channels, reduction),
             POOLED: (spec.head_channels, None), DROPPED: (spec.head_channels, None), LOGITS: (spec.num_classes, None)}
    for name, what in family_of(spec).head_endpoints:
        if what not in HEAD_TENSORS:
            raise RuntimeError(f"head endpoint {name!r}: unknown tensor {what!r} (converter.family.HEAD_TENSORS)")
        out.append(Endpoint(name, what, channels=sizes[what][0], reduction=sizes[what][1]))
    return out


def endpoint_names(spec) -> List[str]:
    """The official endpoint keys of ``spec``'s model, in order."""
    return [e.name for e in official_endpoints(spec)]


def _valid_names(eps: Sequence[Endpoint]) -> str:
    """The valid names, compactly: ``stem, block_0..block_15, block_{i}/expansion_output, ...``."""
    groups: Dict[str, List[str]] = {}
    for e in eps:
        base, _, sub = e.name.partition("/")
        stem = base.rstrip("0123456789")
        key = (stem + "{i}/" + sub) if sub else (stem if stem.endswith("_") else e.name)
        groups.setdefault(key, []).append(e.name)
    parts = []
    for key, names in groups.items():
        if key.endswith("_") and len(names) > 1:
            parts.append(f"{names[0]}..{names[-1]}")
        elif "{i}/" in key:
            parts.append(key.replace("{i}", "{k}" if key.startswith("reduction") else "{i}"))
        else:
            parts.append(names[0])
    return ", ".join(parts)


def resolve(spec, endpoints: Union[str, Sequence[str], None]) -> List[Endpoint]:
    """The endpoints ``endpoints`` names (None: all; ``"reductions"``: every ``reduction_{k}``), in that
    order; an unknown or repeated name is a one-line ConversionError listing the valid ones."""
    eps = official_endpoints(spec)
    if endpoints is None:
        return eps
    by_name = {e.name: e for e in eps}
    if isinstance(endpoints, str):
        names = [e.name for e in eps if e.source == BLOCK and e.name.startswith("reduction_")] \
            if endpoints == REDUCTIONS else [endpoints]
    else:
        names = [str(n) for n in endpoints]
    if not names:
        raise ConversionError(f"endpoints: none named; {spec.name}'s are {_valid_names(eps)} (or 'reductions')")
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConversionError(f"unknown endpoint(s) {', '.join(map(repr, unknown))} for {spec.name}; its endpoints are "
                              f"{_valid_names(eps)} (or 'reductions')")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConversionError(f"endpoint(s) {', '.join(map(repr, twice))} named twice; name each once")
    return [by_name[n] for n in names]


class FeatureInfo(list):
    """``[{"name", "num_chs", "reduction"}]`` of a backbone's outputs in order (timm's keys);
    ``channels()``, ``reduction()`` and ``names()`` list one field."""

    def channels(self) -> List[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> List[Optional[int]]:
        return [f["reduction"] for f in self]

    def names(self) -> List[str]:
        return [f["name"] for f in self]


class EfficientNetFeatures(nn.Module):
    """The model's official endpoints ``endpoints`` (names; None: all) as a list, in that order.

    Shares the model's modules (its weights, its train/eval modes); holds the stem, the blocks up to
    the deepest requested endpoint and the head / dropout / classifier only where a requested
    endpoint needs them. ``feature_info``: name, channels and stride from the input of each output.
    TorchScript (``torch.jit.script``) and ONNX export take it as they take the model (one output per
    endpoint).
    """

    out_slots: List[int]  # (class annotations: TorchScript's types of the plan)
    keep_block: List[bool]
    keep_own: List[List[int]]
    keep_head: List[bool]

    def __init__(self, model: nn.Module, endpoints: Union[str, Sequence[str], None] = None):
        super().__init__()
        spec = model.spec
        wanted = resolve(spec, endpoints)
        self.spec = spec
        self.training = model.training  # its own flag only: the shared modules keep theirs
        self.endpoints: List[str] = [e.name for e in wanted]
        self.feature_info = FeatureInfo({"name": e.name, "num_chs": e.channels, "reduction": e.reduction}
                                        for e in wanted)
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
        sources = {e.source for e in wanted}
        deepest = max([e.block for e in wanted if e.block >= 0]
                      + ([len(model.blocks) - 1] if sources & set(HEAD_TENSORS) else [-1]))
        self.stem = model.stem
        self.blocks = nn.ModuleList(list(model.blocks)[:deepest + 1])
        self.blocks.training = model.blocks.training  # (a new container: its flag as the model's)
        if sources & {HEAD_1X1, POOLED, DROPPED, LOGITS}:
            self.head = model.head
        if sources & {DROPPED, LOGITS}:
            self.dropout = model.dropout
        if LOGITS in sources:
            self.classifier = model.classifier
        self.keepdim = bool(spec.local_pooling)  # the official avg_pool's [N, 1, 1, C] (Lite, EdgeTPU)
        # the tensors computed, in the order forward meets them (one slot each), and which slot each output is
        order = [(STEM, -1, -1)] + [t for i in range(deepest + 1) for t in [(BLOCK, i, -1)] + [
            (OWN, i, j) for j in range(len(block_endpoints(type(model.blocks[i]))))]]
        order += [(s, -1, -1) for s in HEAD_TENSORS]
        key = {LAST_BLOCK: (BLOCK, len(model.blocks) - 1, -1)}
        needed = {key.get(e.source, (e.source, e.block, e.own)) for e in wanted}
        slots = [t for t in order if t in needed]
        self.out_slots: List[int] = [slots.index(key.get(e.source, (e.source, e.block, e.own))) for e in wanted]
        self.keep_stem: bool = (STEM, -1, -1) in needed
        self.keep_block: List[bool] = [(BLOCK, i, -1) in needed for i in range(deepest + 1)]
        self.keep_own: List[List[int]] = [[j for (s, b, j) in slots if s == OWN and b == i] for i in range(deepest + 1)]
        self.keep_head: List[bool] = [(s, -1, -1) in needed for s in (HEAD_1X1, POOLED, DROPPED, LOGITS)]

    def set_input_size(self, h: Optional[int], w: Optional[int] = None) -> "EfficientNetFeatures":
        """Freeze the (shared) convs' TF 'SAME' padding for ``h`` x ``w`` inputs (converter.fast)."""
        from .fast import set_input_size

        return set_input_size(self, h, w)

    def fuse_bn(self) -> "EfficientNetFeatures":
        """Fold each (shared) batch norm into the conv before it, as the model's fuse_bn (converter.fast)."""
        from .fast import fuse_bn

        return fuse_bn(self)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        taps: List[torch.Tensor] = []
        x = self.stem(x)
        if self.keep_stem:
            taps.append(x)
        for i, block in enumerate(self.blocks):
            if hasattr(block, "forward_with_endpoints"):
                x, own = block.forward_with_endpoints(x)
            else:
                x, own = block(x), []
            if self.keep_block[i]:
                taps.append(x)
            for j in self.keep_own[i]:
                taps.append(own[j])
        if hasattr(self, "head"):
            x = self.head(x)
            if self.keep_head[0]:
                taps.append(x)
            x = x.mean((2, 3), keepdim=self.keepdim)
            if self.keep_head[1]:
                taps.append(x)
            if hasattr(self, "dropout"):
                x = self.dropout(x)
                if self.keep_head[2]:
                    taps.append(x)
                if hasattr(self, "classifier"):
                    x = self.classifier(x.flatten(1))
                    taps.append(x)
        return [taps[i] for i in self.out_slots]
