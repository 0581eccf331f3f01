"""The families: one package each (``FAMILY = Family(...)`` in its ``__init__``, converter/family.py).

converter.registry walks this package: a family is found by being here. Folders named in
``$EFFNET_FAMILIES_PATH`` (``os.pathsep``-separated) are searched too, so that a family can be
added without touching this tree (a plugin folder; the toy family test uses it).
"""
import os

FAMILIES_PATH_ENV = "EFFNET_FAMILIES_PATH"

__path__ = [*__path__, *(p for p in os.environ.get(FAMILIES_PATH_ENV, "").split(os.pathsep) if p)]
