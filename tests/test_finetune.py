"""Fine-tuning: official drop-connect schedule and dropout, a new head, saving, the README example.

Expected values are computed here from the official rules (tensorflow/tpu 7dc921f, google/automl
6a54c87), not read from converter/families/*/training.py.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from converter import ConversionError
from converter.blocks import drop_connect
from converter.cli import main
from converter.loading import load_model
from converter.model import build_model
from converter.training import save_model

from helpers import make_checkpoint

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO.parent / "shared" / "reference" / "inventory"


@pytest.fixture(scope="module")
def b0_file(tmp_path_factory):
    """A converted b0 (generated official-layout checkpoint, flavor aa)."""
    root = tmp_path_factory.mktemp("ft")
    prefix = make_checkpoint(root, "b0")
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix.parent), "--output-dir",
                 str(root / "out"), "--quiet"]) == 0
    return root / "out" / "efficientnet-b0_aa.safetensors"


def _official_probs(n_blocks: int, survival_prob):
    """efficientnet_model.Model.call / effnetv2_model.EffNetV2Model.call: block idx of n."""
    if not survival_prob:
        return [1.0] * n_blocks
    return [1.0 - (1.0 - survival_prob) * float(idx) / n_blocks for idx in range(n_blocks)]


def _inventory_blocks(name: str) -> int:
    """The number of blocks the official builder creates (distinct ``blocks_N`` scopes)."""
    names = [n for n, _ in json.loads((INVENTORY / f"{name}.json").read_text())]
    return len({m.group(1) for n in names for m in [re.search(r"/blocks_(\d+)/", n)] if m})


# (variant, official inventory) : survival_prob 0.8 (efficientnet_builder and the Lite/EdgeTPU/CondConv builders)
V1 = [("b0", "efficientnet-b0"), ("b3", "efficientnet-b3"), ("b7", "efficientnet-b7"),
      ("lite0", "efficientnet-lite0"), ("lite4", "efficientnet-lite4"), ("edgetpu-s", "efficientnet-edgetpu-S"),
      ("edgetpu-l", "efficientnet-edgetpu-L"), ("condconv-b0-8e-depth", "efficientnet-condconv-b0-8e-depth")]


@pytest.mark.parametrize("variant,inventory", V1)
def test_v1_family_survival_probs_every_block(variant, inventory):
    model = build_model(variant)
    n = _inventory_blocks(inventory)
    assert model.survival_probs() == _official_probs(n, 0.8)
    assert model.training_config()["survival_prob"] == 0.8


# EfficientNetV2 blocks: the repeats of effnetv2_configs.py's block strings (depth 1.0 for S, M, XL)
V2_BLOCKS = {"v2-s": 2 + 4 + 4 + 6 + 9 + 15, "v2-m": 3 + 5 + 5 + 7 + 14 + 18 + 5, "v2-xl": 4 + 8 + 8 + 16 + 24 + 32 + 8}
# datasets.py per flavor: survival_prob (hparams' 0.8 unless the dataset overrides), dropout (None: the model's)
V2_FLAVORS = {"1k": (0.8, None), "21k": (1.0, 0.000001), "21k-ft1k": (0.8, 0.000001)}
V2_DROPOUT = {"v2-s": 0.2, "v2-m": 0.3, "v2-xl": 0.4}  # effnetv2_configs.efficientnetv2_params


@pytest.mark.parametrize("variant", sorted(V2_BLOCKS))
@pytest.mark.parametrize("flavor", sorted(V2_FLAVORS))
def test_v2_defaults_per_flavor(variant, flavor):
    model = build_model(variant)
    model.pretrained_cfg = {"flavor": flavor}  # what load_model sets from the file's metadata
    model.set_training_config(official=True)
    survival, dropout = V2_FLAVORS[flavor]
    assert model.survival_probs() == _official_probs(V2_BLOCKS[variant], survival)
    assert model.dropout.p == (V2_DROPOUT[variant] if dropout is None else dropout)
    cfg = model.training_config()
    assert cfg["bn_momentum"] == 0.9 and cfg["bn_eps"] == 1e-3 and cfg["bn_bessel"] is False
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(abs(m.momentum - 0.1) < 1e-12 and m.eps == 1e-3 for m in bns)


@pytest.mark.parametrize("variant", ["mnasnet-a1", "mnasnet-a1-d0.5", "mnasnet-small", "mixnet-s", "mixnet-l"])
def test_mnasnet_mixnet_no_drop_connect_fused_bn(variant):
    model = build_model(variant)
    assert model.survival_probs() == [1.0] * len(model.blocks)
    cfg = model.training_config()
    assert cfg["survival_prob"] is None and cfg["bn_momentum"] == 0.99 and cfg["bn_bessel"] is True


# dropout_rate of the builders (efficientnet_params, lite/edgetpu/condconv builders, efficientnetv2_params,
# mnasnet_models, mixnet_builder)
DROPOUT = {"b0": 0.2, "b2": 0.3, "b4": 0.4, "b7": 0.5, "lite0": 0.2, "lite4": 0.3, "edgetpu-m": 0.2,
           "edgetpu-l": 0.3, "condconv-b0-4e": 0.25, "v2-b0": 0.2, "v2-b3": 0.3, "v2-l": 0.4,
           "mnasnet-a1": 0.2, "mnasnet-small": 0.0, "mixnet-s": 0.2, "mixnet-m": 0.25, "mixnet-l": 0.25}


@pytest.mark.parametrize("variant", sorted(DROPOUT))
def test_dropout_rate(variant):
    model = build_model(variant)
    assert model.dropout.p == DROPOUT[variant] and model.training_config()["drop_rate"] == DROPOUT[variant]


def test_drop_path_rate_and_drop_connect_rate_are_one_minus_survival_prob():
    for kw in ({"drop_path_rate": 0.3}, {"drop_connect_rate": 0.3}):
        model = build_model("b0").set_training_config(**kw)
        assert abs(model.training_config()["survival_prob"] - 0.7) < 1e-12
        assert model.survival_probs() == _official_probs(16, 1.0 - 0.3)
    with pytest.raises(ConversionError, match="one of"):
        build_model("b0").set_training_config(drop_path_rate=0.3, survival_prob=0.5)


def test_drop_connect_is_the_official_formula_per_example():
    x = torch.randn(4000, 3, 2, 2, dtype=torch.float64)
    p = 0.7
    torch.manual_seed(3)
    u = torch.rand([4000, 1, 1, 1], dtype=torch.float64)
    torch.manual_seed(3)
    y = drop_connect(x, p, True)
    # utils.drop_connect: floor(survival_prob + uniform), inputs / survival_prob * binary
    np.testing.assert_array_equal(y.numpy(), x.numpy() / p * np.floor(p + u.numpy()))
    kept = (y != 0).flatten(1)
    assert bool((kept.all(1) | (~kept).all(1)).all())  # one mask per example
    rate = kept.all(1).double().mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / 4000)
    assert torch.equal(drop_connect(x, p, False), x) and torch.equal(drop_connect(x, 1.0, True), x)


def test_drop_connect_only_in_residual_blocks_with_each_blocks_rate():
    """Train-mode blocks with frozen BN: a residual block's output is per example x + branch / p or x;
    a block without skip connection is never dropped; the kept fraction follows the block's rate."""
    model = build_model("b0").set_training_config(survival_prob=0.5)
    probs = model.survival_probs()
    assert probs == _official_probs(16, 0.5)
    torch.manual_seed(0)
    x = torch.randn(400, 3, 32, 32)
    with torch.no_grad():
        h = model.stem.eval()(x)
        for i, block in enumerate(model.blocks):
            block.eval()
            ref = block(h)
            block.train()
            for m in block.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
            out = block(h)
            if not block.residual:
                assert torch.equal(out, ref), i
            else:
                branch = ref - h
                d_drop = (out - h).abs().flatten(1).amax(1)
                d_keep = (out - (h + branch / probs[i])).abs().flatten(1).amax(1)
                size = (branch / probs[i]).abs().flatten(1).amax(1)
                assert bool((torch.minimum(d_drop, d_keep) <= 1e-5 * size + 1e-12).all()), i  # one or the other
                assert bool((torch.maximum(d_drop, d_keep) >= 0.5 * size).all()), i  # and told apart
                scaled = d_keep < d_drop
                q = probs[i]
                assert abs(scaled.double().mean().item() - q) < 4 * math.sqrt(q * (1 - q) / 400) + 1e-9, i
            h = ref


