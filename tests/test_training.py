"""PPO training: GAE by hand, a short real run that saves a loadable checkpoint, resume."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from gallery.cli import main
from gallery.models.checkpoint import read_checkpoint
from gallery.models.policy import load_policy
from gallery.training import EpisodeTracker, TrainConfig, gae, initial_params, train


def test_gae_matches_hand_computation():
    # one env, 3 steps, episode ends after step 1 (done[1] = 1)
    rewards = np.array([[1.0], [2.0], [0.5]], np.float32)
    values = np.array([[0.5], [1.0], [0.2]], np.float32)
    dones = np.array([[0.0], [1.0], [0.0]], np.float32)
    last_value, last_done, g, lam = np.array([0.4], np.float32), np.array([0.0]), 0.9, 0.8
    d2 = 0.5 + g * 0.4 - 0.2
    a2 = d2
    d1 = 2.0 - 1.0  # terminal: no bootstrap
    a1 = d1
    d0 = 1.0 + g * 1.0 - 0.5
    a0 = d0 + g * lam * a1
    got = gae(rewards, values, dones, last_value, last_done, g, lam)
    np.testing.assert_allclose(got[:, 0], [a0, a1, a2], rtol=1e-6)


def test_episode_tracker():
    t = EpisodeTracker(2)
    t.update(np.array([1.0, 0.0]), np.array([False, False]))
    t.update(np.array([10.0, 0.0]), np.array([True, False]))
    t.update(np.array([0.0, 5.0]), np.array([False, True]))
    assert t.count == 2 and sorted(r for r, _ in t.recent) == [5.0, 11.0]
    assert sorted(n for _, n in t.recent) == [2, 3]


def test_orthogonal_initialisation():
    init = initial_params(0)
    w = init("ppo2_model/pi/dense/kernel:0", (64, 32))
    np.testing.assert_allclose(w.T @ w, 2.0 * np.eye(32), atol=1e-5)
    assert np.abs(init("ppo2_model/pi/w:0", (32, 15))).max() < 0.05
    assert not init("ppo2_model/pi/1a/conv2d/bias:0", (16,)).any()


def test_short_run_saves_a_checkpoint_and_resumes(tmp_path):
    cfg = TrainConfig(env_name="coinrun", total_steps=2 * 8 * 16, num_envs=8, num_steps=16,
                      minibatches=2, epochs=1, save_every=1, seed=3)
    path = train(cfg, tmp_path)
    ckpt = read_checkpoint(path)
    assert ckpt.args["cnn"] == "clear" and ckpt.args["env_name"] == "coinrun"
    assert ckpt.extra["steps"] == 256 and ckpt.extra["updates"] == 2
    policy = load_policy(path)
    assert policy.action_names[7] == "RIGHT"
    with torch.no_grad():
        logits, value = policy(torch.rand(2, 64, 64, 3))
    assert torch.isfinite(logits).all()
    first_params = dict(ckpt.params)

    cfg.total_steps = 3 * 8 * 16  # one more update, resumed from the saved state
    train(cfg, tmp_path)
    resumed = read_checkpoint(path)
    assert resumed.extra["updates"] == 3 and resumed.extra["steps"] == 384
    changed = [k for k in first_params if not np.array_equal(first_params[k], resumed.params[k])]
    assert changed, "the resumed update did not change the weights"
    rows = list(csv.DictReader((tmp_path / "progress.csv").open()))
    assert [int(r["update"]) for r in rows] == [1, 2, 3]


@pytest.mark.parametrize("cnn", ["impala", "nature"])
def test_other_architectures_train(tmp_path, cnn):
    cfg = TrainConfig(env_name="coinrun", cnn=cnn, stack_channels="8", emb_size=32,
                      total_steps=64, num_envs=4, num_steps=16, minibatches=1, epochs=1)
    if cnn == "nature":  # nature is the Atari torso
        cfg.env_kind, cfg.env_name = "atari", "pong"
    path = train(cfg, tmp_path)
    assert load_policy(path).architecture == cnn


def test_train_command(tmp_path, capsys):
    code = main(["train", "--env", "coinrun", "-o", str(tmp_path), "--total-steps", "32",
                 "--num-envs", "2", "--num-steps", "16", "--minibatches", "1", "--epochs", "1"])
    assert code == 0
    assert (tmp_path / "checkpoint.jd").exists()


def test_kept_snapshots_along_one_run(tmp_path):
    """keep_every keeps checkpoint-<steps>.jd: the untrained weights, then every k updates;
    each snapshot is the run's weights at that step (the last equals checkpoint.jd)."""
    cfg = TrainConfig(env_name="coinrun", total_steps=4 * 4 * 16, num_envs=4, num_steps=16,
                      minibatches=1, epochs=1, save_every=3, keep_every=2, seed=5)
    path = train(cfg, tmp_path)
    kept = sorted(p.name for p in tmp_path.glob("checkpoint-*.jd"))
    assert kept == ["checkpoint-0.jd", "checkpoint-128.jd", "checkpoint-256.jd"]
    untrained = read_checkpoint(tmp_path / "checkpoint-0.jd")
    assert untrained.extra["steps"] == 0 and untrained.extra["updates"] == 0
    fresh = initial_params(5)  # the run's seed: the same orthogonal initial weights
    for name, value in untrained.params.items():
        np.testing.assert_array_equal(value, fresh(name, value.shape))
    middle = read_checkpoint(tmp_path / "checkpoint-128.jd")
    last = read_checkpoint(tmp_path / "checkpoint-256.jd")
    assert middle.extra["updates"] == 2 and last.extra["updates"] == 4
    final = read_checkpoint(path)
    assert all(np.array_equal(final.params[k], last.params[k]) for k in final.params)
    assert not all(np.array_equal(middle.params[k], last.params[k]) for k in last.params)
    assert load_policy(tmp_path / "checkpoint-128.jd").architecture == "clear"


