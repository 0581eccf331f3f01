"""Keras input: the ``keras.applications`` EfficientNetB0-B7 weights in HDF5, read with h5py.

:class:`KerasH5Reader` implements the :class:`~converter.sources.readers.CheckpointReader` interface and
presents a Keras file under the OFFICIAL TensorFlow variable names of its variant
(``block2a_expand_conv/kernel`` -> ``efficientnet-b0/blocks_1/conv2d/kernel``), through the
table in mappings/keras.py; the rest of the pipeline (selection, native mapping table, layouts,
writers) is the one of the official checkpoints. Keras kernels already have TensorFlow's layout
(conv HWIO, depthwise HWC1, dense (in, out)). No TensorFlow or Keras is needed.

Formats read (every one Keras writes for these models):

- legacy HDF5 weights (Keras 2 ``save_weights('x.h5')``, the keras.applications downloads, Keras
  3's ``legacy_h5_format.save_weights_to_hdf5_group``): root attribute ``layer_names``, a group
  per layer with a ``weight_names`` attribute (``stem_conv/kernel:0`` in Keras 2,
  ``stem_conv/kernel`` in Keras 3), datasets below it;
- the same inside a full-model file (``model.save('x.h5')``): group ``model_weights``;
- Keras 3 ``save_weights('x.weights.h5')``: ``layers/<class name>[_n]/vars/0..n``, the layer's
  name in the ``vars`` group's ``name`` attribute (Keras >= 3.x; older files without it are
  matched by class-name counters in model order), variables numbered in creation order.

The Normalization layer (mean/variance/count) is input preprocessing, not a network weight: it
becomes the mean/std of the metadata. keras.applications builds Rescaling(1/255) ->
Normalization(mean, variance) and, for ``weights="imagenet"`` only, a further
Rescaling(1/sqrt(IMAGENET_STDDEV_RGB)), because the ImageNet files store the standard deviation
as the "variance" (keras/src/applications/efficientnet.py, tensorflow/tensorflow#49930). A file
whose variance is exactly IMAGENET_STDDEV_RGB (float32) is taken to be such a model: std =
variance; any other file: std = sqrt(variance), as the Normalization layer computes.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..arch import ArchSpec
from ..errors import ConversionError, first_line, listing
from ..mappings import keras as table
from ..mappings.kinds import DENSE, VARIABLES
from ..registry import family_of, get_arch

log = logging.getLogger("converter")

# keras/src/applications/efficientnet.py: IMAGENET_STDDEV_RGB (stored as the Normalization
# layer's variance in the keras.applications ImageNet files)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # keras/src/applications/efficientnet_v2.py (B-series Normalization)
KERAS_EPSILON = 1e-7  # keras.backend.epsilon(): Normalization divides by max(sqrt(var), eps)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
KERAS_SUFFIXES = (".h5", ".hdf5")
# keras.applications has EfficientNetB0..B7 (keras/src/applications/efficientnet.py)
KERAS_VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")
# keras/src/applications/efficientnet_v2.py, S/M/L: Rescaling(scale=1/128, offset=-1), i.e. (x - 128) / 128
KERAS_V2_MEAN = (128.0 / 255.0,) * 3
KERAS_V2_STD = (128.0 / 255.0,) * 3
# and EfficientNetV2B0-B3/S/M/L (keras/src/applications/efficientnet_v2.py); no XL
KERAS_V2_VARIANTS = ("v2-b0", "v2-b1", "v2-b2", "v2-b3", "v2-s", "v2-m", "v2-l")
NORMALIZATION_IMAGENET = "imagenet: variance holds the std (keras.applications weights='imagenet')"
NORMALIZATION_PLAIN = "sqrt(variance)"
_NORM_RE = re.compile(rf"^{table.NORMALIZATION_CLASS}(_\d+)?$")
_BLOCK_RE = re.compile(r"^(block\d+[a-z]+)_")


def _keras_arch(variant: str) -> ArchSpec:
    spec = get_arch(variant)
    if spec.name not in KERAS_VARIANTS + KERAS_V2_VARIANTS:
        raise ConversionError(f"--variant {variant}: keras.applications has EfficientNetB0-B7 and "
                              f"EfficientNetV2B0-B3/S/M/L only (--variant {', '.join(KERAS_VARIANTS + KERAS_V2_VARIANTS)})")
    return spec


def _text(v) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def _has_hdf5_signature(path: Path) -> bool:
    """HDF5's signature at offset 0, where h5py and Keras put it (no user block)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except OSError:
        return False