def test_eval_mode_is_exactly_the_converted_model(b0_file):
    x = torch.randn(2, 3, 64, 64)
    plain = load_model(b0_file)
    tuned = load_model(b0_file, drop_rate=0.9, survival_prob=0.3, bn_momentum=0.5)
    assert tuned.training_config()["drop_rate"] == 0.9 and tuned.survival_probs()[-1] == 1 - 0.7 * 15 / 16
    with torch.no_grad():
        want = plain(x)
        assert torch.equal(tuned(x), want)
        tuned.train()
        tuned.eval()  # switching modes changes nothing by itself
        assert torch.equal(tuned(x), want)
        tuned.train()
        a, b = tuned(x), tuned(x)  # dropout / drop-connect are random in training
        assert not torch.equal(a, b)
    for m in tuned.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert abs(m.momentum - 0.5) < 1e-12


def test_load_model_new_head_and_same_width(b0_file):
    base = load_model(b0_file)
    model = load_model(b0_file, num_classes=7, labels=[f"c{i}" for i in range(7)])
    assert model.classifier.out_features == 7 and model.classifier.in_features == 1280
    bound = 1 / math.sqrt(7)  # efficientnet_model.dense_kernel_initializer: uniform +-1/sqrt(units)
    assert float(model.classifier.weight.abs().max()) <= bound and float(model.classifier.bias.abs().max()) == 0
    assert model.pretrained_cfg["num_classes"] == 7 and model.pretrained_cfg["labels"] == [f"c{i}" for i in range(7)]
    for k in ("mean", "std", "input_size", "crop_pct", "interpolation", "variant", "flavor", "source_sha256"):
        assert model.pretrained_cfg[k] == base.pretrained_cfg[k], k
    sd, ref = model.state_dict(), base.state_dict()
    for k, v in ref.items():
        if not k.startswith("classifier."):
            assert torch.equal(sd[k], v), k
    same = load_model(b0_file, num_classes=1000)  # the file's width: the trained head kept
    assert torch.equal(same.classifier.weight, base.classifier.weight)
    with pytest.raises(ConversionError, match="labels"):
        load_model(b0_file, num_classes=3, labels=["a"])
    with pytest.raises(ConversionError, match="num_classes"):
        load_model(b0_file, num_classes=0)
    with pytest.raises(ConversionError, match="survival_prob"):
        load_model(b0_file, survival_prob=1.5)


