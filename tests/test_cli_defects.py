"""Conversion command defects of issues 25 (3, 5, 9) and 29 (3): each a real run of the CLI."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from converter.cli import main
from helpers import make_checkpoint

REPO = Path(__file__).resolve().parents[1]
VERIFY = ["--verify", "--resolution", "64", "--num-images", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("ckpts")


def _one_error(text: str, notes_allowed: bool = False) -> str:
    """The only line of ``text`` (stderr), which must be convert-effnet's one error line
    (``notes_allowed``: the last, after lines that are not errors, such as the class-count note)."""
    lines = [l for l in text.strip().splitlines() if l.strip()]
    errors = [l for l in lines if "error" in l]
    assert errors == lines[-1:] and lines[-1].startswith("convert-effnet: error: "), lines
    assert notes_allowed or len(lines) == 1, lines
    assert "Traceback" not in text and "usage:" not in text
    return lines[-1]


def _classes(path: Path) -> int:
    with safe_open(str(path), framework="np") as f:
        return int(f.metadata()["num_classes"])


def _cli(*args, **kw) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, "-m", "converter", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# --- 25.3: the checkpoint's class count against the flavor's ---------------------------------------

def test_v2_flavor_must_fit_the_checkpoints_classes(root, tmp_path, capsys):
    """``--flavor 1k`` on a 21843-class head and ``--flavor 21k`` on a 1000-class one: refused in one
    line naming what the checkpoint is; nothing written. A head of a count no release has (a
    fine-tuned one, tests/test_convert.py) still converts."""
    kw = dict(slots=False, calibration_resolution=32, calibration_images=1)
    p21k = make_checkpoint(root, "v2-b0", num_classes=21843, **kw)
    p1k = make_checkpoint(root, "v2-b0", num_classes=1000, **kw)
    out = tmp_path / "out"
    rc = main(["--variant", "v2-b0", "--flavor", "1k", "--checkpoint", str(p21k), "--output-dir", str(out)])
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "21843 classes" in line and "efficientnetv2-b0 has 1000" in line and "--flavor 21k" in line
    rc = main(["--variant", "v2-b0", "--flavor", "21k", "--checkpoint", str(p1k), "--output-dir", str(out)])
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "1000 classes" in line and "21843" in line
    assert "--flavor 1k" in line and "--flavor 21k-ft1k" in line
    assert not out.exists() or list(out.iterdir()) == []
    # the fitting flavor converts, with its class count
    assert main(["--variant", "v2-b0", "--flavor", "21k", "--checkpoint", str(p21k), "--output-dir", str(out),
                 "--quiet"]) == 0
    assert _classes(out / "efficientnetv2-b0-21k.safetensors") == 21843


# --- 25.5: a full disk -------------------------------------------------------------------------------

_DRIVER = textwrap.dedent("""
    import json, os, shutil, sys
    mount, fill, argv = sys.argv[1], sys.argv[2] == "fill", sys.argv[3:]
    import converter.convert as cv
    from converter.cli import main
    if fill:  # another writer takes the space right after the check: the write itself finds none
        check = cv.check_space
        def check_then_fill(folder, needed, *a, **k):
            check(folder, needed, *a, **k)
            left = 256 * 1024
            with open(os.path.join(mount, "filler.bin"), "wb") as f:
                f.write(b"\\0" * (shutil.disk_usage(folder).free - left))
        cv.check_space = check_then_fill
    rc = main(argv)
    out = os.path.join(mount, "out")
    print(json.dumps({"rc": rc, "left": sorted(os.listdir(out)) if os.path.isdir(out) else []}))
""")


def _on_tmpfs(tmp_path: Path, size: str, fill: bool, args) -> tuple:
    """Run the CLI with --output-dir on a fresh tmpfs of ``size`` (a private mount namespace: root, or
    an unprivileged user namespace otherwise); (rc, files left in the folder, stderr)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    ns = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-Urm"]
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'
    cmd = ns + ["sh", "-c", script, "sh", size, str(mount), sys.executable, str(driver), str(mount),
                "fill" if fill else "-", *map(str, args), "--output-dir", str(mount / "out")]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert r.stdout.strip(), r.stderr  # the mount itself worked and the driver ran
    got = json.loads(r.stdout.strip().splitlines()[-1])
    return got["rc"], got["left"], r.stderr


def _sizes(root, tmp_path, fmt):
    """Bytes of the files a conversion really writes (on a disk with room)."""
    prefix = make_checkpoint(root, "b0", slots=False)
    out = tmp_path / "roomy"
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(out),
                 "--format", fmt, "--quiet"]) == 0
    return prefix, sum(p.stat().st_size for p in out.iterdir())


def _mb(line: str, before: str) -> float:
    """The size (``N B``, ``N.N kB``, ``N.N MB``) in ``line`` right before ``before``, in MB."""
    head = line.split(before)[0].split()
    return float(head[-2]) * {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}[head[-1]]


