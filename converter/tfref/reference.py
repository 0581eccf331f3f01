"""TensorFlow reference forward pass of the official EfficientNet, reading official variable names.

This mirrors tensorflow/tpu models/official/efficientnet/efficientnet_model.py in eval mode
(``training=False``: BN uses its moving statistics, no dropout, no drop-connect), computing with
plain TensorFlow ops on NHWC float32 tensors. It does not use Keras layers nor anything of the
PyTorch side: the variables are read one by one, by their official names, through a
``get(name) -> np.ndarray`` callable (a dict's ``__getitem__``, or ``read_checkpoint_getter``).

TensorFlow is imported lazily so that the CLI can hide the GPUs (``--device cpu``) before it
loads. Command line (run as a subprocess by the rest of the project)::

    python -m converter.tfref.reference --checkpoint PREFIX --variant b0 \\
        --images IN.npz --out OUT.npz [--no-ema] [--num-classes N] \\
        [--device cpu|cuda|auto] [--batch-size N] [--dtype float32|float64] [--float64] \\
        [--fused-stride expand|project]

IN.npz holds ``images`` (normalized NHWC float32); OUT.npz gets ``logits`` (float32, or float64
with ``--dtype float64``: the same graph without float32 rounding, to measure the noise floor),
``seconds`` (the forward passes only, weights already loaded) and ``device``; with ``--float64``
also ``logits64`` and ``seconds64``: the same images through the same graph in float64 (weights
and images cast up exactly), what verification's verdict compares (converter/verify/).
Errors in the user's input print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..arch import FUSED_STRIDE_DEFAULT, FUSED_STRIDES, ArchSpec, Block
from ..errors import ConversionError, first_line
from ..family import DROPPED, HEAD_1X1, LAST_BLOCK, LOGITS, POOLED
from ..registry import family_of, get_arch, kind_of, variants_help
from .ops import BlockRef, ModelNames, activation, bn_inference, bn_variables, conv, tf

Getter = Callable[[str], np.ndarray]
Trace = Callable[[str, np.ndarray], None]

EMA_SUFFIX = "ExponentialMovingAverage"  # tf.train.ExponentialMovingAverage slot name
DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes of activations per batch used to pick the batch size
MAX_AUTO_BATCH = 64
_tf = tf  # (the generator writes checkpoints with the same TensorFlow)


# --------------------------------------------------------------------------- names


def block_ref(b: Block) -> BlockRef:
    """The TF reference of ``b``'s kind (its family declares it)."""
    return kind_of(b).reference()


def model_names(spec: ArchSpec) -> ModelNames:
    """The official names of ``spec``'s stem, head and classifier (its family's)."""
    return family_of(spec).reference().names(spec)


def block_names(spec: ArchSpec, block: Block):
    """Official name prefixes of ``block`` in ``spec`` (``bn0``, ``bn1``, ``bn2``...)."""
    return block_ref(block).names(spec, block)


def kernel_shapes(spec: ArchSpec) -> Dict[str, Tuple[int, ...]]:
    """{routed (CondConv) kernel variable: its per-example kernel shape (kh, kw, in, out)}."""
    return family_of(spec).reference().kernel_shapes(spec)


def variables(spec: ArchSpec) -> List[Tuple[str, Tuple[int, ...]]]:
    """The model's variables ``[(official name, TF shape)]`` in the official creation order.

    CondConv kernels appear in the tf_keras form of the names (``scope/model/blocks_N/...``).
    """
    m = model_names(spec)
    out = [(f"{m.stem}/kernel", (3, 3, 3, spec.stem_channels))] + bn_variables(m.stem_bn, spec.stem_channels)
    blocks = spec.blocks()
    for b in blocks:
        ref = block_ref(b)
        out += ref.block_variables(spec, b, ref.names(spec, b))
    head = spec.head_channels
    out.append((f"{m.head}/kernel", (1, 1, blocks[-1].out_channels, head)))
    out += bn_variables(m.head_bn, head)
    return out + [(f"{m.dense}/kernel", (head, spec.num_classes)), (f"{m.dense}/bias", (spec.num_classes,))]


def aliases(spec: ArchSpec, available: Iterable[str]) -> Dict[str, str]:
    """{name in ``variables(spec)``: the checkpoint's own name} where names carry Keras counters."""
    return family_of(spec).reference().aliases(spec, [n for n, _ in variables(spec)], available)


