"""The TensorFlow reference's official endpoints (``model.endpoints``), for converter/verify/endpoints.py.

Command line: the reference's (converter/tfref/reference.py: logits as usual) plus::

    python -m converter.tfref.endpoints ... --endpoints ENDPOINTS.npz [--endpoint-images N]

One eval-mode pass of the reference (reference._walk, the code that computes the logits) gives the
official endpoints by their official keys, in the official dict's order: the walk applies the
official rule (stem, block_{i}, reduction_{k}, each block kind's own endpoints where its reference
emits them, the family's head endpoints of its ModelRef). The same pass runs again in float64
(weights and images cast up): each endpoint's float32 rounding error, the tolerance's base.
"""
from __future__ import annotations

import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..arch import ArchSpec
from ..errors import ConversionError
from .taps import float32_and_float64, reference_cli, rel_error, write_npz


def endpoint_pass(spec: ArchSpec, weights, images: np.ndarray) -> List[Tuple[str, np.ndarray]]:
    """[(official key, array as TensorFlow computes it: NHWC maps)] of one pass of ``images``."""
    from . import reference as R

    tf = R._tf()
    out: List[Tuple[str, np.ndarray]] = []

    def bn(prefix: str, x):
        return R.bn_inference(x, weights(f"{prefix}/gamma"), weights(f"{prefix}/beta"),
                              weights(f"{prefix}/moving_mean"), weights(f"{prefix}/moving_variance"), spec.bn_eps)

    with tf.device(weights.device):
        x = tf.identity(tf.convert_to_tensor(images.astype(weights.dtype, copy=False)))
        R._walk(spec, weights, x, bn, endpoints=lambda name, v: out.append((name, np.asarray(v.numpy()))))
    return out


def write_endpoints(path: str, spec: ArchSpec, get, weights, images: np.ndarray, device: str) -> None:
    """Write the float32 endpoints of ``images`` and float32's error at each (vs float64) to ``path``.

    npz keys: ``names`` (str array, the official keys in order), ``e0``... (float32, NHWC as computed),
    ``noise`` (float64: ||float32 - float64|| / ||float64|| per endpoint).
    """
    e32, e64 = float32_and_float64(spec, get, weights, images, device, endpoint_pass, "endpoints")
    if [n for n, _ in e32] != [n for n, _ in e64]:
        raise ConversionError("endpoints: the float32 and float64 passes gave different endpoints")
    out = {f"e{i}": np.asarray(a, dtype=np.float32) for i, (_, a) in enumerate(e32)}
    out["names"] = np.array([n for n, _ in e32])
    out["noise"] = np.array([rel_error(a, b) for (_, a), (_, b) in zip(e32, e64)], dtype=np.float64)
    write_npz(path, out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The reference's CLI; with the weights loaded, also the endpoints of the first ``--endpoint-images``."""
    return reference_cli(argv, "endpoints", "ENDPOINTS.npz", write_endpoints)


if __name__ == "__main__":
    sys.exit(main())
