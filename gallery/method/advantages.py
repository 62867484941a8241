"""Network outputs over trajectories, GAE advantages and bookmarks (method.md section 2).

Trajectory arrays are (E, T): E environments (trajectories), T steps. `firsts[e, t]` says
whether step t starts an episode; `dones[e, t] = firsts[e, t + 1]` whether the action at
step t ended one (the last step's done is 0 unless given).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from gallery.method.attribution import AnalysisError, prepare_observations

Progress = Callable[[int, int], None]
"""Called as progress(done, total) with counts of observations."""

#: Observations per forward pass when computing outputs, as in the reference tool.
OUTPUT_BATCH_SIZE = 512


@dataclass(frozen=True)
class PolicyOutputs:
    """Logits (..., A) and values (...) for a batch of observations."""

    logits: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class Bookmark:
    """A frame worth a look: `score` = sign * advantage at (trajectory, step)."""

    trajectory: int
    step: int
    score: float


def policy_outputs(policy: torch.nn.Module, observations: np.ndarray, *,
                   batch_size: int = OUTPUT_BATCH_SIZE,
                   progress: Progress | None = None) -> PolicyOutputs:
    """Logits and value for every observation, in minibatches of `batch_size`.

    `observations` is (..., H, W, C), uint8 or float in [0, 1]; the leading axes (for
    trajectories (E, T)) are kept: logits (..., A) and values (...) as float32.
    """
    observations = np.asarray(observations)
    if observations.ndim < 4:
        raise AnalysisError(f"observations must be (..., H, W, C), got shape {observations.shape}")
    lead = observations.shape[:-3]
    flat = observations.reshape((-1,) + observations.shape[-3:])
    logits, values = [], []
    with torch.inference_mode():
        for start in range(0, len(flat), batch_size):
            obs = prepare_observations(policy, flat[start:start + batch_size])
            batch_logits, batch_values = policy(obs)
            logits.append(batch_logits.float().cpu().numpy())
            values.append(batch_values.float().cpu().numpy())
            if progress is not None:
                progress(min(start + batch_size, len(flat)), len(flat))
    num_actions = int(getattr(policy, "num_actions", 0))
    logits_arr = np.concatenate(logits) if logits else np.zeros((0, num_actions), np.float32)
    values_arr = np.concatenate(values) if values else np.zeros((0,), np.float32)
    return PolicyOutputs(logits_arr.reshape(lead + logits_arr.shape[1:]),
                         values_arr.reshape(lead))


def dones_from_firsts(firsts: np.ndarray) -> np.ndarray:
    """dones[:, t] = firsts[:, t + 1]; the last step's done is 0. (E, T) float32."""
    firsts = _trajectory_array(firsts, "firsts")
    dones = np.zeros(firsts.shape, dtype=np.float32)
    dones[:, :-1] = firsts[:, 1:]
    return dones


def gae_advantages(values: np.ndarray, rewards: np.ndarray, dones: np.ndarray, *,
                   gamma: float, lam: float) -> np.ndarray:
    """Generalised advantage estimates (E, T), float64.

    delta_t = r_t + (1 - d_t) gamma V_{t+1} - V_t and
    A_t = delta_t + (1 - d_t) gamma lam A_{t+1} for t = T-2 .. 0, with A_{T-1} = 0
    (there is no V_T to bootstrap from).
    """
    values = _trajectory_array(values, "values")
    rewards = _trajectory_array(rewards, "rewards", values.shape)
    dones = _trajectory_array(dones, "dones", values.shape)
    for name, x in (("gamma", gamma), ("lam", lam)):
        if not 0.0 <= x <= 1.0:
            raise AnalysisError(f"{name} must be in [0, 1], not {x}")
    not_done = 1.0 - dones[:, :-1]
    deltas = rewards[:, :-1] + not_done * gamma * values[:, 1:] - values[:, :-1]
    advantages = np.zeros(values.shape, dtype=np.float64)
    for t in range(values.shape[1] - 2, -1, -1):
        advantages[:, t] = deltas[:, t] + not_done[:, t] * gamma * lam * advantages[:, t + 1]
    return advantages


def bookmarks(advantages: np.ndarray, dones: np.ndarray, *, sign: Literal[1, -1],
              num: int = 16) -> list[Bookmark]:
    """The best `num` frames by sign * advantage, at most one per episode.

    Per trajectory, steps are scanned in order keeping the largest positive score of the
    current episode (the first of equal scores); at a done, or the last step, it is
    recorded and the search restarts. Records are sorted by score, best first; equal
    scores keep the scan order (trajectory, then step).
    """
    if sign not in (1, -1):
        raise AnalysisError(f"sign must be 1 (high) or -1 (low), not {sign}")
    if num < 0:
        raise AnalysisError(f"the number of bookmarks must be >= 0, not {num}")
    advantages = _trajectory_array(advantages, "advantages")
    ends = _trajectory_array(dones, "dones", advantages.shape) != 0
    ends[:, -1] = True
    records: list[Bookmark] = []
    for trajectory in range(advantages.shape[0]):
        best: Bookmark | None = None
        for step in range(advantages.shape[1]):
            score = float(sign * advantages[trajectory, step])
            if score > (0.0 if best is None else best.score):
                best = Bookmark(trajectory, step, score)
            if ends[trajectory, step] and best is not None:
                records.append(best)
                best = None
    records.sort(key=lambda b: -b.score)  # stable: ties keep the scan order
    return records[:num]


def _trajectory_array(x: np.ndarray, name: str, shape: tuple[int, ...] | None = None
                      ) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise AnalysisError(f"{name} must be (trajectories, steps) with steps >= 1, "
                            f"got shape {x.shape}")
    if shape is not None and x.shape != shape:
        raise AnalysisError(f"{name} has shape {x.shape}, expected {shape} like the values")
    if not np.all(np.isfinite(x)):
        raise AnalysisError(f"{name} contains NaN or infinite values")
    return x