def bn_layers(spec: ArchSpec) -> List[str]:
    """Name prefixes of every batch norm, in the order the forward pass meets them."""
    m = model_names(spec)
    out = [m.stem_bn]
    for b in spec.blocks():
        n = block_names(spec, b)
        out.extend(x for x in (n.bn0, n.bn1, n.bn2) if x)
    return out + [m.head_bn]


def is_moving_stat(name: str) -> bool:
    """True for BN ``moving_mean`` / ``moving_variance`` (non-trainable) variables."""
    return name.endswith("/moving_mean") or name.endswith("/moving_variance")


# --------------------------------------------------------------------------- weights


class CheckpointGetter:
    """``get(name)`` over a TensorFlow checkpoint, preferring ``NAME/ExponentialMovingAverage``.

    With ``use_ema`` every variable, BN moving statistics included, is read from its EMA twin
    when the checkpoint has one (as the official eval driver restores them), else from NAME.
    Without ``use_ema`` only NAME is read.
    """

    def __init__(self, prefix: str, use_ema: bool = True):
        tf = _tf()
        try:
            self.reader = tf.train.load_checkpoint(str(prefix))
        except (tf.errors.OpError, ValueError) as e:
            raise ConversionError(f"cannot read TensorFlow checkpoint {prefix!r}: {first_line(e)}") from None
        self.prefix = str(prefix)
        self.use_ema = use_ema
        self.shapes: Dict[str, List[int]] = self.reader.get_variable_to_shape_map()

    def key(self, name: str) -> str:
        """The checkpoint key that ``get(name)`` reads."""
        if self.use_ema and f"{name}/{EMA_SUFFIX}" in self.shapes:
            return f"{name}/{EMA_SUFFIX}"
        if name in self.shapes:
            return name
        scopes = sorted({k.split("/", 1)[0] for k in self.shapes if "/" in k})
        if not self.use_ema and f"{name}/{EMA_SUFFIX}" in self.shapes:
            raise ConversionError(
                f"checkpoint {self.prefix!r} has no raw variable {name!r}, only its EMA twin "
                f"(an EMA-only release): read it with EMA (drop --no-ema)")
        what = f"{name!r} nor {name + '/' + EMA_SUFFIX!r}" if self.use_ema else repr(name)
        raise ConversionError(
            f"checkpoint {self.prefix!r} has no variable {what}; its top-level scopes are "
            f"{', '.join(scopes) or '(none)'}: wrong variant?")

    def has(self, name: str) -> bool:
        """Whether ``get(name)`` would find something."""
        return (self.use_ema and f"{name}/{EMA_SUFFIX}" in self.shapes) or name in self.shapes

    def shape(self, name: str) -> Tuple[int, ...]:
        """Shape of what ``get(name)`` would return, without reading the data."""
        return tuple(self.shapes[self.key(name)])

    def __call__(self, name: str) -> np.ndarray:
        return self.reader.get_tensor(self.key(name))


def read_checkpoint_getter(prefix: str, use_ema: bool = True) -> CheckpointGetter:
    """A ``get(name)`` reading a checkpoint with tf.train.load_checkpoint (EMA twins first)."""
    return CheckpointGetter(prefix, use_ema=use_ema)


def _fetch(get: Getter, name: str, shape: Tuple[int, ...]) -> np.ndarray:
    try:
        value = get(name)
    except KeyError:
        raise ConversionError(f"no value for variable {name!r}") from None
    arr = np.asarray(value)
    if tuple(arr.shape) != tuple(shape):
        raise ConversionError(
            f"variable {name!r} has shape {list(arr.shape)}, expected {list(shape)}: "
            f"wrong variant or number of classes?")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConversionError(f"variable {name!r} has dtype {arr.dtype}, expected a float type")
    return arr.astype(np.float32, copy=False)


class LoadedWeights:
    """All variables of one model as TensorFlow tensors on one device (see ``load_weights``)."""

    def __init__(self, spec: ArchSpec, tensors: Dict[str, object], device: str, dtype=np.float32):
        self.spec = spec
        self.tensors = tensors
        self.device = device
        self.dtype = np.dtype(dtype)

    def __call__(self, name: str):
        return self.tensors[name]


def _device_name(device: Optional[str]) -> str:
    tf = _tf()
    if device in (None, "auto"):
        return "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"
    if device == "cpu":
        return "/CPU:0"
    if device in ("cuda", "gpu"):
        if not tf.config.list_logical_devices("GPU"):
            raise ConversionError("device 'cuda' asked for, but TensorFlow sees no GPU")
        return "/GPU:0"
    return device


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ConversionError(f"dtype must be float32 or float64, got {dt}")
    return dt


