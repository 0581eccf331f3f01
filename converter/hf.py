"""``--layout transformers``: a folder that Hugging Face ``from_pretrained`` loads.

The folder (``efficientnet-b4_advprop.transformers/``) holds ``model.safetensors`` (the tensors under
the keys of mappings/transformers.py, this package's metadata in its header), ``config.json``
(``EfficientNetConfig``), ``preprocessor_config.json`` (``EfficientNetImageProcessor``) and a model
card ``README.md``. converter/hf_write.py writes it (filled as a hidden temporary folder beside
the target, renamed into place only when complete); this module holds what loading, verify and
the writer share.

Padding. transformers' EfficientNet (models/efficientnet/modeling_efficientnet.py, 5.24) does not
pad as TF 'SAME' does from the input size: its stem pads ``ZeroPad2d((0, 1, 0, 1))`` before a
'valid' stride-2 conv, and each stride-2 depthwise conv pads ``correct_pad(k, adjust)``:
(k//2 - 1, k//2) on each axis, or (k//2, k//2) for the block indices in the config's
``depthwise_padding``; stride-1 convs pad 'same' (symmetric: TF's padding at stride 1). TF 'SAME'
at stride 2 pads (k//2 - 1, k//2) over an even input and (k//2, k//2) over an odd one, so
:func:`padding_plan` lists the blocks whose strided depthwise conv sees an odd input at the
chosen resolution, which makes the library exact at that size. The stem cannot follow: at an
odd input size TF pads it (1, 1) and the library (0, 1), a feature map one pixel smaller and
shifted. Such a folder is written with a one-line warning, the error measured on the converted
weights (converter.hf_write.measure_library_error) and the caveat in its metadata.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .arch import ArchSpec, BlockArgs, same_padding
from .errors import ConversionError

LAYOUT = "transformers"
MODEL_CLASS = "EfficientNetForImageClassification"
PROCESSOR_CLASS = "EfficientNetImageProcessor"
TRANSFORMERS_VERSION = "5.24.0"  # what the folders are written for and tested with (requirements-libs.txt)
WEIGHTS_NAME = "model.safetensors"  # transformers' SAFE_WEIGHTS_NAME
CONFIG_NAME = "config.json"
PROCESSOR_NAME = "preprocessor_config.json"
CARD_NAME = "README.md"
REPORT_NAME = "verify.json"  # convert-effnet verify's report of a folder, kept inside it

# transformers modeling_efficientnet.EfficientNetEmbeddings: nn.ZeroPad2d(padding=(0, 1, 0, 1))
# before its 'valid' 3x3 stride-2 conv
LIBRARY_STEM_PAD = (0, 1)
STEM_KERNEL, STEM_STRIDE = 3, 2  # efficientnet_model.Model._build: the stem conv
DROP_CONNECT_RATE = 0.2  # tensorflow/tpu efficientnet_builder.efficientnet(): survival_prob=0.8
MEASURE_IMAGES = 2  # synthetic images (converter.synthetic) of the error measurement
ERROR_KEY = "layout_rel_error"  # metadata: the measured error of the library's padding (hf_write)


def library_depthwise_pad(kernel: int, symmetric: bool) -> Tuple[int, int]:
    """transformers' ``correct_pad(kernel, adjust=not symmetric)`` along one axis: (before, after)."""
    return (kernel // 2, kernel // 2) if symmetric else (kernel // 2 - 1, kernel // 2)


def _out_size(size: int, kernel: int, stride: int, pad: Tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - kernel) // stride + 1


@dataclass(frozen=True)
class StridedConv:
    """One strided conv: input size and padding (before, after) in the official model and in transformers'."""

    block: Optional[int]  # None: the stem
    kernel: int
    size_official: int
    size_library: int
    pad_official: Tuple[int, int]
    pad_library: Tuple[int, int]

    @property
    def exact(self) -> bool:
        return self.size_official == self.size_library and self.pad_official == self.pad_library


@dataclass(frozen=True)
class PaddingPlan:
    """The config's ``depthwise_padding`` for one input size, and whether the library is exact there."""

    spec: ArchSpec
    resolution: int
    convs: Tuple[StridedConv, ...]
    depthwise_padding: Tuple[int, ...]

    @property
    def exact(self) -> bool:
        return all(c.exact for c in self.convs)

    def exact_sizes_near(self) -> List[int]:
        """The nearest input sizes (one each side) where this architecture has an exact config."""
        out = []
        for step in (-1, 1):
            s = self.resolution + step
            while 2 <= s <= self.resolution + 64 and not padding_plan(self.spec, s).exact:
                s += step
            if 2 <= s <= self.resolution + 64:
                out.append(s)
        return out

    def caveat(self) -> Optional[str]:
        """One line on why transformers cannot compute the official logits at this size, or None."""
        bad = [c for c in self.convs if not c.exact]
        if not bad:
            return None
        c = bad[0]
        where = "its stem" if c.block is None else f"block {c.block}'s depthwise conv"
        near = self.exact_sizes_near()
        alt = f"; --resolution {' or '.join(map(str, near))} gives an exact folder" if near else ""
        return (f"transformers' {MODEL_CLASS} pads {where} {c.pad_library} where TF 'SAME' pads {c.pad_official} "
                f"at {self.resolution} px{'' if c.block is None else f' ({c.size_official} px into it)'}: "
                f"no config reproduces the official logits at "
                f"{self.resolution} px{alt}; the weights are exact, --layout native computes as the official model")


def padding_plan(spec: ArchSpec, resolution: int) -> PaddingPlan:
    """The strided convs of ``spec`` at ``resolution`` and the ``depthwise_padding`` list.

    A strided depthwise conv over an odd input (in the library's own feature sizes) is listed:
    transformers then pads it (k//2, k//2), as TF 'SAME' does there; the others get
    (k//2 - 1, k//2), TF's padding over an even input.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ConversionError(f"--resolution must be an integer >= 2, got {resolution!r}")
    s_off = s_lib = resolution
    convs: List[StridedConv] = [StridedConv(None, STEM_KERNEL, s_off, s_lib,
                                            same_padding(s_off, STEM_KERNEL, STEM_STRIDE), LIBRARY_STEM_PAD)]
    s_off, s_lib = -(-s_off // STEM_STRIDE), _out_size(s_lib, STEM_KERNEL, STEM_STRIDE, LIBRARY_STEM_PAD)
    listed = []
    for b in spec.blocks():
        if b.stride == 1:
            continue
        if b.stride != 2:  # not in the main family; a table bug more than user input
            raise ConversionError(f"{spec.name}: block {b.index} has stride {b.stride}; transformers' "
                                  f"{MODEL_CLASS} pads stride-2 depthwise convs only")
        symmetric = s_lib % 2 == 1
        if symmetric:
            listed.append(b.index)
        pad_lib = library_depthwise_pad(b.kernel_size, symmetric)
        convs.append(StridedConv(b.index, b.kernel_size, s_off, s_lib,
                                 same_padding(s_off, b.kernel_size, 2), pad_lib))
        s_off, s_lib = -(-s_off // 2), _out_size(s_lib, b.kernel_size, 2, pad_lib)
    return PaddingPlan(spec, resolution, tuple(convs), tuple(listed))


# ---------------------------------------------------------------------------- the architecture


def stage_args(spec: ArchSpec) -> List[BlockArgs]:
    """The decoded block strings, checked to be what transformers' config can express."""
    args = [BlockArgs.decode(code) for code in spec.block_strings]
    se = {a.se_ratio for a in args}
    bad = [a.encode() for a in args if a.strides[0] != a.strides[1] or not a.id_skip or a.conv_type
           or a.fused_conv or a.super_pixel or a.condconv]
    if bad or len(se) != 1 or None in se or spec.activation != "swish" or not spec.use_se or spec.fix_head_stem:
        raise ConversionError(f"layout {LAYOUT} has no model for variant {spec.name}: its blocks "
                              f"({', '.join(bad) or 'activation/SE'}) are not transformers' EfficientNet blocks; "
                              "use --layout native")
    return args


# ---------------------------------------------------------------------------- preprocessor_config.json


def processor_config(resolution: int, mean: Sequence[float], std: Sequence[float], crop_pct: float,
                     interpolation: str = "bicubic") -> Dict[str, object]:
    """preprocessor_config.json: the official eval as close as ``EfficientNetImageProcessor`` gets.

    The official eval crops the centre ``crop_pct`` of the shorter side, then resizes to
    ``resolution``; the processor resizes the shorter side to ``resolution / crop_pct`` first
    (aspect kept), then centre-crops ``resolution``. ``include_top`` is off: on, the processor
    divides by the std a second time. mean/std on the 0-1 scale (AdvProp's 0.5/0.5 is
    ``x * 2/255 - 1``).
    """
    resample = {"bicubic": 3, "bilinear": 2, "nearest": 0}.get(str(interpolation))
    if resample is None:
        raise ConversionError(f"interpolation {interpolation!r} has no PIL resample code")
    return {
        "image_processor_type": PROCESSOR_CLASS,
        "do_resize": True,
        "size": {"shortest_edge": int(round(resolution / float(crop_pct)))},
        "resample": resample,
        "do_center_crop": True,
        "crop_size": {"height": resolution, "width": resolution},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "rescale_offset": False,
        "do_normalize": True,
        "image_mean": [float(v) for v in mean],
        "image_std": [float(v) for v in std],
        "include_top": False,
    }


# ---------------------------------------------------------------------------- model card

_CITATIONS = {
    "efficientnet": """@inproceedings{tan2019efficientnet,
  title     = {{EfficientNet}: Rethinking Model Scaling for Convolutional Neural Networks},
  author    = {Tan, Mingxing and Le, Quoc V.},
  booktitle = {Proceedings of the 36th International Conference on Machine Learning (ICML)},
  pages     = {6105--6114},
  year      = {2019}
}""",
    "autoaugment": """@inproceedings{cubuk2019autoaugment,
  title     = {{AutoAugment}: Learning Augmentation Strategies from Data},
  author    = {Cubuk, Ekin D. and Zoph, Barret and Mane, Dandelion and Vasudevan, Vijay and Le, Quoc V.},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2019}
}""",
    "advprop": """@inproceedings{xie2020adversarial,
  title     = {Adversarial Examples Improve Image Recognition},
  author    = {Xie, Cihang and Tan, Mingxing and Gong, Boqing and Wang, Jiang and Yuille, Alan L. and Le, Quoc V.},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2020}
}""",
    "noisystudent": """@inproceedings{xie2020selftraining,
  title     = {Self-training with {Noisy Student} improves {ImageNet} classification},
  author    = {Xie, Qizhe and Luong, Minh-Thang and Hovy, Eduard and Le, Quoc V.},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2020}
}""",
    "randaugment": """@inproceedings{cubuk2020randaugment,
  title     = {{RandAugment}: Practical Automated Data Augmentation with a Reduced Search Space},
  author    = {Cubuk, Ekin D. and Zoph, Barret and Shlens, Jonathon and Le, Quoc V.},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition Workshops (CVPRW)},
  year      = {2020}
}""",
}
# flavor -> the papers behind its training recipe (tensorflow/tpu efficientnet README): AdvProp
# trained with AutoAugment, NoisyStudent with RandAugment
_PAPERS = {"standard": ("efficientnet",), "aa": ("efficientnet", "autoaugment"),
           "advprop": ("efficientnet", "advprop", "autoaugment"),
           "noisystudent": ("efficientnet", "noisystudent", "randaugment"),
           "randaug": ("efficientnet", "randaugment")}
_FLAVOR_TEXT = {"standard": "baseline", "aa": "AutoAugment", "advprop": "AdvProp + AutoAugment",
                "noisystudent": "Noisy Student (self-training with JFT-300M unlabeled images) + RandAugment",
                "randaug": "RandAugment"}

# How EfficientNetImageProcessor (transformers 5.24, torchvision and PIL backends alike) still differs
# from the official eval; the figures measured against converter.preprocess (bit-exact to TF's ops)
# on scikit-image's 9 photos at 224, 240, 380, 475 and 600 px (tests/test_transformers.py prints them)
PROCESSOR_DIFFERENCES = (
    "it resizes the whole image (shorter side to resolution / crop_pct) and then centre-crops, where the official "
    "eval crops the centre crop_pct of the shorter side and resizes the crop; it resamples with antialiased "
    "bicubic (Pillow's, or torchvision's, which gives the same values here) instead of TensorFlow's legacy "
    "`resize_bicubic` (half_pixel_centers=False, no antialiasing) and rounds the resized image to uint8; and JPEGs "
    "are decoded by whoever opens them (PIL: accurate DCT) instead of TF's libjpeg-turbo fast integer DCT. "
    "Measured on 9 photos at 224-600 px: 4.0-4.4 levels (0-255 scale) mean absolute difference per pixel "
    "(1.6-7.2 per image, single pixels up to 233 at edges); squashing the image to resolution x resolution, "
    "as the hub's google/efficientnet-* processors do, is 34-39 levels off")


def model_card(meta: Dict[str, object], plan: PaddingPlan, processor: Dict[str, object],
               report: Optional[Dict[str, object]] = None) -> str:
    """README.md of the folder: source, flavor, EMA, resolution, preprocessing, exactness, license, papers."""
    variant, flavor = str(meta["variant"]), str(meta["flavor"])
    title = f"EfficientNet-{variant.upper()} ({_FLAVOR_TEXT.get(flavor, flavor).split(' (')[0]})"
    res = plan.resolution
    mean, std = list(meta["mean"]), list(meta["std"])
    norm = ("`x * 2/255 - 1` (AdvProp: mean = std = 0.5 on the 0-1 scale)" if mean == [0.5] * 3 and std == [0.5] * 3
            else f"`(x/255 - mean) / std`, mean {mean}, std {std}")
    caveat = meta.get("layout_caveat")
    error = meta.get(ERROR_KEY)
    lines = [
        "---",
        "license: apache-2.0",
        "library_name: transformers",
        "pipeline_tag: image-classification",
        "tags: [image-classification, efficientnet, vision, effnet-convert]",
        "datasets: [imagenet-1k]",
        "---",
        "",
        f"# {title}",
        "",
        f"The official TensorFlow checkpoint `{meta['source']}` converted for transformers' `{MODEL_CLASS}` "
        f"by effnet-convert {meta.get('converter_version', '')}.",
        "",
        "| | |",
        "|---|---|",
        f"| source | {meta['source']} |",
        f"| source sha256 | `{meta['source_sha256']}` |",
        f"| variant / flavor | {variant} / {flavor}: {_FLAVOR_TEXT.get(flavor, flavor)} |",
        f"| weights | {'the ExponentialMovingAverage twins (what the official eval uses)' if meta.get('ema') else 'the raw weights (no EMA)'} |",
        f"| resolution | {res} px (config `image_size`, `depthwise_padding` {list(plan.depthwise_padding)}) |",
        f"| classes | {meta['num_classes']}{' (background class dropped: ImageNet indices)' if meta.get('background_dropped') else ''} |",
        "",
        "```python",
        "from transformers import AutoImageProcessor, EfficientNetForImageClassification",
        "processor = AutoImageProcessor.from_pretrained(folder)",
        "model = EfficientNetForImageClassification.from_pretrained(folder).eval()",
        "logits = model(**processor(images, return_tensors='pt')).logits",
        "```",
        "",
        "## Exactness",
        "",
    ]
    if caveat:
        lines += [f"**Not exact at {res} px.** {caveat}.",
                  "" if error is None else f"Measured on these weights ({MEASURE_IMAGES} synthetic images at {res} px): "
                  f"relative error of the logits {error} against the official computation.", ""]
    else:
        lines += [f"transformers' EfficientNet does not pad as TensorFlow's 'SAME' does for any input size: its "
                  f"stride-2 convs pad by a fixed rule set in the config (`depthwise_padding`). This config is "
                  f"computed for {res} px, where the model computes the official logits (the same padding as "
                  f"TF 'SAME' at every strided conv); at other input sizes it may not. For another size convert "
                  f"again with `--resolution N` (exact at every even size).", ""]
    if report:
        same = (f"which transformers' does not equal at {res} px, see above" if caveat else
                f"which transformers' equals at {res} px{'' if report.get('resolution') == res else ' only'}")
        lines += [f"Verification (`convert-effnet verify`: the TensorFlow reference on the original checkpoint vs "
                  f"these weights in effnet-convert's model, {same}): "
                  f"{report.get('images')} images at {report.get('resolution')} px, relative error "
                  f"{float(report.get('rel_error', float('nan'))):.3g}, max |diff| "
                  f"{float(report.get('max_abs_diff', float('nan'))):.3g}, top-1 agreement "
                  f"{float(report.get('top1_agreement', 0)):.0%}: {'PASS' if report.get('passed') else 'FAIL'} "
                  f"(`{REPORT_NAME}`).", ""]
    else:
        lines += ["Not verified against TensorFlow in this folder (convert with `--verify`, or run "
                  "`convert-effnet verify --weights FOLDER --checkpoint CKPT`).", ""]
    lines += [
        "Fine-tuning: `batch_norm_momentum` is 0.01, PyTorch's form of the official decay 0.99 (transformers' "
        "expand-conv batch norms use PyTorch's default 0.1 whatever the config says); transformers' blocks drop "
        "elements (`nn.Dropout`) where the official model drops whole residual branches (drop-connect, "
        f"rate {DROP_CONNECT_RATE} scaled by depth). Inference (`eval()`) is not affected.",
        "",
        "## Preprocessing",
        "",
        f"Official eval (tensorflow/tpu `preprocessing.py`): decode the JPEG, centre crop of "
        f"`int({res}/({res}+32) * min(h, w))` px (crop_pct {float(meta['crop_pct']):.4f}), TensorFlow's legacy "
        f"bicubic resize to {res} x {res}, then {norm}.",
        "",
        f"`preprocessor_config.json` (`{PROCESSOR_CLASS}`): resize the shorter side to "
        f"{processor['size']['shortest_edge']} px (bicubic), centre crop {res} x {res}, rescale and normalize "
        f"as above, `include_top` off (on, it divides by the std a second time). Still different from the official "
        f"eval: {PROCESSOR_DIFFERENCES}. `converter.preprocess` (effnet-convert) reproduces the official pipeline "
        "exactly without TensorFlow: use it for the published accuracy.",
        "",
        "## License",
        "",
        "Apache-2.0, as the official checkpoints (tensorflow/tpu).",
        "",
        "## Citation",
        "",
        "```bibtex",
        "\n\n".join(_CITATIONS[p] for p in _PAPERS.get(flavor, ("efficientnet",))),
        "```",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the folder


def folder_weights(path: Path) -> Path:
    """``model.safetensors`` of a transformers folder (ConversionError when it has none)."""
    w = Path(path) / WEIGHTS_NAME
    if not w.is_file():
        raise ConversionError(f"{path} is a folder without {WEIGHTS_NAME}: not a --layout {LAYOUT} output")
    return w


def add_verification(folder: Path, report) -> None:
    """Rewrite the folder's model card with the verification figures of ``report`` (a ParityReport)."""
    from dataclasses import asdict

    from .metadata import decode
    from .writer import AtomicFile, read_safetensors_metadata

    folder = Path(folder)
    meta = decode(read_safetensors_metadata(folder_weights(folder)))
    res = int(meta["input_size"][-1])
    plan = padding_plan(_spec_of(meta), res)
    processor = json.loads((folder / PROCESSOR_NAME).read_text(encoding="utf-8"))
    f = AtomicFile(folder / CARD_NAME)
    try:
        f.tmp.write_text(model_card(meta, plan, processor, asdict(report)), encoding="utf-8")
        f.commit()
    finally:
        f.discard()


def _spec_of(meta: Dict[str, object]) -> ArchSpec:
    from .registry import get_arch

    return get_arch(str(meta["variant"])).with_classes(int(meta["num_classes"]))
