"""``convert-effnet predict`` and ``convert-effnet evaluate``: use a converted file as the official eval does.

Both take the preprocessing from the file's metadata (``pretrained_cfg``: resolution, crop
fraction, mean/std) through :mod:`converter.preprocess` (``--preprocess official`` by default:
TensorFlow's decode, centre crop and legacy bicubic resize, without TensorFlow).

Class indices: a 1000-class model uses the standard ImageNet order (sorted synsets); a
1001-class model (EdgeTPU-style, background at output 0) is reported in that same 1000-class
order (``predict`` drops output 0 before the softmax; ``evaluate`` scores label + 1 against all
1001 outputs, as the official eval does, so a background prediction is a miss). Other class
counts: indices only, no names.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import ConversionError, first_line, listing
from .loading import check_weights_path
from .metadata import decode
from .preprocess import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, MODES, max_pixels_limit, preprocess
from .writer import read_safetensors_metadata, write_json

# ImageNet-1k class names: data/imagenet_classes.txt, built from timm 1.0.31
# (https://github.com/huggingface/pytorch-image-models, Apache-2.0):
# timm/data/_info/imagenet_synsets.txt (the class order) joined with
# timm/data/_info/imagenet_synset_to_lemma.txt (the names). Line i: "synset<TAB>lemmas" of class i.
CLASSES_FILE = Path(__file__).resolve().parent / "data" / "imagenet_classes.txt"
IMAGENET_CLASSES = 1000
SYNSET_RE = re.compile(r"n\d{8}")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth"
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- classes


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> Tuple[Tuple[str, str], ...]:
    """The 1000 ImageNet classes in index order: (synset, lemmas), e.g. ("n01440764", "tench, Tinca tinca")."""
    try:
        lines = CLASSES_FILE.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConversionError(f"cannot read the ImageNet class list {CLASSES_FILE}: {e.strerror or e}") from None
    rows = []
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        synset, _, lemmas = line.partition("\t")
        if not SYNSET_RE.fullmatch(synset) or not lemmas:
            raise ConversionError(f"{CLASSES_FILE}: malformed line {line!r}; reinstall effnet-convert")
        rows.append((synset, lemmas.strip()))
    if len(rows) != IMAGENET_CLASSES:
        raise ConversionError(f"{CLASSES_FILE}: {len(rows)} classes instead of {IMAGENET_CLASSES}; reinstall effnet-convert")
    return tuple(rows)


@functools.lru_cache(maxsize=1)
def synset_index() -> Dict[str, int]:
    """synset -> ImageNet class index."""
    return {s: i for i, (s, _) in enumerate(imagenet_classes())}


def short_name(lemmas: str) -> str:
    """The first lemma: 'tabby, tabby cat' -> 'tabby'."""
    return lemmas.split(",")[0].strip()


@dataclass(frozen=True)
class LabelSpace:
    """How a model's outputs map to reported class indices."""

    num_outputs: int  # the model's classifier size
    offset: int  # outputs before label 0 (1: background class at output 0)
    imagenet: bool  # labels are ImageNet-1k classes (names and synsets known)
    # ImageNet-21k (EfficientNetV2 -21k checkpoints, 21843 outputs, trained with a sigmoid loss):
    # names from data/imagenet21k_labels.txt, scores are per-class sigmoids, not a softmax
    imagenet21k: bool = False
    names: Tuple[str, ...] = ()  # a fine-tuned head's class names (pretrained_cfg "labels")

    @property
    def num_labels(self) -> int:
        return self.num_outputs - self.offset

    @property
    def scores(self) -> str:
        return "sigmoid" if self.imagenet21k else "softmax"

    def synset(self, label: int) -> Optional[str]:
        if self.imagenet21k:
            return imagenet21k_classes()[label][0]
        return imagenet_classes()[label][0] if self.imagenet else None

    def lemmas(self, label: int) -> Optional[str]:
        if self.names:
            return self.names[label]
        if self.imagenet21k:
            return imagenet21k_classes()[label][1]
        return imagenet_classes()[label][1] if self.imagenet else None