def load_weights(spec: ArchSpec, get: Getter, device: Optional[str] = None,
                 dtype=np.float32) -> LoadedWeights:
    """Read and shape-check every variable of ``spec`` through ``get`` and place it on ``device``.

    ``dtype``: float32 (the reference) or float64 (to separate float32 rounding from real
    differences in tests).
    """
    tf = _tf()
    dt = _check_dtype(dtype)
    dev = _device_name(device)
    tensors: Dict[str, object] = {}
    # a checkpoint's own names where they carry Keras counters (CondConv kernels, MnasNet layers)
    own = aliases(spec, get.shapes) if isinstance(getattr(get, "shapes", None), dict) else {}
    with tf.device(dev):
        for name, shape in variables(spec):
            value = _fetch(get, own.get(name, name), shape)
            tensors[name] = tf.identity(tf.convert_to_tensor(value.astype(dt, copy=False)))
    return LoadedWeights(spec, tensors, dev, dt)


# --------------------------------------------------------------------------- forward


def _walk(spec: ArchSpec, w: Callable[[str], object], x, bn: Callable[[str, object], object],
          trace: Optional[Trace] = None, endpoints: Optional[Callable[[str, object], None]] = None):
    """One eval-mode pass (efficientnet_model.Model.call and its families'); ``w(name)`` gives a
    variable, ``bn(prefix, x)`` applies one BN; every block by its kind's reference.
    ``endpoints(key, tensor)``, if given, receives the official ``model.endpoints`` in their order."""
    t = tf()
    s = spec.scope
    m = model_names(spec)
    act = activation(spec.activation)

    def emit(name: str, v) -> None:
        if trace is not None:
            trace(name, v.numpy())

    def endpoint(name: str, v) -> None:
        if endpoints is not None:
            endpoints(name, v)

    x = act(bn(m.stem_bn, conv(x, w(f"{m.stem}/kernel"), 2)))
    emit(f"{s}/stem", x)
    endpoint("stem", x)
    blocks = spec.blocks()
    reduction_idx = 0
    for idx, b in enumerate(blocks):
        # Model.call (tensorflow/tpu 7dc921f; EffNetV2Model, MnasNetModel, MixnetModel alike): the last
        # block and each block before a strided one are reduction points, counted from 1
        is_reduction = idx == len(blocks) - 1 or blocks[idx + 1].stride > 1
        reduction_idx += is_reduction
        ref = block_ref(b)
        inputs = x
        own: Dict[str, object] = {}
        x = ref.run(b, ref.names(spec, b), x, w, bn, act, endpoint=own.__setitem__)
        if b.residual:
            x = x + inputs
        emit(f"{s}/blocks_{b.index}", x)
        keys = [f"block_{idx}"] + ([f"reduction_{reduction_idx}"] if is_reduction else [])
        for key in keys:
            endpoint(key, x)
        for name, v in own.items():  # the block's own endpoints
            for key in keys:
                endpoint(f"{key}/{name}", v)
    head = {LAST_BLOCK: x}
    x = head[HEAD_1X1] = act(bn(m.head_bn, conv(x, w(f"{m.head}/kernel"), 1)))
    if spec.local_pooling:
        # efficientnet_model.Model.call with local_pooling: avg_pool over the whole map, squeeze
        x = t.nn.avg_pool(x, ksize=[1, int(x.shape[1]), int(x.shape[2]), 1], strides=[1, 1, 1, 1],
                          padding="VALID")
        head[POOLED] = head[DROPPED] = x  # dropout: identity in eval
        x = t.squeeze(x, [1, 2])
    else:
        x = head[POOLED] = head[DROPPED] = t.reduce_mean(x, [1, 2])  # GlobalAveragePooling2D
    emit(f"{s}/head/pooled", x)
    logits = head[LOGITS] = t.matmul(x, w(f"{m.dense}/kernel")) + w(f"{m.dense}/bias")
    for name, what in family_of(spec).reference().head_endpoints:
        endpoint(name, head[what])
    return logits


