"""Load a converted file back into the PyTorch module, with its preprocessing metadata."""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

from .errors import ConversionError, first_line
from .metadata import REQUIRED, decode, pth_unpack
from .writer import read_safetensors_metadata


EXPECTED = "--weights takes a .safetensors or .pth file written by convert-effnet"
# what else a user may pass as --weights, by signature: (prefix, what it is, what to do)
_SIGNATURES = (
    (b"\x89HDF\r\n\x1a\n", "a Keras HDF5 file", "convert it first: convert-effnet --checkpoint FILE"),
    (b"\x1f\x8b", "a gzip file (a checkpoint tarball?)", "convert it first: convert-effnet --checkpoint FILE"),
    (b"BZh", "a bzip2 file (a checkpoint tarball?)", "convert it first: convert-effnet --checkpoint FILE"),
    (b"\xfd7zXZ\x00", "an xz file (a checkpoint tarball?)", "convert it first: convert-effnet --checkpoint FILE"),
)
_CONVERT_FIRST = "convert it first: convert-effnet --checkpoint FILE --variant V --flavor F"
# images, by signature: (prefix, format); predict takes them as its IMAGE arguments
_IMAGE_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
                     (b"GIF89a", "GIF"), (b"BM", "BMP"))
_IMAGE_TODO = (f"{EXPECTED} (images are predict's IMAGE arguments: "
               "convert-effnet predict IMAGE... --weights MODEL.safetensors)")


def _image_format(head: bytes) -> Optional[str]:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for sig, fmt in _IMAGE_SIGNATURES if head.startswith(sig)), None)


def _tf_checkpoint_folder(folder: Path) -> bool:
    """A folder holding a TensorFlow checkpoint (its ``checkpoint`` state file or a ``*.index``)."""
    try:
        return (folder / "checkpoint").is_file() or any(p.suffix == ".index" for p in folder.iterdir())
    except OSError:
        return False


def check_weights_path(path: Path) -> None:
    """A --weights argument that is not a file or folder convert-effnet wrote, said in one line: a
    missing path (a TensorFlow checkpoint prefix named), a TensorFlow checkpoint folder."""
    path = Path(path)
    if path.is_dir():
        if _tf_checkpoint_folder(path):
            raise ConversionError(f"{path} is a TensorFlow checkpoint folder, not converted weights; "
                                  + _CONVERT_FIRST.replace("FILE", str(path)))
        return
    if path.exists():
        return
    if Path(f"{path}.index").is_file():
        raise ConversionError(f"{path} is a TensorFlow checkpoint prefix ({path.name}.index, {path.name}.data-...), "
                              "not converted weights; " + _CONVERT_FIRST.replace("FILE", str(path)))
    raise ConversionError(f"{path}: no such file")


