"""Name-mapping tables: official TensorFlow layer names <-> PyTorch module paths, one table per layout.

Installed as ``converter.mappings`` (setup.cfg package_dir); tables are data, expanded per
variant over the decoded block list by ``converter.mapping.expand``. Each table file declares its
layout as ``LAYOUT = Layout(...)`` (layout.py); converter.mapping finds them by walking this package.
"""
