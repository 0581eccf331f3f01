"""``convert-effnet --all``: convert and verify every zoo checkpoint, each in its own process.

One checkpoint after another, each by ``python -m converter ... --verify`` in a subprocess, so
a crash or an out-of-memory kill of one does not end the batch. A checkpoint already converted
and verified in the output folder is skipped (see :func:`verified_report`); a failure is
recorded and the batch goes on. The batch ends with a summary table on stdout and
``OUTPUT_DIR/summary.json``; the exit status is 0 when every checkpoint was done or skipped,
1 when any failed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Deque, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from .convert import output_paths
from .errors import ConversionError
from .verify import report_path_for
from .checkpoint import Checkpoint
from .registry import all_checkpoints, families

try:  # POSIX; elsewhere two batches in one folder are not prevented
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

SUMMARY_FILE = "summary.json"
LOCK_FILE = ".convert-effnet-all.lock"
_ERROR_PREFIXES = ("convert-effnet: error: ", "convert-effnet: verification failed: ")
_TAIL_LINES = 200

# options of a single conversion that make no sense for the whole zoo
_REFUSED = (("variant", "--variant"), ("flavor", "--flavor"), ("checkpoint", "--checkpoint"),
            ("sha256", "--sha256"), ("num_classes", "--num-classes"), ("no_ema", "--no-ema"),
            ("dump_logits", "--dump-logits"))


@dataclass
class Outcome:
    """What happened to one checkpoint of the batch."""

    name: str
    status: str  # "done", "skipped" or "failed"
    seconds: float
    rel_error: Optional[float] = None
    error: str = ""
    weights: str = ""


def select_checkpoints(only: Optional[Sequence[str]] = None) -> List[Checkpoint]:
    """The checkpoints of the batch, in registry order.

    Without ``only``: the 33 zoo checkpoints. With it: every checkpoint whose name (as
    ``--list`` prints it) or zoo name matches one of the shell patterns, the two RandAugment
    ones included when a pattern matches them; a pattern matching nothing is an error.
    """
    if not only:
        return [c for f in families() if f.batch_default for c in f.checkpoints() if c.zoo_name]
    chosen = set()
    for pattern in only:
        p = pattern.strip().lower()
        hits = [c.name for c in all_checkpoints()  # the other families too (EfficientNetV2)
                if p and (fnmatchcase(c.name.lower(), p) or (c.zoo_name and fnmatchcase(c.zoo_name.lower(), p)))]
        if not hits:
            raise ConversionError(
                f"--only {pattern!r} matches no checkpoint; use names as convert-effnet --list prints them "
                f"(shell patterns allowed, e.g. 'efficientnet-b0_*')")
        chosen.update(hits)
    return [c for c in all_checkpoints() if c.name in chosen]


def _safetensors_complete(path: Path, size: int) -> bool:
    """The header parses and the file is as long as the header says."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return False
    if not isinstance(header, dict):
        return False
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return False
    return size == 8 + n + end


def verified_report(ckpt: Checkpoint, output_dir: Path, fmt: str = "safetensors") -> Optional[Dict[str, object]]:
    """The passing verification report of ``ckpt``'s outputs in ``output_dir``, or None if it must be redone.

    Done means: every output file of ``fmt`` exists; ``NAME.verify.json`` says ``passed``, names
    this checkpoint's variant and flavor, and its ``weights`` is the same file as the first
    output; no output is newer than the report (a later conversion was not verified); a
    safetensors output is as long as its header says. Temp files (``.NAME.tmp-*``) never count.
    """
    paths = output_paths(Path(output_dir), ckpt.name, fmt)
    report_path = report_path_for(paths[0])
    try:
        report = json.loads(report_path.read_text())
        report_mtime = report_path.stat().st_mtime_ns
        stats = [p.stat() for p in paths]
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("passed") is not True:
        return None
    if report.get("variant") != ckpt.variant or report.get("flavor") != ckpt.flavor:
        return None
    weights = report.get("weights")
    try:
        if not isinstance(weights, str) or not weights or not os.path.samefile(weights, paths[0]):
            return None
    except OSError:
        return None
    for p, st in zip(paths, stats):
        if not stat.S_ISREG(st.st_mode) or st.st_mtime_ns > report_mtime:
            return None
        if p.suffix == ".safetensors" and not _safetensors_complete(p, st.st_size):
            return None
    return report