def test_disk_full_refused_before_writing(root, tmp_path):
    """A folder with less room than the outputs: one line (folder, needed, free), exit 2, nothing there."""
    prefix, actual = _sizes(root, tmp_path, "both")
    rc, left, err = _on_tmpfs(tmp_path, "1m", False, ["--variant", "b0", "--flavor", "aa", "--checkpoint", prefix,
                                                      "--format", "both", "--quiet"])
    line = _one_error(err)
    assert rc == 2 and left == [], (rc, left, err)
    assert f"not enough space in {tmp_path / 'mnt' / 'out'}" in line
    needed = _mb(line, ", ")
    assert actual / 1e6 <= needed <= 1.05 * actual / 1e6 + 0.1  # an upper estimate, close to the real size
    assert _mb(line, "free") <= 1.05  # the 1 MiB tmpfs


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_disk_full_while_writing(root, tmp_path, fmt):
    """The disk fills after the check (another writer): torch.save's zip-writer error (pth) and
    ENOSPC (safetensors) become the same one line; no temp file left."""
    prefix, actual = _sizes(root, tmp_path, fmt)
    rc, left, err = _on_tmpfs(tmp_path, "64m", True, ["--variant", "b0", "--flavor", "aa", "--checkpoint", prefix,
                                                      "--format", fmt, "--quiet"])
    line = _one_error(err)
    assert rc == 2 and left == [], (rc, left, err)
    assert f"not enough space in {tmp_path / 'mnt' / 'out'}" in line and "internal error" not in line
    assert 0.2 <= _mb(line, "free") <= 0.3  # what the other writer left (256 KiB), our partial file removed


# --- 29.3: two runs into one output -----------------------------------------------------------------

def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def test_second_run_into_claimed_names_is_refused(root, tmp_path):
    """A --verify run holds its output names for the whole run: a second run (--drop-background) is
    refused in one line naming the first's pid, and the first's verified 1001-class file stays."""
    prefix = make_checkpoint(root, "b0", num_classes=1001, slots=False)
    out = tmp_path / "out"
    claim = out / ".efficientnet-b0_aa.safetensors.claim"
    first = _cli("--variant", "b0", "--flavor", "aa", "--checkpoint", prefix, "--output-dir", out, "--quiet", *VERIFY)
    _wait_for(claim, first)
    second = _cli("--variant", "b0", "--flavor", "aa", "--checkpoint", prefix, "--output-dir", out, "--quiet",
                  "--drop-background", *VERIFY)
    _, err2 = second.communicate(timeout=300)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    line = _one_error(err2, notes_allowed=True)
    assert second.returncode == 2 and f"pid {first.pid}" in line and "--force" in line
    assert _classes(out / "efficientnet-b0_aa.safetensors") == 1001
    assert json.loads((out / "efficientnet-b0_aa.verify.json").read_text())["passed"]
    assert not claim.exists()  # removed when the run ended
    assert sorted(p.name for p in out.iterdir()) == ["efficientnet-b0_aa.safetensors", "efficientnet-b0_aa.verify.json"]


def test_name_taken_during_a_run_is_not_replaced(root, tmp_path):
    """A run with --force writes the name while a --verify run (no --force) converts: the verifying run
    does not replace it (refused in one line: at its convert step or, later, at publishing; the
    last case for certain in test_publish_never_replaces_without_force), and the other file stays."""
    prefix = make_checkpoint(root, "b0", num_classes=1001, slots=False)
    out = tmp_path / "out"
    first = _cli("--variant", "b0", "--flavor", "aa", "--checkpoint", prefix, "--output-dir", out, "--quiet", *VERIFY)
    _wait_for(out / ".efficientnet-b0_aa.safetensors.claim", first)
    forced = _cli("--variant", "b0", "--flavor", "aa", "--checkpoint", prefix, "--output-dir", out, "--quiet",
                  "--drop-background", "--force")
    assert forced.wait(timeout=300) == 0, forced.communicate()
    _, err1 = first.communicate(timeout=300)
    line = _one_error(err1, notes_allowed=True)
    assert first.returncode == 2 and ("was written by another run" in line or "exists; pass --force" in line)
    assert _classes(out / "efficientnet-b0_aa.safetensors") == 1000  # the --force run's file, not replaced
    assert not any(".tmp-" in p.name for p in out.iterdir())


def test_publish_never_replaces_without_force(tmp_path):
    """writer.publish(replace=False): a name taken after the files were staged is kept, the set is
    published all or nothing, and the staged files are left for their discard."""
    from converter.errors import ConversionError
    from converter.writer import AtomicFile, publish

    files = [AtomicFile(tmp_path / "m.safetensors"), AtomicFile(tmp_path / "m.pth")]
    for f in files:
        f.create()
        f.tmp.write_bytes(b"ours")
    (tmp_path / "m.pth").write_bytes(b"theirs")  # another run, meanwhile
    with pytest.raises(ConversionError, match="m.pth was written by another run"):
        publish(files, replace=False)
    assert (tmp_path / "m.pth").read_bytes() == b"theirs" and not (tmp_path / "m.safetensors").exists()
    for f in files:
        f.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth"]
    again = AtomicFile(tmp_path / "m.pth")  # with replace (--force) it is replaced
    again.create()
    again.tmp.write_bytes(b"ours")
    publish([again], replace=True)
    assert (tmp_path / "m.pth").read_bytes() == b"ours"