def test_reset_classifier_edgetpu_background_and_keep():
    model = build_model("edgetpu-s")
    assert model.classifier.out_features == 1001
    old_w = model.classifier.weight.detach().clone()
    model.reset_classifier(3, keep=[5, -1, 1000])
    w = model.classifier.weight.detach()
    assert torch.equal(w[0], old_w[5]) and torch.equal(w[2], old_w[1000]) and not torch.equal(w[1], old_w[1])
    assert model.pretrained_cfg["num_classes"] == 3 and "labels" not in model.pretrained_cfg
    model.reset_classifier(4)
    assert model.pretrained_cfg["labels"] == []  # outputs without names
    with pytest.raises(ConversionError, match="keep"):
        model.reset_classifier(2, keep=[0, 9])
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_v2_21k_head_to_imagenet1k_by_synset():
    from converter.in21k import imagenet1k_in_21k, to_imagenet1k
    from converter.predict import imagenet21k_classes, imagenet_classes

    model = build_model("v2-b0", 21843)
    old = model.classifier.weight.detach().clone()
    where = imagenet1k_in_21k()
    to_imagenet1k(model)
    w = model.classifier.weight.detach()
    assert w.shape == (1000, 1280)
    c1k, c21k = imagenet_classes(), imagenet21k_classes()
    for j in (0, 1, 291, 849, 851, 999):  # same synset, same row
        assert c21k[where[j]][0] == c1k[j][0] and torch.equal(w[j], old[where[j]])
    assert where[850] == -1 and c1k[850][0] == "n04399382" and sum(i < 0 for i in where) == 1
    assert "labels" not in model.pretrained_cfg  # 1000 ImageNet classes again
    with pytest.raises(ConversionError, match="21843"):
        to_imagenet1k(model)


