"""Families the TensorFlow reference computes with their own module (names and blocks not EfficientNet's).

``FAMILIES``: ArchSpec.family -> a module with variables(spec), bn_layers(spec), walk(spec, w, x, bn,
trace) (reference._walk's contract), aliases(spec, names), classifier(spec), residual_bns(spec) and
project_bns(spec); converter.tfref.reference and .generate dispatch to it. Filled when
converter/tfref/__init__.py imports those modules (converter/tfref/mnasnet.py: MnasNet, MixNet);
kept apart from reference.py so that ``python -m converter.tfref.reference`` runs the same registry.
"""
from typing import Dict

FAMILIES: Dict[str, object] = {}
