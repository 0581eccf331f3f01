"""The PyTorch module of EfficientNetV2's fused block (kind ``fused_v2``), in eval mode.

google/automl efficientnetv2 effnetv2_model.FusedMBConvBlock: EdgeTPU's fused block with the
stride on the kxk expand conv, [SE] after its activation, and without expansion one strided kxk
conv followed by the activation (``KXK_ALONE``).
"""
from ..efficientnet.modules import FusedMBConv


class FusedMBConvV2(FusedMBConv):
    """effnetv2_model.FusedMBConvBlock (block kind ``fused_v2``): see FusedMBConv, ``KXK_ALONE``."""

    BN_FUSION = FusedMBConv.BN_FUSION  # converter.fast reads a class's own declaration
    KXK_ALONE = True
