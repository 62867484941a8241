"""The policy API: NHWC boundaries, activations and forward_from agree with forward."""

from __future__ import annotations

import pytest
import torch

from gallery.models.checkpoint import ARG_DEFAULTS, Checkpoint
from gallery.models.networks import l2_pool, max_pool_same, same_padding
from gallery.models.policy import load_policy, policy_from_checkpoint
from tests.reference.checkpoints import make_checkpoint

CASES = [("clear", {}), ("impala", {}), ("impala", {"stack_channels": "8_16", "emb_size": 64}),
         ("nature", {"env_kind": "atari"}), ("clear", {"env_kind": "atari"}),
         ("impala", {"env_kind": "atari", "stack_channels": "4_8"})]


def _policy(cnn, **kw):
    raw = make_checkpoint(cnn, **kw)
    return policy_from_checkpoint(Checkpoint("mem.jd", "", raw["params"],
                                             {**ARG_DEFAULTS, **raw["args"]}))


@pytest.mark.parametrize("cnn,kw", CASES)
def test_forward_from_every_layer_reproduces_forward(cnn, kw):
    p = _policy(cnn, **kw)
    obs = torch.rand(3, *p.observation_shape, generator=torch.Generator().manual_seed(0))
    logits, value = p(obs)
    assert logits.shape == (3, p.num_actions) and value.shape == (3,)
    for layer in p.layer_names + ["input"]:
        acts = p.activations(obs, layer)
        assert tuple(acts.shape[1:]) == tuple(p.layer_shapes.get(layer, p.observation_shape))
        l2, v2 = p.forward_from(acts, layer, obs=obs)
        torch.testing.assert_close(l2, logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(v2, value, rtol=0, atol=1e-5)


def test_activations_stop_at_the_layer():
    """A layer's activations run the network up to that layer only: the first layer's
    leave every later convolution and both heads alone."""
    p = _policy("clear")
    called = []
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: called.append(name))
             for name, module in p.network.layers.items()]
    hooks += [head.register_forward_hook(lambda m, i, o: called.append("head"))
              for head in (p.network.pi, p.network.vf)]
    p.activations(torch.rand(2, *p.observation_shape), p.layer_names[0])
    assert len(called) == 1 and called[0].endswith("1a__conv2d__Conv2D")
    for hook in hooks:
        hook.remove()


def test_impala_block_entries_keep_the_skip_path():
    p = _policy("impala", stack_channels="8")
    obs = torch.rand(2, 64, 64, 3)
    with pytest.raises(Exception, match="not a bottleneck"):
        p.forward_from(p.activations(obs, "stack1/block1"), "stack1/block1")
    zero = torch.zeros(2, *p.layer_shapes["stack1/block1"])
    _, v_zero = p.forward_from(zero, "stack1/block1", obs=obs)
    # zeroing the entry ReLU keeps the skip connection: not the same as a zero pool output
    pooled = p.network.run(p.activations_nchw(obs, "input"),
                           keep=frozenset(["ppo2_model/pi/stack1/MaxPool"]))[1]
    assert pooled["ppo2_model/pi/stack1/MaxPool"].abs().sum() > 0
    _, v = p(obs)
    assert not torch.allclose(v_zero, v)


def test_forward_from_uses_the_given_activations():
    p = _policy("clear")
    obs = torch.rand(2, 64, 64, 3)
    acts = p.activations(obs, "3a")
    _, v_zero = p.forward_from(torch.zeros_like(acts), "3a")
    _, v = p.forward_from(acts, "3a")
    assert not torch.allclose(v, v_zero)


def test_non_bottleneck_layer_needs_observations():
    from gallery.models.layers import LayerOptions
    raw = make_checkpoint("impala", stack_channels="8")
    p = policy_from_checkpoint(Checkpoint("m", "", raw["params"], {**ARG_DEFAULTS, **raw["args"]}),
                               LayerOptions(bottleneck_only=False))
    obs = torch.rand(2, 64, 64, 3)
    inner = "stack1/block1/Relu_1"
    with pytest.raises(Exception, match="not a bottleneck"):
        p.forward_from(p.activations(obs, inner), inner)
    logits, value = p(obs)
    l2, v2 = p.forward_from(p.activations(obs, inner), inner, obs=obs)
    torch.testing.assert_close(v2, value, rtol=0, atol=1e-5)


def test_tensorflow_same_padding_rule():
    # TensorFlow puts the extra padding after: n=64, k=3, s=2 -> (0, 1)
    assert same_padding(64, 3, 2) == (0, 1)
    assert same_padding(21, 2, 2) == (0, 1)
    assert same_padding(64, 7, 1) == (3, 3)
    assert same_padding(84, 8, 4) == (2, 2)


def test_l2_pool_divides_by_valid_elements():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    out = l2_pool(x)
    # 3x3 -> 2x2; the right column and bottom row windows have 2 and 1 valid elements
    expect = torch.tensor([[[(0 + 1 + 9 + 16) / 4, (4 + 25) / 2], [(36 + 49) / 2, 64.0]]])
    torch.testing.assert_close(out[0], torch.sqrt(expect + 1e-8))


def test_max_pool_padding_never_wins():
    x = -torch.ones(1, 1, 4, 4)
    assert torch.all(max_pool_same(x) == -1)
    assert max_pool_same(x).shape == (1, 1, 2, 2)


def test_real_policy_values_are_sane(coinrun_path):
    p = load_policy(coinrun_path)
    obs = torch.rand(4, 64, 64, 3)
    logits, value = p(obs)
    assert torch.isfinite(logits).all() and torch.isfinite(value).all()
    assert torch.allclose(torch.softmax(logits, -1).sum(-1), torch.ones(4))