def child_command(ckpt: Checkpoint, args: argparse.Namespace, output_dir: Path, force: bool) -> List[str]:
    """The ``python -m converter`` command that converts and verifies ``ckpt`` into ``output_dir``."""
    cmd = [sys.executable, "-m", "converter", "--variant", ckpt.variant, "--flavor", ckpt.flavor,
           "--output-dir", str(output_dir), "--verify", "--quiet",
           "--format", args.format, "--device", args.device]
    if getattr(args, "num_images", None) is not None:  # not given: the child's default (verify.num_images)
        cmd += ["--num-images", str(args.num_images)]
    if force:
        cmd.append("--force")
    if getattr(args, "resolution", None):
        cmd += ["--resolution", str(args.resolution)]
    if getattr(args, "allow_nonfinite", False):
        cmd.append("--allow-nonfinite")
    if getattr(args, "max_rel_error", None) is not None:
        cmd += ["--max-rel-error", repr(float(args.max_rel_error))]
    if getattr(args, "trace", False):  # converter/verify/trace.py: the tap table in each report
        cmd.append("--trace")
    if getattr(args, "images", None):
        cmd += ["--images", *[os.path.abspath(i) for i in args.images]]
    return cmd


def _pump(src: TextIO, dst: Optional[TextIO], keep: Optional[Deque[str]]) -> None:
    for line in src:
        if keep is not None:
            keep.append(line.rstrip("\n"))
        if dst is not None:
            dst.write(line)
            dst.flush()


def run_child(cmd: Sequence[str], quiet: bool) -> Tuple[int, List[str]]:
    """Run ``cmd``; echo its output unless ``quiet``; return (exit status, last lines of its stderr)."""
    tail: Deque[str] = deque(maxlen=_TAIL_LINES)
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", bufsize=1)
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, None if quiet else sys.stdout, None), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, None if quiet else sys.stderr, tail), daemon=True)]
    for t in pumps:
        t.start()
    try:
        rc = proc.wait()
    except BaseException:  # Ctrl-C: the child got it too; do not leave it running
        proc.kill()
        proc.wait()
        raise
    finally:
        for t in pumps:
            t.join(timeout=10)
    return rc, list(tail)


def error_line(rc: int, stderr_lines: Sequence[str]) -> str:
    """The one line that says why a child failed: its own error line, else a signal or its last line."""
    lines = [l.strip() for l in stderr_lines if l.strip()]
    for prefix in _ERROR_PREFIXES:
        hits = [l for l in lines if l.startswith(prefix)]
        if hits:
            msg = hits[-1][len("convert-effnet: "):]
            return msg[len("error: "):] if msg.startswith("error: ") else msg
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"killed by {name}" + (" (out of memory?)" if -rc == getattr(signal, "SIGKILL", 9) else "")
    return lines[-1] if lines else f"exit status {rc}"


def _rel_error(report: Optional[Dict[str, object]]) -> Optional[float]:
    value = (report or {}).get("rel_error")
    return float(value) if isinstance(value, (int, float)) else None


def summary_table(outcomes: Sequence[Outcome]) -> str:
    """The summary as an aligned text table."""
    rows = [("name", "status", "seconds", "rel error", "error")]
    for o in outcomes:
        rows.append((o.name, o.status, f"{o.seconds:.1f}",
                     "-" if o.rel_error is None else f"{o.rel_error:.2e}", o.error))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def _write_summary(output_dir: Path, outcomes: Sequence[Outcome], args: argparse.Namespace, complete: bool) -> Path:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    doc = {"output_dir": str(output_dir), "complete": complete, "ok": complete and counts["failed"] == 0,
           "counts": counts, "only": list(args.only or []), "force": bool(args.force),
           "results": [asdict(o) for o in outcomes]}
    path = output_dir / SUMMARY_FILE
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _batch_lock(output_dir: Path) -> Iterator[None]:
    """One ``--all`` per output folder at a time (the conversions themselves are atomic anyway)."""
    fd = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConversionError(
                    f"another convert-effnet --all is running in {output_dir}; "
                    f"wait for it or use another --output-dir") from None
            except OSError:  # a filesystem without locks: go on unguarded
                pass
        yield
    finally:
        os.close(fd)


