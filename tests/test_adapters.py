"""A PyTorch model from another code base plugs in through a `module:factory` adapter."""

from __future__ import annotations

import json

import pytest
import torch

from examples.adapters.cleanrl_procgen import Agent
from gallery.adapters import AdapterError, load_any
from gallery.cli import main

SPEC = "examples.adapters.cleanrl_procgen:make"


@pytest.fixture
def agent_file(tmp_path):
    torch.manual_seed(0)
    agent = Agent()
    path = tmp_path / "agent.pt"
    torch.save(agent.state_dict(), path)
    return agent, path


def test_adapter_policy_matches_the_model(agent_file):
    agent, path = agent_file
    policy = load_any(str(path), adapter=SPEC)
    obs = torch.rand(4, 64, 64, 3)
    logits, value = policy(obs)
    want_logits, want_value = agent(obs * 255.0)
    torch.testing.assert_close(logits, want_logits)
    torch.testing.assert_close(value, want_value)
    assert policy.layer_names == ["seq0", "seq1", "seq2"]
    assert policy.layer_shapes["seq1"] == (16, 16, 32)
    for layer in policy.layer_names:
        acts = policy.activations(obs, layer)
        l2, v2 = policy.forward_from(acts, layer)  # bottlenecks: no observations needed
        torch.testing.assert_close(v2, value, rtol=0, atol=1e-5)
        torch.testing.assert_close(l2, logits, rtol=0, atol=1e-5)
    _, v_zero = policy.forward_from(torch.zeros_like(policy.activations(obs, "seq1")), "seq1")
    assert not torch.allclose(v_zero, value)


def test_inspect_through_the_adapter(agent_file, capsys):
    _, path = agent_file
    assert main(["inspect", str(path), "--adapter", SPEC, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "cleanrl-impala"
    assert len(info["actions"]) == 15 and info["actions"][7] == "RIGHT"
    assert [layer["name"] for layer in info["layers"]] == ["seq0", "seq1", "seq2"]


def test_bad_adapters_are_clear(capsys):
    with pytest.raises(AdapterError, match="module.path:function"):
        load_any("x", adapter="not a spec")
    with pytest.raises(AdapterError, match="cannot import"):
        load_any("x", adapter="no_such_module_here:make")
    assert main(["inspect", "x", "--adapter", "examples.adapters.cleanrl_procgen:nope"]) == 2
    assert "has no function nope" in capsys.readouterr().err
