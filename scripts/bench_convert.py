#!/usr/bin/env python
"""Benchmark: wall time and peak RSS of a conversion next to a plain read of the same checkpoint.

    python scripts/bench_convert.py --variants b0 b7 l2 [--workdir /tmp/bench] [--format safetensors]

For each variant it writes an official-layout checkpoint with the project's generator (once,
kept in --workdir), then runs, each in its own process so peak RSS is that process's alone:
  read      every model tensor read through the reader (no conversion, no output)
  cp        `cp` of the checkpoint's data file (the I/O floor)
  cp+sha    that `cp` with `sha256sum` of the same file running beside it (the floor of a
            conversion, which reads, writes and hashes its source: the issue 27 goal is
            convert <= 1.25x this)
  cp+hashlib  the same with Python's hashlib (OpenSSL) hashing beside it, as the conversion
            hashes: coreutils' sha256sum may lack the SHA instructions OpenSSL uses
  convert   convert-effnet on the checkpoint
for each reader (--readers: TensorFlow's and the project's own tensor-bundle reader), with --tarball
also a conversion straight from a .tar.gz of the checkpoint (its read_s column: `tar xzf` of it), and
prints a table (seconds, peak RSS in MB, output size in MB, RSS / output size, time / cp time).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HASH_SNIPPET = "import sys; sys.path.insert(0, sys.argv[2]); from converter.pipeline import sha256_files; sha256_files([sys.argv[1]])"
READ_SNIPPET = r"""
import sys
from converter.sources.readers import open_reader
r = open_reader(sys.argv[1], sys.argv[2])
n = 0
for name in r.names():
    n += r.read(name).nbytes
print(n)
"""


def timed(cmd, env=None):
    """(seconds, peak RSS MB) of a command, peak RSS from /usr/bin/time -v."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return dt, int(m.group(1)) / 1024 if m else float("nan")


def timed_beside(cmds, env=None) -> float:
    """Wall seconds of ``cmds`` started together, until the last one ends."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for c in cmds]
    for c, proc in zip(cmds, procs):
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(c)}\n{err.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - t0


def _flavor_args(variant: str):
    """``--flavor F`` naming the variant's first released checkpoint (none where it has one only)."""
    from converter.registry import all_checkpoints

    mine = [c for c in all_checkpoints() if c.variant == variant]
    return [] if len(mine) <= 1 else ["--flavor", mine[0].flavor]


