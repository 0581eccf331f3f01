"""Faults and concurrency: `convert-effnet --all`, SIGKILL during the write, two processes on one cache.

Downloads come from a real HTTP server on 127.0.0.1 started inside the test; nothing here
touches the network. The checkpoints are generated in the official layout (b0 calibrated at
224 px so that verification is meaningful; b4 EMA-only for a write long enough to kill).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from converter import batch
from converter.cli import _convert_parser, main
from converter.errors import ConversionError
from converter.writer import remove_stale_temps
from converter.families.efficientnet.checkpoints import CHECKPOINTS
from converter.registry import find_checkpoint
from helpers import make_checkpoint

pytest.importorskip("tensorflow")

REPO = Path(__file__).resolve().parents[1]
B0_PATHS = {  # the four b0 releases of the zoo, as the official bucket lays them out below its root
    "efficientnet-b0_standard": "efficientnet/ckpts/efficientnet-b0.tar.gz",
    "efficientnet-b0_aa": "efficientnet/ckptsaug/efficientnet-b0.tar.gz",
    "efficientnet-b0_advprop": "efficientnet/advprop/efficientnet-b0.tar.gz",
    "efficientnet-b0_noisystudent": "efficientnet/noisystudent/noisy_student_efficientnet-b0.tar.gz",
}


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _args(*argv: str):
    return _convert_parser().parse_args(list(argv))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("batch")


@pytest.fixture(scope="module")
def b0_tarball(root):
    """A calibrated b0 checkpoint packed like the official tarball; (prefix, tarball)."""
    from converter.tfref.generate import make_tarball

    prefix = make_checkpoint(root, "b0", calibration_resolution=224)
    tarball = root / "efficientnet-b0.tar.gz"
    make_tarball(str(prefix), str(tarball), "efficientnet-b0")
    return prefix, tarball


# --------------------------------------------------------------------------- a mirror on 127.0.0.1


class Mirror:
    """Serves local files under bucket paths; records every GET; can hold answers until released."""

    def __init__(self):
        self.files: Dict[str, Path] = {}
        self.hits: List[str] = []
        self.arrived = threading.Event()  # a request for a served file came in
        self.release = threading.Event()  # answers wait for this
        self.release.set()
        self._lock = threading.Lock()
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                rel = self.path.lstrip("/")
                with mirror._lock:
                    mirror.hits.append(rel)
                src = mirror.files.get(rel)
                if src is None:
                    self.send_error(404, "Not Found")
                    return
                mirror.arrived.set()
                mirror.release.wait(timeout=300)
                data = src.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror():
    m = Mirror()
    yield m
    m.close()


def _repo_env(**extra: str) -> Dict[str, str]:
    """An environment whose Python imports this checkout's package (whatever is installed)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="3", **extra)


def _env(mirror: Mirror, cache: Path) -> Dict[str, str]:
    """The mirror and a private cache."""
    return _repo_env(EFFNET_BASE_URL=mirror.url, EFFNET_CACHE=str(cache))


# `convert-effnet` itself, from this checkout (the script on PATH may belong to another install)
CLI = [sys.executable, "-m", "converter"]


# --------------------------------------------------------------------------- selection and options


def test_selection_zoo_randaug_and_patterns():
    default = batch.select_checkpoints(None)
    assert len(default) == 33 and all(c.zoo_name for c in default)
    assert [c.name for c in default] == [c.name for c in CHECKPOINTS if c.zoo_name]  # registry order
    assert [c.name for c in batch.select_checkpoints(["efficientnet-b0_*"])] == list(B0_PATHS)
    # the RandAugment ones only when --only names them, by pattern or by name
    b5 = [c.name for c in batch.select_checkpoints(["efficientnet-b5_*"])]
    assert b5 == ["efficientnet-b5_standard", "efficientnet-b5_aa", "efficientnet-b5_advprop",
                  "efficientnet-b5_noisystudent", "efficientnet-b5_randaug"]
    assert [c.name for c in batch.select_checkpoints(["EfficientNet-B7_randaug", "efficientnet-b7_aa"])] == [
        "efficientnet-b7_aa", "efficientnet-b7_randaug"]
    # zoo names work too; overlapping patterns do not duplicate
    assert [c.name for c in batch.select_checkpoints(
        ["efficientnet-b4_3rdparty_8xb32-aa-advprop_in1k", "efficientnet-b4_adv*"])] == ["efficientnet-b4_advprop"]
    with pytest.raises(ConversionError, match="'efficientnet-b9_\\*' matches no checkpoint") as e:
        batch.select_checkpoints(["efficientnet-b0_aa", "efficientnet-b9_*"])
    assert "\n" not in str(e.value)


