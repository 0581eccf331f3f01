"""evaluate under torchrun (converter/distributed.py): 2 CPU processes (gloo on 127.0.0.1).

Each process takes its own share of the images (uneven split: 7 images, 4 + 3), rank 0 writes
the gathered results, which equal one process's and the independent computation of
tests/test_predict.py; an unreadable image in rank 1's share stops both processes with its name.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from converter import cli
from converter.distributed import share
from test_predict import _expected, _mixed_labels, _photos, _synset_tree, make_weights, reference_logits

TIMEOUT = 180  # a hang (a rank waiting for another that failed) fails the test instead of blocking CI


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_share_takes_every_item_once(world):
    for n in range(0, 12):
        items = list(range(n))
        parts = [share(items, r, world) for r in range(world)]
        assert sorted(i for p in parts for i in p) == items  # none twice, none missed
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    photos = _photos(root / "photos")
    weights = root / "b0.safetensors"
    model = make_weights(weights, photos)
    logits = reference_logits(model, photos)
    labels = _mixed_labels(logits)
    copies = _synset_tree(root / "val", photos, labels)
    return {"root": root, "weights": weights, "logits": logits, "labels": labels, "copies": copies}


def _torchrun(*args, nproc: int = 2):
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "converter", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(setup, tmp_path, capsys):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    rc = cli.main(["evaluate", str(setup["root"] / "val"), "--weights", str(setup["weights"]), "--workers", "0",
                   "--batch-size", "2", "--device", "cpu", "--json", str(one)])
    assert rc == 0, capsys.readouterr().err
    p = _torchrun("evaluate", setup["root"] / "val", "--weights", setup["weights"], "--workers", "0",
                  "--batch-size", "2", "--device", "cpu", "--json", two, "--quiet")
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    exp = _expected(setup["logits"], setup["labels"])
    assert 0 < exp["top1_correct"] < exp["top5_correct"] < len(setup["labels"])
    for k in ("top1", "top5", "top1_correct", "top5_correct"):
        assert a[k] == b[k] == pytest.approx(exp[k]), k
    assert a["images"] == b["images"] == 7
    assert (a["processes"], b["processes"]) == (1, 2)
    assert b["images_per_process"] == [4, 3]  # uneven: images 0, 2, 4, 6 and 1, 3, 5
    assert p.stdout.count("top-1:") == 1 and "2 processes" in p.stdout  # rank 0 alone reports


def test_error_on_one_rank_stops_every_rank(setup, tmp_path):
    """The 2nd image (rank 1's first) is unreadable: both processes stop, naming it; none waits forever."""
    import shutil

    val = tmp_path / "val"
    shutil.copytree(setup["root"] / "val", val)
    second = sorted(val.rglob("*.*"), key=lambda c: c.relative_to(val).as_posix())[1]
    second.write_bytes(b"not an image")
    p = _torchrun("evaluate", val, "--weights", setup["weights"], "--workers", "0", "--device", "cpu", "--quiet")
    assert p.returncode != 0
    assert second.name in p.stderr and "top-1:" not in p.stdout
