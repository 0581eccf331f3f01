"""The way back, TensorFlow's half: official checkpoint, SavedModel and TFLite of converted weights.

Run by ``convert-effnet export`` (converter/export.py) in its own process (TensorFlow must not share
one with torchvision), on a job file it wrote::

    python -m converter.tfref.export JOB.json

It does what tensorflow/tpu models/official/efficientnet/export_model.py (7dc921f) does, on the
family's graph as the TF reference builds it by official names (converter.tfref.reference):

1. writes the official checkpoint (tfref.generate.write_official_checkpoint: every variable and its
   ``ExponentialMovingAverage`` twin, ``global_step``);
2. builds the graph in TF1 style on a float placeholder ``images`` of shape [1, H, W, 3] (the
   normalized image), ``logits`` = tf.identity of the classifier, output ``tf.nn.softmax(logits)``,
   and restores it from that checkpoint as ``restore_model`` does: ``ExponentialMovingAverage(0)
   .variables_to_restore`` of the trainable variables and the BN moving statistics, ``tf.train.Saver``;
3. SavedModel: ``tf.compat.v1.saved_model.Builder``, tag ``serve``, signature ``serving_default``
   ``predict_signature_def({"input": images}, {"output": softmax})``;
4. TFLite: ``TFLiteConverter.from_session(sess, [images], [output])``, float; int8: the same with
   ``representative_dataset`` (the calibration images, one per step), ``Optimize.DEFAULT``,
   ``TFLITE_BUILTINS_INT8``, uint8 input and output.

Every output is loaded back (the checkpoint by the restore above, the SavedModel with
``tf.saved_model.load``, the TFLite files with ``tf.lite.Interpreter``) and run on the job's check
images; the results go to the job's ``out`` .npz, judged by the caller against PyTorch. Progress lines
on stderr start with ``progress:``; an error is one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import ConversionError, first_line
from ..registry import get_arch
from . import generate, reference
from .ops import bn_inference, tf

INPUT_NAME, LOGITS_NAME = "images", "logits"  # export_model.py's placeholder; efficientnet_builder's identity
SIGNATURE, SERVE = "serving_default", "serve"
SIDECAR = "effnet-convert.json"  # the preprocessing and the model's facts, beside each output


def progress(msg: str) -> None:
    print(f"progress: {msg}", file=sys.stderr, flush=True)


def build_graph(spec, resolution: int):
    """(graph, images placeholder, logits, softmax output) of ``spec`` with one variable per official
    name (trainable but the BN moving statistics), as the official builders create them."""
    t = tf()
    v1 = t.compat.v1
    graph = t.Graph()
    with graph.as_default():
        images = v1.placeholder(t.float32, shape=(1, resolution, resolution, 3), name=INPUT_NAME)
        variables = {name: v1.get_variable(name, shape, t.float32, initializer=v1.zeros_initializer(),
                                           trainable=not reference.is_moving_stat(name))
                     for name, shape in reference.variables(spec)}
        eps = spec.bn_eps

        def bn(prefix: str, x):
            return bn_inference(x, variables[f"{prefix}/gamma"], variables[f"{prefix}/beta"],
                                variables[f"{prefix}/moving_mean"], variables[f"{prefix}/moving_variance"], eps)

        logits = t.identity(reference._walk(spec, variables.__getitem__, images, bn), name=LOGITS_NAME)
        output = t.nn.softmax(logits)
    return graph, images, logits, output


def restore_ema(sess, ckpt_dir: str) -> None:
    """export_model.restore_model with enable_ema: every trainable variable and BN moving statistic
    from its ``ExponentialMovingAverage`` twin in ``tf.train.latest_checkpoint(ckpt_dir)``."""
    v1 = tf().compat.v1
    sess.run(v1.global_variables_initializer())
    checkpoint = v1.train.latest_checkpoint(ckpt_dir)
    if checkpoint is None:
        raise ConversionError(f"no checkpoint in {ckpt_dir}")
    ema = v1.train.ExponentialMovingAverage(decay=0.0)
    ema_vars = v1.trainable_variables() + v1.get_collection("moving_vars")
    for v in v1.global_variables():
        if "moving_mean" in v.name or "moving_variance" in v.name:
            ema_vars.append(v)
    var_dict = ema.variables_to_restore(list(set(ema_vars)))
    v1.train.Saver(var_dict, max_to_keep=1).restore(sess, checkpoint)


def _one_by_one(run, images: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(run(images[i:i + 1])) for i in range(images.shape[0])])


def _tflite_run(content: bytes, images: np.ndarray) -> np.ndarray:
    """The TFLite model's float outputs on ``images`` (quantized in and dequantized out where it is uint8)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interp = tf().lite.Interpreter(model_content=content)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for i in range(images.shape[0]):
        x = images[i:i + 1]
        if inp["dtype"] == np.uint8:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale + zero), 0, 255).astype(np.uint8)
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out["dtype"] == np.uint8:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        results.append(np.asarray(y, dtype=np.float32))
    return np.concatenate(results)


