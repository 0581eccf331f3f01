"""Conversion in an environment without TensorFlow (`make test` builds one: .venv-notf)."""
import os
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

from converter.cli import main
from helpers import make_checkpoint, torch_layout

NOTF_PYTHON = os.environ.get("EFFNET_NOTF_PYTHON")
pytestmark = pytest.mark.skipif(not NOTF_PYTHON, reason="EFFNET_NOTF_PYTHON unset (make test sets it)")
tf = pytest.importorskip("tensorflow")  # only to write the checkpoints and read them back here


def _run(*args, cwd):
    return subprocess.run([NOTF_PYTHON, *args], capture_output=True, text=True, timeout=600, cwd=str(cwd),
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})


def test_environment_really_has_no_tensorflow(tmp_path):
    proc = _run("-c", "import importlib.util, sys; print(importlib.util.find_spec('tensorflow') is None)", cwd=tmp_path)
    assert proc.stdout.strip() == "True", proc.stdout + proc.stderr


def test_convert_without_tensorflow(tmp_path_factory, tmp_path):
    from converter.mapping import expand

    prefix = make_checkpoint(tmp_path_factory.mktemp("ck"), "b0")
    proc = _run("-m", "converter", "--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix),
                "--output-dir", str(tmp_path), "--format", "both", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = tf.train.load_checkpoint(str(prefix))
    with safe_open(str(tmp_path / "efficientnet-b0_aa.safetensors"), framework="np") as f:
        for e in expand("b0"):
            expected = torch_layout(e.tf_name, r.get_tensor(e.tf_name + "/ExponentialMovingAverage"))
            assert (f.get_tensor(e.key) == expected).all(), e.key
    assert (tmp_path / "efficientnet-b0_aa.pth").is_file()
    # the verification stage and the TF reader say exactly what to install, in one line
    for extra in (["--verify"], ["--reader", "tf"]):
        out = tmp_path / ("v" + extra[0])
        proc = _run("-m", "converter", "--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix),
                    "--output-dir", str(out), *extra, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "pip install 'effnet-convert[verify]'" in lines[0]
        assert not out.exists() or not list(out.iterdir())
