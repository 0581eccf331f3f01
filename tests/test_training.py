"""Training as the official code trains: batch norm in train mode, drop-connect, dropout, per family.

The batch-norm check runs TensorFlow in its own process: a generated official-layout checkpoint
goes through one train-mode pass of the TF reference network, each BN computed as the official
layer computes it in training (the non-fused Keras layer of utils.TpuBatchNormalization for
EfficientNet V1/Lite/EdgeTPU/CondConv and V2; TF's fused batch norm for MnasNet/MixNet), its moving
statistics moved as Keras' _assign_moving_average moves them. The converted PyTorch model in
train mode must end with the same running statistics (and the same train-mode logits).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from converter.cli import main
from converter.loading import load_model
from converter.mapping import expand
from converter.registry import find_checkpoint, get_arch

# Official facts, stated here independently of converter/families/*/training.py:
# tensorflow/tpu 7dc921f efficientnet_builder.efficientnet / lite, edgetpu, condconv builders:
#   batch_norm_momentum=0.99, epsilon 1e-3, survival_prob=0.8, utils.TpuBatchNormalization(fused=False);
# google/automl 6a54c87 hparams.base_config: bn_momentum=0.9, bn_epsilon=1e-3, survival_prob=0.8,
#   main.py: bn_type 'tpu_bn' on TPU (fused=False); datasets.ImageNet21k: survival_prob=1.0, dropout 1e-6;
#   datasets.ImagenetFt: survival_prob=0.8, dropout 1e-6;
# tensorflow/tpu 7dc921f mnasnet_models / mixnet_builder: momentum 0.99, eps 1e-3,
#   tf.layers.BatchNormalization(fused=True), no drop-connect.
OFFICIAL = {  # variant: (flavor, TF momentum, fused BN)
    "b0": ("aa", 0.99, False),
    "lite0": (None, 0.99, False),
    "edgetpu-s": (None, 0.99, False),
    "condconv-b0-4e": (None, 0.99, False),
    "v2-b0": ("1k", 0.9, False),
    "mnasnet-a1": (None, 0.99, True),
    "mixnet-s": (None, 0.99, True),
}
RES, N_IMAGES = 64, 4
TOL = 2e-5  # relative, running statistics vs TF's

_TF_TRAIN_STEP = r"""
import json, sys
import numpy as np
from converter.registry import get_arch
from converter.tfref import reference
from converter.tfref.generate import generate_checkpoint
from converter.tfref.ops import tf

variant, prefix, images_path, out_path = sys.argv[1:5]
momentum, fused = float(sys.argv[5]), sys.argv[6] == "1"
spec = get_arch(variant)
images = np.load(images_path)
generate_checkpoint(spec, prefix, mode="ema-only", calibration_resolution=images.shape[1],
                    calibration_images=images.shape[0])
t = tf()
weights = reference.load_weights(spec, reference.read_checkpoint_getter(prefix), "cpu")
eps = spec.bn_eps
stats = {}

def bn(p, x):
    gamma, beta = weights(p + "/gamma"), weights(p + "/beta")
    moving_mean = t.Variable(weights(p + "/moving_mean"))
    moving_var = t.Variable(weights(p + "/moving_variance"))
    if fused:  # tf.layers.BatchNormalization(fused=True) in training: the fused op's batch statistics
        y, mean, var = t.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=eps, is_training=True)
    else:  # the non-fused layer (utils.TpuBatchNormalization, one shard): tf.nn.moments
        mean, var = t.nn.moments(x, [0, 1, 2])
        y = t.nn.batch_normalization(x, mean, var, beta, gamma, eps)
    decay = t.convert_to_tensor(1.0 - momentum, dtype=t.float32)  # Keras _assign_moving_average
    # what the other layer would have made of the same batch (a wrong variance rule): the test's yardstick
    other = (t.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=eps, is_training=True)[2] if not fused
             else t.nn.moments(x, [0, 1, 2])[1])
    stats["other/" + p + "/moving_variance"] = (moving_var - (moving_var - other) * decay).numpy()
    moving_mean.assign_sub((moving_mean - mean) * decay)
    moving_var.assign_sub((moving_var - var) * decay)
    stats[p + "/moving_mean"] = moving_mean.numpy()
    stats[p + "/moving_variance"] = moving_var.numpy()
    return y

