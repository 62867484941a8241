"""Synthetic checkpoints in the exact rl-clarity format (checkpoint-format.md).

`make_checkpoint` returns the dict that the original training code saved with `joblib.dump`:
`params` keyed by TensorFlow variable names with the `:0` suffix (float32, HWIO conv
kernels, (in, out) dense kernels, nature conv biases shaped (1, nf, 1, 1)), `args`,
`extra` and `time`. Weights are He-scaled with non-zero biases, so ReLUs are mixed and the
logits and value come out with magnitudes of about 1 to 10 on ordinary frames: a 1e-5
absolute tolerance on them is then a real test.

`quantized=True` draws every weight from a handful of levels (a few bits each), so that a
compressed file stays small enough to be a golden fixture; the arithmetic on them is still
ordinary float32.

`shared_checkpoint(name)` finds a checkpoint in the project's shared folder (next to the
repository), skipping the calling test when it is missing -- except on CI, where a missing
shared checkpoint is a failure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import joblib
import numpy as np

PI = "ppo2_model/pi/"

#: (scope, output channels, kernel size, L2 pool after) of the clear torso.
CLEAR_CONVS = (("1a", 16, 7, True), ("2a", 32, 5, False), ("2b", 32, 5, True),
               ("3a", 32, 5, True), ("4a", 32, 5, True))
#: (scope, output channels, kernel size, stride) of the nature torso.
NATURE_CONVS = (("c1", 32, 8, 4), ("c2", 64, 4, 2), ("c3", 64, 3, 1))

_DEFAULT_ACTIONS = {"procgen": 15, "atari": 4}
_DEFAULT_SHAPES = {"procgen": (64, 64, 3), "atari": (84, 84, 1)}


def clear_flat_size(obs_shape: tuple[int, int, int]) -> int:
    """Width of the clear torso's flattened output (four "same" L2 pools of stride 2)."""
    h, w, _ = obs_shape
    for _ in range(4):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h * w * CLEAR_CONVS[-1][1]


def impala_flat_size(obs_shape: tuple[int, int, int], depths: list[int]) -> int:
    """Width of the IMPALA torso's flattened output (one "same" stride-2 pool per stack)."""
    h, w, _ = obs_shape
    for _ in depths:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h * w * depths[-1]


def nature_flat_size(obs_shape: tuple[int, int, int]) -> int:
    """Width of the nature torso's flattened output ("valid" convolutions)."""
    h, w, _ = obs_shape
    for _, _, kernel, stride in NATURE_CONVS:
        h, w = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    return h * w * NATURE_CONVS[-1][1]


