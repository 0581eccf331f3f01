"""Fine-tuning: the official training settings on the PyTorch model, a new classifier, saving it back.

What ``model.train()`` computes is set here from the family's declaration (``Family.training``,
converter/families/<family>/training.py, through converter.registry.training_of): every batch
norm's momentum, epsilon and moving-variance rule (converter.layers.BatchNorm2dTF), the survival
probability of each residual block's drop-connect (converter.blocks.drop_connect) and the
classifier's dropout. The settings are recorded in ``model.pretrained_cfg["training"]`` and saved
with the weights (:func:`save_model`), so that converter.load_model restores them.

Drop-connect follows tensorflow/tpu efficientnet_model.Model.call (7dc921f; google/automl
effnetv2_model.EffNetV2Model.call at 6a54c87 alike): block ``idx`` of ``N`` (every block after the
repeats, counted from 0) keeps its residual branch with probability
``1 - (1 - survival_prob) * idx / N``, applied only where the block has its skip connection.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .errors import ConversionError
from .family import Training

# pretrained_cfg["training"] keys
TRAINING_KEYS = ("bn_momentum", "bn_eps", "bn_bessel", "survival_prob", "drop_rate", "source")
CHANGED = " (changed: "  # the source of settings given by the user: "<official source> (changed: a, b)"


def block_survival_probs(num_blocks: int, survival_prob: Optional[float]) -> List[float]:
    """The survival probability of each of ``num_blocks`` blocks (1.0: never dropped)."""
    if not survival_prob:  # efficientnet_model.Model.call: ``if survival_prob:``
        return [1.0] * num_blocks
    drop_rate = 1.0 - survival_prob
    return [1.0 - drop_rate * float(idx) / num_blocks for idx in range(num_blocks)]


def _check_rate(name: str, value: float, low: float, high: float, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConversionError(f"{name} must be a number {what}, got {value!r}") from None
    if not (low <= v <= high) or math.isnan(v):
        raise ConversionError(f"{name} must be {what}, got {value!r}")
    return v


def survival_from(survival_prob: Optional[float] = None, drop_path_rate: Optional[float] = None,
                  drop_connect_rate: Optional[float] = None) -> Optional[float]:
    """One survival probability from its three spellings: ``survival_prob``, timm's ``drop_path_rate``
    and the official override ``drop_connect_rate`` (efficientnet_builder: ``1 - drop_connect_rate``)."""
    given = [(n, v) for n, v in (("survival_prob", survival_prob), ("drop_path_rate", drop_path_rate),
                                 ("drop_connect_rate", drop_connect_rate)) if v is not None]
    if len(given) > 1:
        raise ConversionError(f"give one of survival_prob, drop_path_rate, drop_connect_rate, not {given[0][0]} "
                              f"and {given[1][0]}")
    if not given or given[0][0] == "survival_prob":
        return survival_prob
    rate = _check_rate(given[0][0], given[0][1], 0.0, 1.0 - 1e-12, "in [0, 1)")
    return 1.0 - rate


def settings_from_cfg(cfg: Dict[str, object]) -> Optional[Training]:
    """The Training recorded in a file's metadata (``cfg["training"]``), None when there is none."""
    rec = cfg.get("training")
    if not isinstance(rec, dict):
        return None
    try:
        return Training(bn_momentum=float(rec["bn_momentum"]), bn_eps=float(rec["bn_eps"]),
                        bessel=bool(rec["bn_bessel"]),
                        survival_prob=None if rec.get("survival_prob") is None else float(rec["survival_prob"]),
                        drop_rate=float(rec["drop_rate"]), source=str(rec.get("source", "")))
    except (KeyError, TypeError, ValueError):
        raise ConversionError(f"the file's training settings {rec!r} are incomplete; "
                              f"expected {', '.join(TRAINING_KEYS)}") from None


def official_settings(model) -> Training:
    """The family's official settings for ``model`` (its checkpoint flavor from ``pretrained_cfg``)."""
    from .registry import training_of

    cfg = getattr(model, "pretrained_cfg", None) or {}
    return training_of(model.spec, cfg.get("flavor"))


