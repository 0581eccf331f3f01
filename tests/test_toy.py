"""A family is one folder, a layout is one file (issue 26.3): both are found by walking their package.

The toy family is a folder (one new block kind: a plain conv -> BN -> act) dropped on
``$EFFNET_FAMILIES_PATH`` (converter/families/__init__.py adds it to the package's path, so the
TensorFlow reference's own process finds it too): ``--list`` shows its checkpoint, a generated
checkpoint of it converts and verifies against the TensorFlow reference. The toy folder layout is
one table file (native's rows under another name, written as a folder by its own writer module):
conversion with ``--verify``, ``verify`` and loading go through that writer. No file of the tree
changes in either case.
"""
import json
import sys

import numpy as np
import pytest
import torch

import converter.families as families_pkg
import converter.mappings as tables_pkg
from converter import mapping, registry
from converter.cli import main
from converter.errors import ConversionError

tf = pytest.importorskip("tensorflow")

from converter.tfref import reference  # noqa: E402
from converter.tfref.generate import generate_checkpoint  # noqa: E402

TOY_INIT = '''"""A toy family for tests: one architecture whose blocks are plain conv -> BN -> act (kind ``toyconv``)."""
import importlib
from dataclasses import dataclass, replace

from converter.arch import ArchSpec, down
from converter.checkpoint import Checkpoint
from converter.family import Family, Kind
from converter.mappings.kinds import BN, CONV


@dataclass(frozen=True)
class ToySpec(ArchSpec):
    def blocks(self):
        return [replace(b, kind="toyconv", mid_channels=b.in_channels, se_channels=0) for b in super().blocks()]


SPEC = ToySpec(name="toy-a", width=1.0, depth=1.0, resolution=48, dropout=0.0, scope="toynet-a",
               block_strings=("r1_k3_s11_e1_i32_o16", "r2_k5_s22_e1_i16_o24"), head_filters=64, num_classes=10,
               family="toy")
ROWS = (("blocks_{i}/conv2d", "blocks.{i}.conv", CONV, ("k", "k", "in", "out")),
        ("blocks_{i}/tpu_batch_normalization", "blocks.{i}.bn", BN, ("out",)))


def _params(b):
    return b.kernel_size ** 2 * b.in_channels * b.out_channels + 2 * b.out_channels


def _macs(b, size):
    size = down(size, b.stride)
    return size * size * b.kernel_size ** 2 * b.in_channels * b.out_channels, size


CHECKPOINT = Checkpoint("toy-a", "standard", None, 0.01, None, None, None, name="toynet-a_standard", arch=SPEC,
                        folder="toy/", relative_path="toynet-a.tar.gz")

FAMILY = Family(
    name="toyfam", labels=("toy",),
    kinds=(Kind("toyconv", "toy conv", _params, _macs,
                module=lambda: importlib.import_module(f"{__name__}.modules").ToyConv,
                reference=lambda: importlib.import_module(f"{__name__}.reference").TOY,
                rows_by_layout={"native": (ROWS, ROWS)}),),
    archs={"toy-a": SPEC}, lookup={"toy-a": SPEC}.get, variant_names=lambda: ["toy-a"], variants_help="toy-a",
    checkpoints=lambda: (CHECKPOINT,), finder=lambda arch, flavor: CHECKPOINT if arch.name == "toy-a" else None,
    reference=lambda: importlib.import_module("converter.tfref.ops").ModelRef())
'''

TOY_MODULES = '''from torch import nn

from converter.blocks import make_activation
from converter.layers import BatchNorm2dTF, Conv2dSame


class ToyConv(nn.Module):
    BN_FUSION = (("conv", "bn"),)

    def __init__(self, b, eps, act):
        super().__init__()
        self.residual = b.residual
        self.conv = Conv2dSame(b.in_channels, b.out_channels, b.kernel_size, b.stride)
        self.bn = BatchNorm2dTF(b.out_channels, eps)
        self.act = make_activation(act)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        return y + x if self.residual else y
'''