def _io(content: bytes) -> Dict[str, object]:
    """Input and output of a TFLite model: dtype, shape, quantization (scale, zero point)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interp = tf().lite.Interpreter(model_content=content)
    d = {}
    for what, det in (("input", interp.get_input_details()[0]), ("output", interp.get_output_details()[0])):
        scale, zero = det["quantization"]
        d[what] = {"dtype": np.dtype(det["dtype"]).name, "shape": [int(s) for s in det["shape"]]}
        if det["dtype"] == np.uint8:
            d[what]["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
    return d


def _with_io(sidecar: Dict[str, object], fmt: str, io: Dict[str, object]) -> Dict[str, object]:
    """The sidecar of a TFLite file: its input/output facts merged into the model's."""
    doc = dict(sidecar, format=fmt)
    for what in ("input", "output"):
        doc[what] = dict(sidecar.get(what, {}), **io[what])
    if "quantization" in doc["input"]:
        doc["input"]["quantized"] = "q = round(x_norm / scale + zero_point), clipped to 0..255; x_norm as normalization says"
    if "quantization" in doc["output"]:
        doc["output"]["dequantized"] = "p = (q - zero_point) * scale"
    return doc


def _write_json(path: str, doc: Dict[str, object]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=2) + "\n")


def run(job: Dict[str, object]) -> None:
    """Do ``job`` (see the module docstring; the keys are written by converter/export.py)."""
    t = tf()
    v1 = t.compat.v1
    t.get_logger().setLevel("ERROR")
    spec = get_arch(job["variant"]).with_fused_stride(job.get("fused_stride")).with_classes(int(job["num_classes"]))
    res = int(job["resolution"])
    sidecar = dict(job["sidecar"])
    results: Dict[str, np.ndarray] = {}
    with np.load(job["images"]) as z:
        images = z["images"].astype(np.float32)
    scratch = None
    ckpt_dir = job.get("tf_checkpoint")
    if not ckpt_dir:  # restored from a checkpoint all the same, the official way
        scratch = tempfile.TemporaryDirectory(prefix="effnet-export-")
        ckpt_dir = scratch.name
    try:
        with np.load(job["variables"]) as z:
            values = {n: z[n] for n in z.files}
        t0 = time.perf_counter()
        progress(f"writing the TensorFlow checkpoint ({len(values)} variables, each with its "
                 "ExponentialMovingAverage twin, and global_step)")
        n = generate.write_official_checkpoint(os.path.join(ckpt_dir, "model.ckpt"), spec, values,
                                               int(job.get("global_step", 0)))
        del values
        results["checkpoint_tensors"] = np.int64(n)
        if job.get("tf_checkpoint"):
            _write_json(os.path.join(ckpt_dir, SIDECAR), dict(sidecar, format="tf-checkpoint"))
        progress(f"building the official graph at {res}x{res} and restoring the checkpoint with EMA")
        graph, inp, logits, output = build_graph(spec, res)
        config = v1.ConfigProto(device_count={"GPU": 0})
        with graph.as_default(), v1.Session(graph=graph, config=config) as sess:
            restore_ema(sess, ckpt_dir)
            results["logits_checkpoint"] = _one_by_one(lambda x: sess.run(logits, {inp: x}), images)
            if job.get("saved_model"):
                progress("writing the SavedModel (serve, serving_default: input -> output)")
                _saved_model(sess, inp, output, job["saved_model"], dict(sidecar, format="saved-model"))
            tflite = _convert(sess, inp, output, None) if job.get("tflite") else None
            int8 = None
            if job.get("tflite_int8"):
                with np.load(job["calibration"]) as z:
                    calibration = z["images"].astype(np.float32)
                progress(f"TFLite full-integer quantization ({calibration.shape[0]} calibration images)")
                int8 = _convert(sess, inp, output, calibration)
                with np.load(job["agreement"]) as z:
                    agreement = z["images"].astype(np.float32)
        if job.get("saved_model"):
            progress("loading the SavedModel back")
            loaded = t.saved_model.load(job["saved_model"])
            fn = loaded.signatures[SIGNATURE]
            results["probs_saved_model"] = _one_by_one(lambda x: fn(input=t.constant(x))["output"].numpy(), images)
            prune = loaded.prune(f"{INPUT_NAME}:0", f"{LOGITS_NAME}:0")
            results["logits_saved_model"] = _one_by_one(lambda x: prune(t.constant(x)).numpy(), images)
        if tflite is not None:
            progress("loading the TFLite model back (tf.lite.Interpreter)")
            with open(job["tflite"], "wb") as f:
                f.write(tflite)
            _write_json(job["tflite_sidecar"], _with_io(sidecar, "tflite", _io(tflite)))
            results["probs_tflite"] = _tflite_run(tflite, images)
        if int8 is not None:
            progress("loading the int8 TFLite model back (tf.lite.Interpreter)")
            with open(job["tflite_int8"], "wb") as f:
                f.write(int8)
            io = _io(int8)
            if io["input"]["dtype"] != "uint8" or io["output"]["dtype"] != "uint8":
                raise ConversionError(f"the int8 TFLite model takes {io['input']['dtype']} and gives "
                                      f"{io['output']['dtype']}, expected uint8 both")
            _write_json(job["tflite_int8_sidecar"], _with_io(sidecar, "tflite-int8", io))
            results["probs_int8"] = _tflite_run(int8, agreement)
        results["seconds"] = np.float64(time.perf_counter() - t0)
        with open(job["out"], "wb") as f:
            np.savez(f, **results)
    finally:
        if scratch is not None:
            scratch.cleanup()