def is_keras_file(path) -> bool:
    """True for what --checkpoint should read as a Keras HDF5 file: ``.h5``/``.hdf5`` or an HDF5 signature."""
    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        return False
    return p.name.lower().endswith(KERAS_SUFFIXES) or _has_hdf5_signature(p)


@dataclass(frozen=True)
class KerasLayer:
    """One Keras layer of a variant and the official layer it is."""

    keras: str  # e.g. block2a_expand_conv
    official: str  # e.g. blocks_1/conv2d (under the model scope)
    kind: str


def keras_block_name(stage: int, index_in_stage: int) -> str:
    """Keras's block prefix: ``block{stage + 1}{chr(97 + j)}`` (keras efficientnet.py)."""
    return f"block{stage + 1}{chr(97 + index_in_stage)}"


def keras_layers(spec: ArchSpec) -> List[KerasLayer]:
    """Every weighted Keras layer of ``spec`` (classifier included), in Keras's model order."""
    keras_rows = family_of(spec).keras_rows
    if keras_rows is None:
        raise ConversionError(f"keras.applications has no model of {spec.name}")
    out = [KerasLayer(k, o, kind) for k, o, kind in table.STEM]
    for b in spec.blocks():
        rows = getattr(table, keras_rows(b))  # the family's: EfficientNetV2's blocks are named otherwise
        fmt = {"name": keras_block_name(b.stage, b.index_in_stage), "i": b.index}
        for k, o, kind in rows:
            if "se_" in k and not b.se_channels:
                continue
            out.append(KerasLayer(k.format(**fmt), o.format(**fmt), kind))
    out += [KerasLayer(k, o, kind) for k, o, kind in table.HEAD]
    return out


def class_keys(spec: ArchSpec) -> Dict[str, str]:
    """Keras 3 ``.weights.h5`` group key -> layer name (``conv2d_1`` -> ``block1a_se_reduce``).

    Keras keys layers by snake-cased class name and a counter in model.layers order; the
    Normalization layer comes first (keras/src/saving/saving_lib.py _save_container_state).
    """
    counters: Dict[str, int] = {}
    out = {}
    names = [(table.NORMALIZATION_CLASS, table.NORMALIZATION_CLASS)]
    names += [(table.KERAS_CLASSES[layer.kind], layer.keras) for layer in keras_layers(spec)]
    for cls, name in names:
        n = counters.get(cls, -1) + 1
        counters[cls] = n
        out[cls if n == 0 else f"{cls}_{n}"] = name
    return out


@dataclass
class _Var:
    layer: str  # Keras layer name
    var: str  # Keras variable name (kernel, gamma, mean...) or its index in a .weights.h5
    path: str  # HDF5 dataset path
    shape: Tuple[int, ...]
    dtype: np.dtype


def _attr_list(group, name: str) -> Optional[List[str]]:
    """A string-list attribute, also when Keras split it into ``name0``, ``name1``... (large models)."""
    if name in group.attrs:
        return [_text(v) for v in np.atleast_1d(group.attrs[name])]
    if f"{name}0" in group.attrs:
        out, i = [], 0
        while f"{name}{i}" in group.attrs:
            out += [_text(v) for v in np.atleast_1d(group.attrs[f"{name}{i}"])]
            i += 1
        return out
    return None