def label_space(num_classes: int) -> LabelSpace:
    """1000: ImageNet; 1001: ImageNet after a background output; anything else: bare indices."""
    n = int(num_classes)
    if n == IMAGENET_CLASSES:
        return LabelSpace(n, 0, True)
    if n == IMAGENET_CLASSES + 1:
        return LabelSpace(n, 1, True)
    if n == IMAGENET21K_CLASSES:
        return LabelSpace(n, 0, False, imagenet21k=True)
    return LabelSpace(n, 0, False)


def label_space_of(cfg: Dict[str, object]) -> LabelSpace:
    """A model's label space from its metadata: a head given new classes (converter/training.py
    reset_classifier) has its ``labels`` (names, or [] for bare indices); else by ``num_classes``."""
    n = int(cfg["num_classes"])
    if "labels" in cfg:
        names = tuple(str(x) for x in (cfg["labels"] or ()))
        return LabelSpace(n, 0, False, names=names if len(names) == n else ())
    return label_space(n)


# ImageNet-21k names for the EfficientNetV2 -21k checkpoints (21843 outputs): data/imagenet21k_labels.txt
# (its header says where the order and the names come from, and how google/automl's 21842-line file differs)
CLASSES_21K_FILE = Path(__file__).resolve().parent / "data" / "imagenet21k_labels.txt"
IMAGENET21K_CLASSES = 21843


@functools.lru_cache(maxsize=1)
def imagenet21k_classes() -> Tuple[Tuple[str, str], ...]:
    """The 21843 ImageNet-21k classes in output order: (synset, lemmas)."""
    try:
        lines = CLASSES_21K_FILE.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConversionError(f"cannot read the ImageNet-21k class list {CLASSES_21K_FILE}: {e.strerror or e}") from None
    rows = [tuple(line.split("\t", 1)) for line in lines if line.strip() and not line.startswith("#")]
    if len(rows) != IMAGENET21K_CLASSES or any(len(r) != 2 or not SYNSET_RE.fullmatch(r[0]) for r in rows):
        raise ConversionError(f"{CLASSES_21K_FILE}: not {IMAGENET21K_CLASSES} 'synset<TAB>names' lines; "
                              "reinstall effnet-convert")
    return tuple(rows)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- shared


def _common_options(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument("--weights", required=True, help="the converted .safetensors or .pth")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"images per forward pass (default {batch_size})")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where PyTorch runs (auto: the GPU when there is one)")
    p.add_argument("--preprocess", default="official", choices=MODES,
                   help="official (TF eval, default), fixed-crop (Nov 2021 crop rule) or pil (Pillow, for comparison)")
    p.add_argument("--max-image-pixels", type=int, metavar="N", default=None,
                   help=f"refuse images of more than N pixels (default ${MAX_PIXELS_ENV}, else "
                        f"{DEFAULT_MAX_PIXELS // 1_000_000} million: a guard against decompression bombs; 0: no limit)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _load(args: argparse.Namespace):
    from .loading import load_model
    from .verify import resolve_device

    if args.batch_size < 1:
        raise ConversionError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_image_pixels is not None and args.max_image_pixels < 0:
        raise ConversionError(f"--max-image-pixels must be 0 (no limit) or more, got {args.max_image_pixels}")
    max_pixels_limit(args.max_image_pixels)  # a bad $EFFNET_MAX_IMAGE_PIXELS: said before the model loads
    device = resolve_device(args.device)  # strict float32 on CUDA (no TF32)
    model = load_model(args.weights, device=device)
    return model, device, label_space_of(model.pretrained_cfg)


# ----------------------------------------------------------------------------- predict


def _predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert-effnet predict",
        description="Classify images with a converted file: top-k ImageNet classes and their probabilities "
                    "(preprocessing from the file's metadata).")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (JPEG, PNG, ...) or folders (the images directly in them, sorted)")
    _common_options(p, batch_size=16)
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    return p