with t.device("/CPU:0"):
    logits = reference._walk(spec, weights, t.constant(images), bn).numpy()
np.savez(out_path, __logits__=logits, **stats)
"""


def _tf_train_step(variant: str, tmp_path, momentum: float, fused: bool):
    """(checkpoint prefix, images NHWC, {official BN variable: moved statistic}, {moving variance: moved by
    the other variance rule}, TF train-mode logits)."""
    from converter.synthetic import calibration_images

    spec = get_arch(variant)
    images = np.asarray(calibration_images(RES, N_IMAGES, *_norm(spec)), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    prefix = tmp_path / "ckpt" / "model.ckpt"
    prefix.parent.mkdir()
    proc = subprocess.run([sys.executable, "-c", _TF_TRAIN_STEP, variant, str(prefix), str(tmp_path / "images.npy"),
                           str(tmp_path / "tf.npz"), repr(momentum), "1" if fused else "0"],
                          capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "tf.npz") as z:
        stats = {k: z[k] for k in z.files if not k.startswith(("__", "other/"))}
        other = {k[len("other/"):]: z[k] for k in z.files if k.startswith("other/")}
        logits = z["__logits__"]
    return prefix, images, stats, other, logits


def _norm(spec):
    """The normalization of the generator's calibration images for ``spec`` (its family's)."""
    from converter.registry import family_of
    from converter.checkpoint import IMAGENET_MEAN, IMAGENET_STD

    return family_of(spec).synthetic_norm.get(spec.family, (IMAGENET_MEAN, IMAGENET_STD))


def _convert(variant: str, flavor, prefix, out):
    args = ["--variant", variant, "--checkpoint", str(prefix), "--output-dir", str(out), "--quiet"]
    if flavor:
        args += ["--flavor", flavor]
    assert main(args) == 0
    return out / f"{find_checkpoint(variant, flavor).name}.safetensors"


def _running_stats(model, variant):
    """{official BN variable: the model's running statistic} by the mapping table."""
    sd = model.state_dict()
    return {e.tf_name: sd[e.key].numpy() for e in expand(variant)
            if e.key.endswith(("running_mean", "running_var"))}


@pytest.mark.parametrize("variant", sorted(OFFICIAL))
def test_bn_train_step_equals_official_moving_averages(variant, tmp_path):
    flavor, momentum, fused = OFFICIAL[variant]
    prefix, images, tf_stats, other, tf_logits = _tf_train_step(variant, tmp_path, momentum, fused)
    path = _convert(variant, flavor, prefix, tmp_path / "out")
    model = load_model(path, survival_prob=1.0, drop_rate=0.0)  # drop-connect and dropout off: deterministic
    model.train()
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
    after = _running_stats(model, variant)
    assert sorted(after) == sorted(tf_stats)

    def rel(a, b):
        return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))

    worst = max(rel(after[name], want) for name, want in tf_stats.items())
    assert worst < TOL, f"{variant}: running statistics differ from TF's by {worst:.3g} (relative)"
    # the tolerance tells the two variance rules apart: the other rule is farther off than TOL
    apart = max(rel(other[name], tf_stats[name]) for name in other)
    assert apart > 10 * TOL, f"{variant}: the variance rules differ by {apart:.3g} only"
    # the train-mode output (batch statistics everywhere) is TF's too
    scale = np.abs(tf_logits).max()
    assert np.abs(logits - tf_logits).max() / scale < 1e-3  # float32 through batch statistics of 16 values
    print(f"{variant}: running statistics vs TF {worst:.2e}, other variance rule {apart:.2e}, "
          f"train-mode logits {np.abs(logits - tf_logits).max() / scale:.2e} (relative)")