def test_save_model_round_trip(b0_file, tmp_path, capsys):
    import shutil

    from converter.predict import label_space_of

    model = load_model(b0_file, num_classes=3, labels=["cat", "dog", "fox"], drop_rate=0.1)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))  # running statistics move
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    for name in ("ft.safetensors", "ft.pth"):
        path = save_model(model, tmp_path / name)
        back = load_model(path)
        with torch.no_grad():
            assert torch.equal(back(x), want)
        assert back.pretrained_cfg["labels"] == ["cat", "dog", "fox"] and back.pretrained_cfg["num_classes"] == 3
        assert back.training_config() == model.training_config() and back.dropout.p == 0.1
        assert back.pretrained_cfg["mean"] == model.pretrained_cfg["mean"]
        space = label_space_of(back.pretrained_cfg)
        assert space.lemmas(1) == "dog" and not space.imagenet
        again = load_model(path, survival_prob=0.5)  # arguments win over the recorded settings
        assert again.training_config()["survival_prob"] == 0.5 and again.training_config()["drop_rate"] == 0.1
    _images(tmp_path / "img", 1, 3)
    assert main(["predict", str(tmp_path / "img" / "0.jpg"), "--weights", str(tmp_path / "ft.safetensors"),
                 "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert all(re.search(rf"\b{i}  {name}$", printed, re.M) for i, name in enumerate(["cat", "dog", "fox"])), printed
    shutil.rmtree(tmp_path / "img")
    with pytest.raises(ConversionError, match="exists"):
        save_model(model, tmp_path / "ft.safetensors")
    save_model(model, tmp_path / "ft.safetensors", force=True)
    with pytest.raises(ConversionError, match="safetensors"):
        save_model(model, tmp_path / "ft.bin")
    with pytest.raises(ConversionError, match="metadata"):
        save_model(build_model("b0"), tmp_path / "bare.safetensors")
    assert not (tmp_path / "bare.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft.pth", "ft.safetensors"]  # no temp files left


def _readme_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Fine-tuning\n"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("\n```\n")]


def _images(folder: Path, n: int, seed: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def test_readme_fine_tuning_example_runs_as_written(b0_file, tmp_path):
    import shutil

    code = _readme_block()
    assert "load_model(" in code and "save_model(" in code and "preprocess_train(" in code
    shutil.copy(b0_file, tmp_path / "efficientnet-b0_aa.safetensors")
    _images(tmp_path / "flowers" / "daisy", 3, 0)
    _images(tmp_path / "flowers" / "tulip", 3, 1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 2: loss" in proc.stdout and "accuracy on the training images" in proc.stdout
    tuned = load_model(tmp_path / "flowers-b0.safetensors")
    assert tuned.pretrained_cfg["labels"] == ["daisy", "tulip"] and tuned.classifier.out_features == 2


def test_preprocess_train_pipelines(tmp_path):
    from converter.augment import preprocess_train
    from converter.registry import find_checkpoint

    _images(tmp_path / "img", 1, 5)
    image = tmp_path / "img" / "0.jpg"
    for variant, flavor in (("b0", "aa"), ("mixnet-s", None), ("v2-s", "1k"), ("v2-s", "21k-ft1k")):
        cfg = find_checkpoint(variant, flavor).pretrained_cfg()
        res = cfg["input_size"][-1]
        a = preprocess_train(image, cfg, np.random.default_rng(0))
        b = preprocess_train(image, cfg, np.random.default_rng(0))
        c = preprocess_train(image, cfg, np.random.default_rng(1))
        assert a.shape == (3, res, res) and a.dtype == np.float32 and np.isfinite(a).all()
        assert np.array_equal(a, b) and not np.array_equal(a, c)  # seeded, random


_TF_CROPS = r"""
import sys, numpy as np, tensorflow as tf
h, w, n, mode, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
if mode == "tpu":  # tensorflow/tpu efficientnet preprocessing._decode_and_random_crop
    box = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
    kw = dict(min_object_covered=0.1, aspect_ratio_range=(3. / 4, 4. / 3.), area_range=(0.08, 1.0), max_attempts=10)
else:  # google/automl efficientnetv2 preprocessing.preprocess_for_train
    box = tf.zeros([0, 0, 4], tf.float32)
    kw = dict(min_object_covered=0, area_range=(0.05, 1.0))

@tf.function
def crops():
    def one(i):
        b, s, _ = tf.image.sample_distorted_bounding_box([h, w, 3], box, use_image_if_no_bounding_boxes=True, **kw)
        return tf.concat([b[:2], s[:2]], 0)
    return tf.map_fn(one, tf.range(n))

tf.random.set_seed(7)
np.save(out, crops().numpy())
"""


@pytest.mark.parametrize("mode", ["tpu", "v2"])
def test_train_crop_distribution_is_tensorflows(mode, tmp_path):
    from converter.augment import TPU_CROP, V2_CROP, sample_distorted_box

    h, w, n = 300, 200, 1500
    proc = subprocess.run([sys.executable, "-c", _TF_CROPS, str(h), str(w), str(n), mode, str(tmp_path / "tf.npy")],
                          capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = np.load(tmp_path / "tf.npy")
    rng = np.random.default_rng(0)
    ours = np.array([sample_distorted_box(h, w, rng, **(TPU_CROP if mode == "tpu" else V2_CROP)) for _ in range(n)])
    for a in (theirs, ours):
        assert ((a[:, 0] + a[:, 2] <= h) & (a[:, 1] + a[:, 3] <= w)).all()
    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    for stat in (lambda a: a[:, 2] * a[:, 3] / (h * w), lambda a: a[:, 3] / a[:, 2]):
        np.testing.assert_allclose(np.quantile(stat(ours), qs), np.quantile(stat(theirs), qs), atol=0.04, rtol=0.05)
    # where the crops sit: mean offsets within a few pixels
    assert abs(ours[:, 0].mean() - theirs[:, 0].mean()) < 6 and abs(ours[:, 1].mean() - theirs[:, 1].mean()) < 4