def current_settings(model) -> Training:
    """What ``model`` trains with now (set by :func:`configure`; the family's until then)."""
    t = getattr(model, "_training_settings", None)
    return t if isinstance(t, Training) else official_settings(model)


def configure(model, drop_rate: Optional[float] = None, survival_prob: Optional[float] = None,
              bn_momentum: Optional[float] = None, bn_eps: Optional[float] = None,
              base: Optional[Training] = None):
    """Set ``model``'s training behaviour: ``base`` (default: what it has now) with the given values
    replaced. ``survival_prob`` 1.0 turns drop-connect off; ``drop_rate`` 0 the dropout;
    ``bn_momentum`` in TensorFlow's meaning (0.99: the moving average keeps 99 %). Eval mode is
    unchanged unless ``bn_eps`` changes. Recorded in ``model.pretrained_cfg["training"]``."""
    from dataclasses import replace

    from .layers import BatchNorm2dTF

    t = base if base is not None else current_settings(model)
    changes = {}
    if drop_rate is not None:
        changes["drop_rate"] = _check_rate("drop_rate", drop_rate, 0.0, 1.0 - 1e-12, "in [0, 1)")
    if survival_prob is not None:
        changes["survival_prob"] = _check_rate("survival_prob", survival_prob, 1e-12, 1.0, "in (0, 1]")
    if bn_momentum is not None:
        changes["bn_momentum"] = _check_rate("bn_momentum", bn_momentum, 0.0, 1.0, "in [0, 1]")
    if bn_eps is not None:
        changes["bn_eps"] = _check_rate("bn_eps", bn_eps, 1e-12, math.inf, "positive")
    if changes:
        source, _, before = t.source.partition(CHANGED)
        names = sorted(set(changes) | {n for n in before.rstrip(")").split(", ") if n})
        changes["source"] = f"{source}{CHANGED}{', '.join(names)})"
        t = replace(t, **changes)
    for m in model.modules():
        if isinstance(m, BatchNorm2dTF):
            m.momentum = 1.0 - t.bn_momentum
            m.eps = t.bn_eps
            m.bessel = t.bessel
    for block, p in zip(model.blocks, block_survival_probs(len(model.blocks), t.survival_prob)):
        block.survival_prob = float(p)
    model.dropout.p = t.drop_rate
    model._training_settings = t
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    model.pretrained_cfg["training"] = {"bn_momentum": t.bn_momentum, "bn_eps": t.bn_eps, "bn_bessel": t.bessel,
                                        "survival_prob": t.survival_prob, "drop_rate": t.drop_rate,
                                        "source": t.source}
    return model


def dense_init_(linear) -> None:
    """efficientnet_model.dense_kernel_initializer (tensorflow/tpu 7dc921f): the kernel [in, out]
    uniform in +-1 / sqrt(out) (variance_scaling 1/3, fan_out, uniform); the bias zero (tf.layers.Dense)."""
    import torch

    bound = 1.0 / math.sqrt(linear.out_features)
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound)
        if linear.bias is not None:
            linear.bias.zero_()


def reset_classifier(model, num_classes: int, labels: Optional[Sequence[str]] = None,
                     keep: Optional[Sequence[int]] = None):
    """A new classifier of ``num_classes`` outputs; everything else (and the preprocessing) kept.

    ``labels``: the new classes' names (stored as ``pretrained_cfg["labels"]``); without them the
    outputs have no names (``labels`` []), unless ``keep`` maps every output to an old one.
    ``keep``: for each new output, the old output whose weights it takes (-1: a new row,
    initialised as the official dense layer): a subset or reordering of the old head.
    """
    import torch
    from torch import nn

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConversionError(f"num_classes must be a positive integer, got {num_classes!r}")
    if labels is not None:
        labels = [str(x) for x in labels]
        if len(labels) != num_classes:
            raise ConversionError(f"{len(labels)} labels for {num_classes} classes; give one name per class")
    old = model.classifier
    new = nn.Linear(old.in_features, num_classes).to(device=old.weight.device, dtype=old.weight.dtype)
    dense_init_(new)
    if keep is not None:
        keep = [int(i) for i in keep]
        if len(keep) != num_classes:
            raise ConversionError(f"keep names {len(keep)} old outputs for {num_classes} classes; give one per class")
        bad = [i for i in keep if not -1 <= i < old.out_features]
        if bad:
            raise ConversionError(f"keep: output {bad[0]} is not one of the old head's "
                                  f"0..{old.out_features - 1} (or -1)")
        with torch.no_grad():
            for j, i in enumerate(keep):
                if i >= 0:
                    new.weight[j] = old.weight[i]
                    new.bias[j] = old.bias[i]
    new.train(old.training)
    model.classifier = new
    model.spec = model.spec.with_classes(num_classes)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg["num_classes"] = num_classes
    if labels is not None:
        cfg["labels"] = labels
    elif keep is None:
        cfg["labels"] = []
    else:
        cfg.pop("labels", None)
    model.pretrained_cfg = cfg
    return model


