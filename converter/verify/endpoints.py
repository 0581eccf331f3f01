"""The converted model's official endpoints against the TensorFlow reference's, endpoint by endpoint.

The reference (converter/tfref/endpoints.py, in its own process as verification runs it) computes
``model.endpoints`` by the official rule with plain TF ops; the model's ``forward_endpoints``
computes them with its modules (converter/endpoints.py). Both key lists must be equal, in order,
and each tensor within ``NOISE_FACTOR`` times float32's own error there (the reference's float32
pass against its float64 pass; never below trace.FLOOR), as ``verify --trace`` judges its taps.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import ConversionError
from ..tfref.taps import rel_error
from .criteria import NOISE_FACTOR
from .trace import FLOOR

MODULE = "converter.tfref.endpoints"


def nchw(a: np.ndarray) -> np.ndarray:
    """An NHWC map as NCHW (vectors unchanged)."""
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def reference_endpoints(prefix: str, variant: str, images: np.ndarray, num_classes: Optional[int] = None,
                        device: str = "cpu", use_ema: bool = True,
                        fused_stride: Optional[str] = None) -> Dict[str, Tuple[np.ndarray, float]]:
    """{official key: (NCHW float32 array, float32's relative error there)} of the TensorFlow
    reference on NHWC ``images`` (one pass), in the official order."""
    from . import reference_logits

    with tempfile.TemporaryDirectory(prefix="effnet-endpoints-") as tmp:
        out = Path(tmp) / "endpoints.npz"
        reference_logits(prefix, variant, images, num_classes, device, use_ema, fused_stride,
                         extra_args=["--endpoints", str(out)], module=MODULE)
        with np.load(out) as z:
            names = [str(n) for n in z["names"]]
            return {n: (nchw(z[f"e{i}"]), float(z["noise"][i])) for i, n in enumerate(names)}


def compare_endpoints(model, reference: Dict[str, Tuple[np.ndarray, float]],
                      images: np.ndarray) -> List[Dict[str, object]]:
    """One row per reference endpoint: name, rel_error, noise, tolerance, ok, shape. ``model``'s
    ``forward_endpoints`` of NHWC ``images`` (float32, on its device); a differing key list raises."""
    import torch

    w = next(model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(w.device, torch.float32)
    with torch.no_grad():
        got = model.forward_endpoints(x)
    if list(got) != list(reference):
        raise ConversionError(f"endpoint keys differ: PyTorch {list(got)[:8]}..., TensorFlow {list(reference)[:8]}...")
    rows = []
    for name, (ref, noise) in reference.items():
        t = got[name].detach().float().cpu().numpy()
        tol = max(NOISE_FACTOR * noise, FLOOR)
        err = rel_error(t, ref) if t.shape == ref.shape else float("inf")
        rows.append(dict(name=name, rel_error=err, noise=noise, tolerance=tol, ok=err <= tol, shape=list(t.shape)))
    return rows
