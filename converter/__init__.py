"""effnet-convert: the official TensorFlow EfficientNet checkpoints, converted to PyTorch and verified."""

__version__ = "0.1.0"

from .errors import ConversionError, VerificationError  # noqa: E402


def build_model(variant, num_classes=None):
    """A PyTorch EfficientNet for ``variant`` (see converter.model.build_model)."""
    from .model import build_model as _build

    return _build(variant, num_classes)


def load_model(path, device="cpu", endpoints=None, **kwargs):
    """Load a converted file (.safetensors or .pth) into the module, in eval mode (converter.loading.load_model);
    with ``endpoints`` (official endpoint names, or ``"reductions"``) a backbone returning those maps."""
    from .loading import load_model as _load

    return _load(path, device=device, endpoints=endpoints, **kwargs)


__all__ = ["ConversionError", "VerificationError", "build_model", "load_model", "__version__"]
