"""Integrated gradients against an independent float64 reference, on real frames.

The reference is float64 autograd through the same network, written as plainly as
possible: for every integration step k and every output f, the gradient of f at
(k/n) * activations, one backward pass each, summed in float64. The engine
(`gallery.method.attribution`: steps batched, outputs sharing one forward pass) runs in the
policy's own floating-point type, and is checked on every offered layer of the clear,
IMPALA and Nature networks, for three random-weight networks of each, the project's demo
checkpoint and (where ../shared is present) the paper's CoinRun model, for the value and
two action logits, on recorded CoinRun and Atari frames:

- run in float64 (`policy.double()`): relative L2 error <= 2e-5 and largest error
  <= 1e-4 of the largest value, element by element, on every network;
- run in float32 (how the gallery runs): within float32's own reach. Near-ties of ReLUs
  and L2 pools at the small integration steps move the first layers' attribution by up to
  about 2e-4 (relative L2) on these networks -- the plain one-step-at-a-time float32 loop
  and Captum move identically (tests/test_captum.py); IMPALA's max pools break near-ties
  differently in float32 and float64, which moves gradient between positions and channels
  of the earlier layers (per-frame totals of stack1/block2 differ by up to 7e-3 on seed
  12), so there the per-frame totals are compared, within 1e-2.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from gallery.method.attribution import (
    attribution_batches,
    integrated_gradients,
    policy_attribution,
    readout_matrix,
)
from gallery.models.policy import load_policy
from tests.conftest import shared_path
from tests.reference.checkpoints import make_checkpoint, write_checkpoint

REPO = Path(__file__).resolve().parents[1]
COINRUN_FRAMES = REPO / "tests" / "fixtures" / "parity" / "coinrun_real.npz"
DEMO = REPO / "gallery" / "demo" / "coinrun-clear.jd"
STEPS = 10
TARGETS = ("value", 0, -1)  # the value, the first and the last action's logit
SEEDS = (11, 12, 13)


@pytest.fixture(scope="module")
def coinrun_frames() -> np.ndarray:
    """Four recorded CoinRun frames (uint8, 64 x 64 x 3)."""
    return np.load(COINRUN_FRAMES)["obs"][::4]


@pytest.fixture(scope="module")
def atari_frames() -> np.ndarray:
    """Four Breakout observations recorded here, DeepMind-preprocessed, 4 frames stacked
    (uint8, 84 x 84 x 4), taken from a seeded run of random actions."""
    from gallery.environments import EnvSpec, make_atari_env

    env = make_atari_env(EnvSpec.from_args({"env_kind": "atari", "env_id": "breakout"}))
    rng = np.random.default_rng(0)
    frame, _ = env.reset(seed=0)
    frames = [frame[..., 0]] * 4
    stacks = []
    for t in range(40):
        frame, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            frame, _ = env.reset()
        frames = frames[1:] + [frame[..., 0]]
        if t % 10 == 9:
            stacks.append(np.stack(frames, axis=-1))
    env.close()
    return np.stack(stacks)


def reference_ig(policy: torch.nn.Module, obs: np.ndarray, layer: str,
                 targets=TARGETS, steps: int = STEPS) -> list[np.ndarray]:
    """Float64 IG (N, h, w, c) of each target: one integration step at a time, one
    backward pass per target, by plain autograd on a float64 copy of the network."""
    policy64 = copy.deepcopy(policy).double().cpu()
    x = torch.from_numpy(obs).double() / 255
    with torch.no_grad():
        acts = policy64.activations(x, layer)
    totals = [torch.zeros_like(acts) for _ in targets]
    for k in range(1, steps + 1):
        point = (k / steps * acts).requires_grad_(True)
        logits, value = policy64.forward_from(point, layer, x)
        for total, target in zip(totals, targets):
            f = value if target == "value" else logits[:, target % logits.shape[1]]
            total += torch.autograd.grad(f.sum(), point, retain_graph=True)[0]
    return [(acts * total / steps).numpy() for total in totals]


#: (relative L2, largest error of the max) allowed for each way of running
EXACT = (2e-5, 1e-4)
FLOAT32 = (3e-4, 6e-4)
FLOAT32_TOTALS = (1e-2, 1e-2)


def assert_exact(ours: np.ndarray, ref: np.ndarray, what: str, bounds=EXACT,
                 totals: bool = False) -> None:
    if totals:
        ours, ref = ours.sum(axis=(1, 2, 3)), ref.sum(axis=(1, 2, 3))
    scale = np.abs(ref).max()
    assert scale > 0, f"{what}: the reference is all zero (a dead network tells nothing)"
    relative_l2 = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    largest = np.abs(ours - ref).max() / scale
    assert relative_l2 <= bounds[0] and largest <= bounds[1], \
        f"{what}: relative L2 {relative_l2:.2e}, largest error {largest:.2e} of the max"


def check_every_layer(policy, frames, device: str, name: str, impala: bool = False) -> None:
    """The engine's attribution to the value and two logits (one shared forward pass, as
    policy attribution runs), in float64 and in float32, against the float64 reference
    on every offered layer; every failure is listed."""
    readout = readout_matrix(policy, [t if t == "value" else t % policy.num_actions
                                      for t in TARGETS])
    runs = [("float64", copy.deepcopy(policy).double().to(device), EXACT, False),
            ("float32", copy.deepcopy(policy).to(device),
             FLOAT32_TOTALS if impala else FLOAT32, impala)]
    failures = []
    for layer in policy.layer_names:
        refs = reference_ig(policy, frames, layer)
        for kind, net, bounds, totals in runs:
            ours = np.concatenate([b for _, b in attribution_batches(net, frames, layer,
                                                                       readout, STEPS)], 1)
            for got, ref, target in zip(ours, refs, TARGETS):
                try:
                    assert_exact(got, ref, f"{name} ({kind}) layer {layer} target {target}",
                                 bounds, totals)
                except AssertionError as err:
                    failures.append(str(err).splitlines()[0])
    assert not failures, "\n".join(failures)


def random_policy(tmp_path: Path, cnn: str, seed: int, **kwargs):
    return load_policy(write_checkpoint(tmp_path / f"{cnn}-{seed}.jd",
                                        make_checkpoint(cnn, seed=seed, **kwargs)))


@pytest.mark.parametrize("seed", SEEDS)
def test_clear_random_networks(seed, tmp_path, coinrun_frames, device):
    policy = random_policy(tmp_path, "clear", seed)
    check_every_layer(policy, coinrun_frames, device, f"clear seed {seed}")


@pytest.mark.parametrize("seed", SEEDS)
def test_impala_random_networks(seed, tmp_path, coinrun_frames, device):
    policy = random_policy(tmp_path, "impala", seed)
    check_every_layer(policy, coinrun_frames[:2], device, f"impala seed {seed}", impala=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_nature_random_networks(seed, tmp_path, atari_frames, device):
    policy = random_policy(tmp_path, "nature", seed, env_kind="atari", obs_shape=(84, 84, 4))
    check_every_layer(policy, atari_frames, device, f"nature seed {seed}")


def test_demo_checkpoint(coinrun_frames, device):
    policy = load_policy(DEMO)
    check_every_layer(policy, coinrun_frames, device, "demo checkpoint")
    # the public entrances: one output, and every output with the action groups
    policy = policy.to(device)
    layer = policy.layer_names[-1]
    value, logit = reference_ig(policy, coinrun_frames, layer)[:2]
    assert_exact(integrated_gradients(policy, coinrun_frames, layer, "value", STEPS), value,
                 "integrated_gradients", FLOAT32)
    everything = policy_attribution(policy, coinrun_frames, layer, STEPS)
    assert_exact(everything.actions[TARGETS[1]], logit, "policy_attribution", FLOAT32)
    for group, summed in zip(everything.groups, everything.group_attributions):
        np.testing.assert_allclose(summed, everything.actions[list(group.actions)].sum(0),
                                   rtol=1e-5, atol=1e-7 * np.abs(summed).max())


def test_paper_coinrun_model(coinrun_frames, device):
    policy = load_policy(shared_path("checkpoints", "coinrun.jd"))
    check_every_layer(policy, coinrun_frames, device, "coinrun.jd")


@pytest.mark.parametrize("cnn", ["clear", "nature"])
def test_a_layer_read_by_one_convolution_is_attributed_after_it(cnn, tmp_path, request,
                                                                monkeypatch):
    """Where a bottleneck is read only by a convolution (clear's 2a, Nature's c1 and c2),
    the engine pushes the scaled copies through that convolution once and its summed
    gradients back through it once (`policy.affine_split`): the plain computation's sums,
    re-associated. In float64 both agree to 1e-12 of the largest value, for the value and
    two logits at once."""
    kwargs = {"env_kind": "atari", "obs_shape": (84, 84, 4)} if cnn == "nature" else {}
    frames = request.getfixturevalue("atari_frames" if cnn == "nature" else "coinrun_frames")
    policy = random_policy(tmp_path, cnn, 11, **kwargs).double()
    split = [layer for layer in policy.layer_names if policy.affine_split(layer)]
    assert split == (["c1", "c2"] if cnn == "nature" else ["2a"])
    readout = readout_matrix(policy, ["value", 0, 2])

    def attribution(layer: str) -> np.ndarray:
        return np.concatenate([b for _, b in attribution_batches(policy, frames, layer,
                                                                 readout, STEPS)], 1)

    after = {layer: attribution(layer) for layer in split}
    monkeypatch.setattr(policy, "affine_split", lambda layer: None)
    for layer in split:
        plain = attribution(layer)
        assert np.abs(after[layer] - plain).max() <= 1e-12 * np.abs(plain).max(), layer