def predict_images(model, images: Sequence[str], space: LabelSpace, top_k: int = 5, batch_size: int = 16,
                   device: str = "cpu", mode: str = "official",
                   max_pixels: Optional[int] = None) -> List[Dict[str, object]]:
    """[{image, top: [{index, synset, name, lemma, prob}]}] for each image, in order.

    An image that cannot be read or decoded gets ``{image, error}`` (one line) instead of ``top``;
    the others are still predicted.
    """
    cfg = model.pretrained_cfg
    k = min(top_k, space.num_labels)
    results: List[Dict[str, object]] = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        arrays: Dict[int, np.ndarray] = {}
        errors: Dict[int, str] = {}
        for j, image in enumerate(chunk):
            try:
                arrays[j] = preprocess(image, cfg, mode, max_pixels)
            except ConversionError as e:
                msg = first_line(e, "unreadable image")
                errors[j] = msg if str(image) in msg else f"{image}: {msg}"
        tops: Dict[int, List[Dict[str, object]]] = {}
        if arrays:
            order = sorted(arrays)
            x = torch.from_numpy(np.stack([arrays[j] for j in order])).to(device)
            with torch.inference_mode():
                logits = model(x).double().cpu()
            if space.scores == "sigmoid":  # 21k: multi-label, one sigmoid per class
                probs = torch.sigmoid(logits[:, space.offset:])
            else:
                probs = torch.softmax(logits[:, space.offset:], dim=1)
            values, indices = probs.topk(k, dim=1)
            for j, vals, idxs in zip(order, values.tolist(), indices.tolist()):
                top = []
                for p, i in zip(vals, idxs):
                    lemmas = space.lemmas(i)
                    top.append({"index": i, "synset": space.synset(i),
                                "name": short_name(lemmas) if lemmas else None, "lemma": lemmas, "prob": p})
                tops[j] = top
        for j, image in enumerate(chunk):
            results.append({"image": str(image), "top": tops[j]} if j in tops
                           else {"image": str(image), "error": errors[j]})
    return results


def format_predictions(results: Sequence[Dict[str, object]]) -> str:
    """Text: the image, then one line per class: rank, probability (%), index, synset, name."""
    out = []
    for r in results:
        if "error" in r:
            out.append(f"{r['image']}: not predicted ({r['error']})")
            continue
        out.append(str(r["image"]))
        for rank, t in enumerate(r["top"], 1):  # type: ignore[arg-type]
            line = f"  {rank}. {100 * t['prob']:7.3f}%  {t['index']:>4}"
            if t["synset"]:
                line += f"  {t['synset']}  {t['name']}"
            elif t["name"]:  # a fine-tuned head's class name (pretrained_cfg "labels")
                line += f"  {t['name']}"
            out.append(line)
    return "\n".join(out)