TOY_REFERENCE = '''from converter.tfref.ops import BN_NAME, BlockNames, BlockRef, conv


def _names(spec, b):
    p = f"{spec.scope}/blocks_{b.index}"
    return BlockNames(None, None, None, None, None, None, project=f"{p}/conv2d", bn2=f"{p}/{BN_NAME}")


def _kernels(b, n):
    return {"project": (f"{n.project}/kernel", (b.kernel_size, b.kernel_size, b.in_channels, b.out_channels))}


def _call(b, n, kv, x, w, bn, act):
    return act(bn(n.bn2, conv(x, w(kv["project"][0]), b.stride)))


TOY = BlockRef(_names, _call, kernels=_kernels)
'''


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    """The toy family's folder on $EFFNET_FAMILIES_PATH (and on this process's package path)."""
    plugins = tmp_path / "plugins"
    folder = plugins / "toyfam"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(TOY_INIT)
    (folder / "modules.py").write_text(TOY_MODULES)
    (folder / "reference.py").write_text(TOY_REFERENCE)
    monkeypatch.setenv(families_pkg.FAMILIES_PATH_ENV, str(plugins))
    monkeypatch.setattr(families_pkg, "__path__", [*families_pkg.__path__, str(plugins)])
    registry.families.cache_clear()
    registry._kinds.cache_clear()
    try:
        yield folder
    finally:
        for name in [m for m in sys.modules if m.startswith("converter.families.toyfam")]:
            sys.modules.pop(name)
        registry.families.cache_clear()
        registry._kinds.cache_clear()


def test_toy_family_is_one_new_folder(toy_family, tmp_path, capsys):
    """Listed by --list, converted from a generated checkpoint and verified by the TF reference."""
    assert "toyfam" in [f.name for f in registry.families()]
    spec = registry.get_arch("toy-a")
    assert [b.kind for b in spec.blocks()] == ["toyconv"] * 3
    # the kind's cost, against an independent count of the toy's layers
    convs = [(3, 32, 16), (5, 16, 24), (5, 24, 24)]
    want = 27 * 32 + 64 + sum(k * k * i * o + 2 * o for k, i, o in convs) + 24 * 64 + 128 + 64 * 10 + 10
    assert registry.count_params(spec) == want
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert any(line.startswith("toynet-a_standard ") and line.rstrip().endswith("toy/toynet-a.tar.gz")
               for line in listed.splitlines()), listed

    prefix = tmp_path / "ckpt" / "model.ckpt"
    generate_checkpoint("toy-a", str(prefix), calibration_resolution=40, calibration_images=4)
    out = tmp_path / "out"
    rc = main(["--variant", "toy-a", "--checkpoint", str(prefix), "--output-dir", str(out), "--quiet",
               "--verify", "--num-images", "2", "--resolution", "40"])
    assert rc == 0, capsys.readouterr().err
    weights = out / "toynet-a_standard.safetensors"
    report = json.loads((out / "toynet-a_standard.verify.json").read_text())
    assert report["passed"] and report["variant"] == "toy-a"
    # the converted model computes what the TF reference computes, on images of our own
    from converter import load_model

    model = load_model(weights)
    x = np.random.default_rng(3).standard_normal((2, 40, 40, 3)).astype(np.float32)
    ref = reference.forward(spec, reference.read_checkpoint_getter(str(prefix)), x, device="cpu")
    with torch.no_grad():
        got = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_toy_family_absent_is_unknown():
    """Without the folder the toy variant is unknown: what makes it known is the folder alone."""
    with pytest.raises(ConversionError, match="unknown variant 'toy-a'"):
        registry.get_arch("toy-a")


TOY_TABLE = '''"""A toy folder layout for tests: native's rows under another name, written by its own writer."""
from converter.mappings.efficientnet import *  # noqa: F401,F403 (the rows)
from converter.mappings.layout import Layout

LAYOUT = Layout("toyfolder", summary="a test folder layout", variants={"b0": "toy_b0"}, file_form="folder",
                writer="toyfolder_writer")
'''

