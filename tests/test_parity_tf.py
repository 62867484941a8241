"""Live parity: gallery's PyTorch networks against the TensorFlow reference, many configs.

Runs only where TensorFlow is importable (the optional .venv-tf from scripts/setup_tf.sh):

    TF_ENABLE_ONEDNN_OPTS=0 .venv-tf/bin/python -m pytest -m tf tests/test_parity_tf.py

Fresh random checkpoints (several seeds, stack depths, embedding widths, frame stacks,
Procgen and Atari shapes, odd sizes) and random or real frames. Tolerances as in
test_parity_golden.py: float64 on both sides to 1e-9; float32 to 1e-5 or 4 times
TensorFlow's own float32 error, whichever is larger (`tests.reference.float32_bound`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # before TensorFlow is imported

import copy  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

tf = pytest.importorskip("tensorflow")

from gallery.models.networks import build_network  # noqa: E402
from gallery.models.policy import load_policy  # noqa: E402
from gallery.models.safe_pickle import safe_load  # noqa: E402
from tests.reference import ATOL64, float32_bound  # noqa: E402
from tests.reference.checkpoints import (  # noqa: E402
    make_checkpoint,
    shared_checkpoint,
    write_checkpoint,
)
from tests.reference.tf_networks import (  # noqa: E402
    tf_forward,
    tf_input_gradients,
    tf_integrated_gradients,
    to_float_obs,
)

pytestmark = pytest.mark.tf

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "parity"

CONFIGS = [
    ("clear", {"seed": 0}),
    ("clear", {"seed": 1, "quantized": True}),
    ("clear", {"seed": 2, "obs_shape": (64, 64, 6)}),  # Procgen, frame_stack 2
    ("clear", {"seed": 3, "env_kind": "atari"}),
    ("impala", {"seed": 0}),
    ("impala", {"seed": 1, "stack_channels": "8_16", "emb_size": 64}),
    ("impala", {"seed": 2, "stack_channels": "32", "emb_size": 16}),
    ("impala", {"seed": 3, "stack_channels": "4_8_8_16", "emb_size": 32}),
    ("impala", {"seed": 4, "env_kind": "atari", "obs_shape": (84, 84, 4)}),
    ("impala", {"seed": 5, "env_kind": "atari", "stack_channels": "8_16_16", "emb_size": 128}),
    ("nature", {"seed": 0, "env_kind": "atari"}),
    ("nature", {"seed": 1, "env_kind": "atari", "obs_shape": (84, 84, 4), "n_actions": 18}),
    ("nature", {"seed": 2}),  # Procgen 64x64x3: 15x15, 6x6, 4x4
]


def _ids(config: tuple) -> str:
    cnn, kw = config
    return cnn + "-" + "-".join(f"{k}={v}" for k, v in kw.items()).replace(" ", "")


def _real_frames() -> np.ndarray:
    """The 16 real CoinRun frames stored with the golden fixtures."""
    return np.load(FIXTURES / "coinrun_real.npz", allow_pickle=False)["obs"]


def _frames(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Two real frames (resized, greyed, stacked as needed) and one of uniform noise."""
    from PIL import Image

    h, w, c = shape
    real = _real_frames()[[seed % 16, (seed + 7) % 16]]
    if (h, w) != (64, 64):
        real = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR))
                         for f in real])
    if c % 3 == 0:
        real = np.concatenate([real] * (c // 3), axis=-1)
    else:
        grey = np.round(real.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
        real = np.repeat(grey[..., None], c, axis=-1)
    noise = np.random.default_rng(seed).integers(0, 256, (1, h, w, c), dtype=np.uint8)
    return np.concatenate([real, noise])


def _max_err(got: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else got
    return float(np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64)).max())


def _check_float32(policy, ckpt: dict, obs_u8: np.ndarray) -> dict[str, float]:
    ref32, ref64 = tf_forward(ckpt, obs_u8), tf_forward(ckpt, obs_u8, tf.float64)
    obs = torch.from_numpy(to_float_obs(obs_u8))
    errors = {}
    with torch.no_grad():
        logits, value = policy(obs)
        outputs = {"logits": logits, "value": value}
        assert policy.layer_names == list(ref32["activations"])
        for name in policy.layer_names:
            outputs[name] = policy.activations(obs, name)
    for key, got in outputs.items():
        r32 = ref32[key] if key in ("logits", "value") else ref32["activations"][key]
        r64 = ref64[key] if key in ("logits", "value") else ref64["activations"][key]
        errors[key] = _max_err(got, r32)
        assert _max_err(got, r64) <= float32_bound(r32, r64), f"{key}: {errors[key]:.2e}"
    return errors


def _check_float64(policy64, ckpt: dict, obs_u8: np.ndarray) -> None:
    ref = tf_forward(ckpt, obs_u8, tf.float64)
    obs = torch.from_numpy(to_float_obs(obs_u8)).double()
    with torch.no_grad():
        logits, value = policy64(obs)
        assert _max_err(logits, ref["logits"]) <= ATOL64
        assert _max_err(value, ref["value"]) <= ATOL64
        for name in policy64.layer_names:
            err = _max_err(policy64.activations(obs, name), ref["activations"][name])
            assert err <= ATOL64, f"{name}: {err:.2e}"


def _score(logits: torch.Tensor, value: torch.Tensor, target) -> torch.Tensor:
    if target == "value":
        return value
    if isinstance(target, int):
        return logits[:, target]
    return logits[:, list(target)].sum(dim=1)


def _torch_integrated_gradients(policy, obs: torch.Tensor, layer: str, target,
                                steps: int = 10) -> torch.Tensor:
    acts = policy.activations(obs, layer).detach()
    total = torch.zeros_like(acts)
    for k in range(1, steps + 1):
        scaled = (acts * (k / steps)).requires_grad_(True)
        logits, value = policy.forward_from(scaled, layer, obs)
        (grad,) = torch.autograd.grad(_score(logits, value, target).sum(), scaled)
        total += grad
    return acts * total / steps


def _check_attribution(policy64, ckpt: dict, obs_u8: np.ndarray, layer: str, target) -> None:
    obs = torch.from_numpy(to_float_obs(obs_u8)).double()
    if layer == "input":
        x = obs.clone().requires_grad_(True)
        logits, value = policy64(x)
        (got,) = torch.autograd.grad(_score(logits, value, target).sum(), x)
        ref = tf_input_gradients(ckpt, obs_u8, target, tf.float64)
    else:
        got = _torch_integrated_gradients(policy64, obs, layer, target)
        ref = tf_integrated_gradients(ckpt, obs_u8, layer, target, 10, tf.float64)
    assert _max_err(got, ref) <= ATOL64, f"{layer} {target}: {_max_err(got, ref):.2e}"


def _policies(ckpt: dict, tmp_path: Path) -> tuple:
    path = write_checkpoint(tmp_path / "model.jd", ckpt)
    policy = load_policy(path)
    return policy, copy.deepcopy(policy).double()


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_random_checkpoint_matches_tensorflow(config, tmp_path):
    cnn, kw = config
    ckpt = make_checkpoint(cnn, **kw)
    policy, policy64 = _policies(ckpt, tmp_path)
    obs = _frames(policy.observation_shape, kw["seed"])
    _check_float32(policy, ckpt, obs)
    _check_float64(policy64, ckpt, obs)
    layers = policy.layer_names
    # Flat regions of real frames give max-pool windows whose values tie up to the last bit,
    # and TensorFlow and PyTorch round differently there, so gradients through IMPALA's
    # max pools may take either branch: those are checked on the noise frame only.
    grad_obs = obs[-1:] if cnn == "impala" else obs[1:]
    _check_attribution(policy64, ckpt, obs[:2], layers[-1], "value")
    _check_attribution(policy64, ckpt, grad_obs, layers[len(layers) // 2], policy.num_actions - 1)
    _check_attribution(policy64, ckpt, grad_obs, layers[0], [0, 1, 2])
    _check_attribution(policy64, ckpt, grad_obs, "input", "value")


@pytest.mark.parametrize("seed", [10, 11])
def test_random_frames_in_the_unit_interval(seed, tmp_path):
    """Float observations that are not k/255 (the interface takes any float in [0, 1])."""
    ckpt = make_checkpoint("impala", seed=seed)
    policy, policy64 = _policies(ckpt, tmp_path)
    obs = np.random.default_rng(seed).random((3, 64, 64, 3), dtype=np.float32)
    ref = tf_forward(ckpt, obs, tf.float64)
    with torch.no_grad():
        logits, value = policy64(torch.from_numpy(obs).double())
    assert _max_err(logits, ref["logits"]) <= ATOL64 and _max_err(value, ref["value"]) <= ATOL64


ODD = [("clear", (63, 65, 3)), ("clear", (37, 50, 1)), ("clear", (1, 9, 2)),
       ("impala", (45, 71, 3)), ("impala", (5, 3, 1)), ("nature", (75, 90, 2)),
       ("nature", (36, 37, 1))]


@pytest.mark.parametrize("cnn,shape", ODD, ids=[f"{c}-{s}" for c, s in ODD])
def test_odd_sizes_match_tensorflow(cnn, shape):
    """"SAME" pools and convolutions on odd sizes (checkpoints cannot declare such frames, so
    the network is built directly)."""
    ckpt = make_checkpoint(cnn, obs_shape=shape, seed=sum(shape))
    network, problems = build_network(cnn, ckpt["params"], shape)
    assert problems == []
    network = network.double()
    obs = np.random.default_rng(0).integers(0, 256, (2, *shape), dtype=np.uint8)
    ref = tf_forward(ckpt, obs, tf.float64)
    x = torch.from_numpy(to_float_obs(obs)).double().permute(0, 3, 1, 2)
    labels = {n.label: n.name for n in network.nodes if n.label in ref["activations"]}
    with torch.no_grad():
        latent, kept = network.run(x, keep=frozenset(labels.values()))
        logits, value = network.heads(latent)
    assert _max_err(logits, ref["logits"]) <= ATOL64
    assert _max_err(value, ref["value"]) <= ATOL64
    assert sorted(labels) == sorted(ref["activations"])
    for label, name in labels.items():
        got = kept[name].permute(0, 2, 3, 1)
        assert _max_err(got, ref["activations"][label]) <= ATOL64, label


def test_real_coinrun_model_matches_tensorflow():
    path = shared_checkpoint("coinrun.jd")
    ckpt = safe_load(path)
    policy = load_policy(path)
    policy64 = copy.deepcopy(policy).double()
    obs = _real_frames()
    errors = _check_float32(policy, ckpt, obs)
    assert errors["value"] <= 1e-5  # value stays below 10 on these frames
    _check_float64(policy64, ckpt, obs[:4])
    right = [i for i, name in enumerate(policy.action_names) if "RIGHT" in name]
    for layer in policy.layer_names:
        _check_attribution(policy64, ckpt, obs[:2], layer, "value")
    _check_attribution(policy64, ckpt, obs[:2], "2b", right)
    _check_attribution(policy64, ckpt, obs[:2], "input", "value")
