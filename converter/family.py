"""A family and its block kinds, as each family package declares them (``FAMILY = Family(...)``).

A family (converter/families/<name>/) brings its architectures, their block kinds and every part
of a kind (cost, PyTorch module, table rows, TensorFlow reference), its checkpoints and how they
are evaluated. converter.registry finds the declarations by walking converter.families; the rest
of the toolkit asks the registry, never a family by name. The parts that import torch or
TensorFlow are given as loaders (called when needed), so that declaring a family imports neither.
This module imports nothing of the toolkit but the errors: every family can import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

Rows = Tuple[Tuple, ...]

# What an official head endpoint is (Family.head_endpoints; the TF reference's ModelRef.head_endpoints):
# the last block's output, the head conv's (after BN and act), its global average pool ([N, C];
# [N, C, 1, 1] with local pooling, as the official avg_pool keeps it), that pool after dropout, the logits
LAST_BLOCK, HEAD_1X1, POOLED, DROPPED, LOGITS = "last_block", "head_1x1", "pooled", "dropped", "logits"
HEAD_TENSORS = (LAST_BLOCK, HEAD_1X1, POOLED, DROPPED, LOGITS)


@dataclass(frozen=True)
class Training:
    """A family's official training settings for one architecture and checkpoint flavor: what
    ``model.train()`` uses (converter/training.py), declared by the family (``Family.training``)."""

    bn_momentum: float  # TensorFlow's meaning: moving = momentum * moving + (1 - momentum) * batch
    bn_eps: float
    # the batch variance the moving variance takes: True, unbiased (n / (n - 1), TF's fused batch
    # norm); False, biased (the non-fused Keras layer: tf.nn.moments)
    bessel: bool
    survival_prob: Optional[float]  # drop-connect: the base survival probability; None: none
    drop_rate: float  # dropout before the classifier
    source: str  # where the official code sets them (file, commit)


@dataclass(frozen=True, eq=False)
class Kind:
    """One block kind (``Block.kind``): what computes, maps and costs a block in every layer."""

    name: str
    what: str  # for messages: "fused (EdgeTPU)"
    params: Callable  # (block) -> parameters (BN moving statistics not counted)
    macs: Callable  # (block, square input size) -> (multiply-adds, output size)
    module: Callable[[], type]  # loader: the torch module class, built as cls(block, eps, act)
    reference: Callable[[], object]  # loader: its TF reference (converter.tfref.ops.BlockRef)
    # the table attributes holding its rule sets (with an expand conv, without one); a layout whose
    # table has neither and that is not in ``rows_by_layout`` has no model for the kind
    rows: Tuple[str, str] = ("", "")
    # layout name -> (rows with expand conv, rows without): rule sets the family brings itself
    rows_by_layout: Mapping[str, Tuple[Rows, Rows]] = field(default_factory=dict)
    # (spec) -> {block index: format fields / roles}: the names a row's layer may use beyond the
    # generic ones (i, stage, j, group, group_j); a role maps to its layer (a str), to None (no such
    # layer in that block: the row is skipped) or to [(layer, dims), ...] (one layer per group)
    fields: Optional[Callable[[object], Dict[int, Dict[str, object]]]] = None


@dataclass(frozen=True, eq=False)
class Family:
    """One family: what its package declares as ``FAMILY``."""

    name: str  # the package's name: efficientnet, efficientnet_v2, mnasnet
    labels: Tuple[str, ...]  # the ArchSpec.family values of its architectures, its main line first
    kinds: Tuple[Kind, ...]
    archs: Mapping[str, object]  # registry name -> ArchSpec
    # a normalised variant name -> its ArchSpec or None (releases at other resolutions...)
    lookup: Callable[[str], Optional[object]]
    variant_names: Callable[[], Sequence[str]]  # every variant name, for listings and errors
    variants_help: str  # the --variant help's part: "b0..b8, l2, ..."
    checkpoints: Callable[[], Sequence[object]]  # loader: its released checkpoints
    # (ArchSpec, flavor) -> its checkpoint, None when the architecture is not this family's (a
    # flavor naming no release of it: ConversionError)
    finder: Callable[[object, Optional[str]], Optional[object]]
    reference: Callable[[], object]  # loader: its model-level TF reference (converter.tfref.ops.ModelRef)
    name_prefixes: Mapping[str, str] = field(default_factory=dict)  # official prefix -> registry prefix
    # (spec) -> {role: official layer}: stem/head rows that name roles (None: rows give the layers)
    roles: Optional[Callable[[object], Dict[str, str]]] = None
    batch_default: bool = False  # ``--all`` without ``--only`` converts its checkpoints that have a zoo name
    groups_per_stage: bool = False  # mmpretrain's backbone: one ``layers`` entry per block string
    # Keras application names of its blocks: (block) -> the keras table's rule set attribute
    keras_rows: Optional[Callable[[object], str]] = None
    # pretrained_cfg "preprocessing" value -> the eval pipeline it names (converter.checkpoint.Preprocessing)
    preprocessing: Mapping[str, object] = field(default_factory=dict)
    # normalization (0-1 scale) of the generator's synthetic inputs by label, where not ImageNet's
    synthetic_norm: Mapping[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = field(default_factory=dict)
    # the official model's endpoints after its blocks, in its dict's order: (key, one of HEAD_TENSORS);
    # stem, block_{i}, reduction_{k} and the blocks' own come from the blocks (converter/endpoints.py)
    head_endpoints: Tuple[Tuple[str, str], ...] = ()
    # (ArchSpec, checkpoint flavor or None) -> its official Training settings (None: the registry's default)
    training: Optional[Callable[[object, Optional[str]], Training]] = None

    def __repr__(self) -> str:
        return f"Family({self.name!r})"
