"""Mapping tables against the official inventories and the PyTorch module."""
import json

import pytest
import torch

from converter import build_model
from converter.families.efficientnet.arch import ARCHS
from converter.registry import get_arch
from converter.mapping import expand

INVENTORY_VARIANTS = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "l2"]


@pytest.mark.parametrize("variant", INVENTORY_VARIANTS)
def test_table_names_and_shapes_equal_official_inventory(variant, reference_dir):
    spec = get_arch(variant)
    inventory = json.loads((reference_dir / "inventory" / f"{spec.scope}.json").read_text())
    expected = [(n, tuple(s)) for n, s in inventory]
    got = [(e.tf_name, e.tf_shape) for e in expand(variant)]
    assert sorted(got) == sorted(expected)


@pytest.mark.parametrize("variant", list(ARCHS))
def test_table_keys_and_shapes_equal_module_state_dict(variant):
    with torch.device("meta"):
        sd = build_model(variant).state_dict()
    entries = expand(variant)
    assert [e.key for e in entries] == list(sd)  # same keys, in module order
    for e in entries:
        assert tuple(sd[e.key].shape) == e.shape, e.key


def test_tables_are_two_rule_sets():
    """Blocks with and without expand conv use their own rows; TF counters differ between them."""
    e = {x.key: x.tf_name for x in expand("b0")}
    assert e["blocks.0.project_conv.weight"] == "efficientnet-b0/blocks_0/conv2d/kernel"
    assert e["blocks.0.bn2.running_var"] == "efficientnet-b0/blocks_0/tpu_batch_normalization_1/moving_variance"
    assert e["blocks.1.expand_conv.weight"] == "efficientnet-b0/blocks_1/conv2d/kernel"
    assert e["blocks.1.project_conv.weight"] == "efficientnet-b0/blocks_1/conv2d_1/kernel"
    assert e["blocks.1.bn2.weight"] == "efficientnet-b0/blocks_1/tpu_batch_normalization_2/gamma"
    assert e["blocks.1.dw_conv.weight"] == "efficientnet-b0/blocks_1/depthwise_conv2d/depthwise_kernel"
    assert e["classifier.weight"] == "efficientnet-b0/head/dense/kernel"
    assert e["head.bn.bias"] == "efficientnet-b0/head/tpu_batch_normalization/beta"
    # l2-475 shares l2's scope and names
    assert [x.tf_name for x in expand("l2-475")] == [x.tf_name for x in expand("l2")]


def test_num_classes_flows_into_table():
    spec = get_arch("b0").with_classes(10)
    e = {x.key: x for x in expand(spec)}
    assert e["classifier.weight"].tf_shape == (1280, 10) and e["classifier.weight"].shape == (10, 1280)
    assert e["classifier.bias"].shape == (10,)