def _check_options(args: argparse.Namespace) -> None:
    given = [flag for attr, flag in _REFUSED if getattr(args, attr, None)]
    if given:
        raise ConversionError(
            f"--all converts every official checkpoint from its download; drop {', '.join(given)} "
            f"(use --only NAME... to choose checkpoints)")
    from .verify import MAX_REL_ERROR, check_options

    # every child verifies with these: a bad one is one error now, not one failure per checkpoint
    max_rel = getattr(args, "max_rel_error", None)
    check_options(getattr(args, "resolution", None), getattr(args, "num_images", None), list(getattr(args, "images", ())),
                  getattr(args, "device", "auto"), None, MAX_REL_ERROR if max_rel is None else max_rel)


def run_all(args: argparse.Namespace) -> int:
    """Convert and verify the selected checkpoints into ``args.output_dir``; 0 when none failed, else 1."""
    _check_options(args)
    selected = select_checkpoints(args.only)
    output_dir = Path(args.output_dir).expanduser().resolve()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConversionError(f"cannot create output folder {output_dir}: {e.strerror or e}") from None
    outcomes: List[Outcome] = []
    with _batch_lock(output_dir):
        try:
            for i, ckpt in enumerate(selected, 1):
                outcome = _one(ckpt, args, output_dir, f"[{i}/{len(selected)}]")
                outcomes.append(outcome)
        except KeyboardInterrupt:
            if len(outcomes) < len(selected):
                outcomes.append(Outcome(selected[len(outcomes)].name, "failed", 0.0, error="interrupted"))
            _write_summary(output_dir, outcomes, args, complete=False)
            print(summary_table(outcomes), flush=True)
            raise
        path = _write_summary(output_dir, outcomes, args, complete=True)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    print(summary_table(outcomes))
    print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; summary: {path}",
          flush=True)
    return 1 if counts["failed"] else 0


def _one(ckpt: Checkpoint, args: argparse.Namespace, output_dir: Path, step: str) -> Outcome:
    """Skip, or convert and verify one checkpoint in a subprocess."""
    t0 = time.perf_counter()
    paths = output_paths(output_dir, ckpt.name, args.format)
    if not args.force:
        report = verified_report(ckpt, output_dir, args.format)
        if report is not None:
            if not args.quiet:
                print(f"{step} {ckpt.name}: already converted and verified, skipped", flush=True)
            return Outcome(ckpt.name, "skipped", time.perf_counter() - t0, _rel_error(report), weights=str(paths[0]))
    if not args.quiet:
        print(f"{step} {ckpt.name}: converting and verifying", flush=True)
    # an output without a passing report was never verified: it is converted again
    force = args.force or any(p.exists() for p in paths)
    rc, stderr_lines = run_child(child_command(ckpt, args, output_dir, force), args.quiet)
    seconds = time.perf_counter() - t0
    if rc != 0:
        outcome = Outcome(ckpt.name, "failed", seconds, error=error_line(rc, stderr_lines))
    else:
        report = verified_report(ckpt, output_dir, args.format)
        if report is None:
            outcome = Outcome(ckpt.name, "failed", seconds,
                              error=f"the conversion ended without a passing report {report_path_for(paths[0])}")
        else:
            outcome = Outcome(ckpt.name, "done", seconds, _rel_error(report), weights=str(paths[0]))
    if not args.quiet:
        print(f"{step} {ckpt.name}: {outcome.status} ({seconds:.1f} s)"
              + (f": {outcome.error}" if outcome.error else ""), flush=True)
    return outcome