def expand_images(args_images: Sequence[str]) -> List[str]:
    """The IMAGE arguments with each folder replaced by the images directly in it (sorted)."""
    out: List[str] = []
    for image in args_images:
        p = Path(image)
        if p.is_dir():
            found = images_under(p, recursive=False)
            if not found:
                raise ConversionError(f"{image}: a folder without images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            out.extend(str(f) for f in found)
        elif not p.exists():
            raise ConversionError(f"{image}: no such image file or folder")
        else:
            out.append(str(image))
    return out


def run_predict(args: argparse.Namespace) -> int:
    """Predict every image; one that cannot be read is reported and the rest predicted (exit 2 then)."""
    if args.top_k < 1:
        raise ConversionError(f"--top-k must be at least 1, got {args.top_k}")
    images = expand_images(args.images)  # before loading the model
    model, device, space = _load(args)
    results = predict_images(model, images, space, top_k=args.top_k, batch_size=args.batch_size,
                             device=device, mode=args.preprocess, max_pixels=args.max_image_pixels)
    print(json.dumps(results, indent=1) if args.json else format_predictions(results), flush=True)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"convert-effnet: error: {r['error']}", file=sys.stderr)
    if failed:
        print(f"convert-effnet: {len(failed)} of {len(results)} images could not be predicted", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------- evaluate


def _evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert-effnet evaluate",
        description="Top-1/top-5 accuracy of a converted file on an ImageNet-style validation folder: "
                    "one subfolder per synset (DIR/n01440764/*.JPEG), or the images in DIR plus --labels.")
    p.add_argument("dir", metavar="DIR", help="the validation folder")
    _common_options(p, batch_size=32)
    p.add_argument("--labels", metavar="FILE",
                   help="labels of the images directly in DIR: lines 'filename index' or 'filename synset', "
                        "or one index (0-999, standard order) or synset per line in sorted file-name order")
    p.add_argument("--limit", type=int, help="only the first N images (sorted by path)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bf16", "fp16"),
                   help="run the model in this precision (autocast where the device has it; default float32)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2; 0: none)")
    p.add_argument("--json", metavar="OUT.json", help="also write the results to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()


def images_under(folder: Path, recursive: bool) -> List[Path]:
    if not recursive:
        return sorted(p for p in folder.iterdir() if _is_image(p))
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(p for p in (Path(top) / f for f in files) if _is_image(p))
    return sorted(found)


def _parse_label(token: str, space: LabelSpace, where: str) -> int:
    if SYNSET_RE.fullmatch(token):
        if not space.imagenet:
            raise ConversionError(f"{where}: synset {token} but the model has {space.num_outputs} classes, "
                                  "not ImageNet's; give class indices")
        index = synset_index()
        if token not in index:
            raise ConversionError(f"{where}: {token} is not one of the 1000 ImageNet synsets")
        return index[token]
    try:
        label = int(token)
    except ValueError:
        raise ConversionError(f"{where}: label {token!r} is neither a class index nor a synset") from None
    if not 0 <= label < space.num_labels:
        hint = (" (the ILSVRC2012 devkit's 1-based labels are in another class order; "
                "use synsets or 0-based standard indices)" if label == space.num_labels else "")
        raise ConversionError(f"{where}: class index {label} is out of range 0..{space.num_labels - 1}{hint}")
    return label


def _read_labels_file(path: Path, images: List[Path], space: LabelSpace) -> Tuple[List[int], List[str]]:
    """The label of each image (sorted), from 'name label' lines or one label per line in that order;
    and the names the file labels that are not among the images (in file order)."""
    if path.name.startswith(DEVKIT_GROUND_TRUTH):
        raise ConversionError(
            f"{path}: the ILSVRC2012 devkit ground truth holds 1-based ILSVRC2012_IDs in the devkit's own class "
            "order, not the standard index order; use one synset per line (e.g. "
            "imagenet_2012_validation_synset_labels.txt) or 'filename index' lines")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f"cannot read the labels file {path}: {getattr(e, 'strerror', None) or e}") from None
    rows = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise ConversionError(f"{path}: no labels in the file")
    widths = {len(line.split()) >= 2 for _, line in rows}
    if len(widths) > 1:
        raise ConversionError(f"{path}: mixes 'filename label' lines with one-label lines")
    if widths == {False}:  # one label per line, in sorted file-name order
        if len(rows) != len(images):
            raise ConversionError(f"{path}: {len(rows)} labels for {len(images)} images in {images[0].parent} "
                                  "(one label per line must follow the sorted file names)")
        return [_parse_label(line, space, f"{path}:{n}") for n, line in rows], []
    by_name: Dict[str, int] = {}
    for n, line in rows:
        name, token = line.rsplit(None, 1)
        key = Path(name.replace("\\", "/")).name
        label = _parse_label(token, space, f"{path}:{n}")
        if by_name.get(key, label) != label:
            raise ConversionError(f"{path}:{n}: {key} is labelled twice, differently")
        by_name[key] = label
    missing = [p.name for p in images if p.name not in by_name]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ConversionError(f"{path}: no label for {missing[0]}{more} in {images[0].parent}")
    present = {p.name for p in images}
    return [by_name[p.name] for p in images], [name for name in by_name if name not in present]