def _safetensors_like(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _looks_like_onnx(path: Path, head: bytes) -> bool:
    # an ONNX ModelProto: field 1 (ir_version, varint) first, and the producer/opset strings early on
    return path.suffix.lower() == ".onnx" or (
        head[:1] == b"\x08" and 1 <= head[1] <= 30 and head[2:3] in (b"\x12", b"\x1a", b"\x22", b"\x2a", b"\x32",
                                                                  b"\x3a", b"\x42"))


def _text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut at the end of the sample is fine
        return e.start >= len(head) - 3
    return True


def _is_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return _safetensors_like(fh.read(16), path.stat().st_size)
    except OSError:
        return False


def sniff_weights(path: Path) -> Optional[str]:
    """What ``path`` is when it is not a file ``read_weights`` reads: one line saying what it is and
    what --weights expects; None for a safetensors file or a torch.save archive (or unknown)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as e:
        return f"cannot read {path}: {e.strerror or e}"
    what = todo = None
    if not head:
        what, todo = "an empty file", EXPECTED
    elif _safetensors_like(head, size) or head[:4] == b"PK\x03\x04" or head[:2] in (b"\x80\x02", b"\x80\x04"):
        if head[:4] == b"PK\x03\x04":  # torch.save's zip, or a TorchScript archive (export's output)
            try:
                with zipfile.ZipFile(path) as z:
                    names = z.namelist()
            except (zipfile.BadZipFile, OSError):
                return None
            if any(n.split("/", 1)[-1].startswith("code/") for n in names):
                what, todo = "a TorchScript model (convert-effnet export writes these)", EXPECTED
            elif not any(n.endswith("data.pkl") for n in names):
                what, todo = "a zip archive", EXPECTED
        if what is None:
            return None
    elif _image_format(head):
        what, todo = f"an image ({_image_format(head)})", _IMAGE_TODO
    elif path.name.endswith(".index"):
        what, todo = "a TensorFlow checkpoint index", ("convert the checkpoint first: convert-effnet --checkpoint "
                                                       f"{str(path)[:-len('.index')]} --variant V --flavor F")
    elif ".data-" in path.name and path.name.split(".data-")[-1].count("-of-") == 1:
        what, todo = "a TensorFlow checkpoint data shard", _CONVERT_FIRST.replace("FILE", str(path).rsplit(".data-", 1)[0])
    else:
        for sig, w, t in _SIGNATURES:
            if head.startswith(sig):
                what, todo = w, t.replace("FILE", str(path))
                break
    if what is None and len(head) >= 262 and head[257:262] == b"ustar":
        what, todo = "a tar archive (a checkpoint tarball?)", f"convert it first: convert-effnet --checkpoint {path}"
    if what is None and _looks_like_onnx(path, head):
        what, todo = "an ONNX model", EXPECTED
    if what is None and _text(head):
        what, todo = "a text file", EXPECTED
    if what is None:
        return None
    return f"{path} is {what}, not converted weights; {todo}"


def read_weights(path) -> Tuple[Dict[str, "object"], Dict[str, object]]:
    """(state_dict of torch tensors, decoded metadata) of a converted .safetensors or .pth file."""
    import torch

    path = Path(path)
    check_weights_path(path)
    if path.is_dir():  # a folder layout's output (--layout transformers): its weights file
        from .mapping import folder_writer_of

        path = folder_writer_of(path).folder_weights(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    problem = sniff_weights(path)  # a TF checkpoint, a tarball, ONNX, text...: say what it is
    if problem:
        raise ConversionError(problem)
    if path.suffix == ".safetensors" or _is_safetensors(path):  # also NAME.safetensors.failed
        from safetensors.torch import load_file

        meta = read_safetensors_metadata(path)
        try:
            sd = load_file(str(path))
        except Exception as e:
            raise ConversionError(f"cannot read {path}: {first_line(e)}") from None
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConversionError(_torch_load_error(path, e)) from None
        sd, meta = pth_unpack(sd)  # a plain state_dict, or mmengine's {"state_dict", "meta"} (mmpretrain layout)
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ConversionError(f"{path} has no effnet-convert metadata ({', '.join(missing)} missing): "
                              "was it written by convert-effnet?")
    return dict(sd), decode(meta)


def _torch_load_error(path: Path, e: Exception) -> str:
    """One line for a file torch.load refuses, without torch's advice to turn weights_only off."""
    msg = str(e)
    if "Weights only load failed" in msg or "weights_only" in msg:
        return (f"{path} holds Python objects besides tensors (a pickled model or a training checkpoint?), "
                f"not a state_dict convert-effnet wrote; {EXPECTED}")
    first = (msg.strip().splitlines() or [type(e).__name__])[0][:200]
    return f"cannot read {path} as a PyTorch state_dict ({first}); {EXPECTED}"


def load_model(path, device: str = "cpu", *, num_classes: Optional[int] = None, labels=None,
               drop_rate: Optional[float] = None, survival_prob: Optional[float] = None,
               bn_momentum: Optional[float] = None, drop_path_rate: Optional[float] = None,
               drop_connect_rate: Optional[float] = None, endpoints=None):
    """The converted model in eval mode, weights loaded strictly, ``model.pretrained_cfg`` set.

    A timm / mmpretrain layout file is re-keyed to the native model (mapping.to_native).
    Fine-tuning (converter/training.py): ``num_classes`` other than the file's: a new classifier of
    that width (``labels``: its class names); ``drop_rate``, ``survival_prob``, ``bn_momentum``
    replace what ``train()`` uses: the settings the file records, else the family's official ones
    for its flavor (``drop_path_rate``, ``drop_connect_rate``: ``1 - survival_prob``).
    ``endpoints``: official endpoint names (or ``"reductions"``): instead of the model,
    a backbone whose forward returns those maps as a list, with ``feature_info`` (converter/endpoints.py).
    """
    from .registry import get_arch
    from .model import build_model

    sd, cfg = read_weights(path)
    # EdgeTPU: the fused blocks' stride where the file says (metadata fused_stride; absent: the default)
    spec = get_arch(cfg["variant"]).with_fused_stride(cfg.get("fused_stride")).with_classes(int(cfg["num_classes"]))
    if cfg.get("layout", "native") != "native":  # timm / mmpretrain: the same tensors under other keys
        from .mapping import to_native

        sd = to_native(sd, spec, cfg["layout"])
    model = build_model(spec)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ConversionError(f"{path} does not fit the {cfg['variant']} model: {first_line(e)}") from None
    model.pretrained_cfg = cfg
    from .training import prepare

    prepare(model, num_classes, labels, drop_rate, survival_prob, bn_momentum, drop_path_rate, drop_connect_rate)
    model = model.eval().to(device)
    return model if endpoints is None else model.features(endpoints)
