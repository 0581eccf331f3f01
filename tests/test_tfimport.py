"""converter.tfref.tfimport: TensorFlow's start-up lines kept off stderr, anything else kept."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_FAKE_TF = """
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"I0000 00:00:1.0 6547 port.cc:153] oneDNN custom operations are on. You may see...\\n")
os.write(2, b"E0000 something real went wrong\\n")
LOADED = True
"""


def _run(code, path_first=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path_first, str(REPO)) if p)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_startup_noise_dropped_other_lines_kept(tmp_path):
    """A stand-in ``tensorflow`` writes both known start-up lines and a real one to fd 2 at import."""
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(_FAKE_TF)
    r = _run("from converter.tfref.tfimport import import_tensorflow\n"
             "tf = import_tensorflow(); assert tf.LOADED; import sys; print('after', file=sys.stderr)",
             path_first=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["E0000 something real went wrong", "after"]


def test_real_tensorflow_import_is_quiet():
    r = _run("from converter.tfref.tfimport import import_tensorflow\n"
             "tf = import_tensorflow(); print(tf.constant(2.0).numpy())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2.0"
    assert not any(n in r.stderr for n in ("absl::InitializeLog", "oneDNN custom operations")), r.stderr