def collect_images(root: Path, labels: Optional[Path],
                   space: LabelSpace) -> Tuple[List[Tuple[Path, int]], List[str]]:
    """(image, label) pairs of a validation folder, sorted by path, labels in the reported class space;
    and the file names ``labels`` names that are not images in ``root`` (evaluated without them)."""
    if not root.is_dir():
        raise ConversionError(f"{root}: no such folder")
    if labels is not None:
        if not labels.is_file():
            raise ConversionError(f"{labels}: no such labels file")
        images = images_under(root, recursive=False)
        if not images:
            raise ConversionError(f"{root}: no images (.jpg, .jpeg, .png, ...) directly in the folder")
        found, absent = _read_labels_file(labels, images, space)
        return list(zip(images, found)), absent
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = images_under(root, recursive=False)
    if loose:
        raise ConversionError(f"{root} holds images outside synset subfolders (e.g. {loose[0].name}): "
                              "give their labels with --labels FILE, or move them into DIR/<synset>/")
    if not subdirs:
        raise ConversionError(f"{root}: no images and no synset subfolders")
    if not space.imagenet:
        raise ConversionError(f"the model has {space.num_outputs} classes, not ImageNet's: synset folders do not "
                              "apply; put the images in one folder and give --labels with class indices")
    index = synset_index()
    unknown = [d.name for d in subdirs if d.name not in index]
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else "")
        raise ConversionError(f"{root}: subfolders that are not ImageNet synsets: {shown}; "
                              "expected DIR/n01440764/*.JPEG, ...")
    items = [(p, index[d.name]) for d in subdirs for p in images_under(d, recursive=True)]
    if not items:
        raise ConversionError(f"{root}: no images (.jpg, .jpeg, .png, ...) in its {len(subdirs)} synset subfolders")
    return sorted(items, key=lambda t: t[0].relative_to(root).as_posix()), []


class EvalDataset(torch.utils.data.Dataset):
    """(preprocessed CHW float32 tensor, label, error message or '') per image.

    A failing image yields zeros and its error (one line, with its path), so the main process can
    raise it as a ConversionError instead of the DataLoader's multi-line worker traceback.
    """

    def __init__(self, items: Sequence[Tuple[Path, int]], cfg: Dict[str, object], mode: str,
                 max_pixels: Optional[int] = None):
        self.items = list(items)
        self.cfg = dict(cfg)
        self.mode = mode
        self.max_pixels = max_pixels
        res = int(list(cfg["input_size"])[-1])  # type: ignore[arg-type]
        self.shape = (3, res, res)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        try:
            x, err = preprocess(path, self.cfg, self.mode, self.max_pixels), ""
        except ConversionError as e:
            msg = first_line(e, "unreadable image")
            x, err = np.zeros(self.shape, np.float32), (msg if str(path) in msg else f"{path}: {msg}")
        return torch.from_numpy(x), label, err


@dataclass
class EvalResult:
    """What ``evaluate`` measured (top1/top5 in percent)."""

    top1: float
    top5: float
    top1_correct: int
    top5_correct: int
    images: int
    seconds: float
    images_per_s: float


def evaluate_items(model, items: Sequence[Tuple[Path, int]], space: LabelSpace, batch_size: int = 32,
                   workers: int = 2, device: str = "cpu", mode: str = "official",
                   progress: bool = False, max_pixels: Optional[int] = None) -> EvalResult:
    """Top-1/top-5 of ``model`` on (image, label) pairs; labels in the reported class space."""
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(EvalDataset(items, model.pretrained_cfg, mode, max_pixels),
                                         batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=device == "cuda")
    k = min(5, space.num_outputs)
    c1 = c5 = seen = 0
    start = time.perf_counter()
    it = iter(loader)
    try:
        with tqdm(total=len(items), unit="img", disable=not progress, file=sys.stderr, leave=False) as bar:
            for x, labels, errors in it:
                bad = [e for e in errors if e]
                if bad:
                    raise ConversionError(bad[0])
                with torch.inference_mode():
                    logits = model(x.to(device, non_blocking=True))
                top = logits.topk(k, dim=1).indices.cpu()
                target = labels.long() + space.offset  # 1001 classes: label + 1, all outputs ranked
                c1 += int((top[:, 0] == target).sum())
                c5 += int((top == target[:, None]).any(dim=1).sum())
                seen += len(labels)
                bar.update(len(labels))
    finally:
        del it  # shuts the workers down now, also on errors
    seconds = time.perf_counter() - start
    return EvalResult(top1=100.0 * c1 / seen, top5=100.0 * c5 / seen, top1_correct=c1, top5_correct=c5,
                      images=seen, seconds=seconds, images_per_s=seen / seconds if seconds > 0 else float("inf"))


