"""gallery.environments.rollouts: recording semantics against hand-stepped real environments,
seeding,
saved files and their reuse; the `gallery rollout` command; the published CoinRun agent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from gallery.cli import main as gallery_main
from gallery.commands.rollout import UsageError, parse_overrides
from gallery.environments import EnvSpec, make_vec_env
from gallery.environments.rollouts import (
    ObservationConfig,
    Trajectories,
    TrajectoryConfig,
    collect_observations,
    collect_trajectories,
    episode_statistics,
    load_or_collect,
    metadata_path,
    rollout_seeds,
)
from gallery.errors import EnvironmentNotAvailable


class UniformPolicy(nn.Module):
    """Every action equally likely; counts the observations it is shown."""

    def __init__(self, num_actions: int = 15, shape: tuple[int, int, int] = (64, 64, 3)):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_actions))
        self.observation_shape = shape
        self.seen = 0

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert obs.dtype == torch.float32 and 0 <= obs.min() and obs.max() <= 1
        self.seen += len(obs)
        return self.bias.expand(len(obs), -1), obs.mean(dim=(1, 2, 3))


def preferred_action(obs: np.ndarray, num_actions: int = 15) -> np.ndarray:
    """A deterministic function of uint8 observations (N, H, W, C)."""
    return obs.reshape(len(obs), -1).astype(np.int64).sum(axis=1) % num_actions


class PreferredActionPolicy(UniformPolicy):
    """Puts all probability on `preferred_action(obs)` (logit gap 1e4)."""

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, value = super().forward(obs)
        pixels = (obs * 255).round().to(torch.int64).flatten(1).sum(dim=1)
        logits = torch.nn.functional.one_hot(pixels % len(self.bias), len(self.bias))
        return 1e4 * logits.float() + self.bias, value


def coinrun(**options: object) -> EnvSpec:
    return EnvSpec.from_args({"env_name": "coinrun", **options})


def small(**changes: object) -> TrajectoryConfig:
    return TrajectoryConfig(**{"num_envs": 3, "num_steps": 24, **changes})


# --- recording semantics -----------------------------------------------------------------


def test_shapes_and_dtypes():
    recorded = collect_trajectories(UniformPolicy(), coinrun(), small(), seed=0)
    assert recorded.observations.shape == (3, 24, 64, 64, 3)
    assert recorded.observations.dtype == np.uint8
    assert (recorded.firsts.dtype, recorded.dones.dtype) == (bool, bool)
    assert recorded.actions.dtype == np.int64 and recorded.rewards.dtype == np.float32
    assert recorded.firsts.shape == recorded.actions.shape == recorded.rewards.shape == (3, 24)
    assert ((0 <= recorded.actions) & (recorded.actions < 15)).all()
    assert np.array_equal(recorded.dones[:, :-1], recorded.firsts[:, 1:])
    assert recorded.observations_full is None


def test_first_step_is_discarded():
    recorded = collect_trajectories(UniformPolicy(), coinrun(), small(), seed=0)
    with make_vec_env(coinrun(), 3, rollout_seeds(0)["trajectory_env"]) as env:
        reset_obs = env.observe().obs
    assert not recorded.firsts[:, 0].any()  # the reset observation was the discarded one
    assert not np.array_equal(recorded.observations[:, 0], reset_obs)


def test_alignment_with_a_hand_stepped_environment():
    """observations[t] is acted on with actions[t], which earns rewards[t]; firsts[t]
    marks observations[t]; checked in chaser, which pays rewards often."""
    spec = EnvSpec.from_args({"env_name": "chaser"})
    recorded = collect_trajectories(PreferredActionPolicy(), spec, small(num_steps=150), seed=4)
    assert recorded.rewards.any() and recorded.firsts.any()
    with make_vec_env(spec, 3, rollout_seeds(4)["trajectory_env"]) as env:
        env.act(preferred_action(env.observe().obs))  # the discarded step
        for t in range(150):
            _, obs, first = env.observe()
            assert np.array_equal(obs, recorded.observations[:, t])
            assert np.array_equal(first, recorded.firsts[:, t])
            assert np.array_equal(preferred_action(obs), recorded.actions[:, t])
            env.act(recorded.actions[:, t])
            reward, _, done = env.observe()
            assert np.array_equal(reward, recorded.rewards[:, t])
            assert np.array_equal(done, recorded.dones[:, t])


def test_full_resolution_trajectories():
    recorded = collect_trajectories(UniformPolicy(), coinrun(),
                                    small(num_envs=2, num_steps=4, full_resolution=True), seed=0)
    assert recorded.observations_full.shape == (2, 4, 512, 512, 3)
    shrunk = recorded.observations_full.reshape(2, 4, 64, 8, 64, 8, 3).mean(axis=(3, 5))
    assert np.abs(shrunk - recorded.observations).mean() < 12


def test_atari_trajectories():
    spec = EnvSpec.from_args({"env_kind": "atari", "env_id": "breakout"})
    recorded = collect_trajectories(UniformPolicy(4, (84, 84, 1)), spec,
                                    small(num_envs=2, num_steps=100), seed=0)
    assert recorded.observations.shape == (2, 100, 84, 84, 1)
    assert recorded.dones.any()  # lives are lost under a random policy


def test_same_seed_same_arrays_other_seed_other_arrays():
    first = collect_trajectories(UniformPolicy(), coinrun(), small(), seed=11)
    again = collect_trajectories(UniformPolicy(), coinrun(), small(), seed=11)
    other = collect_trajectories(UniformPolicy(), coinrun(), small(), seed=12)
    for name, array in first.arrays().items():
        assert np.array_equal(array, again.arrays()[name]), name
    assert not np.array_equal(first.observations, other.observations)
    assert not np.array_equal(first.actions, other.actions)


def test_min_episodes_extends_the_recording():
    config = small(num_envs=2, num_steps=16, min_episodes=3)
    recorded = collect_trajectories(UniformPolicy(), coinrun(), config, seed=0)
    assert recorded.num_steps % 16 == 0 and recorded.num_steps > 16
    assert recorded.episodes().count >= 3


def test_extra_observations_are_kept_every_obs_every_steps():
    config = ObservationConfig(num_envs=2, num_obs=3, obs_every=5)
    kept, full = collect_observations(PreferredActionPolicy(), coinrun(), config, seed=2)
    assert kept.shape == (6, 64, 64, 3) and kept.dtype == np.uint8 and full is None
    expected = []
    with make_vec_env(coinrun(), 2, rollout_seeds(2)["observation_env"]) as env:
        for step in range(15):
            obs = env.observe().obs
            if step % 5 == 4:
                expected.append(obs)
            env.act(preferred_action(obs))
    assert np.array_equal(kept, np.concatenate(expected))


def test_policy_must_fit_the_environment():
    with pytest.raises(EnvironmentNotAvailable, match="the policy has 4 actions"):
        collect_trajectories(UniformPolicy(4), coinrun(), small(), seed=0)
    with pytest.raises(EnvironmentNotAvailable, match="observations"):
        collect_trajectories(UniformPolicy(15, (84, 84, 1)), coinrun(), small(), seed=0)


# --- episode statistics (hand-derived) ----------------------------------------------------


def test_episode_statistics_by_hand():
    firsts = np.array([[1, 0, 0, 1, 0, 1, 0, 0],
                       [0, 0, 1, 0, 0, 0, 0, 1]], bool)
    rewards = np.array([[0, 0, 5, 0, 3, 0, 0, 1],
                        [9, 0, 0, 0, 2, 0, 0, 0]], np.float32)
    stats = episode_statistics(firsts, rewards)
    # row 0: steps 0-2 (5), 3-4 (3); 5-7 never ends. row 1: 0-1 began earlier; 2-6 (2)
    assert stats.returns.tolist() == [5, 3, 2] and stats.lengths.tolist() == [3, 2, 5]
    assert stats.mean_return == pytest.approx(10 / 3) and stats.mean_length == pytest.approx(10 / 3)
    dones = np.concatenate([firsts[:, 1:], [[1], [0]]], axis=1)  # row 0 ends on its last step
    stats = episode_statistics(firsts, rewards, dones)
    assert stats.returns.tolist() == [5, 3, 1, 2] and stats.lengths.tolist() == [3, 2, 3, 5]
    empty = episode_statistics(np.zeros((1, 4), bool), np.zeros((1, 4)))
    assert empty.count == 0 and np.isnan(empty.mean_return)


def test_each_environments_first_episode_counts():
    """The episode in progress when the recording starts began at the discarded step (after
    the reset): counted, with that step's reward and length."""
    firsts = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    rewards = np.array([[1, 2, 4, 0], [0, 7, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    dones = np.concatenate([firsts[:, 1:], [[1], [0], [0], [0]]], axis=1)
    recorded = Trajectories(np.zeros((4, 4, 1, 1, 1), np.uint8), firsts,
                            np.zeros((4, 4), np.int64), rewards, dones,
                            discarded_firsts=np.array([1, 1, 1, 0], bool),
                            discarded_rewards=np.array([0.5, 3, 6, 9], np.float32))
    stats = recorded.episodes()
    # row 0: discarded step + steps 0-1 (0.5 + 1 + 2), steps 2-3 (4); row 1: discarded + 0
    # (3 + 0), 1-3 never ends; row 2: the discarded step alone (6), 0-3 never ends; row 3:
    # began before the discarded step, so its start is unknown
    assert stats.returns.tolist() == [3.5, 4, 3, 6] and stats.lengths.tolist() == [3, 2, 2, 1]
    without = Trajectories(recorded.observations, firsts, recorded.actions, rewards, dones)
    assert without.episodes().returns.tolist() == [4]  # what the (E, T) arrays alone show


def test_recorded_first_episodes_match_a_hand_stepped_environment():
    """Every episode of every environment, the first included: returns and lengths equal to
    those counted by stepping the environment by hand from its reset."""
    spec = EnvSpec.from_args({"env_name": "bigfish"})  # each copy ends an episode by then
    recorded = collect_trajectories(PreferredActionPolicy(), spec, small(num_steps=150), seed=4)
    returns, lengths = [], []
    with make_vec_env(spec, 3, rollout_seeds(4)["trajectory_env"]) as env:
        assert env.observe().first.all()
        running, steps = np.zeros(3), np.zeros(3, int)
        ended: list[list[tuple[float, int]]] = [[], [], []]
        for _ in range(151):  # the discarded step and the recorded ones
            env.act(preferred_action(env.observe().obs))
            reward, _, first = env.observe()
            running += reward
            steps += 1
            for e in np.flatnonzero(first):
                ended[e].append((float(running[e]), int(steps[e])))
                running[e], steps[e] = 0, 0
    for episodes in ended:
        returns += [r for r, _ in episodes]
        lengths += [n for _, n in episodes]
    stats = recorded.episodes()
    assert min(len(e) for e in ended) >= 1
    assert stats.returns.tolist() == pytest.approx(returns)
    assert stats.lengths.tolist() == lengths
    assert stats.count == recorded.dones.sum() + recorded.firsts[:, 0].sum()


# --- saving and reuse ----------------------------------------------------------------------


def collect_small(path, policy, spec=None, seed=0, trajectories=None, **kwargs):
    return load_or_collect(path, policy, spec or coinrun(), seed=seed,
                           trajectories=trajectories or small(num_envs=2, num_steps=8),
                           observations=ObservationConfig(num_envs=2, num_obs=2, obs_every=3),
                           **kwargs)


def test_saved_rollouts_are_reused(tmp_path):
    path = tmp_path / "rollouts.npz"
    policy = UniformPolicy()
    made = collect_small(path, policy, checkpoint_sha256="ab" * 32)
    assert policy.seen > 0 and not made.reused
    assert path.exists() and metadata_path(path).exists()
    meta = json.loads(metadata_path(path).read_text())
    assert meta["checkpoint_sha256"] == "ab" * 32 and meta["seed"] == 0
    assert meta["env"]["options"]["distribution_mode"] == "hard"
    assert meta["trajectories"]["num_steps"] == 8 and meta["observations"]["obs_every"] == 3
    assert meta["action_names"][4] == "()" and meta["format_version"] == 2

    policy.seen = 0
    again = collect_small(path, policy, checkpoint_sha256="ab" * 32)
    assert policy.seen == 0 and again.reused  # the environment was not stepped
    for name, array in made.trajectories.arrays().items():
        assert np.array_equal(array, again.trajectories.arrays()[name])
    assert np.array_equal(made.observations, again.observations)
    assert again.observations.shape == (4, 64, 64, 3)


@pytest.mark.parametrize("change", [
    {"seed": 1},
    {"spec": coinrun(distribution_mode="easy")},
    {"trajectories": small(num_envs=2, num_steps=9)},
    {"checkpoint_sha256": "cd" * 32},
    {"force": True},
])
def test_a_changed_key_recollects(tmp_path, change):
    path = tmp_path / "rollouts.npz"
    policy = UniformPolicy()
    collect_small(path, policy, checkpoint_sha256="ab" * 32)
    policy.seen = 0
    collect_small(path, policy, **{"checkpoint_sha256": "ab" * 32, **change})
    assert policy.seen > 0
    policy.seen = 0
    collect_small(path, policy, **{"checkpoint_sha256": "ab" * 32, **change, "force": False})
    assert policy.seen == 0


def test_changed_weights_recollect_without_a_checkpoint_hash(tmp_path):
    path = tmp_path / "rollouts.npz"
    policy = UniformPolicy()
    collect_small(path, policy)
    with torch.no_grad():
        policy.bias[0] = 1.0
    policy.seen = 0
    collect_small(path, policy)
    assert policy.seen > 0


def test_a_missing_sidecar_recollects(tmp_path):
    path = tmp_path / "rollouts.npz"
    policy = UniformPolicy()
    collect_small(path, policy)
    metadata_path(path).unlink()
    policy.seen = 0
    collect_small(path, policy)
    assert policy.seen > 0 and metadata_path(path).exists()


# --- the command ---------------------------------------------------------------------------


def test_parse_overrides():
    assert parse_overrides(["num_levels=100", "use_backgrounds=false", "env_name=coinrun",
                            "start_level=null", "paint_vel_info="]) == {
        "num_levels": 100, "use_backgrounds": False, "env_name": "coinrun",
        "start_level": None, "paint_vel_info": None}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_overrides(["easy"])


def test_rollout_command(coinrun_path, tmp_path, capsys):
    out = tmp_path / "out.npz"
    argv = ["rollout", str(coinrun_path), "-o", str(out), "--num-envs", "2",
            "--num-steps", "40", "--env", "distribution_mode=easy"]
    assert gallery_main(argv) == 0
    printed = capsys.readouterr().out
    assert "episodes completed" in printed and "steps/s" in printed
    meta = json.loads(metadata_path(out).read_text())
    assert meta["env"]["options"]["distribution_mode"] == "easy"
    assert gallery_main(argv) == 0
    assert "up to date" in capsys.readouterr().out


def test_rollout_command_errors(coinrun_path, tmp_path, capsys):
    out = str(tmp_path / "out.npz")
    assert gallery_main(["rollout", str(coinrun_path), "-o", out,
                         "--env", "env_name=coinrun_old"]) == 2
    assert "env_name: coinrun" in capsys.readouterr().err
    assert gallery_main(["rollout", str(coinrun_path), "-o", out, "--num-steps", "0"]) == 2


# --- the published agent --------------------------------------------------------------------


def test_coinrun_agent_reward_arrives_with_the_episode_end(coinrun_path):
    from gallery import load_policy

    policy = load_policy(coinrun_path)
    recorded = collect_trajectories(policy, coinrun(), small(num_envs=4, num_steps=64), seed=0)
    paid = recorded.rewards != 0
    assert paid.any()
    assert (recorded.rewards[paid] == 10).all()
    assert recorded.dones[paid].all()  # the coin ends the episode: same step


@pytest.mark.slow
def test_published_coinrun_agent_reaches_the_coin(coinrun_path):
    """Acceptance: the paper's agent in procgen CoinRun (hard, unlimited levels)."""
    from gallery import load_policy

    policy = load_policy(coinrun_path)
    spec = EnvSpec.from_args(policy.args)
    assert spec.options["distribution_mode"] == "hard" and spec.options["num_levels"] == 0
    config = TrajectoryConfig(num_envs=8, num_steps=512, min_episodes=100)
    recorded = collect_trajectories(policy, spec, config, seed=0)
    stats = recorded.episodes()
    assert stats.count >= 100
    assert stats.mean_return >= 8, stats.mean_return
