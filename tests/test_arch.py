"""Architecture registry: block strings, scaling, parameter counts against the model-zoo table."""
import csv
import json
import re

import pytest

from converter.families.efficientnet.arch import ARCHS
from converter.arch import BASE_BLOCKS, BlockArgs, same_padding
from converter.registry import count_macs, count_params, get_arch
from converter.errors import ConversionError
from converter.families.efficientnet.checkpoints import CHECKPOINTS, normalize_flavor
from converter.registry import find_checkpoint

EXTRA_CODES = [
    "r1_k3_s11_e1_i32_o16_se0.25_noskip",
    "r2_k5_s22_e6_i16_o24_c4_se0.25_cc",
    "r1_k3_s22_e8_i24_o32_f1",
    "r4_k5_s11_e6_i112_o192_p1_se0.5",
]


@pytest.mark.parametrize("code", list(BASE_BLOCKS) + EXTRA_CODES)
def test_block_string_round_trip(code):
    args = BlockArgs.decode(code)
    assert args.encode() == code
    assert BlockArgs.decode(args.encode()) == args


def test_block_decode_values():
    a = BlockArgs.decode("r2_k5_s22_e6_i24_o40_se0.25")
    assert (a.num_repeat, a.kernel_size, a.strides, a.expand_ratio) == (2, 5, (2, 2), 6)
    assert (a.input_filters, a.output_filters, a.se_ratio, a.id_skip) == (24, 40, 0.25, True)
    assert BlockArgs.decode("r1_k3_s11_e1_i32_o16_noskip").id_skip is False
    assert BlockArgs.decode("r1_k3_s11_e1_i32_o16").se_ratio is None


@pytest.mark.parametrize("bad", ["r1_k3_s1_e1_i32_o16", "k3_s11_e1_i32_o16", "r1_k3_s11_e1_i32_o16_zz9", "r1_k3_s11_e1_i32_o16_bogus"])
def test_block_decode_rejects(bad):
    with pytest.raises(ConversionError):
        BlockArgs.decode(bad)


def _zoo_rows(reference_dir):
    with open(reference_dir / "model-zoo.csv") as f:
        return list(csv.DictReader(f))


def test_param_counts_match_model_zoo(reference_dir):
    rows = _zoo_rows(reference_dir)
    assert len(rows) == 33
    for r in rows:
        n = count_params(get_arch(r["variant"]))
        assert f"{n / 1e6:.2f}" == r["params_m"], r["model"]


def test_built_module_has_the_zoo_parameter_count(reference_dir):
    import torch

    from converter import build_model

    seen = set()
    for r in _zoo_rows(reference_dir):
        if r["variant"] in seen:
            continue
        seen.add(r["variant"])
        with torch.device("meta"):
            m = build_model(r["variant"])
        n = sum(p.numel() for p in m.parameters())
        assert f"{n / 1e6:.2f}" == r["params_m"], r["variant"]
        assert n == count_params(get_arch(r["variant"]))


def test_registry_covers_model_zoo(reference_dir):
    rows = _zoo_rows(reference_dir)
    for r in rows:
        c = find_checkpoint(r["variant"], r["flavor"])
        assert c.zoo_name == r["model"]
        # top1 is the official published figure (tests/test_list.py), zoo_top1 the zoo page's
        assert (c.params_m, c.zoo_top1, c.top5) == (float(r["params_m"]), float(r["top1"]), float(r["top5"]))
        assert find_checkpoint(None, r["model"]) == c  # zoo names work as --flavor
    assert len([c for c in CHECKPOINTS if c.arch.family == "efficientnet"]) == 35
    assert len(CHECKPOINTS) == 35 + 11  # + Lite0-4, EdgeTPU S/M/L, CondConv x3 (tests/test_family.py)
    ra = [c for c in CHECKPOINTS if c.flavor == "randaug"]
    assert sorted(c.variant for c in ra) == ["b5", "b7"]
    assert ra[0].url.endswith("randaug/efficientnet-b5-randaug.tar.gz")