class KerasH5Reader:
    """A keras.applications EfficientNet HDF5 file under the official checkpoint names.

    ``variant``: b0..b7 (checked against the file), or None to infer it from the file (stem
    channels, number of blocks, head channels). Opening checks the whole file (every layer
    known, none missing, every shape); ``read`` reads one dataset.
    """

    def __init__(self, path, variant: Optional[str] = None):
        import h5py

        self.path = Path(os.fspath(path)).expanduser()
        self.prefix = str(self.path)
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, ValueError) as e:
            first = first_line(e, limit=200)
            raise ConversionError(f"cannot read {self.path} as a Keras HDF5 file ({first}): "
                                  "truncated or corrupt? save or download it again") from None
        try:
            self._open(variant)
        except BaseException:
            self._file.close()
            raise

    # -- opening -----------------------------------------------------------------------------

    def _open(self, variant: Optional[str]) -> None:
        try:
            self.format, variables = self._inventory()
        except ConversionError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:  # h5py on damaged files
            first = first_line(e, limit=200)
            raise ConversionError(f"cannot read {self.path}: {first} (truncated or corrupt? save it again)") from None
        norm_layers = sorted({v.layer for v in variables if _NORM_RE.match(v.layer)})
        by_layer: Dict[str, List[_Var]] = {}
        for v in variables:
            if v.layer not in norm_layers:
                by_layer.setdefault(v.layer, []).append(v)
        self.spec = self._variant(variant, by_layer)
        self._norm = self._normalization(norm_layers, variables)
        self._index(by_layer)

    def _inventory(self) -> Tuple[str, List[_Var]]:
        f = self._file
        if _attr_list(f, "layer_names") is not None:
            return "legacy-h5", self._legacy(f, "")
        if "model_weights" in f and _attr_list(f["model_weights"], "layer_names") is not None:
            return "legacy-h5 (full model)", self._legacy(f["model_weights"], "model_weights/")
        if "layers" in f:
            return "keras3-weights-h5", self._keras3(f)
        raise ConversionError(
            f"{self.path} is an HDF5 file but no Keras weights file (no layer_names attribute, model_weights "
            "group or layers/ group): save the model with model.save_weights('x.weights.h5') or model.save('x.h5')")

    def _legacy(self, group, base: str) -> List[_Var]:
        import h5py

        out = []
        for gname in _attr_list(group, "layer_names") or []:
            if gname not in group:
                raise ConversionError(f"{self.path}: layer {gname} is listed in layer_names but has no group: "
                                      "truncated or corrupt file")
            g = group[gname]
            for wname in _attr_list(g, "weight_names") or []:
                ds = g.get(wname)
                if not isinstance(ds, h5py.Dataset):
                    raise ConversionError(f"{self.path}: weight {wname} of layer {gname} is missing: "
                                          "truncated or corrupt file")
                parts = wname.split("/")
                layer = parts[-2] if len(parts) >= 2 else gname  # nested models keep the inner name
                var = re.sub(r":\d+$", "", parts[-1])
                var = table.KERAS2_ALIASES.get(var, var)
                out.append(_Var(layer, var, f"{base}{gname}/{wname}", tuple(ds.shape), ds.dtype))
        return out

    def _keras3(self, f) -> List[_Var]:
        import h5py

        out: List[_Var] = []
        unnamed: List[Tuple[str, List[_Var]]] = []

        def walk(group, path: str) -> None:
            for key in group:
                g = group[key]
                if not isinstance(g, h5py.Group):
                    continue
                vars_ = g.get("vars")
                datasets = []
                if isinstance(vars_, h5py.Group):
                    datasets = sorted((k for k in vars_ if isinstance(vars_[k], h5py.Dataset)),
                                      key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
                if datasets:
                    name = _text(vars_.attrs["name"]) if "name" in vars_.attrs else None
                    layer_vars = [_Var(name or key, k, f"{path}{key}/vars/{k}", tuple(vars_[k].shape), vars_[k].dtype)
                                  for k in datasets]
                    out.extend(layer_vars)
                    if name is None:
                        unnamed.append((key, layer_vars))
                if "layers" in g and isinstance(g["layers"], h5py.Group):  # a nested model
                    walk(g["layers"], f"{path}{key}/layers/")

        walk(f["layers"], "layers/")
        self._unnamed = unnamed
        return out

    def _variant(self, variant: Optional[str], by_layer: Dict[str, List[_Var]]) -> ArchSpec:
        if getattr(self, "_unnamed", None):
            # Keras 3 files without layer names: their keys are class-name counters; try each variant
            candidates = [_keras_arch(variant)] if variant else [get_arch(v) for v in KERAS_VARIANTS + KERAS_V2_VARIANTS]
            fits = [a for a in candidates if self._fits_keys(a, by_layer)]
            if not fits:
                raise ConversionError(
                    f"{self.path}: its layers carry no names and their class keys fit no "
                    f"{'EfficientNet' + (' ' + variant if variant else 'B0-B7')} of keras.applications")
            self._rename(fits[0], by_layer)
        found = self._infer(by_layer)
        if variant:
            spec = _keras_arch(variant)
            if found is not None and found.name != spec.name:
                raise ConversionError(
                    f"--variant {spec.name} but {self.path} holds an EfficientNet{found.name.upper()} "
                    f"({self._summary(by_layer)}): pass --variant {found.name} or leave it out")
            return spec
        if found is None:
            raise ConversionError(
                f"cannot infer the variant of {self.path} ({self._summary(by_layer)} fits no keras.applications "
                "EfficientNetB0-B7): pass --variant")
        log.info("variant %s (from the Keras file: %s)", found.name, self._summary(by_layer))
        return found

    def _fits_keys(self, spec: ArchSpec, by_layer: Dict[str, List[_Var]]) -> bool:
        keys = class_keys(spec)
        return all(k in keys for k, _ in self._unnamed) and len(self._unnamed) >= len(keys) - 1

    def _rename(self, spec: ArchSpec, by_layer: Dict[str, List[_Var]]) -> None:
        keys = class_keys(spec)
        for key, layer_vars in self._unnamed:
            name = keys[key]
            for v in layer_vars:
                v.layer = name
            if key in by_layer:
                by_layer[name] = by_layer.pop(key)
        self._unnamed = []

    @staticmethod
    def _shape_of(by_layer: Dict[str, List[_Var]], layer: str) -> Optional[Tuple[int, ...]]:
        vs = by_layer.get(layer) or []
        return vs[0].shape if vs else None

    def _channels(self, by_layer: Dict[str, List[_Var]]) -> Tuple[Optional[int], int, Optional[int]]:
        stem = self._shape_of(by_layer, "stem_conv")
        head = self._shape_of(by_layer, "top_conv")
        blocks = {m.group(1) for m in (_BLOCK_RE.match(n) for n in by_layer) if m}
        return (stem[-1] if stem and len(stem) == 4 else None, len(blocks),
                head[-1] if head and len(head) == 4 else None)

    def _summary(self, by_layer: Dict[str, List[_Var]]) -> str:
        stem, blocks, head = self._channels(by_layer)
        return f"stem {stem if stem else '?'} channels, {blocks} blocks, head {head if head else '?'} channels"

    def _infer(self, by_layer: Dict[str, List[_Var]]) -> Optional[ArchSpec]:
        stem, blocks, head = self._channels(by_layer)
        fits = [a for a in map(get_arch, KERAS_VARIANTS + KERAS_V2_VARIANTS)
                if (a.stem_channels, len(a.blocks()), a.head_channels) == (stem, blocks, head)]
        return fits[0] if len(fits) == 1 else None

    def _normalization(self, norm_layers: List[str], variables: List[_Var]) -> Optional[Dict[str, np.ndarray]]:
        if not norm_layers:
            return None
        if len(norm_layers) > 1:
            raise ConversionError(f"{self.path} has {len(norm_layers)} Normalization layers ({listing(norm_layers)}); "
                                  "a keras.applications EfficientNet has one")
        vs = [v for v in variables if v.layer == norm_layers[0]]
        names = [v.var for v in vs]
        if self.format.startswith("keras3"):  # numbered in creation order
            names = list(table.NORMALIZATION_VARIABLES[:len(vs)])
        got = dict(zip(names, vs))
        if set(got) != set(table.NORMALIZATION_VARIABLES):
            raise ConversionError(f"{self.path}: Normalization layer {norm_layers[0]} holds {listing(names)}, "
                                  f"expected {', '.join(table.NORMALIZATION_VARIABLES)}")
        out = {}
        for k in ("mean", "variance"):
            value = np.asarray(self._file[got[k].path][()], dtype=np.float64).reshape(-1)
            if value.shape != (3,) or not np.isfinite(value).all():
                raise ConversionError(f"{self.path}: Normalization {k} is {value.tolist()}, expected 3 finite "
                                      "values (one per RGB channel)")
            out[k] = value
        out["raw_variance"] = np.asarray(self._file[got["variance"].path][()]).reshape(-1)
        return out

    def _index(self, by_layer: Dict[str, List[_Var]]) -> None:
        from ..mapping import expand

        spec = self.spec
        expected = keras_layers(spec)
        known = {layer.keras for layer in expected}
        unknown = sorted(n for n in by_layer if n not in known)
        missing = [layer.keras for layer in expected if layer.keras not in by_layer]
        if self._norm is None and spec.name not in KERAS_V2_VARIANTS:  # V2: constant preprocessing layers
            missing.insert(0, "normalization (the input Normalization layer)")
        if missing == ["predictions"] and not unknown:
            raise ConversionError(
                f"{self.path} has no classifier (saved with include_top=False): the converted model needs one; "
                "save the model built with include_top=True (your classes: classes=N)")
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({listing(missing)})")
        if unknown:
            problems.append(f"{len(unknown)} unknown ({listing(unknown)})")
        if problems:
            raise ConversionError(f"{self.path} does not match keras.applications EfficientNet{spec.name.upper()} "
                                  f"layer for layer: " + "; ".join(problems))

        tf_shapes = {e.tf_name: e.tf_shape for e in expand(spec)}
        self._vars: Dict[str, _Var] = {}
        self._keras_names: Dict[str, str] = {}
        var_problems, shape_problems = [], []
        for layer in expected:
            vs = by_layer[layer.keras]
            want = table.KERAS_VARIABLES[layer.kind]
            names = [v.var for v in vs]
            if self.format.startswith("keras3"):  # numbered 0..n in creation order
                if names != [str(i) for i in range(len(vs))] or len(vs) != len(want):
                    var_problems.append(f"{layer.keras} holds {len(vs)} variables, expected {len(want)}")
                    continue
                names = list(want)
            if sorted(names) != sorted(want):
                var_problems.append(f"{layer.keras} holds {'/'.join(names)}, expected {'/'.join(want)}")
                continue
            got = dict(zip(names, vs))
            for kvar, (tf_var, _) in zip(want, VARIABLES[layer.kind]):
                v = got[kvar]
                official = f"{spec.scope}/{layer.official}/{tf_var}"
                shape = tf_shapes[official]
                if layer.kind == DENSE:  # any number of classes (checked against --num-classes later)
                    classes = got["kernel"].shape[-1] if len(got["kernel"].shape) == 2 else "classes"
                    shape = (shape[0], classes) if len(shape) == 2 else (classes,)
                if v.shape != shape:
                    shape_problems.append(f"{layer.keras}/{kvar} is {list(v.shape)} not {list(shape)}")
                self._vars[official] = v
                self._keras_names[official] = f"{layer.keras}/{kvar}"
        if var_problems:
            raise ConversionError(f"{self.path}: unexpected variables in {len(var_problems)} layers "
                                  f"({listing(var_problems)})")
        if shape_problems:
            raise ConversionError(f"{self.path} does not fit EfficientNet{spec.name.upper()}: {len(shape_problems)} "
                                  f"variables with a wrong shape ({listing(shape_problems)})")

    # -- CheckpointReader --------------------------------------------------------------------

    def names(self) -> List[str]:
        """The official names of every network variable (no EMA twins: Keras keeps none)."""
        return sorted(self._vars)

    def shape(self, name: str) -> Tuple[int, ...]:
        return self._vars[name].shape

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self._vars[name].dtype)

    def read(self, name: str) -> np.ndarray:
        """One dataset, read from the file on demand."""
        v = self._vars[name]
        try:
            value = np.asarray(self._file[v.path][()])
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            first = first_line(e, limit=200)
            raise ConversionError(f"cannot read {v.layer}/{v.var} from {self.path}: {first} "
                                  "(truncated or corrupt file? save it again)") from None
        if value.shape != v.shape:
            raise ConversionError(f"{v.layer}/{v.var} in {self.path} reads as {list(value.shape)}, "
                                  f"expected {list(v.shape)}: corrupt file")
        return value

    def keras_name(self, name: str) -> str:
        """The Keras variable an official name comes from (``stem_conv/kernel``)."""
        return self._keras_names[name]

    def close(self) -> None:
        self._file.close()

    # -- preprocessing -----------------------------------------------------------------------

    def preprocessing(self) -> Dict[str, object]:
        """mean/std (0-1 scale: the model computes ``(x / 255 - mean) / std``) and how std was derived."""
        if self.spec.name in KERAS_V2_VARIANTS:
            return keras_v2_preprocessing(self.spec)
        mean, var, raw = self._norm["mean"], self._norm["variance"], self._norm["raw_variance"]
        imagenet = np.array_equal(raw.astype(np.float32), np.asarray(IMAGENET_STDDEV_RGB, np.float32))
        if imagenet:
            std = [float(s) for s in IMAGENET_STDDEV_RGB]  # Normalization's sqrt(var) * Rescaling's sqrt(std)
        else:
            if np.any(var < 0):
                raise ConversionError(f"{self.path}: the Normalization variance {var.tolist()} is negative")
            std = [_clean(max(math.sqrt(v), KERAS_EPSILON)) for v in var]
        return {"mean": [_clean(m) for m in mean], "std": std,
                "keras_normalization": NORMALIZATION_IMAGENET if imagenet else NORMALIZATION_PLAIN}


