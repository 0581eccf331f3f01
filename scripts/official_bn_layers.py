"""Which batch variance the official batch-norm layers move their moving variance with (a fact check).

Builds the layers as the official TF1 code builds them, in graph mode with tf.compat.v1.layers
(needs the ``tf-keras`` package beside TensorFlow; TF_USE_LEGACY_KERAS=1 is set here):
tensorflow/tpu 7dc921f efficientnet utils.TpuBatchNormalization is tf.layers.BatchNormalization
with ``fused=False`` (EfficientNet, Lite, EdgeTPU, CondConv; google/automl efficientnetv2's
``tpu_bn`` the same in Keras), mnasnet_model / mixnet_model use ``fused=True``. One training step
on a random batch; prints which rule each follows (measured: non-fused -> biased, fused ->
unbiased), the rules converter/families/*/training.py declare (``Training.bessel``).

    python scripts/official_bn_layers.py
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402


def main() -> int:
    tf.disable_eager_execution()
    x = (np.random.default_rng(0).normal(size=(2, 3, 3, 4)) * 2 + 1).astype(np.float32)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    batch_var = x.var((0, 1, 2))
    for fused in (False, True):
        with tf.Graph().as_default():
            bn = tf.layers.BatchNormalization(momentum=0.99, epsilon=1e-3, fused=fused)
            y = bn(tf.constant(x), training=True)
            with tf.Session() as s:
                s.run(tf.global_variables_initializer())
                s.run([y] + tf.get_collection(tf.GraphKeys.UPDATE_OPS))
                moved = s.run(bn.moving_variance)
        rule = ("biased" if np.allclose(moved, 0.99 + 0.01 * batch_var, rtol=1e-6) else
                "unbiased" if np.allclose(moved, 0.99 + 0.01 * batch_var * n / (n - 1), rtol=1e-6) else "neither")
        print(f"tf.layers.BatchNormalization(fused={fused}): moving variance takes the {rule} batch variance")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
