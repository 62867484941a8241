"""gallery's PyTorch networks against golden outputs of the TensorFlow reference.

The fixtures in tests/fixtures/parity/ were written by tests/reference/make_fixtures.py
(see its docstring and manifest.json) from an independent TensorFlow implementation of the
rl-clarity networks. No TensorFlow is needed here.

Two precisions are checked:

- float64: the policy converted with `.double()` must reproduce TensorFlow evaluated in
  float64 on the same float32 weights and frames to 1e-9. This proves the two compute the
  same function (padding, pooling, flattening order, heads) with no float32 noise on top.
- float32 (what the gallery runs): the error against the float64 result may not exceed
  1e-5, or TensorFlow's own float32 error on the same array times 4 where that is larger
  (`tests.reference.float32_bound`). On deep clear networks with logits of magnitude 20-30,
  float32 rounding alone moves TensorFlow's own result by 2-5e-5, so a flat 1e-5 cannot
  hold there.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gallery.models.policy import load_policy
from tests.reference import ATOL64, float32_bound
from tests.reference.checkpoints import shared_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "parity"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CASES = list(MANIFEST["cases"])
#: float64 convolutions are slow on CPU: the float64 checks use the first frames only.
OBS64 = 2


def _checkpoint(case: str) -> Path:
    name = MANIFEST["cases"][case]["checkpoint"]
    if name.startswith("../shared/checkpoints/"):
        return shared_checkpoint(name.rsplit("/", 1)[1])
    return FIXTURES / name


@pytest.fixture(scope="module")
def loaded() -> dict:
    return {}


def _case(loaded: dict, case: str) -> tuple:
    """(float32 policy, float64 policy, fixture arrays), loaded once per module."""
    if case not in loaded:
        data = dict(np.load(FIXTURES / f"{case}.npz", allow_pickle=False))
        policy = load_policy(_checkpoint(case))
        loaded[case] = (policy, copy.deepcopy(policy).double(), data)
    return loaded[case]


def _obs(data: dict, dtype: torch.dtype) -> torch.Tensor:
    return (torch.from_numpy(data["obs"]).float() / 255.0).to(dtype)


def _layer_pairs(policy, data: dict) -> list[tuple[int, str]]:
    layers = [str(x) for x in data["layers"]]
    assert len(policy.layer_names) == len(layers), (policy.layer_names, layers)
    return list(enumerate(policy.layer_names))


def _compare_layer(acts: np.ndarray, data: dict, i: int, atol: float | None) -> float:
    """Max error of activations against the stored samples and float64 axis means.

    `acts` may hold only the first frames (then only the samples inside them are checked,
    and not the means); `atol=None` means the float32 bound.
    """
    idx = data[f"act{i}_idx"]
    inside = idx < acts.size
    vals = acts.reshape(-1)[idx[inside]].astype(np.float64)
    ref32, ref64 = data[f"act{i}_val32"], data[f"act{i}_val64"]
    bound = float32_bound(ref32, ref64) if atol is None else atol
    errors = [np.abs(vals - ref64[inside]).max()]
    if len(acts) == len(data["obs"]):
        acts64 = acts.astype(np.float64)
        for key, axes in {"chan": (0, 1, 2), "row": (0, 2, 3), "col": (0, 1, 3)}.items():
            # a mean of errors is at most their max, so the same bound applies to means
            errors.append(np.abs(acts64.mean(axis=axes) - data[f"act{i}_{key}"]).max())
    error = float(max(errors))
    assert error <= bound, f"layer {i}: max abs error {error:.2e} > {bound:.2e}"
    return error


@pytest.mark.parametrize("case", CASES)
def test_float64_network_is_the_tensorflow_function(case, loaded):
    policy, policy64, data = _case(loaded, case)
    obs = _obs(data, torch.float64)[:OBS64]
    with torch.no_grad():
        logits, value = policy64(obs)
        np.testing.assert_allclose(logits.numpy(), data["logits64"][:OBS64], rtol=0, atol=ATOL64)
        np.testing.assert_allclose(value.numpy(), data["value64"][:OBS64], rtol=0, atol=ATOL64)
        for i, name in _layer_pairs(policy, data):
            _compare_layer(policy64.activations(obs, name).numpy(), data, i, ATOL64)


@pytest.mark.parametrize("case", CASES)
def test_float32_outputs_match_tensorflow(case, loaded):
    policy, _, data = _case(loaded, case)
    obs = _obs(data, torch.float32)
    assert tuple(policy.observation_shape) == data["obs"].shape[1:]
    with torch.no_grad():
        logits, value = policy(obs)
    assert logits.dtype == torch.float32
    for got, key in ((logits, "logits"), (value, "value")):
        ref32, ref64 = data[f"{key}32"], data[f"{key}64"]
        error = float(np.abs(got.numpy().astype(np.float64) - ref64).max())
        assert error <= float32_bound(ref32, ref64), f"{key}: max abs error {error:.2e}"
        assert np.abs(got.numpy() - ref32).max() <= 2 * float32_bound(ref32, ref64)


@pytest.mark.parametrize("case", CASES)
def test_float32_activations_match_tensorflow(case, loaded):
    policy, _, data = _case(loaded, case)
    obs = _obs(data, torch.float32)
    with torch.no_grad():
        for i, name in _layer_pairs(policy, data):
            acts = policy.activations(obs, name).numpy()
            assert acts.shape[1:] == tuple(policy.layer_shapes[name])
            _compare_layer(acts, data, i, None)


def _integrated_gradients(policy, obs: torch.Tensor, layer: str, target, steps: int
                          ) -> torch.Tensor:
    """method.md section 4 with autograd on the policy API.

    The observations go to `forward_from` only for layers that are not bottlenecks (IMPALA's,
    whose skip connections bypass the ReLU and keep the observation's values)."""
    acts = policy.activations(obs, layer).detach()
    total = torch.zeros_like(acts)
    bottleneck = policy.architecture != "impala"
    for k in range(1, steps + 1):
        scaled = (acts * (k / steps)).requires_grad_(True)
        logits, value = policy.forward_from(scaled, layer, None if bottleneck else obs)
        if target == "value":
            score = value
        elif isinstance(target, int):
            score = logits[:, target]
        else:
            score = logits[:, target].sum(dim=1)
        (grad,) = torch.autograd.grad(score.sum(), scaled)
        total += grad
    return acts * total / steps


@pytest.mark.parametrize("case", CASES)
def test_golden_integrated_gradients_are_consistent_with_the_policy(case, loaded):
    """The stored IG (for the attribution tests) agrees with the policy's own gradients."""
    _, policy64, data = _case(loaded, case)
    obs = _obs(data, torch.float64)[:1]  # one frame: float64 convolutions are slow
    layer = policy64.layer_names[[str(x) for x in data["layers"]].index(str(data["ig_layer"]))]
    target = json.loads(str(data["ig_target"]))
    ig = _integrated_gradients(policy64, obs, layer, target, MANIFEST["cases"][case]["ig"]["steps"])
    np.testing.assert_allclose(ig.numpy(), data["ig64"][:1], rtol=0, atol=ATOL64)
    # completeness holds up to the quadrature error of a 10-point right Riemann sum
    gap = data["ig_f"] - data["ig_f0"]
    sums = data["ig64"].reshape(len(gap), -1).sum(axis=1)
    assert np.all(np.abs(sums - gap) <= 0.25 * np.abs(gap) + 0.5)


def test_real_model_input_gradients(loaded):
    _, policy64, data = _case(loaded, "coinrun_real")
    obs = _obs(data, torch.float64)[:1].requires_grad_(True)
    _, value = policy64(obs)
    (grad,) = torch.autograd.grad(value.sum(), obs)
    np.testing.assert_allclose(grad.numpy(), data["input_grad64"], rtol=0, atol=ATOL64)
