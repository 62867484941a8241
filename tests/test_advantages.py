"""Outputs, GAE and bookmarks (method.md 2) against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from gallery.method.advantages import (
    Bookmark,
    bookmarks,
    dones_from_firsts,
    gae_advantages,
    policy_outputs,
)
from gallery.method.attribution import AnalysisError, ObservationError
from tests.test_attribution import TinyPolicy


def test_dones_are_the_next_firsts():
    firsts = np.array([[1, 0, 0, 1, 0], [0, 1, 1, 0, 1]])
    assert_array_equal(dones_from_firsts(firsts), [[0, 0, 1, 0, 0], [1, 1, 0, 1, 0]])


def test_gae_by_hand():
    values = np.array([[1.0, 2.0, 3.0, 4.0]])
    rewards = np.array([[0.0, 1.0, 0.0, 5.0]])
    dones = dones_from_firsts(np.array([[1, 0, 1, 0]]))  # the episode ends after step 1
    adv = gae_advantages(values, rewards, dones, gamma=0.5, lam=0.5)
    # deltas: t0 = 0 + 0.5*2 - 1 = 0; t1 = 1 - 2 = -1 (done, no bootstrap);
    # t2 = 0 + 0.5*4 - 3 = -1.  A3 = 0 (no V_4); A2 = -1 + 0.25*0; A1 = -1 (done);
    # A0 = 0 + 0.25 * A1.  The reward at the last step (5) is never used.
    assert_allclose(adv, [[-0.25, -1.0, -1.0, 0.0]])


def test_gae_reduces_to_td_error_and_to_discounted_returns():
    rng = np.random.default_rng(0)
    values, rewards = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    dones = np.zeros((3, 6))
    td = gae_advantages(values, rewards, dones, gamma=0.9, lam=0.0)
    assert_allclose(td[:, :-1], rewards[:, :-1] + 0.9 * values[:, 1:] - values[:, :-1])
    mc = gae_advantages(values, rewards, dones, gamma=0.9, lam=1.0)
    discounts = 0.9 ** np.arange(5)
    expected = (rewards[:, :5] * discounts).sum(1) + 0.9**5 * values[:, 5] - values[:, 0]
    assert_allclose(mc[:, 0], expected)


def test_gae_validates():
    with pytest.raises(AnalysisError, match="shape"):
        gae_advantages(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 3)), gamma=1, lam=1)
    with pytest.raises(AnalysisError, match="gamma"):
        gae_advantages(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)), gamma=2, lam=1)
    with pytest.raises(AnalysisError, match="NaN"):
        gae_advantages(np.full((1, 2), np.nan), np.zeros((1, 2)), np.zeros((1, 2)),
                       gamma=1, lam=1)


def test_bookmarks_one_per_episode_best_first():
    adv = np.array([
        [0.5, 2.0, -1.0, 1.0, 3.0, -4.0],   # episodes [0..2] and [3..5]
        [-2.0, 0.0, 1.5, 1.5, -0.5, 0.2],   # one episode; tie 1.5 at steps 2 and 3
    ])
    firsts = np.array([[1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0]])
    dones = dones_from_firsts(firsts)
    high = bookmarks(adv, dones, sign=1)
    assert high == [Bookmark(0, 4, 3.0), Bookmark(0, 1, 2.0), Bookmark(1, 2, 1.5)]
    low = bookmarks(adv, dones, sign=-1)
    assert low == [Bookmark(0, 5, 4.0), Bookmark(1, 0, 2.0), Bookmark(0, 2, 1.0)]
    assert bookmarks(adv, dones, sign=1, num=2) == high[:2]
    assert bookmarks(adv, dones, sign=1, num=0) == []


def test_bookmarks_ties_keep_scan_order_and_skip_non_positive():
    adv = np.array([[1.0, 0.0, 1.0], [1.0, -1.0, 0.0]])
    dones = np.array([[1, 0, 0], [0, 1, 0]])  # episodes: [0], [1, 2] / [0, 1], [2]
    assert bookmarks(adv, dones, sign=1) == [Bookmark(0, 0, 1.0), Bookmark(0, 2, 1.0),
                                             Bookmark(1, 0, 1.0)]
    # an episode with no positive score has no bookmark
    assert bookmarks(np.zeros((2, 4)), np.zeros((2, 4)), sign=1) == []
    assert bookmarks(adv, dones, sign=-1) == [Bookmark(1, 1, 1.0)]


def test_bookmarks_validate():
    with pytest.raises(AnalysisError):
        bookmarks(np.zeros((1, 2)), np.zeros((1, 2)), sign=0)  # type: ignore[arg-type]
    with pytest.raises(AnalysisError):
        bookmarks(np.zeros((1, 2)), np.zeros((1, 3)), sign=1)


def test_policy_outputs_in_minibatches_keep_leading_axes():
    policy = TinyPolicy()
    rng = np.random.default_rng(1)
    obs = rng.random((2, 7) + policy.observation_shape).astype(np.float32)
    small = policy_outputs(policy, obs, batch_size=3)
    assert small.logits.shape == (2, 7, policy.num_actions)
    assert small.values.shape == (2, 7)
    with torch.no_grad():
        logits, values = policy(torch.from_numpy(obs.reshape((14,) + obs.shape[2:])))
    assert_allclose(small.logits.reshape(14, -1), logits.numpy(), rtol=1e-6)
    assert_allclose(small.values.reshape(14), values.numpy(), rtol=1e-6)
    seen = []
    policy_outputs(policy, obs, batch_size=5, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(5, 14), (10, 14), (14, 14)]


def test_policy_outputs_take_uint8_and_reject_bad_observations():
    policy = TinyPolicy()
    obs = np.full((3,) + policy.observation_shape, 255, np.uint8)
    out = policy_outputs(policy, obs)
    ref = policy_outputs(policy, np.ones(obs.shape, np.float32))
    assert_allclose(out.values, ref.values)
    with pytest.raises(ObservationError, match=r"\[0, 1\]"):
        policy_outputs(policy, obs.astype(np.float32))
    with pytest.raises(ObservationError, match="shape"):
        policy_outputs(policy, np.zeros((3, 5, 5, 2), np.float32))
