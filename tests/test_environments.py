"""gallery.environments on the real Procgen and ALE environments (no stand-ins)."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from gallery.environments import (
    ATARI_GAMES,
    PROCGEN_DEFAULTS,
    PROCGEN_GAMES,
    EnvSpec,
    EpisodicLife,
    FireReset,
    MaxAndSkip,
    NoopReset,
    area_weights,
    atari_action_names,
    atari_combo,
    make_atari_env,
    make_vec_env,
)
from gallery.errors import EnvironmentNotAvailable

COINRUN_NAMES = ["LEFT+DOWN", "LEFT", "LEFT+UP", "DOWN", "()", "UP", "RIGHT+DOWN", "RIGHT",
                 "RIGHT+UP", "D", "A", "W", "S", "Q", "E"]


def procgen(name: str = "coinrun", **options: object) -> EnvSpec:
    return EnvSpec.from_args({"env_kind": "procgen", "env_name": name, **options})


def atari(env_id: str = "breakout", **options: object) -> EnvSpec:
    return EnvSpec.from_args({"env_kind": "atari", "env_id": env_id, **options})


def first_obs(spec: EnvSpec, num_envs: int = 2, seed: int = 0) -> np.ndarray:
    with make_vec_env(spec, num_envs, seed) as env:
        return env.observe().obs


# --- EnvSpec -----------------------------------------------------------------------------


def test_none_options_take_procgen_defaults():
    # the paper's CoinRun checkpoint: every procgen option None, distribution_mode included
    args = {"env_kind": "procgen", "env_name": "coinrun", "distribution_mode": None,
            "num_levels": None, "start_level": None, "use_backgrounds": None,
            "center_agent": None, "paint_vel_info": None, "fixed_difficulty": None,
            "learning_rate": 5e-4, "env_id": "Pong"}
    spec = EnvSpec.from_args(args)
    assert spec.options == PROCGEN_DEFAULTS
    assert spec.options["distribution_mode"] == "hard"
    assert spec.options["num_levels"] == 0  # unlimited
    assert spec.observation_shape == (64, 64, 3)


def test_args_and_overrides_pass_through():
    spec = EnvSpec.from_args({"env_name": "coinrun", "num_levels": 500, "use_backgrounds": 0},
                             overrides={"distribution_mode": "easy", "env_name": "maze"})
    assert (spec.env_kind, spec.env_name) == ("procgen", "maze")
    assert spec.options["num_levels"] == 500
    assert spec.options["use_backgrounds"] is False
    assert spec.options["distribution_mode"] == "easy"
    assert EnvSpec.from_dict(spec.to_dict()) == spec


def test_atari_spec():
    spec = atari("Breakout", frame_stack=4)
    assert (spec.env_kind, spec.env_name, spec.options) == ("atari", "breakout", {})
    assert spec.atari_game_id == "BreakoutNoFrameskip-v4"
    assert spec.observation_shape == (84, 84, 4)
    assert atari("pong", use_sticky_actions=1).atari_game_id == "PongNoFrameskip-v0"
    assert len(ATARI_GAMES) == 60


def test_coinrun_old_says_what_to_do():
    with pytest.raises(EnvironmentNotAvailable, match="coinrun_old") as err:
        procgen("coinrun_old")
    assert "env_name: coinrun" in str(err.value)
    assert EnvSpec.from_args({"env_name": "coinrun_old"},
                             overrides={"env_name": "coinrun"}).env_name == "coinrun"


@pytest.mark.parametrize("args, fragment", [
    ({"env_name": "coinrunn"}, "'coinrunn' is not a Procgen game; the games are bigfish"),
    ({"env_name": None}, "None is not a Procgen game"),
    ({"env_kind": "atari", "env_id": "tetris"}, "'tetris' is not one of the supported Atari"),
    ({"env_kind": "mujoco"}, "env_kind is 'mujoco'"),
    ({"env_name": "coinrun", "distribution_mode": "medium"}, "is not one of easy, hard"),
    ({"env_name": "coinrun", "num_levels": -1}, "num_levels must be an integer >= 0"),
    ({"env_name": "coinrun", "frame_stack": 0}, "frame_stack must be a positive integer"),
    ({"env_name": "coinrun", "physics_mode": 1}, "original internal Procgen build"),
])
def test_unusable_environments_are_clear_errors(args, fragment):
    with pytest.raises(EnvironmentNotAvailable) as err:
        EnvSpec.from_args(args)
    assert fragment in str(err.value)


def test_unknown_override_key():
    with pytest.raises(EnvironmentNotAvailable, match="'num_level'.*the options are"):
        EnvSpec.from_args({"env_name": "coinrun"}, overrides={"num_level": 3})


# --- Procgen -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROCGEN_GAMES)
def test_every_procgen_game_creates_and_steps(name):
    with make_vec_env(procgen(name), 2, seed=0) as env:
        reward, obs, first = env.observe()
        assert obs.shape == (2, 64, 64, 3) and obs.dtype == np.uint8
        assert first.tolist() == [True, True] and reward.tolist() == [0, 0]
        assert env.num_actions == 15
        for _ in range(3):
            env.act(np.array([7, 4]))
            reward, obs, first = env.observe()
        assert reward.dtype == np.float32 and first.dtype == bool and obs.shape[0] == 2


def test_coinrun_action_names():
    with make_vec_env(procgen("coinrun"), 1, seed=0) as env:
        assert list(env.action_names) == COINRUN_NAMES
        assert env.action_combos[0] == ("LEFT", "DOWN") and env.action_combos[4] == ()


def test_procgen_is_seeded():
    spec = procgen("coinrun")
    assert np.array_equal(first_obs(spec, seed=3), first_obs(spec, seed=3))
    assert not np.array_equal(first_obs(spec, seed=3), first_obs(spec, seed=4))


def test_procgen_steps_alike_in_the_calling_thread():
    """threads=0 (what the rollouts use) steps the environments without Procgen's
    threads: the same observations, rewards and episode starts as with its default 4."""
    actions = np.random.default_rng(0).integers(0, 15, size=(1010, 4))
    runs = []
    for threads in (None, 0):
        # CoinRun ends an episode after 1000 steps at the latest
        with make_vec_env(procgen(), 4, seed=5, threads=threads) as env:
            steps = []
            for a in actions:
                env.act(a)
                step = env.observe()
                steps.append((step.obs, step.reward, step.first))
            runs.append(steps)
    assert any(first.any() for _, _, first in runs[0])  # an episode ended on the way
    for one, other in zip(*runs, strict=True):
        for a, b in zip(one, other, strict=True):
            assert np.array_equal(a, b)


def test_num_levels_and_start_level_pass_through():
    with make_vec_env(procgen(num_levels=1, start_level=42), 3, seed=0) as env:
        assert env.level_seeds().tolist() == [42, 42, 42]
        for _ in range(40):  # later episodes replay the single level
            env.act(np.zeros(3, int))
        assert env.level_seeds().tolist() == [42, 42, 42]
    with make_vec_env(procgen(), 3, seed=0) as env:
        assert len(set(env.level_seeds().tolist())) == 3


def test_distribution_mode_passes_through():
    # procgen plays one fixed level in exploration mode: observable in the level seed
    with make_vec_env(procgen(distribution_mode="exploration"), 2, seed=0) as env:
        assert env.level_seeds().tolist() == [1949448038] * 2
    easy = first_obs(procgen(distribution_mode="easy"))
    hard = first_obs(procgen(distribution_mode="hard"))
    assert not np.array_equal(easy, hard)


@pytest.mark.parametrize("option, value", [("use_backgrounds", False),
                                           ("use_monochrome_assets", True),
                                           ("paint_vel_info", True)])
def test_rendering_options_change_frames(option, value):
    level = {"num_levels": 1, "start_level": 7}
    plain = first_obs(procgen(**level))
    assert np.array_equal(plain, first_obs(procgen(**level)))
    assert not np.array_equal(plain, first_obs(procgen(**level, **{option: value})))


def test_full_resolution_frames():
    with make_vec_env(procgen(), 2, seed=0, full_resolution=True) as env:
        obs = env.observe().obs
        frames = env.frames()
        assert frames.shape == (2, 512, 512, 3) and frames.dtype == np.uint8
        # the 64x64 observation is the same picture
        shrunk = frames.reshape(2, 64, 8, 64, 8, 3).mean(axis=(2, 4))
        assert np.abs(shrunk - obs).mean() < 12
        env.act(np.array([7, 7]))
        assert not np.array_equal(env.frames(), frames)
    with make_vec_env(procgen(), 1, seed=0) as env, pytest.raises(EnvironmentNotAvailable):
        env.frames()


def test_procgen_frame_stack():
    with make_vec_env(procgen(frame_stack=2), 2, seed=0) as env:
        obs = env.observe().obs
        assert obs.shape == (2, 64, 64, 6)
        assert not obs[..., :3].any()  # nothing before the first observation
        env.act(np.array([7, 7]))
        later = env.observe().obs
        assert np.array_equal(later[..., :3], obs[..., 3:])


# --- Atari ---------------------------------------------------------------------------------


def raw_atari(game_id: str) -> gymnasium.Env:
    import ale_py

    gymnasium.register_envs(ale_py)
    return gymnasium.make(game_id)


@pytest.mark.parametrize("env_id, names", [
    ("breakout", ["NOOP", "FIRE", "RIGHT", "LEFT"]),
    ("pong", ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]),
])
def test_atari_games_create_and_step(env_id, names):
    with make_vec_env(atari(env_id), 2, seed=0, full_resolution=True) as env:
        reward, obs, first = env.observe()
        assert obs.shape == (2, 84, 84, 1) and obs.dtype == np.uint8
        assert first.all() and not reward.any()
        assert list(env.action_names) == names
        assert env.frames().shape == (2, 210, 160, 3)
        env.act(np.array([1, 2]))
        assert env.observe().obs.shape == (2, 84, 84, 1)
    assert list(atari_action_names(env_id)) == names


def test_atari_combos_from_meanings():
    assert atari_combo("NOOP") == ()
    assert atari_combo("UPRIGHTFIRE") == ("UP", "RIGHT", "FIRE")
    assert atari_combo("DOWNLEFT") == ("DOWN", "LEFT")


def test_max_and_skip_is_max_of_last_two_frames_and_sum_of_rewards():
    wrapped, raw = MaxAndSkip(raw_atari("PongNoFrameskip-v4"), 4), raw_atari("PongNoFrameskip-v4")
    wrapped.reset(seed=5)
    raw.reset(seed=5)
    for action in [0, 2, 3, 1] * 30:
        obs, reward, *_ = wrapped.step(action)
        frames, rewards = zip(*[raw.step(action)[:2] for _ in range(4)], strict=True)
        assert np.array_equal(obs, np.maximum(frames[2], frames[3]))
        assert reward == sum(rewards)


def test_fire_reset_presses_fire_then_action_2():
    def state_after(actions: list[int]) -> np.ndarray:
        raw = raw_atari("BreakoutNoFrameskip-v4")
        raw.reset(seed=1)
        for action in actions:
            raw.step(action)
        return raw.unwrapped.ale.getRAM()

    wrapped = FireReset(raw_atari("BreakoutNoFrameskip-v4"))
    wrapped.reset(seed=1)
    ram = wrapped.unwrapped.ale.getRAM()
    assert np.array_equal(ram, state_after([1, 2]))
    assert not np.array_equal(ram, state_after([0, 0]))  # FIRE made a difference


def test_noop_reset_takes_1_to_30_noops():
    env = NoopReset(raw_atari("BreakoutNoFrameskip-v4"), noop_max=30)
    counts = []
    for seed in range(6):
        _, info = env.reset(seed=seed)
        counts.append(info["episode_frame_number"])
    assert all(1 <= c <= 30 for c in counts) and len(set(counts)) > 1


def test_episodic_life_ends_the_episode_but_not_the_game():
    env = EpisodicLife(MaxAndSkip(raw_atari("BreakoutNoFrameskip-v4"), 4))
    env.reset(seed=0)
    ale = env.unwrapped.ale
    for _ in range(2000):  # serve and never move: the ball is soon lost
        *_, terminated, truncated, _ = env.step(1)
        if terminated:
            break
    assert terminated and not truncated
    assert ale.lives() == 4 and not ale.game_over()
    frame = ale.getEpisodeFrameNumber()
    env.reset()
    assert ale.lives() == 4 and ale.getEpisodeFrameNumber() > frame  # the game went on


def test_atari_vec_env_restarts_on_life_loss():
    with make_vec_env(atari("breakout"), 1, seed=0) as env:
        firsts = []
        for _ in range(400):
            env.act(np.array([1]))
            firsts.append(env.observe().first[0])
    assert sum(firsts) >= 2  # one episode per life


def test_sticky_actions_flag():
    def repeat_probability(spec: EnvSpec) -> float:
        env = make_atari_env(spec)
        try:
            return env.unwrapped.ale.getFloat("repeat_action_probability")
        finally:
            env.close()

    assert repeat_probability(atari("pong", use_sticky_actions=1)) == pytest.approx(0.25)
    assert repeat_probability(atari("pong")) == 0.0


def test_atari_is_seeded():
    spec = atari("breakout", use_sticky_actions=1)

    def run(seed: int) -> np.ndarray:
        with make_vec_env(spec, 2, seed) as env:
            for action in [1, 2, 2, 3, 2, 2, 2, 3] * 8:
                env.act(np.array([action, action]))
            return env.observe().obs

    assert np.array_equal(run(0), run(0))


def test_atari_frame_stack():
    with make_vec_env(atari("pong", frame_stack=4), 2, seed=0) as env:
        obs = env.observe().obs
        assert obs.shape == (2, 84, 84, 4) and not obs[..., :3].any()
        env.act(np.array([0, 0]))
        assert np.array_equal(env.observe().obs[..., 2], obs[..., 3])


def test_area_weights_by_hand():
    assert np.allclose(area_weights(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    assert np.allclose(area_weights(5, 2), [[0.4, 0.4, 0.2, 0, 0], [0, 0, 0.2, 0.4, 0.4]])
    assert np.allclose(area_weights(210, 84).sum(axis=1), 1)


def test_warped_observation_is_area_averaged_gray():
    env = make_atari_env(atari("pong"), noop_max=0)
    obs, _ = env.reset(seed=0)
    rgb = env.rgb.astype(np.float64)
    gray = rgb @ [0.299, 0.587, 0.114]
    expected = area_weights(210, 84) @ gray @ area_weights(160, 84).T
    assert np.abs(obs[..., 0] - expected).max() <= 1.0  # integer luma and rounding only


def test_luma_of_pure_colours():
    from gallery.environments import rgb_to_gray

    colours = np.array([[[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    assert rgb_to_gray(colours).tolist() == [[255, 76, 150, 29]]


@pytest.mark.slow
@pytest.mark.parametrize("game", ATARI_GAMES)
def test_every_atari_game_creates_and_steps(game):
    with make_vec_env(atari(game.lower()), 1, seed=0) as env:
        assert env.observe().obs.shape == (1, 84, 84, 1)
        for _ in range(5):
            env.act(np.array([env.num_actions - 1]))
        assert env.observe().obs.shape == (1, 84, 84, 1)


@pytest.mark.parametrize("given, sticky", [
    ({"env_id": "BreakoutNoFrameskip-v4"}, False), ({"env_id": "ALE/Breakout-v5"}, True),
    ({"env_id": "breakout"}, False), ({"env_id": "Breakout-v0"}, True),
    ({"env_name": "BreakoutNoFrameskip-v4"}, False),
    ({"env_id": "ALE/Breakout-v5", "use_sticky_actions": 0}, False)])
def test_atari_ids_as_users_write_them(given, sticky):
    spec = EnvSpec.from_args({"env_kind": "atari", **given})
    assert spec.env_name == "breakout" and spec.sticky_actions is sticky
    assert spec.atari_game_id == ("BreakoutNoFrameskip-v0" if sticky
                                  else "BreakoutNoFrameskip-v4")


def test_an_unknown_atari_id_says_how_to_name_one():
    with pytest.raises(EnvironmentNotAvailable, match="ALE/Breakout-v5 or breakout"):
        EnvSpec.from_args({"env_kind": "atari", "env_id": "ALE/Breakin-v5"})