TOY_WRITER = '''"""The toy folder layout's writer: weights.safetensors in a folder, its report inside it."""
import functools
import os
import shutil
from pathlib import Path

from converter.errors import ConversionError

REPORT_NAME = "report.json"
WEIGHTS = "weights.safetensors"


def folder_weights(path):
    w = Path(path) / WEIGHTS
    if not w.is_file():
        raise ConversionError(f"{path} is a folder without {WEIGHTS}: not a --layout toyfolder output")
    return w


def add_verification(folder, report):
    (Path(folder) / "verified.txt").write_text(str(report.passed))


def commit_folder(tmp, folder):
    if folder.exists():
        shutil.rmtree(folder)
    os.rename(tmp, folder)


def _outputs(output_dir, stem, fmt):
    return [Path(output_dir) / stem]


def _convert(convert, reader, spec, cfg, outputs, **kwargs):
    folder = Path(outputs[0])
    tmp = folder.with_name(f".{folder.name}.toy-tmp")
    tmp.mkdir(parents=True)
    result = convert(reader, spec, cfg, [tmp / WEIGHTS], **kwargs)
    commit_folder(tmp, folder)
    result.outputs = [folder]
    return result


def folder_converter(convert, resolution=None):
    return functools.partial(_convert, convert), _outputs
'''


@pytest.fixture
def toy_layout(tmp_path, monkeypatch):
    """The toy table file in the tables' package path, its writer module importable."""
    tables, writers = tmp_path / "tables", tmp_path / "writers"
    tables.mkdir()
    writers.mkdir()
    (tables / "toyfolder.py").write_text(TOY_TABLE)
    (writers / "toyfolder_writer.py").write_text(TOY_WRITER)
    monkeypatch.setattr(tables_pkg, "__path__", [*tables_pkg.__path__, str(tables)])
    monkeypatch.syspath_prepend(str(writers))
    mapping._declared.cache_clear()
    try:
        yield
    finally:
        for name in ("converter.mappings.toyfolder", "toyfolder_writer"):
            sys.modules.pop(name, None)
        mapping._declared.cache_clear()


def test_toy_folder_layout_is_one_new_file(toy_layout, tmp_path, capsys):
    """A folder-writing layout: one table file naming its writer; convert --verify, verify and
    loading all go through that writer, and the weights equal the native conversion's."""
    from converter import load_model
    from helpers import make_checkpoint

    assert mapping.get_layout("toyfolder").file_form == "folder"
    prefix = make_checkpoint(tmp_path / "ckpts", "b0", calibration_resolution=64)
    out = tmp_path / "out"
    args = ["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(out), "--quiet"]
    rc = main(args + ["--layout", "toyfolder", "--verify", "--num-images", "2", "--resolution", "64"])
    assert rc == 0, capsys.readouterr().err
    folder = out / "efficientnet-b0_aa.toyfolder"
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "verified.txt", "weights.safetensors"]
    assert json.loads((folder / "report.json").read_text())["passed"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # nothing half-written left
    # verify on the folder: the writer finds its weights and keeps the report inside
    (folder / "report.json").unlink()
    assert main(["verify", "--weights", str(folder), "--checkpoint", str(prefix), "--quiet",
                 "--num-images", "2", "--resolution", "64"]) == 0
    assert json.loads((folder / "report.json").read_text())["passed"]
    # loading: the same tensors as the native conversion of the same checkpoint
    assert main(args) == 0
    native = load_model(out / "efficientnet-b0_aa.safetensors").state_dict()
    toy = load_model(folder)
    assert toy.pretrained_cfg["layout"] == "toyfolder"
    assert {k: v.shape for k, v in toy.state_dict().items()} == {k: v.shape for k, v in native.items()}
    assert all(torch.equal(v, native[k]) for k, v in toy.state_dict().items())
    with pytest.raises(ConversionError, match="not a --layout toyfolder output|model.safetensors"):
        load_model(tmp_path)  # a folder no writer owns: one line