def test_init_from_continues_a_run_without_its_train_state(tmp_path):
    cfg = TrainConfig(env_name="coinrun", total_steps=2 * 4 * 16, num_envs=4, num_steps=16,
                      minibatches=1, epochs=1, seed=2)
    first = train(cfg, tmp_path / "a")
    before = read_checkpoint(first)
    cfg.total_steps = 3 * 4 * 16
    path = train(cfg, tmp_path / "b", init_from=first)  # no train_state.pt in b/
    after = read_checkpoint(path)
    assert after.extra["updates"] == 3 and after.extra["steps"] == 192
    changed = [k for k in before.params if not np.array_equal(before.params[k],
                                                              after.params[k])]
    assert changed, "the continued update did not change the weights"
    assert (tmp_path / "b" / "train_state.pt").exists()
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg, tmp_path / "b", init_from=first)
    with pytest.raises(ValueError, match="network"):
        train(TrainConfig(env_name="coinrun", cnn="impala", total_steps=64, num_envs=4,
                          num_steps=16), tmp_path / "c", init_from=first)


def test_train_command_keeps_snapshots_and_continues(tmp_path):
    base = ["train", "--env", "coinrun", "--num-envs", "2", "--num-steps", "16",
            "--minibatches", "1", "--epochs", "1"]
    assert main([*base, "-o", str(tmp_path / "a"), "--total-steps", "32",
                 "--keep-every", "1"]) == 0
    assert (tmp_path / "a" / "checkpoint-0.jd").exists()
    assert (tmp_path / "a" / "checkpoint-32.jd").exists()
    assert main([*base, "-o", str(tmp_path / "b"), "--total-steps", "64",
                 "--init-from", str(tmp_path / "a" / "checkpoint-32.jd")]) == 0
    assert read_checkpoint(tmp_path / "b" / "checkpoint.jd").extra["steps"] == 64
