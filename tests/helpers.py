"""Test helpers: generated official-layout checkpoints, cached per session."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

_CACHE: Dict[Tuple, Path] = {}


def make_checkpoint(root: Path, variant: str, mode: str = "full", calibration_resolution=None,
                    slots: bool = True, num_classes: int = 1000, seed: int = 0,
                    calibration_images: int = 8, flavor: str = "aa") -> Path:
    """Write (once per session) an official-layout checkpoint; returns its prefix."""
    from converter.tfref.generate import generate_checkpoint

    from converter.zoo import ADVPROP_MEAN, ADVPROP_STD, IMAGENET_MEAN, IMAGENET_STD

    # calibrate the BN statistics on inputs normalized as the flavor's metadata will say
    mean, std = (ADVPROP_MEAN, ADVPROP_STD) if flavor == "advprop" else (IMAGENET_MEAN, IMAGENET_STD)
    norm = "advprop" if flavor == "advprop" else "imagenet"
    key = (variant, mode, calibration_resolution, slots, num_classes, seed, calibration_images, norm)
    if key not in _CACHE:
        folder = root / "_".join(str(k) for k in key)
        folder.mkdir(parents=True, exist_ok=True)
        prefix = folder / "model.ckpt"
        generate_checkpoint(variant, str(prefix), mode=mode, seed=seed,
                            calibration_resolution=calibration_resolution, num_classes=num_classes,
                            slots=slots, calibration_images=calibration_images, mean=mean, std=std)
        _CACHE[key] = prefix
    return _CACHE[key]


def torch_layout(name: str, value: np.ndarray) -> np.ndarray:
    """Independent re-statement of the layout rules, by official variable name."""
    if name.endswith("depthwise_kernel"):
        kh, kw, c, m = value.shape
        return value.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:
        return value.T
    return value


class BucketServer:
    """A real HTTP server on 127.0.0.1 serving ``root`` laid out like the official bucket.

    ``hits`` lists the paths requested; ``url`` is the base URL (for EFFNET_BASE_URL).
    """

    def __init__(self, root: Path):
        import functools
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        hits = self.hits = []

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                hits.append(self.path)
                super().do_GET()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