def _against_copies(t_conv, rss_conv, size, t_cp, t_cp_sha, t_cp_hashlib):
    """A conversion's columns: its time and memory, and its time over each copy baseline."""
    return dict(cp_s=round(t_cp, 2), cp_sha_s=round(t_cp_sha, 2), cp_hashlib_s=round(t_cp_hashlib, 2),
                convert_s=round(t_conv, 2), convert_rss_mb=round(rss_conv), output_mb=round(size, 1),
                rss_over_output=round(rss_conv / size, 2),
                convert_over_cp=round(t_conv / max(t_cp, 1e-3), 2),
                convert_over_cp_sha=round(t_conv / max(t_cp_sha, 1e-3), 2),
                convert_over_cp_hashlib=round(t_conv / max(t_cp_hashlib, 1e-3), 2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["b0", "b7"])
    p.add_argument("--workdir", default="/tmp/effnet-bench")
    p.add_argument("--format", default="safetensors", choices=("safetensors", "pth", "both"))
    p.add_argument("--mode", default="full", choices=("full", "ema-only"),
                   help="checkpoint contents (full: raw + EMA + RMSProp slots, as the releases)")
    p.add_argument("--readers", nargs="+", default=["tf", "bundle"], choices=("tf", "bundle"),
                   help="checkpoint readers to compare (default: both)")
    p.add_argument("--tarball", action="store_true",
                   help="also time converting straight from a .tar.gz of the checkpoint (reader 'tar.gz', "
                        "streamed, nothing extracted) next to `tar xzf` of it")
    p.add_argument("--repeat", type=int, default=1,
                   help="time cp, cp+sha and convert this many times each, interleaved; report the best")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    work = Path(args.workdir)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    rows = []
    for v in args.variants:
        ck = work / f"{v}-{args.mode}"
        prefix = ck / "model.ckpt"
        if not Path(str(prefix) + ".index").exists():
            ck.mkdir(parents=True, exist_ok=True)
            print(f"generating {v} ({args.mode}) ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "converter.tfref.generate", "--variant", v, "--out", str(prefix),
                            "--mode", args.mode] + (["--no-slots"] if args.mode != "full" else []),
                           check=True, env=env, stdout=subprocess.DEVNULL)
        data = next(ck.glob("model.ckpt.data-*"))
        cp_cmd = ["cp", str(data), str(work / "cp.tmp")]
        flavor = _flavor_args(v)
        for reader in args.readers:
            out = work / f"out-{v}"
            t_read, rss_read = timed([sys.executable, "-c", READ_SNIPPET, str(prefix), reader], env)
            t_cp = t_cp_sha = t_cp_hashlib = t_conv = float("inf")
            rss_conv = 0.0
            for _ in range(max(1, args.repeat)):  # interleaved, so each sees the same load and page cache
                t_cp = min(t_cp, timed(cp_cmd, env)[0])
                os.unlink(work / "cp.tmp")
                t_cp_sha = min(t_cp_sha, timed_beside([cp_cmd, ["sha256sum", str(data)]], env))
                os.unlink(work / "cp.tmp")
                hash_cmd = [sys.executable, "-c", HASH_SNIPPET, str(data), str(Path(__file__).resolve().parents[1])]
                t_cp_hashlib = min(t_cp_hashlib, timed_beside([cp_cmd, hash_cmd], env))
                os.unlink(work / "cp.tmp")
                shutil.rmtree(out, ignore_errors=True)
                t, rss = timed([sys.executable, "-m", "converter", "--variant", v, *flavor,
                                "--checkpoint", str(prefix), "--output-dir", str(out), "--format",
                                args.format, "--quiet", "--reader", reader], env)
                t_conv, rss_conv = min(t_conv, t), max(rss_conv, rss)
                size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
                shutil.rmtree(out, ignore_errors=True)
            rows.append(dict(variant=v, reader=reader, checkpoint_mb=round(data.stat().st_size / 2**20, 1),
                             read_s=round(t_read, 2), read_rss_mb=round(rss_read),
                             **_against_copies(t_conv, rss_conv, size, t_cp, t_cp_sha, t_cp_hashlib)))
        if args.tarball:
            tarball = work / f"{v}-{args.mode}.tar.gz"
            if not tarball.exists():
                from converter.tfref.generate import make_tarball

                make_tarball(str(prefix), str(tarball), f"efficientnet-{v}")
            xdir = work / "x.tmp"
            shutil.rmtree(xdir, ignore_errors=True)
            xdir.mkdir()
            t_x, _ = timed(["tar", "xzf", str(tarball), "-C", str(xdir)], env)
            shutil.rmtree(xdir, ignore_errors=True)
            out = work / f"out-{v}"
            shutil.rmtree(out, ignore_errors=True)
            t_conv, rss_conv = timed([sys.executable, "-m", "converter", "--variant", v, *flavor,
                                      "--checkpoint", str(tarball), "--output-dir", str(out), "--format",
                                      args.format, "--quiet"], env)
            size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
            rows.append(dict(variant=v, reader="tar.gz stream", checkpoint_mb=round(tarball.stat().st_size / 2**20, 1),
                             read_s=round(t_x, 2), read_rss_mb="(tar xzf)",
                             **_against_copies(t_conv, rss_conv, size, t_cp, t_cp_sha, t_cp_hashlib)))
            shutil.rmtree(out, ignore_errors=True)
    cols = list(rows[0])
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
