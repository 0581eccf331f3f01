"""Layer kinds used by the tables: the kind of the TARGET module decides variables and layout.

For each kind: (official variable, PyTorch tensor) pairs, in the module's state_dict order.
"""
CONV = "conv"            # nn.Conv2d without bias: kernel [kh, kw, in, out] -> weight [out, in, kh, kw]
CONV_BIAS = "conv_bias"  # nn.Conv2d with bias (squeeze-excitation)
DWCONV = "dwconv"        # depthwise nn.Conv2d: depthwise_kernel [kh, kw, c, 1] -> weight [c, 1, kh, kw]
BN = "bn"                # BatchNorm2d: gamma/beta/moving_mean/moving_variance
DENSE = "dense"          # nn.Linear: kernel [in, out] -> weight [out, in]

VARIABLES = {
    CONV: (("kernel", "weight"),),
    CONV_BIAS: (("kernel", "weight"), ("bias", "bias")),
    DWCONV: (("depthwise_kernel", "weight"),),
    BN: (("gamma", "weight"), ("beta", "bias"),
         ("moving_mean", "running_mean"), ("moving_variance", "running_var")),
    DENSE: (("kernel", "weight"), ("bias", "bias")),
}

# CondConv (condconv_layers.CondConv2D / DepthwiseCondConv2D): the per-expert kernels, flattened
# in TF order [experts, kh*kw*in*out] (depthwise: [experts, kh*kw*c*1]); the module
# (converter/families/efficientnet/modules.py CondConv2dSame) keeps that layout and reshapes the routed kernel itself.
CONDCONV = "condconv"
DWCONDCONV = "dwcondconv"
VARIABLES[CONDCONV] = (("condconv_kernel", "weight"),)
VARIABLES[DWCONDCONV] = (("depthwise_condconv_kernel", "weight"),)

# timm's CondConv2d (timm/layers/cond_conv2d.py): the same [experts, kh*kw*in*out] variables, each
# expert's kernel flattened in PyTorch order (out, in/groups, kh, kw) instead: it computes
# ``(routing @ weight).view(B * out, in // groups, kh, kw)``.
CONDCONV_OIHW = "condconv_oihw"
DWCONDCONV_OIHW = "dwcondconv_oihw"
VARIABLES[CONDCONV_OIHW] = VARIABLES[CONDCONV]
VARIABLES[DWCONDCONV_OIHW] = VARIABLES[DWCONDCONV]

# kinds whose variable holds per-expert kernels flattened to [experts, kh*kw*in*out]: a table row
# gives their shape as (experts, kh, kw, in, out) (the unflattened kernel: converter/reorder.py
# needs it to re-order the flattened axis)
FLATTENED = (CONDCONV, DWCONDCONV, CONDCONV_OIHW, DWCONDCONV_OIHW)

# BatchNorm2d of the libraries' models (timm, mmpretrain): the BN variables plus the
# ``num_batches_tracked`` buffer their strict load_state_dict wants. It is no checkpoint variable:
# CONSTANTS gives its value (an int64 scalar 0, the count of a module that never trained in
# PyTorch; eval ignores it), written without reading anything from the checkpoint.
BN_TRACKED = "bn_tracked"
VARIABLES[BN_TRACKED] = VARIABLES[BN]

# kind -> ((PyTorch tensor, value, numpy dtype name), ...): tensors not read from the checkpoint
CONSTANTS = {
    BN_TRACKED: (("num_batches_tracked", 0, "int64"),),
}
