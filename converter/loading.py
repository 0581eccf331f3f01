"""Load a converted file back into the PyTorch module, with its preprocessing metadata."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

from .errors import ConversionError
from .metadata import REQUIRED, decode, pth_unpack
from .writer import read_safetensors_metadata


def read_weights(path) -> Tuple[Dict[str, "object"], Dict[str, object]]:
    """(state_dict of torch tensors, decoded metadata) of a converted .safetensors or .pth file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        meta = read_safetensors_metadata(path)
        try:
            sd = load_file(str(path))
        except Exception as e:
            raise ConversionError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConversionError(f"cannot read {path} as a PyTorch state_dict: {str(e).splitlines()[0][:200]}") from None
        sd, meta = pth_unpack(sd)  # a plain state_dict, or mmengine's {"state_dict", "meta"} (mmpretrain layout)
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ConversionError(f"{path} has no effnet-convert metadata ({', '.join(missing)} missing): "
                              "was it written by convert-effnet?")
    return dict(sd), decode(meta)


def load_model(path, device: str = "cpu"):
    """The converted model in eval mode, weights loaded strictly, ``model.pretrained_cfg`` set.

    A timm / mmpretrain layout file is re-keyed to the native model (mapping.to_native).
    """
    from .model import build_model

    sd, cfg = read_weights(path)
    if cfg.get("layout", "native") != "native":  # timm / mmpretrain: the same tensors under other keys
        from .arch import get_arch
        from .mapping import to_native

        sd = to_native(sd, get_arch(cfg["variant"]).with_classes(int(cfg["num_classes"])), cfg["layout"])
    model = build_model(cfg["variant"], num_classes=int(cfg["num_classes"]))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ConversionError(f"{path} does not fit the {cfg['variant']} model: {str(e).splitlines()[0]}") from None
    model.pretrained_cfg = cfg
    return model.eval().to(device)
