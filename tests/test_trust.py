"""Issue 14: verification never leaves an unverified file under its final name; the errors a new
user meets first; help texts and README agree; `make install` on an externally managed Python.

Small inputs throughout (b0 at 64 px, 2 synthetic images): the verification runs the real
TensorFlow reference on a generated, BN-calibrated checkpoint.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from converter import cli
from helpers import BucketServer, make_checkpoint

REPO = Path(__file__).resolve().parents[1]
RES = 64
NAME = "efficientnet-b0_aa"


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("trust"), "b0", calibration_resolution=RES, calibration_images=2)


def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _convert(prefix, out, *extra, quiet=True):
    return ["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(out),
            *(["--quiet"] if quiet else []), *extra]


def _verify_args(*extra):
    return ["--verify", "--resolution", str(RES), "--num-images", "2", "--device", "cpu", *extra]


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _listing(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _one_line_error(rc, err, *needles):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("convert-effnet: error: "), (rc, err)
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in err and "{{function_node" not in err and "[Op:" not in err  # no TF internals


def _jpeg(path: Path, seed: int = 0, size=(80, 96)) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, quality=90)
    return path


# ---- point 2: verification options checked before anything is converted -----------------------

def test_bad_verification_options_stop_before_converting(prefix, tmp_path, capsys):
    good = _jpeg(tmp_path / "good.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    tiff = tmp_path / "scan.tif"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tiff)
    (tmp_path / "afolder.npz").mkdir()
    cases = [
        (["--images", str(tmp_path / "missing.jpg")], ["missing.jpg", "no such file"]),
        (["--images", str(good), str(text)], ["notes.jpg", "not an image"]),
        (["--images", str(truncated)], ["cut.jpg", "cannot decode this JPEG"]),
        (["--images", str(tiff)], ["scan.tif", "not an image TensorFlow decodes"]),
        (["--resolution", "5"], ["--resolution 5", "32..2048"]),
        (["--resolution", "100000"], ["--resolution 100000"]),
        (["--num-images", "0"], ["no images to verify on"]),
        (["--num-images", "-1"], ["--num-images"]),
        (["--dump-logits", str(tmp_path / "nowhere" / "l.npz")], ["nowhere", "does not exist"]),
        (["--dump-logits", str(tmp_path / "afolder.npz")], ["afolder.npz", "is a folder"]),
        (["--max-rel-error", "0"], ["--max-rel-error"]),
    ]
    for extra, needles in cases:
        out = tmp_path / "out"
        # the later option wins in argparse: each case overrides one of the defaults
        rc, _, err = _run(capsys, *_convert(prefix, out), *_verify_args(), *extra)
        _one_line_error(rc, err, *needles)
        assert _listing(out) == [], (extra, _listing(out))  # nothing written, not even a temp file
    # a file TensorFlow's own decoder refuses (past the checks above): its one line, not TF's text
    from converter import verify

    with pytest.raises(verify.ConversionError) as ei:
        verify._run_tf("converter.tfref.preprocess", ["--files", str(text), "--resolution", str(RES), "--out",
                                                      str(tmp_path / "x.npz")], "cpu")
    assert str(ei.value) == f"--images {text}: TensorFlow cannot decode this image (corrupt, or a format variant " \
                            "its decoder lacks)"
    # --all checks them once, before its first checkpoint
    rc, _, err = _run(capsys, "--all", "--only", NAME, "--output-dir", tmp_path / "zoo", "--images", text)
    _one_line_error(rc, err, "notes.jpg", "not an image")
    assert _listing(tmp_path / "zoo") == []
    # the same checks in `convert-effnet verify`, before TensorFlow runs
    rc, _, err = _run(capsys, "verify", "--weights", tmp_path / "w.safetensors", "--checkpoint", prefix,
                      "--images", text)
    assert rc == 2 and "w.safetensors" in err  # the weights first: there are none


def test_verify_passes_then_names_the_outputs(prefix, tmp_path, capsys, monkeypatch):
    """During the check the outputs exist only as temp files; after it: the file, its report (with
    the sha256 of the bytes checked, per-image errors, the worst images), nothing else."""
    from converter import verify

    out = tmp_path / "out"
    seen = {}
    real = verify.reference_logits

    def spy(*a, **kw):
        seen["during"] = _listing(out)
        return real(*a, **kw)

    monkeypatch.setattr(verify, "reference_logits", spy)
    rc, stdout, err = _run(capsys, *_convert(prefix, out, quiet=False), *_verify_args(), "--format", "both")
    assert rc == 0, err
    stages = [l for l in err.splitlines() if l.startswith("verify: ")]  # progress: one line per stage
    assert stages == ["verify: TensorFlow reference on 2 images at 64 px (cpu), float32 and float64",
                      "verify: PyTorch on the same 2 images (cpu), float32 and float64"]
    assert not {f"{NAME}.safetensors", f"{NAME}.pth", f"{NAME}.verify.json"} & set(seen["during"]), seen
    # beside the two temp files, the run's claims on the final names (converter/writer.py claimed)
    claims = sorted(n for n in seen["during"] if n.endswith(".claim"))
    temps = [n for n in seen["during"] if not n.endswith(".claim")]
    assert claims == sorted(f".{n}.claim" for n in (f"{NAME}.safetensors", f"{NAME}.pth")), seen
    assert len(temps) == 2 and all(n.startswith(".") and ".tmp-" in n for n in temps), seen
    assert _listing(out) == [f"{NAME}.pth", f"{NAME}.safetensors", f"{NAME}.verify.json"]
    report = json.loads((out / f"{NAME}.verify.json").read_text())
    assert report["passed"] is True and report["weights"] == str(out / f"{NAME}.safetensors")
    assert report["weights_sha256"] == _sha(out / f"{NAME}.safetensors")
    rows = report["per_image"]
    assert [r["image"] for r in rows] == ["synthetic-0 (noise)", "synthetic-1 (linear-gradient)"]
    # the overall error is a norm over all images: no image is below it all by itself
    assert max(r["rel_error"] for r in rows) >= report["rel_error"] * (1 - 1e-9) and all(r["rel_error"] < 1e-4 for r in rows)
    assert report["worst"][0] == max(rows, key=lambda r: r["rel_error"])["image"]
    assert "worst: " + report["worst"][0] in stdout
    # a failing re-conversion (raw weights against an EMA reference: the reference made to read the
    # EMA twins whatever the file holds, issue 25's defect): the final names keep what they held
    good_sha, good_report = _sha(out / f"{NAME}.safetensors"), (out / f"{NAME}.verify.json").read_text()
    monkeypatch.setattr(verify, "holds_ema", lambda cfg: True)
    rc, stdout, err = _run(capsys, *_convert(prefix, out), *_verify_args(), "--format", "both", "--force", "--no-ema")
    monkeypatch.undo()
    assert rc == 3 and "FAIL" in stdout
    assert "verification failed: conversion error (float64 on both sides)" in err and "worst synthetic-" in err
    assert "verify: " not in err  # --quiet: no stage lines
    assert _listing(out) == sorted([f"{NAME}.pth", f"{NAME}.pth.failed", f"{NAME}.safetensors",
                                    f"{NAME}.safetensors.failed", f"{NAME}.verify.json", f"{NAME}.verify.json.failed"])
    assert _sha(out / f"{NAME}.safetensors") == good_sha and (out / f"{NAME}.verify.json").read_text() == good_report
    failed = json.loads((out / f"{NAME}.verify.json.failed").read_text())
    assert failed["passed"] is False and failed["weights"] == str(out / f"{NAME}.safetensors.failed")
    assert failed["weights_sha256"] == _sha(out / f"{NAME}.safetensors.failed") != good_sha
    assert len(failed["per_image"]) == 2 and failed["worst"]
    # a --force re-conversion without --verify: the old report does not stay beside new bytes
    rc, _, err = _run(capsys, *_convert(prefix, out), "--force", "--no-ema", "--format", "both")
    assert rc == 0, err
    assert not (out / f"{NAME}.verify.json").exists()  # the report went with the bytes it checked
    assert _sha(out / f"{NAME}.safetensors") == _sha(out / f"{NAME}.safetensors.failed")  # the same raw weights


def test_interrupt_or_error_during_verification_leaves_nothing(prefix, tmp_path, capsys, monkeypatch):
    from converter import verify

    def interrupted(*a, **kw):
        raise KeyboardInterrupt  # what the SIGINT handler raises while TensorFlow runs

    monkeypatch.setattr(verify, "reference_logits", interrupted)
    out = tmp_path / "out"
    rc, _, err = _run(capsys, *_convert(prefix, out), *_verify_args())
    assert rc == 130 and err.strip().splitlines()[-1] == "convert-effnet: interrupted"
    assert _listing(out) == []
    # a folder output (--layout transformers) too: written under a hidden name, gone after Ctrl-C
    rc, _, err = _run(capsys, *_convert(prefix, out), *_verify_args("--layout", "transformers"))
    assert rc == 130 and _listing(out) == []

    def broken(*a, **kw):
        raise verify.ConversionError("TensorFlow reference failed: out of memory")

    monkeypatch.setattr(verify, "reference_logits", broken)
    rc, _, err = _run(capsys, *_convert(prefix, out), *_verify_args())
    _one_line_error(rc, err, "out of memory")
    assert _listing(out) == []
    # the retry needs no --force: nothing was left under the final name
    monkeypatch.undo()
    rc, _, err = _run(capsys, *_convert(prefix, out))
    assert rc == 0, err


def test_export_checks_on_the_verification_images():
    from converter import export
    from converter.synthetic import calibration_images

    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    x = export.check_inputs(3, (RES, RES), mean, std).numpy()
    ref = calibration_images(RES, 5, mean, std).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(x, ref[:3])
    np.testing.assert_array_equal(export.check_inputs(2, (RES, RES), mean, std, first=3).numpy(), ref[3:5])
    assert export.check_inputs(1, (RES, RES - 3)).shape == (1, 3, RES, RES - 3)


# ---- point 3: the errors a user meets first -------------------------------------------------------

def test_weights_that_are_something_else(prefix, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    image = _jpeg(tmp_path / "cat.jpg")
    tarball = tmp_path / "efficientnet-b0.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(str(prefix) + ".index", arcname="efficientnet-b0/model.ckpt.index")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model_onnx = tmp_path / "b0.onnx"
    onnx.save(helper.make_model(graph, producer_name="pytorch"), str(model_onnx))
    renamed = tmp_path / "b0.pth"  # an ONNX file under a .pth name
    shutil.copy(model_onnx, renamed)
    notes = tmp_path / "weights.pth"
    notes.write_text("efficientnet-b0 weights: see the shared folder\n")
    import torch

    pickled = tmp_path / "model.pth"
    torch.save({"model": torch.nn.Linear(1, 1)}, pickled)  # a pickled module, not a state_dict
    cases = [
        (str(prefix) + ".index", "is a TensorFlow checkpoint index", f"--checkpoint {prefix}"),
        (tarball, "is a gzip file", f"--checkpoint {tarball}"),
        (model_onnx, "is an ONNX model", ".safetensors or .pth"),
        (renamed, "is an ONNX model", ".safetensors or .pth"),
        (notes, "is a text file", ".safetensors or .pth"),
        (pickled, "holds Python objects", ".safetensors or .pth"),
    ]
    for weights, what, todo in cases:
        for sub in (["predict", image], ["export", "--onnx", tmp_path / "x.onnx"]):
            rc, _, err = _run(capsys, *sub, "--weights", weights)
            _one_line_error(rc, err, str(weights), what, todo)
            assert "weights_only" not in err and "torch.load" not in err


def _popen(*argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "converter", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_list_into_a_closed_pipe_is_quiet():
    # the reader is gone before anything is written: every write fails with EPIPE
    p = _popen("--list")
    p.stdout.close()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 141 and err == ""
    # as a shell runs it: the first line arrives; no "Broken pipe" from us
    sh = subprocess.run(["bash", "-c", f"set -o pipefail; '{sys.executable}' -m converter --list | head -1"],
                        capture_output=True, text=True, timeout=120)
    assert sh.stdout.startswith("name") and sh.stdout.count("\n") == 1
    assert sh.stderr == "" and sh.returncode in (0, 141)


def test_debug_keeps_the_exit_code(prefix, tmp_path, capsys):
    rc, _, err = _run(capsys, "--variant", "b0", "--flavor", "aa", "--checkpoint", tmp_path / "nope", "--debug")
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("convert-effnet: error: ")
    p = _popen("--variant", "b0", "--flavor", "aa", "--checkpoint", tmp_path / "nope", "--debug")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "Traceback" in err  # the process too, not Python's 1 for an uncaught error


def _make_unwritable(folder: Path):
    """Make ``folder`` refuse new files as far as this user can; returns an undo, or None."""
    folder.chmod(0o555)
    probe = folder / ".probe"
    try:
        probe.touch()
    except OSError:
        return lambda: folder.chmod(0o755)
    probe.unlink()  # root: permissions do not apply; an immutable folder does (ext4, CAP_LINUX_IMMUTABLE)
    folder.chmod(0o755)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)
    return None


def test_read_only_output_folder_is_named(prefix, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    undo = _make_unwritable(out)
    if undo is not None:
        try:
            rc, _, err = _run(capsys, *_convert(prefix, out))
        finally:
            undo()
        _one_line_error(rc, err, f"cannot write to the output folder {out}")
        assert ".tmp-" not in err and _listing(out) == []
    # a folder that refuses the temp file later (e.g. its permissions changed during the run): the
    # message names the folder, not the hidden temp file
    import builtins

    real_open = builtins.open

    def refusing(file, mode="r", *a, **kw):
        name = Path(str(file)).name
        if ".tmp-" in name and any(c in mode for c in "wxa"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(builtins, "open", refusing)
    rc, _, err = _run(capsys, *_convert(prefix, tmp_path / "out2"))
    monkeypatch.undo()
    _one_line_error(rc, err, f"cannot write to the folder {tmp_path / 'out2'}", "Permission denied")
    assert ".tmp-" not in err


def test_predict_a_folder_with_an_unreadable_image(prefix, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(_convert(prefix, out)) == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        _jpeg(photos / f"img{i}.jpg", seed=i)
    (photos / "broken.jpg").write_bytes((photos / "img0.jpg").read_bytes()[:200])
    (photos / "readme.txt").write_text("not an image, not an image extension\n")
    capsys.readouterr()
    rc, stdout, err = _run(capsys, "predict", photos, "--weights", out / f"{NAME}.safetensors", "--json",
                           "--device", "cpu")
    assert rc == 2
    results = json.loads(stdout)
    assert [Path(r["image"]).name for r in results] == ["broken.jpg", "img0.jpg", "img1.jpg"]
    assert "error" in results[0] and "top" not in results[0]
    assert all(len(r["top"]) == 5 for r in results[1:])
    lines = err.strip().splitlines()
    assert lines[0].startswith("convert-effnet: error: ") and "broken.jpg" in lines[0]
    assert lines[-1] == "convert-effnet: 1 of 3 images could not be predicted"


def test_wrong_sha256_pin_blames_the_pin(prefix, tmp_path, capsys, monkeypatch):
    from converter.tfref.generate import make_tarball

    bucket = tmp_path / "bucket"
    tarball = bucket / "efficientnet" / "ckptsaug" / "efficientnet-b0.tar.gz"  # below the bucket root
    tarball.parent.mkdir(parents=True)
    make_tarball(str(prefix), str(tarball), "efficientnet-b0")
    good = _sha(tarball)
    with BucketServer(bucket) as server:
        monkeypatch.setenv("EFFNET_BASE_URL", server.url)
        monkeypatch.setenv("EFFNET_CACHE", str(tmp_path / "cache"))
        base = ["--variant", "b0", "--flavor", "aa", "--output-dir", tmp_path / "out", "--quiet"]
        for _ in range(2):  # downloaded (not cached: the pin decides); then downloaded intact, still refused
            rc, _, err = _run(capsys, *base, "--sha256", "ab" * 32)
            _one_line_error(rc, err, "does not match the pinned sha256", "ab" * 32, good)
            assert "cache" not in err and "again" not in err
        assert len(server.hits) == 2 and _listing(tmp_path / "out") == []
        rc, _, err = _run(capsys, *base)  # no pin: a good download
        assert rc == 0, err
        hits = len(server.hits)
        rc, _, err = _run(capsys, *base, "--force", "--sha256", "cd" * 32)  # cached intact; the pin is wrong
        _one_line_error(rc, err, "does not match the pinned sha256", "cached intact")
        assert len(server.hits) == hits  # not downloaded again


def test_ctrl_c_in_export(tmp_path):
    """SIGINT while torch.export runs (it wraps KeyboardInterrupt in its own error): 130, nothing written."""
    import torch

    from converter import build_model
    from converter.metadata import encode
    from converter.registry import find_checkpoint
    from safetensors.torch import save_file

    pytest.importorskip("onnxscript")
    cfg = find_checkpoint("b0", "aa").pretrained_cfg()
    cfg.update(input_size=[3, RES, RES], source="tests/test_trust.py", source_sha256="0" * 64, ema=True,
               num_classes=1000, layout="native", converter_version="test")
    weights = tmp_path / "b0.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("b0").state_dict().items()}, str(weights), encode(cfg))
    p = _popen("export", "--weights", weights, "--onnx", tmp_path / "b0.onnx", cwd=tmp_path)
    lines = []
    t0 = time.time()
    for line in p.stderr:  # stage lines: the export starts after "export: ONNX export"
        lines.append(line)
        if line.startswith("export: ONNX export"):
            time.sleep(0.5)
            p.send_signal(signal.SIGINT)
            break
    out, rest = p.communicate(timeout=300)
    err = "".join(lines) + rest
    assert lines and lines[0].startswith("export: ONNX export"), err
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "convert-effnet: interrupted", err
    assert "wrote" not in out and _listing(tmp_path) == ["b0.safetensors"]
    assert time.time() - t0 < 120


# ---- point 4 (part): help texts and README agree ---------------------------------------------------

def _parsers():
    from converter import export, predict

    return {"convert-effnet": cli._convert_parser(), "verify": cli._verify_parser(),
            "predict": predict._predict_parser(), "evaluate": predict._evaluate_parser(), "export": export._parser()}


def test_help_and_readme_agree():
    import argparse

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = []
    for name, parser in _parsers().items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for opt in action.option_strings:
                if opt.startswith("--") and f"`{opt}" not in readme:
                    missing.append(f"{name} {opt}")
    assert not missing, f"options the README does not describe: {missing}"
    usage = cli._convert_parser().format_usage()
    for sub in ("verify", "predict", "evaluate", "export"):
        assert f"convert-effnet {sub}" in usage, usage
    help_text = cli._convert_parser().format_help()
    assert ".h5" in help_text and ".tar.gz" in help_text
    for line in ("make install", "make test"):
        assert line in readme


# ---- point 5: make install on an externally managed Python ------------------------------------------

def _make_n(*args, env=None):
    p = subprocess.run(["make", "-s", "-n", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60,
                       env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_make_install_picks_a_venv_on_an_externally_managed_python(tmp_path):
    if shutil.which("make") is None:
        pytest.fail("make is needed")
    managed = tmp_path / "stdlib"
    managed.mkdir()
    (managed / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=use a venv\n")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV", "MAKEFLAGS")}
    base = f"BASE_PYTHON={sys.executable}"
    # a Python that is not externally managed (CI's pyenv): itself, as before
    plain = _make_n("install", base, f"VENV={venv}", env=env)
    assert f"{sys.executable} -m pip install -q -r requirements.txt" in plain and f"{venv}/bin/python" not in plain
    # externally managed: the venv, created by make install, then used by make install and make test
    managed_cmds = _make_n("install", base, f"VENV={venv}", f"PICK_ARGS=--stdlib {managed}", env=env)
    assert f"pick_python.py {venv} --create" in managed_cmds
    assert f"{venv}/bin/python -m pip install -q -r requirements.txt" in managed_cmds
    assert f"{venv}/bin/python -m pip install -q --no-deps --no-build-isolation -e ." in managed_cmds
    test_cmds = _make_n("test", base, f"VENV={venv}", f"PICK_ARGS=--stdlib {managed}", env=env)
    assert f"{venv}/bin/python -m pytest" in test_cmds
    # the script creates it (what `make install` runs first); an existing venv is used from then on
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "pick_python.py"), str(venv), "--create",
                        "--stdlib", str(managed)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(venv / "bin" / "python") and (venv / "bin" / "python").exists()
    assert "externally managed" in p.stderr
    assert f"{venv}/bin/python -m pip install" in _make_n("install", base, f"VENV={venv}", env=env)
    # a virtual environment's Python (an active one is the python3 on the PATH) is used as is
    via_venv = _make_n("install", f"BASE_PYTHON={venv}/bin/python", "VENV=elsewhere",
                       f"PICK_ARGS=--stdlib {managed}", env=env)
    assert f"{venv}/bin/python -m pip install -q -r requirements.txt" in via_venv and "elsewhere/bin" not in via_venv
    # the CPU build of torch on request, pinned to requirements-core.txt's version
    pin = next(l for l in (REPO / "requirements-core.txt").read_text().splitlines() if l.startswith("torch=="))
    cpu = _make_n("install", base, "TORCH_INDEX=https://download.pytorch.org/whl/cpu", env=env)
    assert f'pip install -q "{pin}" --index-url https://download.pytorch.org/whl/cpu' in cpu
