"""The TensorFlow reference's intermediate tensors ("taps"), for ``verify --trace`` (converter/verify/trace.py).

Command line: the reference's (converter/tfref/reference.py: logits as usual) plus::

    python -m converter.tfref.taps ... --trace TAPS.npz [--trace-images N]

One eval-mode pass of the reference (reference._walk, the same code that computes the logits)
records, in the order the pass meets them: every batch norm's input and output (under the BN's
official name prefix), the stem and block outputs (``scope/stem``, ``scope/blocks_N``), the
pooled features (``scope/head/pooled``) and the logits. Every family the reference computes
emits these through the walk's ``trace``/``bn`` contract (families.py), so every family has taps.

The same pass runs again in float64 (weights and images cast up): the relative difference of
the float32 tap from the float64 one is float32's own rounding error at that depth, which
converter/verify/trace.py uses to set each tap's tolerance.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..arch import ArchSpec
from ..errors import ConversionError

BN_IN, BN_OUT, STAGE, LOGITS = "bn_in", "bn_out", "stage", "logits"  # tap kinds (converter/verify/trace.py too)


def rel_error(x: np.ndarray, ref: np.ndarray) -> float:
    """||x - ref|| / ||ref|| (inf where not finite; 0 for two zero tensors)."""
    ref = np.asarray(ref, dtype=np.float64)
    den = float(np.linalg.norm(ref))
    num = float(np.linalg.norm(np.asarray(x, dtype=np.float64) - ref))
    rel = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
    return rel if np.isfinite(rel) else float("inf")


def traced_pass(spec: ArchSpec, weights, images: np.ndarray) -> List[Tuple[str, str, np.ndarray]]:
    """[(official name, kind, array)] of one pass of ``images`` (one batch) with ``weights``
    (reference.LoadedWeights), in the order the pass computes them."""
    from . import reference as R

    tf = R._tf()
    taps: List[Tuple[str, str, np.ndarray]] = []

    def trace(name: str, x) -> None:
        taps.append((name, STAGE, np.asarray(x)))

    def bn(prefix: str, x):
        taps.append((prefix, BN_IN, x.numpy()))
        y = R.bn_inference(x, weights(f"{prefix}/gamma"), weights(f"{prefix}/beta"),
                            weights(f"{prefix}/moving_mean"), weights(f"{prefix}/moving_variance"), spec.bn_eps)
        taps.append((prefix, BN_OUT, y.numpy()))
        return y

    with tf.device(weights.device):
        x = tf.identity(tf.convert_to_tensor(images.astype(weights.dtype, copy=False)))
        logits = R._walk(spec, weights, x, bn, trace).numpy()
    taps.append(("logits", LOGITS, logits))
    return taps


def tap_tensors(spec: ArchSpec, taps: List[Tuple[str, str, np.ndarray]]) -> List[List[str]]:
    """The official variables each tap depends on since the tap before it, in creation order:
    a BN's four variables for its output; for a BN's input, the variables created since the
    previous BN (the conv feeding it, and a CondConv routing or SE layer before that conv); for
    the logits, the classifier's. Stage outputs: none (their convs and BNs have their own taps)."""
    from .ops import BN_PARAMS
    from .reference import variables

    names = [n for n, _ in variables(spec)]
    is_bn = [n.rsplit("/", 1)[-1] in BN_PARAMS for n in names]
    at = {n: i for i, n in enumerate(names)}

    def before(i: int) -> List[str]:
        j = i
        while j > 0 and not is_bn[j - 1]:
            j -= 1
        return names[j:i]

    out = []
    for name, kind, _ in taps:
        if kind == BN_OUT:
            out.append([f"{name}/{p}" for p in BN_PARAMS])
        elif kind == BN_IN and f"{name}/gamma" in at:
            out.append(before(at[f"{name}/gamma"]))
        elif kind == LOGITS:
            out.append(before(len(names)))
        else:
            out.append([])
    return out


def float32_and_float64(spec: ArchSpec, get, weights, images: np.ndarray, device: str, one_pass, what: str):
    """``one_pass(spec, weights, images)`` with the loaded float32 ``weights``, then again with the
    weights read anew in float64 (images cast up exactly): (float32 result, float64 result)."""
    from . import reference as R

    if len(images) < 1:
        raise ConversionError(f"{what}: no images")
    r32 = one_pass(spec, weights, images)
    w64 = R.load_weights(spec, get, device, dtype=np.float64)
    r64 = one_pass(spec, w64, images)
    del w64
    return r32, r64


def write_npz(path: str, arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def write_taps(path: str, spec: ArchSpec, get, weights, images: np.ndarray, device: str) -> None:
    """Write the float32 taps of ``images`` and float32's rounding error at each (vs float64) to ``path``.

    npz keys: ``names``, ``kinds``, ``tensors`` (str arrays; tensors: "|"-joined, see tap_tensors), ``t0``... (float32 arrays, NHWC), ``noise`` (float64).
    """
    taps32, taps64 = float32_and_float64(spec, get, weights, images, device, traced_pass, "trace")
    if [(n, k) for n, k, _ in taps32] != [(n, k) for n, k, _ in taps64]:
        raise ConversionError("trace: the float32 and float64 passes met different layers")
    out = {f"t{i}": np.asarray(a, dtype=np.float32) for i, (_, _, a) in enumerate(taps32)}
    out["names"] = np.array([n for n, _, _ in taps32])
    out["kinds"] = np.array([k for _, k, _ in taps32])
    out["tensors"] = np.array(["|".join(t) for t in tap_tensors(spec, taps32)])
    out["noise"] = np.array([rel_error(a, b) for (_, _, a), (_, _, b) in zip(taps32, taps64)], dtype=np.float64)
    write_npz(path, out)


def reference_cli(argv: Optional[Sequence[str]], option: str, metavar: str, write) -> int:
    """The reference's CLI (converter/tfref/reference.py) plus ``--OPTION FILE`` and ``--OPTION-images N``:
    once the weights are loaded, ``write(FILE, spec, get, weights, the first N images, device)``."""
    from . import reference as R

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(f"--{option}", required=True, metavar=metavar, dest="out")
    p.add_argument(f"--{option.rstrip('s')}-images", type=int, default=None, dest="count")
    own, rest = p.parse_known_args(argv)
    if own.count is not None and own.count < 1:
        print(f"error: --{option.rstrip('s')}-images must be at least 1, got {own.count}", file=sys.stderr)
        return 2

    def after(spec, get, weights, images, device):
        write(own.out, spec, get, weights, images[:own.count], device)

    return R.main(rest, after=after)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The reference's CLI; with the weights loaded, also the taps of the first ``--trace-images``."""
    return reference_cli(argv, "trace", "TAPS.npz", write_taps)


if __name__ == "__main__":
    sys.exit(main())
