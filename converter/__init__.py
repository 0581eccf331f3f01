"""effnet-convert: the official TensorFlow EfficientNet checkpoints, converted to PyTorch and verified."""

__version__ = "0.1.0"

from .errors import ConversionError, VerificationError  # noqa: E402
from . import arch_v2 as _arch_v2  # noqa: E402,F401  (registers the EfficientNetV2 family in converter.arch)
from . import mnasnet as _mnasnet  # noqa: E402,F401  (registers MnasNet and MixNet in converter.arch)
from . import zoo_mnasnet as _zoo_mnasnet  # noqa: E402,F401  (registers their checkpoints in converter.zoo)
from . import zoo_v2 as _zoo_v2  # noqa: E402,F401  (registers its checkpoints in converter.zoo)


def build_model(variant, num_classes=None):
    """A PyTorch EfficientNet for ``variant`` (see converter.model.build_model)."""
    from .model import build_model as _build

    return _build(variant, num_classes)


def load_model(path, device="cpu"):
    """Load a converted file (.safetensors or .pth) into the module, in eval mode."""
    from .loading import load_model as _load

    return _load(path, device=device)


__all__ = ["ConversionError", "VerificationError", "build_model", "load_model", "__version__"]