def prepare(model, num_classes: Optional[int] = None, labels: Optional[Sequence[str]] = None,
            drop_rate: Optional[float] = None, survival_prob: Optional[float] = None,
            bn_momentum: Optional[float] = None, drop_path_rate: Optional[float] = None,
            drop_connect_rate: Optional[float] = None):
    """A loaded model made ready to fine-tune (converter.load_model's arguments): the training
    settings its file records (else the family's official ones for its flavor) with the given ones
    replaced; a new classifier when ``num_classes`` differs from its width (the same width keeps
    the trained head, as timm's ``num_classes`` does); ``labels`` name the classes."""
    base = settings_from_cfg(model.pretrained_cfg) or official_settings(model)
    survival_prob = survival_from(survival_prob, drop_path_rate, drop_connect_rate)
    configure(model, drop_rate, survival_prob, bn_momentum, base=base)
    width = model.classifier.out_features
    if num_classes is not None and num_classes != width:
        reset_classifier(model, num_classes, labels)
    elif labels is not None:
        labels = [str(x) for x in labels]
        if len(labels) != width:
            raise ConversionError(f"{len(labels)} labels for the {width} classes of the model; give one name per class")
        model.pretrained_cfg["labels"] = labels
    return model


# ---------------------------------------------------------------- saving

SAVE_SUFFIXES = (".safetensors", ".pth")


def save_model(model, path, force: bool = False) -> Path:
    """Write ``model`` (a model converter.load_model loaded, fine-tuned or not) as a native
    ``.safetensors`` or ``.pth`` that converter.load_model and every convert-effnet command read
    back: its weights and its metadata (preprocessing, classes, labels, training settings).
    Atomic; an existing file is replaced only with ``force``."""
    import torch

    from .metadata import REQUIRED, encode
    from .writer import AtomicFile, claimed, publish

    path = Path(path)
    if path.suffix not in SAVE_SUFFIXES:
        raise ConversionError(f"{path}: save_model writes {' or '.join(SAVE_SUFFIXES)} files")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ConversionError(f"the model has no effnet-convert metadata ({', '.join(missing)} missing): "
                              "save_model takes a model loaded with converter.load_model")
    if "training" not in cfg:
        configure(model)
        cfg["training"] = model.pretrained_cfg["training"]
    cfg["num_classes"] = int(model.classifier.out_features)
    cfg["layout"] = "native"  # the model's own keys, whatever layout it was loaded from
    encoded = encode(cfg)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if path.exists() and not force:
        raise ConversionError(f"{path} exists; pass force=True to replace it")
    with claimed([path], force=force):
        out = AtomicFile(path)
        out.create()
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import save_file

                save_file(sd, str(out.tmp), metadata=encoded)
            else:  # the native layout's .pth form, as convert writes it (the metadata as an attribute)
                from collections import OrderedDict

                from .mapping import get_layout

                torch.save(get_layout("native").pth_payload(OrderedDict(sd), encoded), str(out.tmp))
            publish([out], replace=force)
        except OSError as e:
            raise ConversionError(f"cannot write {path}: {e.strerror or e}") from None
        finally:
            out.discard()
    return path