class _WeightMaker:
    """Draws He-scaled kernels and small non-zero biases from one seeded generator."""

    def __init__(self, seed: int, quantized: bool):
        self.rng = np.random.default_rng(seed)
        self.quantized = quantized

    def _levels(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        if not self.quantized:
            return self.rng.normal(0.0, std, shape)
        if int(np.prod(shape)) > 20000:  # big dense kernels: sparse ternary, same variance
            keep = 0.3
            signs = self.rng.choice([-1.0, 0.0, 1.0], size=shape,
                                    p=[keep / 2, 1 - keep, keep / 2])
            return signs * (std / math.sqrt(keep))
        step = std / 2  # about 13 levels within +-3 std
        return np.clip(np.round(self.rng.normal(0.0, std, shape) / step), -6, 6) * step

    def kernel(self, shape: tuple[int, ...], fan_in: int, gain: float = math.sqrt(2.0)
               ) -> np.ndarray:
        return self._levels(shape, gain / math.sqrt(fan_in)).astype(np.float32)

    def bias(self, n: int, scale: float = 0.1, mean: float = 0.0) -> np.ndarray:
        values = mean + self._levels((n,), scale)
        return values.astype(np.float32)


#: Gains above He's sqrt(2) for the plain chains: without them the signal (and so the
#: spread of logits across frames) shrinks layer by layer on real frames.
CHAIN_GAIN = 2.0


def _clear_params(m: _WeightMaker, obs_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    params, depth_in = {}, obs_shape[2]
    for scope, depth, k, _ in CLEAR_CONVS:
        # inputs are in [0, 1] and mostly positive: a negative mean bias keeps ReLUs mixed
        params[f"{PI}{scope}/conv2d/kernel:0"] = m.kernel((k, k, depth_in, depth),
                                                          k * k * depth_in, CHAIN_GAIN)
        params[f"{PI}{scope}/conv2d/bias:0"] = m.bias(depth, 0.1, -0.05)
        depth_in = depth
    flat = clear_flat_size(obs_shape)
    params[f"{PI}dense/kernel:0"] = m.kernel((flat, 256), flat, CHAIN_GAIN)
    params[f"{PI}dense/bias:0"] = m.bias(256)
    params[f"{PI}dense_1/kernel:0"] = m.kernel((256, 512), 256)
    params[f"{PI}dense_1/bias:0"] = m.bias(512)
    return params


def _impala_params(m: _WeightMaker, obs_shape: tuple[int, int, int], depths: list[int],
                   emb_size: int) -> dict[str, np.ndarray]:
    params, depth_in, k = {}, obs_shape[2], 0

    def conv(d_in: int, d_out: int, gain: float) -> None:
        nonlocal k
        params[f"{PI}layer_{k}/kernel:0"] = m.kernel((3, 3, d_in, d_out), 9 * d_in, gain)
        params[f"{PI}layer_{k}/bias:0"] = m.bias(d_out, 0.1, -0.02)
        k += 1

    for depth in depths:
        conv(depth_in, depth, math.sqrt(2.0))
        for _ in range(2):  # residual blocks: a smaller second conv keeps the sum tame
            conv(depth, depth, math.sqrt(2.0))
            conv(depth, depth, 0.7)
        depth_in = depth
    flat = impala_flat_size(obs_shape, depths)
    params[f"{PI}layer_{k}/kernel:0"] = m.kernel((flat, emb_size), flat)
    params[f"{PI}layer_{k}/bias:0"] = m.bias(emb_size)
    return params


def _nature_params(m: _WeightMaker, obs_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    params, depth_in = {}, obs_shape[2]
    for scope, depth, k, _ in NATURE_CONVS:
        params[f"{PI}{scope}/w:0"] = m.kernel((k, k, depth_in, depth), k * k * depth_in,
                                              CHAIN_GAIN)
        # baselines' conv() keeps a 4-D bias variable even in NHWC graphs
        params[f"{PI}{scope}/b:0"] = m.bias(depth, 0.1, -0.05).reshape(1, depth, 1, 1)
        depth_in = depth
    flat = nature_flat_size(obs_shape)
    params[f"{PI}fc1/w:0"] = m.kernel((flat, 512), flat)
    params[f"{PI}fc1/b:0"] = m.bias(512)
    return params


def _heads(m: _WeightMaker, width: int, n_actions: int) -> dict[str, np.ndarray]:
    return {
        f"{PI}w:0": m.kernel((width, n_actions), width, 1.5),
        f"{PI}b:0": m.bias(n_actions, 0.5),
        "ppo2_model/vf/w:0": m.kernel((width, 1), width, 3.0),
        "ppo2_model/vf/b:0": m.bias(1, 1.0, 2.0),
    }


def make_args(cnn: str, *, env_kind: str, stack_channels: str, emb_size: int,
              env_name: str, env_id: str, frame_stack: int) -> dict[str, Any]:
    """The `args` dict the original training code saved (the keys that matter, plus a few
    training-only ones, as in published checkpoints)."""
    args: dict[str, Any] = {
        "env_kind": env_kind, "cnn": cnn, "stack_channels": stack_channels,
        "emb_size": emb_size, "use_lstm": 0, "gamma": 0.999, "lambda": 0.95,
        "num_envs": 64, "frame_stack": frame_stack, "use_sticky_actions": 0,
        "learning_rate": 0.0005, "entropy_coeff": 0.01, "library": "baselines",
    }
    if env_kind == "procgen":
        args.update(env_name=env_name, distribution_mode="hard", num_levels=0, start_level=0)
    else:
        args.update(env_id=env_id)
    return args


def make_checkpoint(cnn: str, *, env_kind: str = "procgen", n_actions: int | None = None,
                    obs_shape: tuple[int, int, int] | None = None,
                    stack_channels: str = "16_32_32", emb_size: int = 256, seed: int = 0,
                    env_name: str = "coinrun", env_id: str = "breakout",
                    quantized: bool = False) -> dict[str, Any]:
    """A checkpoint dict in the rl-clarity format with seeded random weights.

    `obs_shape` is (H, W, C) of the frames the network will see (the dense layers' widths
    depend on it); it defaults to 64x64x3 for Procgen and 84x84x1 for Atari, and its channel
    count gives `args["frame_stack"]` (C = frame_stack for Atari, 3 * frame_stack for
    Procgen). Other sizes build weights that only a network built for that size can use.
    """
    if env_kind not in _DEFAULT_ACTIONS:
        raise ValueError(f"env_kind must be 'procgen' or 'atari', not {env_kind!r}")
    n_actions = _DEFAULT_ACTIONS[env_kind] if n_actions is None else n_actions
    obs_shape = tuple(_DEFAULT_SHAPES[env_kind] if obs_shape is None else obs_shape)
    m = _WeightMaker(seed, quantized)
    if cnn == "clear":
        params, width = _clear_params(m, obs_shape), 512
    elif cnn == "impala":
        depths = [int(d) for d in stack_channels.split("_")]
        params, width = _impala_params(m, obs_shape, depths, emb_size), emb_size
    elif cnn == "nature":
        params, width = _nature_params(m, obs_shape), 512
    else:
        raise ValueError(f"cnn must be 'clear', 'impala' or 'nature', not {cnn!r}")
    params.update(_heads(m, width, n_actions))
    frame_stack = obs_shape[2] if env_kind == "atari" else max(1, obs_shape[2] // 3)
    args = make_args(cnn, env_kind=env_kind, stack_channels=stack_channels, emb_size=emb_size,
                     env_name=env_name, env_id=env_id, frame_stack=frame_stack)
    return {"params": params, "args": args, "extra": {"synthetic_seed": seed},
            "time": 1_600_000_000.0}


def write_checkpoint(path: str | Path, ckpt: dict[str, Any], compress: Any = 0) -> Path:
    """Save `ckpt` with `joblib.dump`, as the original training code did."""
    path = Path(path)
    joblib.dump(ckpt, path, compress=compress)
    return path


def shared_checkpoint(name: str) -> Path:
    """Path of ../shared/checkpoints/<name> beside the repository (see tests/conftest.py:
    skipped when missing, a failure when CI == 'true')."""
    from tests.conftest import shared_path

    return shared_path("checkpoints", name)