def _check_images(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ConversionError(f"images must be NHWC with 3 channels, got shape {list(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] < 1:
        raise ConversionError(f"images must not be empty, got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ConversionError(f"images must be normalized floats, got dtype {x.dtype} (apply mean/std first)")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ConversionError("images contain NaN or infinite values")
    return x


def auto_batch_size(spec: ArchSpec, height: int, width: int,
                    budget_bytes: int = DEFAULT_MEMORY_BUDGET, itemsize: int = 4) -> int:
    """Images per batch so that the largest live activations of one block fit ``budget_bytes``
    (``itemsize``: bytes per value, 8 in float64)."""
    def down(n: int, s: int) -> int:
        return -(-n // s)

    h, w = down(height, 2), down(width, 2)
    peak = 3 * height * width + 2 * spec.stem_channels * h * w
    for b in spec.blocks():
        ho, wo = down(h, b.stride), down(w, b.stride)
        live = b.in_channels * h * w + 2 * b.mid_channels * h * w + 2 * b.mid_channels * ho * wo
        peak = max(peak, live)
        h, w = ho, wo
    peak = max(peak, 3 * spec.head_channels * h * w)
    return int(max(1, min(MAX_AUTO_BATCH, budget_bytes // (int(itemsize) * peak))))


def forward(spec: ArchSpec, get, images_nhwc: np.ndarray, batch_size: Optional[int] = None,
            device: Optional[str] = None, trace: Optional[Trace] = None, dtype=np.float32) -> np.ndarray:
    """Eval-mode logits [N, num_classes] of normalized NHWC ``images_nhwc``.

    ``get``: ``get(name) -> np.ndarray`` by official name, or a ``LoadedWeights``.
    ``batch_size``: images per pass (default: ``auto_batch_size``). ``device``: "cpu", "cuda",
    "auto" (default) or a TF device string. ``trace(name, array)``, if given, receives every
    BN's input (under the BN's name prefix), the stem and block outputs (``scope/stem``,
    ``scope/blocks_N``) and the pooled features (``scope/head/pooled``), batch by batch.
    ``dtype``: float32 (the reference computation) or float64 (tests only); with
    ``LoadedWeights`` the weights' dtype wins.
    """
    tf = _tf()
    images = _check_images(images_nhwc)
    weights = get if isinstance(get, LoadedWeights) else load_weights(spec, get, device, dtype)
    images = images.astype(weights.dtype, copy=False)
    if batch_size is None:
        batch_size = auto_batch_size(spec, images.shape[1], images.shape[2], itemsize=weights.dtype.itemsize)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ConversionError(f"batch size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    eps = spec.bn_eps

    def bn(prefix: str, x):
        if trace is not None:
            trace(prefix, x.numpy())
        return bn_inference(x, weights(f"{prefix}/gamma"), weights(f"{prefix}/beta"),
                             weights(f"{prefix}/moving_mean"), weights(f"{prefix}/moving_variance"), eps)

    out = []
    with tf.device(weights.device):
        for i in range(0, images.shape[0], batch_size):
            x = tf.identity(tf.convert_to_tensor(images[i:i + batch_size]))
            out.append(_walk(spec, weights, x, bn, trace).numpy())
    return np.concatenate(out, axis=0).astype(weights.dtype, copy=False)


def calibrate_with_logits(spec: ArchSpec, get: Getter, images_nhwc: np.ndarray,
                          device: Optional[str] = None) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """``calibrate`` that also returns the logits of the calibrated pass."""
    tf = _tf()
    images = _check_images(images_nhwc)
    dev = _device_name(device)
    shapes = dict(variables(spec))
    eps = spec.bn_eps
    stats: Dict[str, np.ndarray] = {}

    def w(name: str):
        # converted on use and dropped after: no second copy of a large model's weights
        return tf.identity(tf.convert_to_tensor(_fetch(get, name, shapes[name])))

    def bn(prefix: str, x):
        mean, var = tf.nn.moments(x, axes=[0, 1, 2])  # biased variance over N, H, W
        stats[f"{prefix}/moving_mean"] = mean.numpy().astype(np.float32)
        stats[f"{prefix}/moving_variance"] = var.numpy().astype(np.float32)
        return bn_inference(x, w(f"{prefix}/gamma"), w(f"{prefix}/beta"), mean, var, eps)

    with tf.device(dev):
        x = tf.identity(tf.convert_to_tensor(images))
        logits = _walk(spec, w, x, bn).numpy()
    return stats, logits


def calibrate(spec: ArchSpec, get: Getter, images_nhwc: np.ndarray,
              device: Optional[str] = None) -> Dict[str, np.ndarray]:
    """BN moving statistics calibrated on ``images_nhwc`` (all images in one batch).

    Walks the network in order; at every BN the moving mean / variance become the batch mean
    and biased variance (over N, H, W) of that BN's own input, which is then normalized with
    them. Returns ``{".../moving_mean": ..., ".../moving_variance": ...}`` for every BN
    (float32). Only the trainable variables are read through ``get``.
    """
    return calibrate_with_logits(spec, get, images_nhwc, device)[0]


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m converter.tfref.reference",
        description="TensorFlow reference logits of an official-layout EfficientNet checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint prefix (DIR/model.ckpt) or folder")
    p.add_argument("--variant", required=True, help=variants_help())
    p.add_argument("--images", required=True, help=".npz with key 'images' (normalized NHWC float32)")
    p.add_argument("--out", required=True, help=".npz to write: logits, seconds, device")
    p.add_argument("--no-ema", action="store_true", help="read raw variables, not the EMA twins")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of the head (default: from the dense kernel's shape)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="images per pass (default: auto)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float32: the reference; float64: the same graph without float32 rounding")
    p.add_argument("--float64", action="store_true",
                   help="also the float64 logits of the same graph (logits64, seconds64), after the float32 ones")
    p.add_argument("--fused-stride", choices=FUSED_STRIDES, default=FUSED_STRIDE_DEFAULT,
                   help="EdgeTPU fused blocks: the stride on the kxk expand conv (default; tensorflow/tpu since "
                        "32572cb, 2020-12-27) or on the 1x1 project conv (the 2019 code, 631fb4c)")
    return p


def _load_images(path: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise ConversionError(f"{path}: no key 'images' (keys: {', '.join(data.files) or 'none'})")
            return _check_images(data["images"])
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read images from {path!r}: {first_line(e)}") from None


def _run_cli(args: argparse.Namespace, after: Optional[Callable] = None) -> int:
    tf = _tf()
    gpus = tf.config.list_physical_devices("GPU")
    if args.device == "cuda" and not gpus:
        raise ConversionError("--device cuda: TensorFlow sees no GPU (or was built without CUDA)")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    device = "/GPU:0" if gpus and args.device != "cpu" else "/CPU:0"
    if args.batch_size is not None and args.batch_size < 1:
        raise ConversionError(f"--batch-size must be >= 1, got {args.batch_size}")

    spec = get_arch(args.variant).with_fused_stride(args.fused_stride)
    images = _load_images(args.images)
    get = read_checkpoint_getter(args.checkpoint, use_ema=not args.no_ema)
    dense_name = f"{model_names(spec).dense}/kernel"
    dense = get.shape(aliases(spec, get.shapes).get(dense_name, dense_name))
    if len(dense) != 2:
        raise ConversionError(f"head/dense/kernel has shape {list(dense)}, expected [in, classes]")
    if args.num_classes is not None and args.num_classes != dense[1]:
        raise ConversionError(
            f"--num-classes {args.num_classes} but the checkpoint's dense kernel has {dense[1]} classes")
    spec = spec.with_classes(int(dense[1]))
    weights = load_weights(spec, get, device, dtype=np.dtype(args.dtype))
    if after is not None:  # converter/tfref/taps.py (verify --trace): the intermediate tensors too
        after(spec, get, weights, images, device)
    t0 = time.perf_counter()
    logits = forward(spec, weights, images, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    extra = {}
    if args.float64:  # the float32 weights go first: one copy of the model at a time
        del weights
        weights = load_weights(spec, get, device, dtype=np.float64)
        t0 = time.perf_counter()
        extra["logits64"] = forward(spec, weights, images, batch_size=args.batch_size)
        extra["seconds64"] = np.float64(time.perf_counter() - t0)
    del get, weights
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise ConversionError(f"output folder {out_dir!r} does not exist")
    with open(args.out, "wb") as f:  # exactly this path (np.savez would append .npz)
        np.savez(f, logits=logits, seconds=np.float64(seconds), device=np.array(device), **extra)
    return 0


def main(argv: Optional[Sequence[str]] = None, after: Optional[Callable] = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad input). ``after(spec, get, weights, images,
    device)``: run once the weights are loaded (converter/tfref/taps.py's entry point)."""
    args = _parser().parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # before TensorFlow is imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return _run_cli(args, after)
    except ConversionError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # TensorFlow errors caused by the input (corrupt files, bad shapes)
        tf = sys.modules.get("tensorflow")
        if tf is not None and isinstance(e, tf.errors.OpError):
            print(f"error: TensorFlow: {first_line(e)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
