"""Run the OFFICIAL MnasNet / MixNet code on this project's generated checkpoints (evidence, not a test).

Not collected by pytest. Needs the official sources and tf_keras (the official code builds
tf.keras / tf.layers models in TF1 graph mode):

    git -C /work/.mirror/tensorflow+tpu/repo archive 7dc921f models/official/mnasnet models/official/efficientnet | tar x -C /tmp/tpu
    pip install --target /tmp/tfk tf_keras==2.21.0
    python3 tests/data/official_mnasnet.py variables mixnet-s          # official variable list (JSON)
    python3 tests/data/official_mnasnet.py logits OUT.npz              # official logits, see CASES

``variables``: what tests/data/mnasnet_official_variables.json.gz holds (one JSON list per
architecture, written by build_mnasnet_model / mixnet_builder.build_model in a fresh graph).
``logits``: for each case, generate_checkpoint(seed 0, EMA-only, calibrated) into a temporary
folder, build the official model in a fresh graph, restore the EMA variables as the official
eval driver does (mnas_utils.get_ema_vars + ExponentialMovingAverage.variables_to_restore), and
run it on ``synthetic.calibration_images``; tests/test_mnasnet.py regenerates the same
checkpoints and checks the reference and the converted model against these logits.
"""
import json
import os
import sys
import tempfile

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
TPU = os.environ.get("TPU_SOURCES", "/tmp/tpu/models/official")
sys.path[:0] = [os.environ.get("TF_KERAS_PATH", "/tmp/tfk"), f"{TPU}/mnasnet", f"{TPU}/efficientnet"]

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

# the official models are built inside tf.Graph().as_default() (graph mode there; the reference
# and the generator around them run eagerly)
import mnasnet_models  # noqa: E402
from mixnet import mixnet_builder, mixnet_model  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from mnasnet_cases import CASES, N_IMAGES, SEED, UNEVEN_BLOCKS, case_spec  # noqa: E402


def official_logits(spec, images, prefix):
    g = tf.Graph()
    with g.as_default():
        x = tf.placeholder(tf.float32, images.shape)
        if spec.name == "mixnet-uneven":
            blocks = mixnet_builder.MixnetDecoder().decode(list(UNEVEN_BLOCKS))
            gp = mixnet_builder.mixnet_s()[1]._replace(depth_multiplier=None)
            with tf.variable_scope(spec.scope):
                logits = mixnet_model.MixnetModel(blocks, gp)(x, training=False)
        elif spec.family == "mixnet":
            logits, _ = mixnet_builder.build_model(x, spec.model_name, training=False)
        else:
            over = {"depth_multiplier": spec.width} if spec.width != 1.0 else None
            logits, _ = mnasnet_models.build_mnasnet_model(x, spec.model_name, training=False, override_params=over)
        # mnas_utils.get_ema_vars: trainable variables + BN moving statistics, restored from their EMA twins
        ema_vars = tf.trainable_variables() + [v for v in tf.global_variables() if "moving_" in v.name]
        ema = tf.train.ExponentialMovingAverage(decay=0.0)
        saver = tf.train.Saver(ema.variables_to_restore(ema_vars), max_to_keep=1)
        with tf.Session(graph=g) as sess:
            saver.restore(sess, prefix)
            return sess.run(logits, {x: images})


def main(argv):
    if argv[0] == "variables":
        name, size = argv[1], 224
        from converter.registry import get_arch

        spec = get_arch(name)
        g = tf.Graph()
        with g.as_default():
            images = tf.placeholder(tf.float32, [1, size, size, 3])
            if spec.family == "mixnet":
                mixnet_builder.build_model(images, spec.model_name, training=False)
            else:
                over = {"depth_multiplier": spec.width} if spec.width != 1.0 else None
                mnasnet_models.build_mnasnet_model(images, spec.model_name, training=False, override_params=over)
            json.dump([[v.op.name, v.shape.as_list()] for v in tf.global_variables()], sys.stdout)
        return 0
    from converter.synthetic import calibration_images
    from converter.tfref import reference
    from converter.tfref.generate import generate_checkpoint
    from converter.checkpoint import IMAGENET_MEAN, IMAGENET_STD

    out = {}
    for name, res in CASES:
        spec = case_spec(name)
        with tempfile.TemporaryDirectory() as tmp:
            prefix = os.path.join(tmp, "model.ckpt")
            generate_checkpoint(spec, prefix, mode="ema-only", seed=SEED, calibration_resolution=res,
                                calibration_images=N_IMAGES)
            images = calibration_images(res, N_IMAGES, IMAGENET_MEAN, IMAGENET_STD)
            official = official_logits(spec, images, prefix)
            ours = reference.forward(spec, reference.read_checkpoint_getter(prefix), images, device="cpu")
        rel = float(np.linalg.norm(official - ours) / np.linalg.norm(official))
        print(f"{name} @ {res}: official logit std {official.std():.4f}, reference vs official rel {rel:.2e}")
        out[name] = official.astype(np.float32)
    np.savez(argv[1], **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
