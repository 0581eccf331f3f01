"""Test helpers: generated official-layout checkpoints, cached per session."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

_CACHE: Dict[Tuple, Path] = {}

# Where TensorFlow is missing (the no-TF environment runs the conversion tests too), checkpoints
# are still written by TensorFlow: by this interpreter, which has it (tests/test_without_tensorflow.py).
TF_PYTHON_ENV = "EFFNET_TF_PYTHON"
STORE_ENV = "EFFNET_CHECKPOINT_STORE"


def has_tensorflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def _in_tf_python(code: str, *args: str) -> None:
    """Run ``code`` (argv: ``args``) in the TensorFlow interpreter named by $EFFNET_TF_PYTHON."""
    import subprocess

    python = os.environ.get(TF_PYTHON_ENV)
    if not python:
        raise RuntimeError(f"TensorFlow is not installed here and ${TF_PYTHON_ENV} names no interpreter that has it")
    proc = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if proc.returncode != 0:
        raise RuntimeError(f"{python} failed: {proc.stderr[-3000:]}")


_GENERATE = """
import json, sys
from converter.tfref.generate import generate_checkpoint
kw = json.loads(sys.argv[2])
generate_checkpoint(kw.pop("variant"), sys.argv[1], **kw)
"""

_WRITE = """
import sys
import numpy as np
from converter.tfref.generate import write_checkpoint
with np.load(sys.argv[2]) as z:
    write_checkpoint(sys.argv[1], [(n, z[n]) for n in z.files])
"""


class _BundleValues:
    """tf.train.load_checkpoint's reader methods over the project's reader (where TF is missing;
    that reader is checked bit for bit against TensorFlow's in tests/test_bundle.py)."""

    def __init__(self, prefix: str):
        from converter.sources.bundle import BundleReader

        self._r = BundleReader(prefix)

    def get_variable_to_shape_map(self):
        return {n: list(self._r.shape(n)) for n in self._r.names()}

    def get_tensor(self, name: str):
        return self._r.read(name)


def load_checkpoint(prefix):
    """tf.train.load_checkpoint(prefix), or the same reading without TensorFlow."""
    if has_tensorflow():
        import tensorflow as tf

        return tf.train.load_checkpoint(str(prefix))
    return _BundleValues(str(prefix))


def write_checkpoint(prefix, values: Dict[str, np.ndarray]) -> Path:
    """Write ``name -> array`` as an official-layout checkpoint with TensorFlow's SaveV2."""
    if has_tensorflow():
        from converter.tfref.generate import write_checkpoint as write

        write(str(prefix), sorted(values.items()))
    else:
        npz = Path(str(prefix) + ".values.npz")
        np.savez(npz, **values)
        _in_tf_python(_WRITE, str(prefix), str(npz))
        npz.unlink()
    return Path(prefix)


def make_checkpoint(root: Path, variant: str, mode: str = "full", calibration_resolution=None,
                    slots: bool = True, num_classes: int = 1000, seed: int = 0,
                    calibration_images: int = 8, flavor: str = "aa") -> Path:
    """Write (once per session) an official-layout checkpoint; returns its prefix."""
    from converter.checkpoint import IMAGENET_MEAN, IMAGENET_STD
    from converter.families.efficientnet.checkpoints import ADVPROP_MEAN, ADVPROP_STD

    # calibrate the BN statistics on inputs normalized as the flavor's metadata will say
    mean, std = (ADVPROP_MEAN, ADVPROP_STD) if flavor == "advprop" else (IMAGENET_MEAN, IMAGENET_STD)
    norm = "advprop" if flavor == "advprop" else "imagenet"
    key = (variant, mode, calibration_resolution, slots, num_classes, seed, calibration_images, norm)
    if key not in _CACHE:
        # $EFFNET_CHECKPOINT_STORE (set for the session by conftest.py) shares the checkpoints with the
        # pytest run in the environment without TensorFlow (tests/test_without_tensorflow.py)
        store = os.environ.get(STORE_ENV)
        folder = (Path(store) if store else root) / "_".join(str(k) for k in key)
        prefix = folder / "model.ckpt"
        if store and (folder / ".complete").is_file():
            _CACHE[key] = prefix
            return prefix
        folder.mkdir(parents=True, exist_ok=True)
        # pytest-xdist workers share the store: one writes a checkpoint, the others wait for it
        with _store_lock(folder):
            if not (folder / ".complete").is_file():
                _generate(variant, prefix, mode, seed, calibration_resolution, num_classes, slots,
                          calibration_images, mean, std)
                (folder / ".complete").touch()
        _CACHE[key] = prefix
    return _CACHE[key]


@contextlib.contextmanager
def _store_lock(folder: Path):
    """An exclusive flock on ``folder/.lock`` for the with-block."""
    import fcntl

    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _generate(variant, prefix, mode, seed, calibration_resolution, num_classes, slots, calibration_images,
              mean, std) -> None:
    """Write one checkpoint with TensorFlow (here, or in $EFFNET_TF_PYTHON without it)."""
    kw = dict(mode=mode, seed=seed, calibration_resolution=calibration_resolution, num_classes=num_classes,
              slots=slots, calibration_images=calibration_images, mean=list(mean), std=list(std))
    if has_tensorflow():
        from converter.tfref.generate import generate_checkpoint

        generate_checkpoint(variant, str(prefix), **kw)
    else:
        import json

        _in_tf_python(_GENERATE, str(prefix), json.dumps(dict(kw, variant=variant)))


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


# ---- the real timm / mmpretrain, run in their own environment (tests/libs_check.py) ----

LIBS_CHECK = Path(__file__).resolve().parent / "libs_check.py"


def libs_python() -> str:
    """$EFFNET_LIBS_PYTHON (``make libs-env``); skips the test where it is not set."""
    import pytest

    exe = os.environ.get("EFFNET_LIBS_PYTHON")
    if not exe:
        pytest.skip("EFFNET_LIBS_PYTHON is not set (make libs-env builds .venv-libs with timm and mmpretrain; "
                    "make test sets it)")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"EFFNET_LIBS_PYTHON={exe} is not an executable")
    return exe


def libs(*args: str, check: bool = True):
    """Run tests/libs_check.py ``args`` in the libs environment (a CompletedProcess)."""
    import subprocess

    import pytest

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([libs_python(), str(LIBS_CHECK), *args], capture_output=True, text=True, env=env,
                       timeout=1800)
    if check and p.returncode != 0:
        pytest.fail(f"libs_check {args[0]} failed ({p.returncode}): {p.stderr[-3000:]}")
    return p


def lib_logits(tmp_path: Path, jobs):
    """Run ``jobs`` ((library, model name, classes, file, inputs .npz[, model kwargs]), ...) in the libs environment.

    Returns (logits by job index, per-job info): each job loads its file strictly and runs on
    its inputs' ``x`` (NCHW).
    """
    import json

    jobs_file, out = tmp_path / "jobs.json", tmp_path / "lib-logits.npz"
    jobs_file.write_text(json.dumps([{"library": lib, "model": m, "num_classes": n, "file": str(f), "inputs": str(x),
                                      "kwargs": kw[0] if kw else {}} for lib, m, n, f, x, *kw in jobs]))
    p = libs("logits", "--jobs", str(jobs_file), "--inputs", str(jobs[0][4]), "--out", str(out))
    info = json.loads(p.stdout.strip().splitlines()[-1])["results"]
    return dict(np.load(out)), info