def test_claim_of_a_killed_run_does_not_block(root, tmp_path, capsys):
    """SIGKILL leaves the claim file; its lock died with the process, so the next run converts."""
    prefix = make_checkpoint(root, "b0", num_classes=1001, slots=False)
    out = tmp_path / "out"
    claim = out / ".efficientnet-b0_aa.safetensors.claim"
    first = _cli("--variant", "b0", "--flavor", "aa", "--checkpoint", prefix, "--output-dir", out, "--quiet", *VERIFY)
    _wait_for(claim, first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert claim.exists()
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(out),
                 "--quiet"]) == 0
    assert _classes(out / "efficientnet-b0_aa.safetensors") == 1001 and not claim.exists()


# --- 25.9: smaller CLI defects -------------------------------------------------------------------------

def test_exclusive_flags_are_one_line():
    r = _cli("--variant", "b0", "--drop-background", "--keep-background")
    _, err = r.communicate(timeout=120)
    line = _one_error(err)
    assert r.returncode == 2 and "--keep-background" in line and "--drop-background" in line


def test_verification_options_need_verify(root, tmp_path, capsys):
    prefix = make_checkpoint(root, "b0", slots=False)
    base = ["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path)]
    for extra, flag in ((["--images", str(tmp_path / "cat.jpg")], "--images"), (["--resolution", "64"], "--resolution"),
                        (["--device", "cpu"], "--device")):
        rc = main(base + extra)
        line = _one_error(capsys.readouterr().err)
        assert rc == 2 and f"{flag} is a verification option; add --verify" in line
    assert list(tmp_path.iterdir()) == []


def test_variant_help_names_every_family(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    from converter.registry import all_checkpoints

    families = {c.variant.split("-")[0] for c in all_checkpoints()}  # efficientnet b*, lite*, v2, mnasnet, mixnet...
    for fam in ("mnasnet", "mixnet"):
        assert fam in families
    variant_help = text.split("--variant VARIANT")[1].split("--flavor")[0]
    for name in ("mnasnet-a1", "mnasnet-small", "mixnet-s", "mixnet-m", "mixnet-l", "v2-s", "edgetpu-s"):
        assert name in variant_help, name


def test_unknown_subcommand_is_an_error():
    r = _cli("inspect", "--help")  # (audit is a subcommand since issue 24)
    out, err = r.communicate(timeout=120)
    line = _one_error(err)
    assert r.returncode == 2 and "unknown subcommand 'inspect'" in line and "audit" in line and out == ""


def test_stale_failed_files_removed_when_a_later_run_verifies(root, tmp_path, capsys):
    """``.failed`` outputs of an earlier failed verification go once a later run verifies."""
    prefix = make_checkpoint(root, "b0", slots=False)
    stale = [tmp_path / n for n in ("efficientnet-b0_aa.safetensors.failed", "efficientnet-b0_aa.verify.json.failed")]
    for p in stale:
        p.write_bytes(b"from an earlier run")
    other = tmp_path / "efficientnet-b1_aa.safetensors.failed"  # another model's: kept
    other.write_bytes(b"x")
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path),
                 "--quiet", *VERIFY]) == 0
    assert not any(p.exists() for p in stale) and other.exists()
    assert (tmp_path / "efficientnet-b0_aa.safetensors").is_file()


_CTRL_C_AT_IMPORT = textwrap.dedent("""
    import importlib.machinery, os, signal, sys
    from converter.cli import main

    class CtrlCAfterFakeTensor:
        '''Ctrl-C (a real SIGINT) the moment torch's fake_tensor module has loaded (torch's import not done).'''
        def find_spec(self, name, path=None, target=None):
            if name != "torch._subclasses.fake_tensor":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            run = spec.loader.exec_module
            def exec_module(module):
                run(module)
                os.kill(os.getpid(), signal.SIGINT)
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, CtrlCAfterFakeTensor())
    sys.exit(main(sys.argv[1:]))
""")


def test_ctrl_c_during_torch_import_prints_only_interrupted(root, tmp_path):
    prefix = make_checkpoint(root, "b0", slots=False)
    driver = tmp_path / "driver.py"
    driver.write_text(_CTRL_C_AT_IMPORT)
    r = subprocess.run([sys.executable, str(driver), "--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix),
                        "--output-dir", str(tmp_path / "out"), "--format", "pth", "--quiet"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().splitlines() == ["convert-effnet: interrupted"], r.stderr


def test_make_install_extras_stay_editable():
    r = subprocess.run(["make", "-n", "install", "EXTRAS=export", "PYTHON=python3"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    installs = [l for l in r.stdout.splitlines() if "pip install" in l and "requirements" not in l]
    assert any('-e ".[export]"' in l for l in installs), installs
    assert all(" -e " in l for l in installs), installs  # never a plain (copying) install of the package
