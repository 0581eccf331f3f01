"""The factor both verdicts share (the logits' in converter.verify, every tap's in converter.verify.trace)."""

# A correct port's float32 error stays within a few times float32's own (both are float32
# computations with different summation orders; measured 1.1-2.5x); a wrong tensor is orders of
# magnitude off.
NOISE_FACTOR = 20.0
