"""The layers offered for attribution follow the original tool's bottleneck rule."""

from __future__ import annotations

import pytest

from gallery.models.checkpoint import ARG_DEFAULTS, Checkpoint
from gallery.models.layers import LayerOptions, bottlenecks
from gallery.models.policy import Policy, policy_from_checkpoint
from tests.reference.checkpoints import make_checkpoint


def _policy(cnn: str, options: LayerOptions = LayerOptions(), **kw) -> Policy:
    raw = make_checkpoint(cnn, **kw)
    args = {**ARG_DEFAULTS, **raw["args"]}
    return policy_from_checkpoint(Checkpoint("mem.jd", "", raw["params"], args), options)


def test_clear_offers_every_conv_relu():
    assert _policy("clear").layer_names == ["1a", "2a", "2b", "3a", "4a"]


def test_nature_offers_the_three_conv_relus():
    p = _policy("nature", env_kind="atari")
    assert p.layer_names == ["c1", "c2", "c3"]
    assert p.layer_shapes == {"c1": (20, 20, 32), "c2": (9, 9, 64), "c3": (7, 7, 64)}


def test_impala_offers_block_entries_only():
    p = _policy("impala")
    assert p.layer_names == [f"stack{s}/block{b}" for s in (1, 2, 3) for b in (1, 2)]
    assert p.layer_shapes["stack1/block1"] == (32, 32, 16)
    assert p.layer_shapes["stack3/block2"] == (8, 8, 32)


def test_impala_other_depths():
    p = _policy("impala", stack_channels="8_16", emb_size=64)
    assert p.layer_names == ["stack1/block1", "stack1/block2", "stack2/block1", "stack2/block2"]
    assert p.layer_shapes["stack2/block2"] == (16, 16, 16)


def test_impala_bottlenecks_are_pools_and_sums():
    p = _policy("impala", stack_channels="8")
    names = {n.name.split("/pi/")[-1] for n in p.network.nodes if n.name in bottlenecks(
        p.network.nodes)}
    assert {"stack1/MaxPool", "stack1/block1/add", "stack1/block2/add"} <= names
    assert "stack1/block1/Relu" not in names  # the skip connection bypasses it


def test_bottleneck_rule_off_adds_inner_relus():
    p = _policy("impala", LayerOptions(bottleneck_only=False), stack_channels="8")
    assert p.layer_names == ["stack1/block1", "stack1/block1/Relu_1",
                             "stack1/block2", "stack1/block2/Relu_1"]


def test_name_filter_discard_and_input():
    p = _policy("clear", LayerOptions(include=("2",), discard_first_n=1, input_layer=True))
    assert p.layer_names == ["input", "2b"]
    assert p.layer_shapes["input"] == (64, 64, 3)


def test_other_op_types():
    p = _policy("clear", LayerOptions(op_types=("l2pool",)))
    assert p.layer_names == ["1a/l2pool", "2b/l2pool", "3a/l2pool", "4a/l2pool"]


def test_unknown_layer_lists_the_offered_ones():
    p = _policy("clear")
    with pytest.raises(Exception, match="offers 1a, 2a, 2b, 3a, 4a"):
        p.activations_nchw(__import__("torch").zeros(1, 64, 64, 3), "5a")