def test_cli_refuses_bad_batches_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--all", "--only", "nothing-like-this*", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convert-effnet: error: --only 'nothing-like-this*'")
    assert main(["--all", "--checkpoint", str(tmp_path), "--variant", "b0", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--variant, --checkpoint" in err[0]
    assert not out.exists()
    # one batch per output folder at a time
    import fcntl

    out.mkdir()
    with open(out / batch.LOCK_FILE, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["--all", "--only", "efficientnet-b0_aa", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another convert-effnet --all is running in" in err[0]
    assert not (out / "summary.json").exists()


def test_child_command_forwards_the_options(tmp_path):
    ckpt = find_checkpoint("l2-475", "noisystudent")
    args = _args("--all", "--device", "cpu", "--num-images", "3", "--format", "both", "--resolution", "160",
                 "--output-dir", str(tmp_path))
    cmd = batch.child_command(ckpt, args, tmp_path, force=True)
    assert cmd[:3] == [sys.executable, "-m", "converter"]
    flags = cmd[3:]
    pairs = {flags[i]: flags[i + 1] for i in range(len(flags) - 1) if flags[i].startswith("--")}
    assert pairs["--variant"] == "l2-475" and pairs["--flavor"] == "noisystudent"
    assert pairs["--output-dir"] == str(tmp_path) and pairs["--format"] == "both"
    assert pairs["--device"] == "cpu" and pairs["--num-images"] == "3" and pairs["--resolution"] == "160"
    assert {"--verify", "--quiet", "--force"} <= set(flags)
    # the parsed command is one the CLI accepts
    parsed = _args(*flags)
    assert parsed.verify and parsed.force and parsed.variant == "l2-475"
    assert "--force" not in batch.child_command(ckpt, args, tmp_path, force=False)


# --------------------------------------------------------------------------- what counts as done


def _fake_done(folder: Path, name: str, variant: str, flavor: str, rel_error: float = 2e-7) -> Path:
    """A complete output and its passing report, as a finished conversion leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32)}, str(weights), metadata={"variant": variant, "flavor": flavor})
    report = {"variant": variant, "flavor": flavor, "passed": True, "rel_error": rel_error, "failures": [],
              "weights": str(weights)}
    (folder / f"{name}.verify.json").write_text(json.dumps(report))
    return weights


def _age(path: Path, seconds: float) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_verified_report_accepts_only_verified_complete_outputs(tmp_path):
    ckpt = find_checkpoint("b0", "aa")
    weights = _fake_done(tmp_path, ckpt.name, "b0", "aa")
    report = tmp_path / "efficientnet-b0_aa.verify.json"
    _age(weights, 5)
    assert batch.verified_report(ckpt, tmp_path)["rel_error"] == 2e-7
    # a report of another checkpoint, or of another file, does not count
    assert batch.verified_report(find_checkpoint("b0", "advprop"), tmp_path) is None
    good = report.read_text()
    for change in ({"passed": False}, {"flavor": "advprop"}, {"weights": str(tmp_path / "other.safetensors")},
                   {"weights": ""}):
        report.write_text(json.dumps(dict(json.loads(good), **change)))
        shutil.copy(weights, tmp_path / "other.safetensors")
        assert batch.verified_report(ckpt, tmp_path) is None, change
    report.write_text("{not json")
    assert batch.verified_report(ckpt, tmp_path) is None
    report.write_text(good)
    assert batch.verified_report(ckpt, tmp_path) is not None
    # converted again after the report was written: not verified
    _age(report, 10)
    assert batch.verified_report(ckpt, tmp_path) is None
    report.write_text(good)
    # truncated (its mtime put back, so only the size tells)
    data = weights.read_bytes()
    weights.write_bytes(data[:-4])
    _age(weights, 5)
    assert batch.verified_report(ckpt, tmp_path) is None
    # only a killed writer's temp file under a hidden name: nothing is done
    os.replace(weights, tmp_path / f".{weights.name}.tmp-999999-0a1b2c3d")
    assert batch.verified_report(ckpt, tmp_path) is None
    weights.write_bytes(data)
    _age(weights, 5)
    assert batch.verified_report(ckpt, tmp_path) is not None
    # --format both also needs the .pth, and no newer than the report
    assert batch.verified_report(ckpt, tmp_path, "both") is None
    pth = tmp_path / "efficientnet-b0_aa.pth"
    pth.write_bytes(b"pth")
    _age(pth, 5)
    assert batch.verified_report(ckpt, tmp_path, "both") is not None


# --------------------------------------------------------------------------- the batch with fake children

FAKE_CHILD = r'''
import json, os, shutil, signal, sys
log, template, behaviour, out_dir, name, variant, flavor = sys.argv[1:8]
with open(log, "a") as f:
    f.write(" ".join([name] + sys.argv[8:]) + "\n")
print(f"child {name} on stdout")
if behaviour == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if behaviour == "error":
    print("a warning first", file=sys.stderr)
    print("convert-effnet: error: download failed: http://mirror/x.tar.gz answered HTTP 404 Not Found; check the URL",
          file=sys.stderr)
    sys.exit(2)
weights = os.path.join(out_dir, name + ".safetensors")
shutil.copy(template, weights)
if behaviour == "ok":
    report = {"variant": variant, "flavor": flavor, "passed": True, "rel_error": 3e-7, "weights": weights}
    with open(os.path.join(out_dir, name + ".verify.json"), "w") as f:
        json.dump(report, f)
sys.exit(0)  # "noreport": claims success without a passing report
'''


def test_run_all_survives_crashes_summarizes_and_skips(tmp_path, monkeypatch, capsys):
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    template = tmp_path / "template.safetensors"
    save_file({"w": np.ones(3, dtype=np.float32)}, str(template))
    log = tmp_path / "calls.log"
    out = tmp_path / "out"
    behaviour = {"efficientnet-b1_standard": "ok", "efficientnet-b1_aa": "kill",
                 "efficientnet-b1_advprop": "error", "efficientnet-b1_noisystudent": "noreport"}

    def fake_command(ckpt, args, output_dir, force):
        cmd = [sys.executable, str(script), str(log), str(template), behaviour[ckpt.name], str(output_dir),
               ckpt.name, ckpt.variant, ckpt.flavor]
        return cmd + (["--force"] if force else [])

    monkeypatch.setattr(batch, "child_command", fake_command)

    def calls():
        lines = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return lines

    argv = ["--all", "--only", "efficientnet-b1_*", "--output-dir", str(out)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "child efficientnet-b1_standard on stdout" in captured.out  # not quiet: the children's output shows
    assert "a warning first" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    got = {r["name"]: r for r in summary["results"]}
    assert list(got) == list(behaviour)
    assert got["efficientnet-b1_standard"]["status"] == "done" and got["efficientnet-b1_standard"]["rel_error"] == 3e-7
    assert got["efficientnet-b1_aa"]["status"] == "failed"
    assert got["efficientnet-b1_aa"]["error"] == "killed by SIGKILL (out of memory?)"
    assert got["efficientnet-b1_advprop"]["error"].startswith("download failed: http://mirror/x.tar.gz answered HTTP 404")
    assert got["efficientnet-b1_noisystudent"]["status"] == "failed"
    assert "without a passing report" in got["efficientnet-b1_noisystudent"]["error"]
    assert summary["counts"] == {"done": 1, "skipped": 0, "failed": 3} and summary["ok"] is False
    table = captured.out[captured.out.index("name  "):].splitlines()
    assert table[0].split() == ["name", "status", "seconds", "rel", "error", "error"]
    assert table[1].split()[:2] == ["efficientnet-b1_standard", "done"] and "3.00e-07" in table[1]
    assert table[2].split()[:2] == ["efficientnet-b1_aa", "failed"] and "killed by SIGKILL" in table[2]
    assert "1 done, 0 skipped, 3 failed" in captured.out
    assert calls() == list(behaviour)  # each ran once, none with --force

    # the second run: the done one is skipped, the failed ones are retried; the unverified
    # output the "noreport" child left is converted again with --force
    behaviour.update({k: "ok" for k in behaviour})
    assert main(argv + ["--quiet"]) == 0
    captured = capsys.readouterr()
    assert "on stdout" not in captured.out and captured.err == ""  # quiet: the table alone
    assert calls() == ["efficientnet-b1_aa", "efficientnet-b1_advprop", "efficientnet-b1_noisystudent --force"]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["results"]] == ["skipped", "done", "done", "done"]
    assert summary["results"][0]["rel_error"] == 3e-7 and summary["ok"] is True
    assert "0 failed" in captured.out

    # --force converts everything again
    assert main(argv + ["--quiet", "--force"]) == 0
    capsys.readouterr()
    assert calls() == [f"{name} --force" for name in behaviour]


INTERRUPTED_BATCH = r'''
import sys
from converter import batch
from converter.cli import main

pid_file = sys.argv.pop(1)
CHILD = ("import os, signal, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
         "os.kill(os.getppid(), signal.SIGINT); time.sleep(120)")


def command(ckpt, args, output_dir, force):
    if ckpt.flavor == "aa":  # Ctrl-C while this one runs
        return [sys.executable, "-c", CHILD, pid_file]
    return [sys.executable, "-c", "pass"]  # exits 0 but leaves no report


batch.child_command = command
sys.exit(main(sys.argv[1:]))
'''


def test_interrupted_batch_stops_its_child_and_keeps_a_summary(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(INTERRUPTED_BATCH)
    pid_file, out = tmp_path / "child.pid", tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), str(pid_file), "--all", "--only", "efficientnet-b2_*",
                           "--output-dir", str(out), "--quiet"], env=_repo_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 130 and "convert-effnet: interrupted" in proc.stderr, proc.stderr
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(int(pid_file.read_text()), 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["ok"] is False
    assert [(r["name"], r["status"]) for r in summary["results"]] == [
        ("efficientnet-b2_standard", "failed"), ("efficientnet-b2_aa", "failed")]
    assert summary["results"][1]["error"] == "interrupted"
    assert "efficientnet-b2_aa" in proc.stdout and "efficientnet-b2_advprop" not in proc.stdout


# --------------------------------------------------------------------------- stale temp files


def test_remove_stale_temps_only_of_dead_writers(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead, alive = proc.pid, os.getpid()
    final = tmp_path / "efficientnet-b0_aa.safetensors"
    names = {
        f".{final.name}.tmp-{dead}-0a1b2c3d": "removed",  # the writer's temp of a dead pid
        f".{final.name}.tmp-{dead}": "removed",  # the report writer's form
        f".{final.name}.tmp-{dead}-0a1b2c3d.safetensors": "removed",  # AtomicFile's, the extension kept (--verify)
        f".{final.name}.tmp-{dead}-0a1b2c3d.pth": "kept",  # another output's extension
        f".{final.name}.tmp-{alive}-0a1b2c3d": "kept",  # a live writer
        f".{final.name}.tmp-1-0a1b2c3d": "kept",  # pid 1 is alive
        f".{final.name}.tmp-{dead}-0a1b2c3d.bak": "kept",  # not the pattern
        f".efficientnet-b0_ap.safetensors.tmp-{dead}-0a1b2c3d": "kept",  # another output
        final.name: "kept",
    }
    for n in names:
        (tmp_path / n).write_bytes(b"x")
        _age(tmp_path / n, 7200)
    fresh = tmp_path / f".{final.name}.tmp-{dead}-ffffffff"
    fresh.write_bytes(b"x")  # dead but modified just now: kept by default
    folder = tmp_path / f".{final.name}.tmp-{dead}-eeeeeeee"
    folder.mkdir()
    removed = remove_stale_temps(final)
    assert sorted(p.name for p in removed) == sorted(n for n, what in names.items() if what == "removed")
    assert all((tmp_path / n).exists() == (what == "kept") for n, what in names.items())
    assert fresh.exists() and folder.is_dir()
    assert remove_stale_temps(final, min_age_s=0) == [fresh] and folder.is_dir()
    assert remove_stale_temps(tmp_path / "missing" / final.name) == []


# --------------------------------------------------------------------------- SIGKILL during the write

# Imports TensorFlow (the slow part) before it waits on stdin, then runs `python -m converter`:
# all the processes import in parallel; each write is then started and killed alone.
GATED_CHILD = r'''
import os, runpy, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import converter.cli, converter.convert, converter.sources.readers
converter.sources.readers._quiet_tensorflow()
if "--format" in sys.argv:
    import torch
print("ready", flush=True)
sys.stdin.readline()
sys.argv = ["convert-effnet"] + sys.argv[1:]
runpy.run_module("converter", run_name="__main__", alter_sys=True)
'''


def _state(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _kill_when_written(proc: subprocess.Popen, folder: Path, name: str, min_bytes: int, before) -> None:
    """SIGKILL ``proc`` once it has written ``min_bytes`` for ``name`` (or let it finish).

    Watches its temp file, and the final name too (``before``: its state at the start), so that a
    writer writing in place would be caught mid-write as well.
    """
    prefix = f".{name}.tmp-{proc.pid}-"
    give_up = time.monotonic() + 300  # a hang guard, not a timing assertion
    while proc.poll() is None:
        for entry in os.scandir(folder):
            if entry.name.startswith(prefix) or entry.name == name:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.name == name and (st.st_ino, st.st_mtime_ns, st.st_size) == before:
                    continue
                if st.st_size >= min_bytes:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return
        if time.monotonic() > give_up:
            proc.kill()
            pytest.fail(f"{name}: the conversion never wrote {min_bytes} bytes")
        time.sleep(0.001)


def test_sigkill_during_the_write_leaves_old_output_or_none(root, tmp_path):
    prefix = make_checkpoint(root, "b4", mode="ema-only")
    name = "efficientnet-b4_aa.safetensors"
    base = ["--variant", "b4", "--flavor", "aa", "--quiet"]
    # two complete outputs that differ only in their recorded source (prefix vs folder)
    assert main(base + ["--checkpoint", str(prefix), "--output-dir", str(tmp_path / "new")]) == 0
    assert main(base + ["--checkpoint", str(prefix.parent), "--output-dir", str(tmp_path / "old")]) == 0
    new, old = tmp_path / "new" / name, tmp_path / "old" / name
    new_sha, old_sha = _sha(new), _sha(old)
    assert new_sha != old_sha
    full = new.stat().st_size
    reference = load_file(str(new))

    script = tmp_path / "gated.py"
    script.write_text(GATED_CHILD)
    # (label, --force over the old output, extra options, file whose temp triggers the kill, fraction
    # of the output written): near the end of a fresh write, early in a --force write, and
    # (--format both) with the .safetensors temp complete but not renamed while the .pth is written
    plan = [("fresh-90", False, [], name, 0.9), ("force-30", True, [], name, 0.3),
            ("both-pth", False, ["--format", "both"], name.replace(".safetensors", ".pth"), 0.0)]
    procs, logs = [], []
    for label, force, extra, _, _ in plan:
        folder = tmp_path / label
        folder.mkdir()
        if force:
            shutil.copy2(old, folder / name)
        cmd = [sys.executable, str(script)] + base + ["--checkpoint", str(prefix), "--output-dir", str(folder)]
        cmd += (["--force"] if force else []) + extra
        logs.append(open(tmp_path / f"{label}.err", "w"))
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[-1], text=True,
                                      env=_repo_env()))
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", "the gated child did not start"
        mid_write = {"fresh": 0, "force": 0, "both": 0}
        for (label, force, extra, trigger, frac), p in zip(plan, procs):
            folder = tmp_path / label
            before = _state(folder / trigger)
            p.stdin.write("go\n")
            p.stdin.flush()
            _kill_when_written(p, folder, trigger, int(frac * full), before)
            assert p.returncode in (0, -signal.SIGKILL), (label, (tmp_path / f"{label}.err").read_text())
            outputs = [folder / name] + ([folder / trigger] if trigger != name else [])
            files = {f.name for f in folder.iterdir()}
            for out in outputs:
                left = sorted(folder.glob(f".{out.name}.tmp-{p.pid}-*"))
                # a SIGKILLed run cannot remove its claim file (its flock died with it: it blocks nobody)
                files -= {out.name, f".{out.name}.claim"} | {f.name for f in left}
                if left:  # killed before its rename: the previous state, untouched
                    mid_write[label.split("-")[0]] += 1
                    if force:
                        assert _sha(out) == old_sha, label
                    else:
                        assert not out.exists(), label
                elif out.suffix == ".safetensors":  # renamed before the kill: the complete new output
                    assert _sha(out) == new_sha, label
                else:
                    import torch

                    sd = torch.load(out, weights_only=True)
                    assert all(np.array_equal(sd[k].numpy(), v) for k, v in reference.items()), label
            assert files == set(), (label, files)  # nothing else, no partial file under a final name
            if (folder / name).exists():
                with safe_open(str(folder / name), framework="np") as f:
                    assert sorted(f.keys()) == sorted(reference)
        # the early kill and the one during the .pth write land before the rename
        assert mid_write["force"] >= 1 and mid_write["both"] >= 1, mid_write
    finally:
        for p, log in zip(procs, logs):
            if p.poll() is None:
                p.kill()
                p.wait()
            for stream in (p.stdin, p.stdout, log):
                stream.close()
    # a killed run's temp file is not an output: converting again without --force just works
    empty = [tmp_path / label for label, force, *_ in plan if not force and not (tmp_path / label / name).exists()]
    assert empty and list(empty[0].glob(f".{name}.tmp-*"))
    folder = empty[0]
    assert main(base + ["--checkpoint", str(prefix), "--output-dir", str(folder)]) == 0
    assert _sha(folder / name) == new_sha and not (folder / name.replace(".safetensors", ".pth")).exists()
    # and the cleanup removes the dead writers' leftovers, never the output
    for label, *_ in plan:
        remove_stale_temps(tmp_path / label / name, min_age_s=0)
        remove_stale_temps(tmp_path / label / name.replace(".safetensors", ".pth"), min_age_s=0)
        assert not list((tmp_path / label).glob(".*.tmp-*")), label
    assert _sha(folder / name) == new_sha and _sha(tmp_path / "force-30" / name) == old_sha


# --------------------------------------------------------------------------- two processes, one cache


def _watch(stream, sink: List[str]) -> None:
    for line in stream:
        sink.append(line)


def test_two_processes_share_one_download(b0_tarball, mirror, tmp_path):
    prefix, tarball = b0_tarball
    rel = B0_PATHS["efficientnet-b0_aa"]
    mirror.files[rel] = tarball
    mirror.release.clear()  # hold the first download until the second process waits for the lock
    cache = tmp_path / "cache"
    lock_line = f"waiting for another process using {cache / rel}.lock"
    procs, errs = [], []
    for k in (1, 2):
        # not --quiet: the waiting line shows (test_tarball checks that --quiet keeps it off)
        cmd = CLI + ["--variant", "b0", "--flavor", "aa", "--output-dir", str(tmp_path / f"out{k}")]
        p = subprocess.Popen(cmd, env=_env(mirror, cache), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        errs.append([])
        threading.Thread(target=_watch, args=(p.stderr, errs[-1]), daemon=True).start()
        procs.append(p)
    try:
        give_up = time.monotonic() + 300  # a hang guard, not a timing assertion
        while not (mirror.arrived.is_set() and any(lock_line in l for e in errs for l in e)):
            assert all(p.poll() is None for p in procs), errs
            assert time.monotonic() < give_up, errs
            time.sleep(0.05)
        mirror.release.set()
        for p in procs:
            p.wait(timeout=600)
    finally:
        mirror.release.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], errs
    assert mirror.hits == [rel]  # one download: the second process took the cached file
    assert sum(any(lock_line in l for l in e) for e in errs) == 1
    # one correct cached tarball, its sidecar, no extraction (read as a stream), no leftovers (no lock file)
    cached = cache / rel
    sha = _sha(tarball)
    assert _sha(cached) == sha and (cache / (rel + ".sha256")).read_text().split()[0] == sha
    assert sorted(p.name for p in cached.parent.iterdir()) == sorted([cached.name, cached.name + ".sha256"])
    assert not (cache / "extracted").exists()
    # the two outputs are the same correct conversion
    outs = [tmp_path / f"out{k}" / "efficientnet-b0_aa.safetensors" for k in (1, 2)]
    assert _sha(outs[0]) == _sha(outs[1])
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir",
                 str(tmp_path / "direct"), "--quiet"]) == 0
    direct = load_file(str(tmp_path / "direct" / "efficientnet-b0_aa.safetensors"))
    got = load_file(str(outs[0]))
    assert sorted(got) == sorted(direct) and all(np.array_equal(got[k], direct[k]) for k in direct)
    with safe_open(str(outs[0]), framework="np") as f:
        meta = f.metadata()
    assert meta["source_sha256"] == sha and meta["source"] == mirror.url + rel


# --------------------------------------------------------------------------- convert-effnet --all


def _table_rows(stdout: str) -> Dict[str, List[str]]:
    text = "\n" + stdout
    lines = text[text.index("\nname  ") + 1:].splitlines()
    return {l.split()[0]: l.split() for l in lines[1:] if l.startswith("efficientnet-")}


def test_all_b0_continues_past_a_failure_then_skips_the_done(b0_tarball, mirror, tmp_path):
    _, tarball = b0_tarball
    missing = "efficientnet-b0_advprop"  # the served checkpoint is calibrated for ImageNet mean/std inputs
    for name, rel in B0_PATHS.items():
        if name != missing:
            mirror.files[rel] = tarball
    out = tmp_path / "zoo"
    cmd = CLI + ["--all", "--only", "efficientnet-b0_*", "--output-dir", str(out), "--num-images", "2",
           "--device", "cpu"]
    env = _env(mirror, tmp_path / "cache")
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = _table_rows(proc.stdout)
    assert list(rows) == list(B0_PATHS)
    assert {n: r[1] for n, r in rows.items()} == {n: "failed" if n == missing else "done" for n in B0_PATHS}
    assert "404" in " ".join(rows[missing]) and "3 done, 0 skipped, 1 failed" in proc.stdout
    assert "PASS" in proc.stdout  # not quiet: the children's parity lines show
    summary = json.loads((out / "summary.json").read_text())
    results = {r["name"]: r for r in summary["results"]}
    assert summary["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    assert "HTTP 404" in results[missing]["error"] and "\n" not in results[missing]["error"]
    assert results[missing]["rel_error"] is None and not (out / f"{missing}.safetensors").exists()
    state = {}
    for name in B0_PATHS:
        if name == missing:
            continue
        report = json.loads((out / f"{name}.verify.json").read_text())
        assert report["passed"] is True and report["images"] == 2 and report["device_torch"] == "cpu"
        assert results[name]["rel_error"] == report["rel_error"] < 1e-4
        assert rows[name][3] == f"{report['rel_error']:.2e}"
        with safe_open(str(out / f"{name}.safetensors"), framework="np") as f:
            assert f.metadata()["flavor"] == name.split("_")[1]
        st = (out / f"{name}.safetensors").stat()
        state[name] = (st.st_ino, st.st_mtime_ns, (out / f"{name}.verify.json").read_text())
    assert sorted(mirror.hits) == sorted(B0_PATHS.values())

    # the second run converts nothing that is done and retries the failure (still a 404)
    proc = subprocess.run(cmd + ["--quiet"], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = _table_rows(proc.stdout)
    assert {n: r[1] for n, r in rows.items()} == {n: "failed" if n == missing else "skipped" for n in B0_PATHS}
    assert all(rows[n][3] == f"{results[n]['rel_error']:.2e}" for n in state)  # from the reports
    assert "PASS" not in proc.stdout and "0 done, 3 skipped, 1 failed" in proc.stdout
    for name, (ino, mtime, report) in state.items():  # not converted again, not verified again
        st = (out / f"{name}.safetensors").stat()
        assert (st.st_ino, st.st_mtime_ns, (out / f"{name}.verify.json").read_text()) == (ino, mtime, report)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is False and summary["counts"] == {"done": 0, "skipped": 3, "failed": 1}
    assert mirror.hits.count(B0_PATHS[missing]) == 2 and len(mirror.hits) == 5  # only the failed one again