def keras_v2_preprocessing(spec: ArchSpec) -> Dict[str, object]:
    """keras.applications EfficientNetV2 (include_preprocessing): constant layers, no weights.

    B0-B3: Rescaling(1/255) -> Normalization(ImageNet mean, variance = std ** 2), the official
    B-series 1k eval (``v1``: crop res / (res + 32), bicubic); S/M/L: Rescaling(1/128, offset=-1),
    ``(x - 128) / 128``, the official S/M/L 1k eval (``v2``: bilinear, no crop at 384/480).
    keras/src/applications/efficientnet_v2.py (the same values as the official checkpoints').
    """
    note = {"keras_normalization": "constant (keras.applications EfficientNetV2 preprocessing layers)"}
    if spec.name.startswith("v2-b"):
        return {"mean": list(IMAGENET_MEAN_RGB), "std": list(IMAGENET_STDDEV_RGB), "preprocessing": "v1", **note}
    return {"mean": list(KERAS_V2_MEAN), "std": list(KERAS_V2_STD), "preprocessing": "v2", "crop_pct": 1.0,
            "interpolation": "bilinear", **note}


def _clean(x: float) -> float:
    """The shortest decimal that reads back as the same float32 (0.485, not 0.48500001430511475)."""
    return float(str(np.float32(x)))


def output_stem(spec: ArchSpec) -> str:
    """Name of the converted files: ``keras-efficientnetb0`` (Keras's own model name, prefixed)."""
    return f"keras-efficientnet{spec.name}"