def _check_json_path(out: Path) -> None:
    """--json names a file (not a folder) in an existing folder where a file can be created."""
    from .writer import check_writable_folder

    if out.is_dir():
        raise ConversionError(f"--json {out} is a folder; name a file (e.g. results.json)")
    if not out.parent.is_dir():
        raise ConversionError(f"--json {out}: folder {out.parent} does not exist")
    try:
        check_writable_folder(out.parent, "folder")
    except ConversionError as e:
        raise ConversionError(f"--json {out}: {e}") from None


def run_evaluate(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConversionError(f"--limit must be at least 1, got {args.limit}")
    if args.workers < 0:
        raise ConversionError(f"--workers must be 0 or more, got {args.workers}")
    out = Path(args.json) if args.json else None
    if out is not None:  # say so before an hour of evaluation
        _check_json_path(out)
    weights, root, labels = Path(args.weights), Path(args.dir), Path(args.labels) if args.labels else None
    check_weights_path(weights)  # a folder: --layout transformers (loading.read_weights)
    items, absent = None, []
    if weights.suffix == ".safetensors":  # class count from the header: folder errors before a long load
        try:
            meta = decode(read_safetensors_metadata(weights))
        except ValueError:  # malformed metadata: load_model says what is wrong
            meta = {}
        if isinstance(meta.get("num_classes"), int):
            items, absent = collect_images(root, labels, label_space_of(meta))
    from .distributed import Session, evaluate_shared

    session = Session.start(args.device)  # under torchrun: this process's share (converter/distributed.py)
    model, device, space = _load(args)
    if items is None:
        items, absent = collect_images(root, labels, space)
    if absent and session.is_main:  # the file labels images the folder lacks: said, counted in the report
        log.warning("warning: %s labels %d images that are not in %s: %s; evaluating the %d that are",
                    labels, len(absent), root, listing(absent), len(items))
    if args.limit is not None:
        items = items[:args.limit]
    from .fast import in_precision

    with in_precision(model, args.dtype, device):  # --dtype (issue 27)
        r = evaluate_shared(session, items, lambda part: evaluate_items(
            model, part, space, batch_size=args.batch_size, workers=args.workers, device=device, mode=args.preprocess,
            progress=not args.quiet and sys.stderr.isatty() and session.is_main, max_pixels=args.max_image_pixels))
    if not session.is_main:  # rank 0 prints and writes the gathered results
        return 0
    cfg = model.pretrained_cfg
    print(f"top-1: {r.top1:.2f}% ({r.top1_correct}/{r.images})")
    print(f"top-5: {r.top5:.2f}% ({r.top5_correct}/{r.images})")
    print(f"images: {r.images} in {r.seconds:.1f} s, {r.images_per_s:.1f} images/s "
          f"({cfg['variant']}_{cfg['flavor']}, {args.preprocess} preprocessing, {device}, {args.dtype}, {args.workers} workers"
          + (f", {session.world} processes" if session.world > 1 else "") + ")")
    if absent:
        print(f"missing: {len(absent)} images named in {labels} are not in {root} (not counted above)")
    if out is not None:
        doc = {"top1": r.top1, "top5": r.top5, "top1_correct": r.top1_correct, "top5_correct": r.top5_correct,
               "images": r.images, "images_per_s": r.images_per_s, "seconds": r.seconds,
               "weights": str(Path(args.weights).resolve()), "preprocess": args.preprocess,
               "variant": cfg["variant"], "flavor": cfg["flavor"], "num_classes": int(cfg["num_classes"]),
               "dir": str(Path(args.dir).resolve()), "device": device, "dtype": args.dtype, "batch_size": args.batch_size,
               "workers": args.workers, "processes": session.world, "images_per_process": session.shares,
               "labelled_missing": len(absent), "labelled_missing_names": absent}
        write_json(out, doc, f"--json {out}")
        print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- entry


def main(argv: Sequence[str]) -> int:
    """``argv[0]`` is the subcommand (predict or evaluate); errors are raised as ConversionError."""
    argv = list(argv)
    if not argv or argv[0] not in ("predict", "evaluate"):
        raise ConversionError("usage: convert-effnet predict IMAGE... --weights FILE | "
                              "convert-effnet evaluate DIR --weights FILE")
    if argv[0] == "predict":
        return run_predict(_predict_parser().parse_args(argv[1:]))
    return run_evaluate(_evaluate_parser().parse_args(argv[1:]))
