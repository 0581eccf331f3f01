"""Checkpoint readers behind one small interface: names, shape, dtype, read one tensor.

The converter only talks to :class:`CheckpointReader`; a TensorFlow-free reader of the
tensor-bundle format can drop in without changes elsewhere.
"""
from __future__ import annotations

import os
from typing import List, Optional, Protocol, Tuple

import numpy as np

from ..errors import ConversionError, first_line


class CheckpointReader(Protocol):
    """What the converter needs from a checkpoint."""

    prefix: str

    def names(self) -> List[str]:
        """Every variable name in the checkpoint."""

    def shape(self, name: str) -> Tuple[int, ...]:
        """Shape of one variable."""

    def dtype(self, name: str) -> np.dtype:
        """numpy dtype of one variable."""

    def read(self, name: str) -> np.ndarray:
        """The value of one variable (read on demand, one at a time)."""


def _quiet_tensorflow():
    from ..tfref.tfimport import import_tensorflow

    try:
        tf = import_tensorflow()
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConversionError(
            f"--reader tf needs TensorFlow ({e}): pip install 'effnet-convert[verify]' "
            "(or tensorflow-cpu), or use the default --reader bundle") from None
    return tf


class TFCheckpointReader:
    """Reads a checkpoint with TensorFlow's own CheckpointReader (tf.train.load_checkpoint)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        tf = _quiet_tensorflow()
        try:
            self._reader = tf.train.load_checkpoint(prefix)
            self._shapes = {k: tuple(int(d) for d in v) for k, v in self._reader.get_variable_to_shape_map().items()}
            self._dtypes = {k: np.dtype(v.as_numpy_dtype) for k, v in self._reader.get_variable_to_dtype_map().items()}
        except Exception as e:  # TF raises several error types for bad files
            raise ConversionError(
                f"cannot open checkpoint {prefix}: {first_line(e)} (is the .index/.data pair complete?)") from None

    def names(self) -> List[str]:
        return sorted(self._shapes)

    def shape(self, name: str) -> Tuple[int, ...]:
        return self._shapes[name]

    def dtype(self, name: str) -> np.dtype:
        return self._dtypes[name]

    def read(self, name: str) -> np.ndarray:
        try:
            value = self._reader.get_tensor(name)
        except Exception as e:
            raise ConversionError(
                f"cannot read {name} from {self.prefix}: {first_line(e)} (truncated or corrupt data file? download it again)") from None
        value = np.asarray(value)
        if value.shape != self._shapes[name]:
            raise ConversionError(f"{name} in {self.prefix} reads as {list(value.shape)}, index says {list(self._shapes[name])}: corrupt checkpoint")
        return value


READERS = ("bundle", "tf")
READER_ENV = "EFFNET_READER"


def open_reader(prefix: str, kind: Optional[str] = None) -> CheckpointReader:
    """The reader for a checkpoint prefix (``.../model.ckpt``).

    ``kind``: ``bundle`` (default: converter/sources/bundle.py, no TensorFlow) or ``tf``
    (TensorFlow's own reader); ``$EFFNET_READER`` sets the default.
    """
    from .keras import KerasH5Reader, is_keras_file

    if is_keras_file(prefix):  # a keras.applications EfficientNet .h5: read under the official names
        return KerasH5Reader(prefix)
    kind = (kind or os.environ.get(READER_ENV) or "bundle").lower()
    if kind == "bundle":
        from .bundle import BundleReader

        return BundleReader(prefix)
    if kind == "tf":
        return TFCheckpointReader(prefix)
    raise ConversionError(f"unknown checkpoint reader {kind!r}; use one of {', '.join(READERS)}")
