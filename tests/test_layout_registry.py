"""Layouts as objects (issue 15 point 2): every table file in mappings/ declares one ``Layout``, found
from the package; the CLI's --layout choices and help come from that registry; a new layout is one
new file."""
import importlib
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

import converter.mappings as tables_pkg
from converter import cli, mapping
from converter.registry import get_arch
from converter.errors import ConversionError
from converter.mappings.layout import Layout

TABLES = Path(tables_pkg.__file__).parent
# files of mappings/ that are no layout: the package, the layer kinds, the declaration class and
# the Keras input table (keras.applications names -> official names, read, never written)
NOT_LAYOUTS = {"__init__", "kinds", "layout", "keras"}


def _layout_option():
    return next(a for a in cli._convert_parser()._actions if "--layout" in a.option_strings)


def test_registry_finds_every_table_files_layout():
    declared = {}
    for f in sorted(TABLES.glob("*.py")):  # the folder itself, not pkgutil: what the registry must find
        module = importlib.import_module(f"converter.mappings.{f.stem}")
        lay = getattr(module, "LAYOUT", None)
        assert (lay is None) == (f.stem in NOT_LAYOUTS), f.name
        if lay is not None:
            assert isinstance(lay, Layout), f.name
            declared[f.stem] = lay
    assert {m.__name__.rpartition(".")[2]: lay for lay, m in mapping._declared()} == declared
    # the registry is the folder's declarations (above); these are among them (a new table file
    # needs no edit here)
    assert set(mapping.layouts()) == {lay.name for lay in declared.values()} >= {
        "native", "timm", "mmpretrain", "transformers", "efficientnet_pytorch"}
    tables = {(fam, lay.name): m.__name__.rpartition(".")[2] for lay, m in mapping._declared()
              for fam in lay.families or (None,)}
    assert {name: t for (fam, name), t in tables.items() if fam is None}.items() >= {
        "native": "efficientnet", "timm": "timm", "mmpretrain": "mmpretrain", "transformers": "transformers",
        "efficientnet_pytorch": "efficientnet_pytorch"}.items()
    assert {k: t for k, t in tables.items() if k[0] is not None} == {
        ("mnasnet", "native"): "mnasnet", ("mixnet", "native"): "mnasnet",
        ("mnasnet", "timm"): "timm_mnasnet", ("mixnet", "timm"): "timm_mnasnet"}
    # a family with tables of its own gets them; the others the EfficientNet-named declaration
    assert mapping.load_table("timm", get_arch("mixnet-s")).__name__ == "converter.mappings.timm_mnasnet"
    assert mapping.load_table("timm", get_arch("v2-s")).__name__ == "converter.mappings.timm"
    assert mapping.get_layout("native", get_arch("mnasnet-a1")).families == ("mnasnet", "mixnet")


def test_declared_variants_are_real():
    """Every variant a declaration names (its library model, or a refusal) is one the toolkit has."""
    for lay, _ in mapping._declared():
        for name in (*(lay.variants or {}), *lay.not_official):
            spec = get_arch(name)
            if name in lay.not_official:
                with pytest.raises(ConversionError, match=f"layout {lay.name} has no model for variant {name}: "):
                    lay.check_variant(spec)
            else:
                lay.check_variant(spec)
                assert lay.library_model(spec) == lay.variants[name]


def test_cli_layout_choices_are_the_registry():
    action = _layout_option()
    known = mapping.layouts()
    assert action.metavar == "{" + ",".join(known) + "}" and action.default == "native"
    for name, lay in known.items():
        assert lay.summary and f"{name} (" in action.help and lay.summary in action.help


def test_layout_methods():
    lay = mapping.get_layout("mmpretrain")
    assert lay.output_stem("efficientnet-b0") == "efficientnet-b0.mmpretrain"
    assert mapping.get_layout("native").output_stem("efficientnet-b0") == "efficientnet-b0"
    payload = lay.pth_payload({"w": 1}, {"layout": "mmpretrain"})
    assert payload == {"meta": {"layout": "mmpretrain"}, "state_dict": {"w": 1}}
    sd = OrderedDict(w=1)  # what state_dict() returns: it takes the metadata as an attribute
    assert mapping.get_layout("timm").pth_payload(sd, {"layout": "timm"}) is sd
    assert sd.effnet_metadata == {"layout": "timm"}
    assert mapping.get_layout("transformers").file_form == "folder"
    assert {mapping.get_layout(n).file_form for n in ("native", "timm", "mmpretrain")} == {"file"}
    with pytest.raises(ValueError, match="fused_stride_on"):
        Layout("bad", fused_stride_on="3x3")
    with pytest.raises(ConversionError, match="unknown layout 'keras'"):
        mapping.get_layout("keras")


_TOY = '''"""A toy layout for tests: native's rows under another name, for b0 only."""
from converter.mappings.efficientnet import *  # noqa: F401,F403 (the rows)
from converter.mappings.layout import Layout

LAYOUT = Layout("toy", summary="a test layout", variants={"b0": "toy_b0"})
'''


def test_new_layout_is_one_new_file(tmp_path, monkeypatch):
    """A table file dropped into the package is a layout: CLI choice, expansion, refusal, file name."""
    (tmp_path / "toy.py").write_text(_TOY)
    monkeypatch.setattr(tables_pkg, "__path__", [*tables_pkg.__path__, str(tmp_path)])
    mapping._declared.cache_clear()
    try:
        assert "toy" in mapping.layouts() and "toy" in _layout_option().metavar
        native = [(e.tf_name, e.key, e.shape) for e in mapping.expand("b0")]
        assert [(e.tf_name, e.key, e.shape) for e in mapping.expand("b0", "toy")] == native
        with pytest.raises(ConversionError, match=r"layout toy has no model for variant b1 \(it has b0\)"):
            mapping.check_variant(get_arch("b1"), "toy")
        assert mapping.library_model(get_arch("b0"), "toy") == "toy_b0"
        assert mapping.output_stem("efficientnet-b0", "toy") == "efficientnet-b0.toy"
    finally:
        sys.modules.pop("converter.mappings.toy", None)
        mapping._declared.cache_clear()
