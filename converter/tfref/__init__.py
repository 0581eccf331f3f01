"""TensorFlow side of the toolkit: the reference forward pass and the checkpoint generator.

Deliberately independent of the PyTorch side: it shares the architectures and the families'
references (converter.registry, converter/families/*/reference.py), never imports torch,
and reads/writes variables by their official TensorFlow names. TensorFlow itself is imported
lazily (inside functions), so that ``python -m converter.tfref.reference --device cpu`` can hide
the GPUs before it loads.

- ``converter.tfref.reference``: ``forward``, ``calibrate``, ``read_checkpoint_getter``, CLI.
- ``converter.tfref.generate``: ``plan``, ``make_weights``, ``generate_checkpoint``,
  ``make_tarball``, CLI.
- ``converter.tfref.ops``: what the families' references are built from.
"""