def _saved_model(sess, inp, output, folder: str, sidecar: Dict[str, object]) -> None:
    """export_model.py's SavedModel (``folder`` exists, empty), the sidecar in ``assets.extra/``."""
    v1 = tf().compat.v1
    signature = v1.saved_model.signature_def_utils.predict_signature_def({"input": inp}, {"output": output})
    os.rmdir(folder)  # the Builder makes the folder itself
    builder = v1.saved_model.Builder(folder)
    builder.add_meta_graph_and_variables(sess, [SERVE], signature_def_map={SIGNATURE: signature})
    builder.save()
    os.makedirs(os.path.join(folder, "assets.extra"), exist_ok=True)
    _write_json(os.path.join(folder, "assets.extra", SIDECAR), sidecar)


def _convert(sess, inp, output, calibration: Optional[np.ndarray]) -> bytes:
    """export_model.py's TFLite conversion: float, or (``calibration``: normalized NHWC images) the
    post-training full-integer recipe with uint8 input and output."""
    t = tf()
    converter = t.compat.v1.lite.TFLiteConverter.from_session(sess, [inp], [output])
    if calibration is not None:
        def representative_dataset_gen():
            for i in range(calibration.shape[0]):
                yield [calibration[i:i + 1]]

        converter.representative_dataset = t.lite.RepresentativeDataset(representative_dataset_gen)
        converter.optimizations = [t.lite.Optimize.DEFAULT]
        converter.inference_input_type = t.uint8  # tf.lite.constants.QUANTIZED_UINT8
        converter.inference_output_type = t.uint8
        converter.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
    else:
        progress("TFLite conversion (float32)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.convert()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m converter.tfref.export JOB.json``; 0 done, 2 an error (one ``error:`` line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m converter.tfref.export JOB.json", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with open(argv[0], encoding="utf-8") as f:
            job = json.load(f)
        run(job)
    except ConversionError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # TensorFlow's own errors (a full disk, a converter refusal): one line
        print(f"error: {type(e).__name__}: {first_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