def test_registry_urls_and_preprocessing():
    base = "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/"
    assert find_checkpoint("b0", "standard").url == base + "ckpts/efficientnet-b0.tar.gz"
    assert find_checkpoint("b3", "aa").url == base + "ckptsaug/efficientnet-b3.tar.gz"
    assert find_checkpoint("b8", "advprop").url == base + "advprop/efficientnet-b8.tar.gz"
    assert find_checkpoint("b1", "ns").url == base + "noisystudent/noisy_student_efficientnet-b1.tar.gz"
    assert find_checkpoint("l2-475", None).url == base + "noisystudent/noisy_student_efficientnet-l2_475.tar.gz"
    assert find_checkpoint("l2", None).url == base + "noisystudent/noisy_student_efficientnet-l2.tar.gz"
    ap = find_checkpoint("b4", "advprop")
    assert ap.mean == (0.5, 0.5, 0.5) and ap.std == (0.5, 0.5, 0.5)
    st = find_checkpoint("b4", "aa")
    assert st.mean == (0.485, 0.456, 0.406) and st.std == (0.229, 0.224, 0.225)
    assert abs(find_checkpoint("b0", "aa").crop_pct - 0.875) < 1e-12
    assert abs(find_checkpoint("l2-475", None).crop_pct - 475 / 507) < 1e-12
    assert find_checkpoint("l2-475", None).resolution == 475
    assert find_checkpoint("b7", "randaug").interpolation == "bicubic"


def test_registry_errors():
    with pytest.raises(ConversionError, match="no official standard checkpoint of b6"):
        find_checkpoint("b6", "standard")
    with pytest.raises(ConversionError, match="--flavor is required"):
        find_checkpoint("b4", None)
    with pytest.raises(ConversionError, match="unknown variant"):
        find_checkpoint("b9", "aa")
    with pytest.raises(ConversionError, match="unknown flavor"):
        normalize_flavor("imagenet21k")
    with pytest.raises(ConversionError, match="is a b4 checkpoint"):
        find_checkpoint("b0", "efficientnet-b4_3rdparty_8xb32-aa-advprop_in1k")


def test_scaling_matches_inventory(reference_dir):
    """Stem/head widths and block count of every variant against the official inventories."""
    for name, spec in ARCHS.items():
        inv = dict((n, s) for n, s in json.loads((reference_dir / "inventory" / f"{spec.scope}.json").read_text()))
        assert inv[f"{spec.scope}/stem/conv2d/kernel"] == [3, 3, 3, spec.stem_channels]
        assert inv[f"{spec.scope}/head/conv2d/kernel"][3] == spec.head_channels
        # CondConv kernels sit under an extra model/ element (model/blocks_N/...)
        nblocks = len({re.search(r"/blocks_(\d+)/", n).group(1) for n in inv if "/blocks_" in n})
        assert nblocks == len(spec.blocks()), name


def test_same_padding_rule():
    # independent: out = ceil(n/s); total = max((out-1)*s + k - n, 0); extra pixel after
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(224, 5, 2) == (1, 2)
    assert same_padding(475, 3, 2) == (1, 1)
    assert same_padding(238, 5, 2) == (1, 2)
    assert same_padding(7, 5, 1) == (2, 2)
    assert same_padding(1, 5, 2) == (2, 2)


def test_macs_b0_paper():
    # the paper's 0.39B FLOPs (multiply-adds) for B0 at 224
    assert round(count_macs(get_arch("b0")) / 1e9, 2) == 0.39
    assert count_macs(get_arch("l2")) > count_macs(get_arch("l2-475"))


def test_every_block_kind_has_all_its_parts():
    """A block kind is declared by its family with all its parts: cost (registry), module (model),
    rule sets (the native table of its family, or its own), TF reference (tfref) -- every family's
    kinds alike, MnasNet's and MixNet's included."""
    import torch

    from converter import mapping, registry

    used = {}
    for family in registry.families():
        for spec in family.archs.values():
            assert registry.family_of(spec) is family
            for b in spec.blocks():
                used.setdefault((b.kind, b.has_expand), (spec, b))
                assert registry.kind_of(b) is registry.kinds()[b.kind]
    assert {k for k, _ in used} == set(registry.kinds()), "a declared kind no architecture uses, or the reverse"
    for (kind, _), (spec, b) in used.items():
        k = registry.kinds()[kind]
        assert issubclass(k.module(), torch.nn.Module), kind
        lay, table = mapping._find("native", spec)
        assert mapping._block_rows(table, lay, b), kind
        ref = k.reference()
        assert ref.names(spec, b).bn2 and ref.block_variables(spec, b, ref.names(spec, b)), kind
        assert k.params(b) > 0 and k.macs(b, 32)[0] > 0, kind


def test_unregistered_block_kind_is_refused_everywhere():
    from dataclasses import replace

    import pytest as _pytest
    from converter import mapping, model, registry
    from converter.mappings import efficientnet as native
    from converter.registry import get_arch
    from converter.tfref import reference

    b = replace(get_arch("b0").blocks()[1], kind="nonesuch")
    for call in (lambda: registry.kind_of(b), lambda: model.make_block(b, 1e-3, "swish"),
                 lambda: mapping._block_rows(native, mapping.get_layout("native"), b),
                 lambda: reference.block_ref(b)):
        with _pytest.raises(RuntimeError, match="nonesuch"):
            call()
