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
