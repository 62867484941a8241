"""Numbers the site's charts show about recorded trajectories: discounted returns and GAE
advantages (method.md section 2), and small subsamples of them that fit in a page.

Arrays are (E, T): trajectories x steps, as gallery.environments.rollouts records them. Pure
functions;
the advantages are those of gallery.method.advantages (the interface's), not a second copy.
"""

from __future__ import annotations

import numpy as np


def discounted_returns(rewards: np.ndarray, dones: np.ndarray, gamma: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """G_t = r_t + gamma * (1 - d_t) * G_{t+1}, and whether G_t is complete (its episode
    ends within the recording; otherwise the rewards after the last step are missing)."""
    rewards = np.asarray(rewards, np.float64)
    dones = np.asarray(dones, bool)
    returns = np.zeros_like(rewards)
    complete = np.zeros(rewards.shape, bool)
    following = np.zeros(rewards.shape[0])
    following_complete = np.zeros(rewards.shape[0], bool)
    for t in range(rewards.shape[1] - 1, -1, -1):
        following = rewards[:, t] + gamma * np.where(dones[:, t], 0.0, following)
        following_complete = dones[:, t] | following_complete
        returns[:, t], complete[:, t] = following, following_complete
    return returns, complete


def gae_advantages(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, gamma: float,
                   lam: float) -> np.ndarray:
    """GAE advantages (E, T) as the interface computes them (`gallery.method.advantages`, method.md
    section 2), with this module's argument order."""
    from gallery.method.advantages import gae_advantages as analysis_gae

    return analysis_gae(np.asarray(values, np.float64), np.asarray(rewards, np.float64),
                        np.asarray(dones, np.float64), gamma=gamma, lam=lam)


def subsample(count: int, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `limit` of `count` items, chosen reproducibly."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def chart_samples(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, gamma: float,
                  lam: float, limit: int = 400) -> tuple[list[list[float]], list[float]]:
    """[[value, discounted return], ...] at steps with a complete return, and advantages
    (all steps but the last of each trajectory), each subsampled to at most `limit`."""
    returns, complete = discounted_returns(rewards, dones, gamma)
    values = np.asarray(values, np.float64)
    pairs = np.stack([values[complete], returns[complete]], axis=1)
    pairs = pairs[subsample(len(pairs), limit)]
    advantages = gae_advantages(rewards, values, dones, gamma, lam)[:, :-1].ravel()
    advantages = advantages[subsample(advantages.size, limit * 4, seed=1)]
    return (np.round(pairs, 4).tolist(), np.round(advantages, 4).tolist())
