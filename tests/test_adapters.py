"""A PyTorch model from another code base plugs in through a `module:factory` adapter: the
shipped examples (CleanRL Procgen, CleanRL Atari, train-procgen-pytorch IMPALA) pass the
adapter checks on real frames of their games, and bad adapters get errors naming the layer
and the fix."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from torch import nn

from examples.adapters import cleanrl_atari, cleanrl_procgen, procgen_tools_impala
from gallery import load_policy
from gallery.cli import main
from gallery.environments import PROCGEN_COMBOS, combo_name
from gallery.models.adapters import (
    AdapterError,
    ExternalModel,
    check_adapter,
    environment_frames,
    load_any,
)

SPEC = "examples.adapters.cleanrl_procgen:make"


@pytest.fixture
def agent_file(tmp_path):
    torch.manual_seed(0)
    agent = cleanrl_procgen.Agent()
    path = tmp_path / "agent.pt"
    torch.save(agent.state_dict(), path)
    return agent, path


def test_adapter_policy_matches_the_model(agent_file):
    agent, path = agent_file
    policy = load_policy(path, adapter=SPEC)
    obs = torch.rand(4, 64, 64, 3)
    logits, value = policy(obs)
    want_logits, want_value = agent(obs * 255.0)
    torch.testing.assert_close(logits, want_logits)
    torch.testing.assert_close(value, want_value)
    assert policy.layer_names == ["seq0", "seq1", "seq2", "out"]
    assert policy.layer_shapes["seq1"] == (16, 16, 32)
    for layer in policy.layer_names:
        acts = policy.activations(obs, layer)
        assert acts.min() >= 0
        l2, v2 = policy.forward_from(acts, layer, obs)
        torch.testing.assert_close(v2, value, rtol=0, atol=1e-5)
        torch.testing.assert_close(l2, logits, rtol=0, atol=1e-5)
    l3, v3 = policy.forward_from(policy.activations(obs, "out"), "out")  # a bottleneck
    torch.testing.assert_close(v3, value, rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="not a bottleneck"):
        policy.forward_from(policy.activations(obs, "seq1"), "seq1")


# --- the shipped examples, on real frames of their games ---------------------------------


def _weights(tmp_path, module, wrap=False):
    torch.manual_seed(1)
    state = module.state_dict()
    path = tmp_path / "weights.pt"
    torch.save({"model_state_dict": state} if wrap else state, path)
    return path


EXAMPLES = {
    "cleanrl_procgen": (lambda: cleanrl_procgen.Agent(), False, (64, 64, 3)),
    "cleanrl_atari": (lambda: cleanrl_atari.Agent(4), False, (84, 84, 4)),
    "procgen_tools_impala": (lambda: procgen_tools_impala.CategoricalPolicy(), True,
                             (64, 64, 3)),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_examples_pass_the_checks_on_real_frames(tmp_path, name):
    build, wrap, shape = EXAMPLES[name]
    path = _weights(tmp_path, build(), wrap)
    policy = load_any(str(path), adapter=f"examples.adapters.{name}:make")
    assert policy.observation_shape == shape
    frames = environment_frames(policy, num_envs=2, steps=8)
    assert frames.shape == (16, *shape) and frames.std() > 0
    passed = check_adapter(policy, frames)
    assert len([p for p in passed if "non-negative" in p]) == len(policy.layer_names)


def test_the_procgen_example_makes_an_interface_on_real_rollouts(agent_file, tmp_path):
    """The example used to stop after NMF ('NMF transforms finite non-negative values
    only'): it offered pre-ReLU residual outputs."""
    from gallery.pipeline.interface import generate_interface

    _, path = agent_file
    out = tmp_path / "interface"
    generate_interface(str(path), out, adapter=SPEC, num_envs=1, num_steps=16,
                       obs_num_envs=4, num_obs=4, obs_every=4, bookmarks=2,
                       layers=["seq2", "out"], integrate_steps=2, nmf_features=3,
                       nmf_integrate_steps=2, cache_dir=str(tmp_path / "units"))
    bundle = json.loads((out / "bundle" / "bundle.json").read_text())
    assert [layer["name"] for layer in bundle["layers"]] == ["seq2", "out"]


def test_inspect_checks_the_adapter(agent_file, capsys):
    _, path = agent_file
    assert main(["inspect", str(path), "--adapter", SPEC, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "cleanrl-impala"
    assert len(info["actions"]) == 15 and info["actions"][7] == "RIGHT"
    assert [layer["name"] for layer in info["layers"]] == ["seq0", "seq1", "seq2", "out"]
    assert any("out: a bottleneck" in line for line in info["checks"])


# --- bad adapters ------------------------------------------------------------------------


class PreActivation(nn.Module):
    """Offers a convolution's raw output (negative values), and a functional ReLU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()  # defined, but forward uses torch.relu
        self.skip = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4 * 32 * 32, 16)

    def forward(self, x):
        h = torch.relu(self.conv(x)) + self.skip(x)
        out = self.head(h.flatten(1))
        return out[:, :15], out[:, 15]


def _register(monkeypatch, layers, partial=()):
    module = types.ModuleType("bad_adapter_for_tests")

    def make(checkpoint):
        torch.manual_seed(0)
        return ExternalModel(module=PreActivation(), layers=layers,
                             partial_layers=partial, observation_shape=(64, 64, 3),
                             action_names=[combo_name(c) for c in PROCGEN_COMBOS],
                             obs_layout="NCHW",
                             args={"env_kind": "procgen", "env_name": "coinrun"})

    def broken(checkpoint):
        raise RuntimeError("weights for another network")

    def pickled(checkpoint):
        return torch.load(checkpoint, weights_only=True)

    module.make, module.broken, module.pickled = make, broken, pickled
    monkeypatch.setitem(sys.modules, "bad_adapter_for_tests", module)


def test_negative_and_non_bottleneck_layers_are_named(monkeypatch):
    _register(monkeypatch, {"conv": "conv", "skip": "skip"})
    policy = load_any("bad_adapter_for_tests:make")
    with pytest.raises(AdapterError) as err:
        check_adapter(policy, torch.rand(4, 64, 64, 3))
    text = str(err.value)
    assert "layer 'conv' (conv) goes negative" in text and "ReLU module" in text
    assert "layer 'skip' is not a bottleneck" in text and "partial_layers" in text


def test_a_functional_relu_cannot_be_offered(monkeypatch):
    _register(monkeypatch, {"relu": "relu"})
    with pytest.raises(AdapterError, match="'relu' is never called.*nn.ReLU"):
        load_any("bad_adapter_for_tests:make")


def test_factories_that_fail_are_clear(monkeypatch, tmp_path):
    _register(monkeypatch, {})
    with pytest.raises(AdapterError, match="factory raised RuntimeError: weights for another"):
        load_any(None, adapter="bad_adapter_for_tests:broken")
    whole = tmp_path / "whole-module.pt"
    torch.save(cleanrl_procgen.Agent(), whole)  # the legacy torch.save(model)
    with pytest.raises(AdapterError, match=r"whole pickled module.*state_dict\(\)"):
        load_any(str(whole), adapter="bad_adapter_for_tests:pickled")


def test_bad_adapters_are_clear(capsys):
    with pytest.raises(AdapterError, match="module.path:function"):
        load_any("x", adapter="not a spec")
    with pytest.raises(AdapterError, match="cannot import"):
        load_any("x", adapter="no_such_module_here:make")
    assert main(["inspect", "x", "--adapter", "examples.adapters.cleanrl_procgen:nope"]) == 2
    assert "has no function nope" in capsys.readouterr().err


def test_a_manifest_model_built_by_its_adapter_alone(tmp_path, monkeypatch, capsys):
    """`adapter:` without `checkpoint:`: the factory builds the network (seeded, so that
    every process builds the same one); the model is keyed by the adapter's source."""
    from gallery.models.adapters import adapter_digest, load_adapter
    from gallery.pipeline.manifest import ManifestError, parse_manifest
    from tests.test_build import write_manifest

    spec = "examples.adapters.procgen_tools_impala:make"
    first, second = load_adapter(spec), load_adapter(spec)
    for a, b in zip(first.model.module.parameters(), second.model.module.parameters(),
                    strict=True):
        assert torch.equal(a, b)
    assert adapter_digest(spec) == adapter_digest(spec) != adapter_digest(SPEC)
    with pytest.raises(ManifestError, match="give `checkpoint:`"):
        parse_manifest("models: [{id: m, title: M}]", tmp_path / "checkpoints.yaml")

    manifest = write_manifest(tmp_path, [{
        "id": "fresh", "title": "Fresh IMPALA", "adapter": spec,
        "options": {"layers": {"include": ["out"]}}}])
    monkeypatch.setenv("GALLERY_CACHE", str(tmp_path / "cache"))
    assert main(["build", "-m", str(manifest), "-o", str(tmp_path / "site")]) == 0
    assert "models: 1 built, 0 cached, 0 failed" in capsys.readouterr().out
    page = (tmp_path / "site" / "models" / "fresh" / "index.html").read_text()
    assert "none: the adapter builds the network" in page and spec in page
    bundle = json.loads((tmp_path / "site" / "models" / "fresh" / "interface" / "bundle" /
                         "bundle.json").read_text())
    assert [layer["name"] for layer in bundle["layers"]] == ["out"]
    assert bundle["model"]["checkpoint"]["name"] == spec
    assert main(["build", "-m", str(manifest), "-o", str(tmp_path / "site")]) == 0
    assert "models: 0 built, 1 cached, 0 failed" in capsys.readouterr().out
