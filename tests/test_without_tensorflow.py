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


def test_conversion_test_modules_pass_without_tensorflow(tmp_path):
    """The whole conversion test modules, run by pytest inside the environment without TensorFlow.

    Their checkpoints are still written by TensorFlow (this interpreter, through
    $EFFNET_TF_PYTHON); everything they test (reading, selection, writing, tarball streaming,
    downloads, the CLI) runs without it. Only the tests that need TensorFlow itself skip there.
    """
    import re
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EFFNET_NOTF_PYTHON")}
    env["EFFNET_TF_PYTHON"] = sys.executable
    proc = subprocess.run([NOTF_PYTHON, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "bt"), "tests/test_convert.py", "tests/test_tarball.py"],
                          capture_output=True, text=True, timeout=3000, cwd=str(repo), env=env)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", proc.stdout.splitlines()[-1])}
    assert counts.get("failed", 0) == 0 and counts.get("error", 0) == 0, tail
    assert counts.get("passed", 0) >= 30, tail
    # what skipped there needs TensorFlow itself (its reader), nothing else
    skips = [l for l in proc.stdout.splitlines() if l.startswith("SKIPPED")]
    assert len(skips) == counts.get("skipped", 0) <= 2, tail
    assert all("tensorflow" in l.lower() for l in skips), skips
