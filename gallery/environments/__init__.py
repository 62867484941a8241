"""Vectorised environments, created from a checkpoint's training `args`.

`EnvSpec.from_args(args)` resolves which environment a policy was trained in, with every
option made explicit; `make_vec_env(spec, num_envs, seed)` creates `num_envs` copies of it
behind one interface, `VecEnv`, that Procgen and Atari both satisfy:

    reward, obs, first = env.observe()   # (N,) float32, (N, H, W, C) uint8, (N,) bool
    env.act(actions)                     # (N,) int

This is gym3's protocol (Procgen's native one): `observe()` returns the reward earned by the
*previous* `act()` together with the observation that followed it, and `first` marks an
observation that starts a new episode (the environment resets itself when an episode ends).

Decisions worth knowing:

- Procgen options that are None (or absent) in `args` take procgen's own defaults, which
  is what the original training code did (it dropped None values before creating the
  environment). In particular `distribution_mode: None` -- as in the paper's CoinRun
  checkpoint -- means "hard", the mode those models were trained in, and `num_levels`
  None or 0 means unlimited levels. `EnvSpec` records the resolved values.
- Keys that only the original (internal) Procgen build understood (`fixed_difficulty`,
  `physics_mode`, ...) are accepted when None and refused otherwise, since the public
  procgen package cannot honour them.
- Procgen action names join the buttons of each combination with "+" ("LEFT+DOWN"); the
  combination without buttons is "()", the original tool's spelling. Atari action names
  are ALE's (`get_action_meanings()`, e.g. "NOOP", "UPRIGHTFIRE").
- Atari follows the original training code (Baselines' `make_atari` + `wrap_deepmind`
  with `frame_stack=False, clip_rewards=False`): `<Game>NoFrameskip-v4` (or `-v0`, whose
  actions are sticky with probability 0.25, when `use_sticky_actions` is 1), up to 30
  random no-ops on reset, max-and-skip 4, episodic life, fire on reset, 84x84 grayscale.
  Games are cut at ALE's limit of 108,000 frames (30 minutes of play).
  The wrappers are written out below because gymnasium's `AtariPreprocessing` differs
  (life loss ends the episode there, no fire reset, and it needs OpenCV).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import gymnasium
import numpy as np

from gallery.errors import EnvironmentNotAvailable

log = logging.getLogger(__name__)

PROCGEN_GAMES = (
    "bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball",
    "fruitbot", "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot",
)

#: The Atari games the original tool supported, as ALE spells them (ids are lowercase).
ATARI_GAMES = (
    "AirRaid", "Alien", "Amidar", "Assault", "Asterix", "Asteroids", "Atlantis", "BankHeist",
    "BattleZone", "BeamRider", "Berzerk", "Bowling", "Boxing", "Breakout", "Carnival",
    "Centipede", "ChopperCommand", "CrazyClimber", "DemonAttack", "DoubleDunk",
    "ElevatorAction", "Enduro", "FishingDerby", "Freeway", "Frostbite", "Gopher", "Gravitar",
    "Hero", "IceHockey", "Jamesbond", "JourneyEscape", "Kangaroo", "Krull", "KungFuMaster",
    "MontezumaRevenge", "MsPacman", "NameThisGame", "Phoenix", "Pitfall", "Pong", "Pooyan",
    "PrivateEye", "Qbert", "Riverraid", "RoadRunner", "Robotank", "Seaquest", "Skiing",
    "Solaris", "SpaceInvaders", "StarGunner", "Tennis", "TimePilot", "Tutankham", "UpNDown",
    "Venture", "VideoPinball", "WizardOfWor", "YarsRevenge", "Zaxxon",
)
ATARI_IDS = {game.lower(): game for game in ATARI_GAMES}

#: Procgen's options and the values procgen uses when they are not given.
PROCGEN_DEFAULTS: dict[str, Any] = {
    "num_levels": 0,
    "start_level": 0,
    "distribution_mode": "hard",
    "use_backgrounds": True,
    "restrict_themes": False,
    "use_monochrome_assets": False,
    "use_generated_assets": False,
    "paint_vel_info": False,
    "center_agent": True,
    "use_sequential_levels": False,
    "debug_mode": 0,
}
DISTRIBUTION_MODES = ("easy", "hard", "extreme", "memory", "exploration")
_PROCGEN_BOOL_OPTIONS = tuple(k for k, v in PROCGEN_DEFAULTS.items() if isinstance(v, bool))
_PROCGEN_INT_OPTIONS = ("num_levels", "start_level", "debug_mode")

#: Options of the original internal Procgen build that public procgen does not have.
INTERNAL_PROCGEN_KEYS = (
    "fixed_difficulty", "use_easy_jump", "plain_assets", "is_high_difficulty",
    "is_uniform_difficulty", "fix_background", "physics_mode", "game_type", "game_mechanics",
    "sample_game_mechanics",
)
_GENERAL_KEYS = ("env_kind", "env_name", "env_id", "frame_stack", "use_sticky_actions")
#: Keys an override may set (`env: {...}` in a manifest, `--env KEY=VALUE`).
ENV_KEYS = _GENERAL_KEYS + tuple(PROCGEN_DEFAULTS) + INTERNAL_PROCGEN_KEYS + ("render_human",)

#: Procgen's 15 button combinations, in the order of its action indices.
PROCGEN_COMBOS: tuple[tuple[str, ...], ...] = (
    ("LEFT", "DOWN"), ("LEFT",), ("LEFT", "UP"), ("DOWN",), (), ("UP",), ("RIGHT", "DOWN"),
    ("RIGHT",), ("RIGHT", "UP"), ("D",), ("A",), ("W",), ("S",), ("Q",), ("E",),
)
FULL_RESOLUTION = 512
ATARI_SIZE = 84
ATARI_NOOP_MAX = 30
ATARI_SKIP = 4


def combo_name(combo: tuple[str, ...]) -> str:
    """'LEFT+UP' for ('LEFT', 'UP'); '()' for the combination without buttons."""
    return "+".join(combo) if combo else "()"


def atari_combo(meaning: str) -> tuple[str, ...]:
    """Buttons of an ALE action meaning: 'UPRIGHTFIRE' -> ('UP', 'RIGHT', 'FIRE'), 'NOOP' -> ()."""
    if meaning == "NOOP":
        return ()
    return tuple(re.findall(r"UP|DOWN|LEFT|RIGHT|FIRE", meaning))


# --- the specification -----------------------------------------------------------------


@dataclass(frozen=True)
class EnvSpec:
    """Which environment a policy acts in, every option resolved to an explicit value."""

    env_kind: str
    """"procgen" or "atari"."""
    env_name: str
    """A Procgen game ("coinrun"), or a lowercase Atari id ("breakout")."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Procgen options, one per key of `PROCGEN_DEFAULTS`; empty for Atari."""
    frame_stack: int = 1
    """Observations stacked on the channel axis (1: none)."""
    sticky_actions: bool = False
    """Atari: repeat the previous action with probability 0.25 (the `-v0` games)."""

    @classmethod
    def from_args(cls, args: Mapping[str, Any],
                  overrides: Mapping[str, Any] | None = None) -> EnvSpec:
        """The environment of a checkpoint's `args`, with `overrides` applied on top.

        Raises EnvironmentNotAvailable for environments or options that cannot be created.
        """
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(ENV_KEYS))
        if unknown:
            raise EnvironmentNotAvailable(
                f"unknown environment option(s) {', '.join(map(repr, unknown))}; "
                f"the options are {', '.join(ENV_KEYS)}")
        merged = {**args, **overrides}
        kind = merged.get("env_kind") or "procgen"
        frame_stack = _positive_int("frame_stack", merged.get("frame_stack"), default=1)
        if kind == "procgen":
            return cls("procgen", _procgen_name(merged.get("env_name")),
                       _procgen_options(merged), frame_stack)
        if kind == "atari":
            # users name the game as their code base does: env_id (gym ids such as
            # BreakoutNoFrameskip-v4 or ALE/Breakout-v5, or the bare game) or env_name
            given = merged.get("env_id") or merged.get("env_name")
            game = _atari_id(given)
            sticky = merged.get("use_sticky_actions")
            if sticky is None:  # the id's version says: -v0 and ALE's v5 games are sticky
                sticky = _atari_sticky(given)
            return cls("atari", game, {}, frame_stack, bool(sticky))
        raise EnvironmentNotAvailable(f"env_kind is {kind!r}; expected 'procgen' or 'atari'")

    @property
    def atari_game_id(self) -> str:
        """The gymnasium id of an Atari game, e.g. 'BreakoutNoFrameskip-v4'."""
        version = "v0" if self.sticky_actions else "v4"
        return f"{ATARI_IDS[self.env_name]}NoFrameskip-{version}"

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the observations a policy receives."""
        if self.env_kind == "atari":
            return (ATARI_SIZE, ATARI_SIZE, self.frame_stack)
        return (64, 64, 3 * self.frame_stack)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (also the environment's part of cache keys)."""
        return {"env_kind": self.env_kind, "env_name": self.env_name,
                "options": dict(sorted(self.options.items())),
                "frame_stack": self.frame_stack, "sticky_actions": self.sticky_actions}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnvSpec:
        return cls(data["env_kind"], data["env_name"], dict(data["options"]),
                   int(data["frame_stack"]), bool(data["sticky_actions"]))

    def describe(self) -> str:
        """One line for people: 'procgen coinrun (distribution_mode=hard, num_levels=0, ...)'."""
        changed = {k: v for k, v in self.options.items()
                   if k in ("distribution_mode", "num_levels", "start_level")
                   or v != PROCGEN_DEFAULTS.get(k)}
        if self.env_kind == "atari":
            changed = {"game": self.atari_game_id}
        if self.frame_stack > 1:
            changed["frame_stack"] = self.frame_stack
        details = ", ".join(f"{k}={v}" for k, v in changed.items())
        return f"{self.env_kind} {self.env_name} ({details})"


def _procgen_name(name: Any) -> str:
    if name == "coinrun_old":
        raise EnvironmentNotAvailable(
            "env_name 'coinrun_old' is the original CoinRun package, which cannot be "
            "installed today; to run the policy in Procgen's CoinRun instead (a close "
            "successor with different graphics), override the environment: "
            "`env: {env_name: coinrun}` in the manifest or `--env env_name=coinrun`")
    if name not in PROCGEN_GAMES:
        raise EnvironmentNotAvailable(
            f"env_name {name!r} is not a Procgen game; the games are "
            f"{', '.join(PROCGEN_GAMES)}")
    return str(name)


#: A gym/ALE id: optional "ALE/" namespace, the game, optional "NoFrameskip" or
#: "Deterministic", optional "-vN".
_ATARI_ID = re.compile(r"^(?:ALE/)?(?P<game>[A-Za-z]+?)(?:NoFrameskip|Deterministic)?"
                       r"(?:-v(?P<version>\d+))?$")


def _atari_id(env_id: Any) -> str:
    """The lowercase game of an Atari id: 'BreakoutNoFrameskip-v4', 'ALE/Breakout-v5',
    'Breakout-v4' and 'breakout' all name 'breakout'."""
    match = _ATARI_ID.match(str(env_id or "").strip())
    key = match["game"].lower() if match else ""
    if key not in ATARI_IDS:
        raise EnvironmentNotAvailable(
            f"env_id {env_id!r} is not one of the supported Atari games; name one as "
            "BreakoutNoFrameskip-v4, ALE/Breakout-v5 or breakout (the games are "
            f"{', '.join(ATARI_IDS)})")
    return key


def _atari_sticky(env_id: Any) -> bool:
    """Whether the id's version repeats actions with probability 0.25 by default (gym's
    -v0 games and ALE's v5 ones); -v4 and bare game names do not."""
    match = _ATARI_ID.match(str(env_id or "").strip())
    return bool(match and match["version"] in ("0", "5"))


def _positive_int(key: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise EnvironmentNotAvailable(f"{key} must be a positive integer, not {value!r}")
    return int(value)


def _procgen_options(args: Mapping[str, Any]) -> dict[str, Any]:
    internal = {k: args[k] for k in INTERNAL_PROCGEN_KEYS if args.get(k) is not None}
    if internal:
        raise EnvironmentNotAvailable(
            f"option(s) {internal} exist only in the original internal Procgen build; the "
            "procgen package cannot honour them. Override them with null to run the policy "
            "with procgen's behaviour instead, e.g. "
            f"`--env {next(iter(internal))}=null`")
    options = {k: (v if args.get(k) is None else args[k]) for k, v in PROCGEN_DEFAULTS.items()}
    for key in _PROCGEN_BOOL_OPTIONS:
        options[key] = bool(options[key])
    for key in _PROCGEN_INT_OPTIONS:
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise EnvironmentNotAvailable(f"{key} must be an integer >= 0, not {value!r}")
        options[key] = int(value)
    if options["distribution_mode"] not in DISTRIBUTION_MODES:
        raise EnvironmentNotAvailable(
            f"distribution_mode {options['distribution_mode']!r} is not one of "
            f"{', '.join(DISTRIBUTION_MODES)}")
    return options


# --- the vectorised interface ----------------------------------------------------------


class EnvStep(NamedTuple):
    """What `VecEnv.observe()` returns, in gym3's order."""

    reward: np.ndarray
    """(N,) float32: reward earned by the previous `act()` (0 before the first)."""
    obs: np.ndarray
    """(N, H, W, C) uint8: the current observations (NHWC)."""
    first: np.ndarray
    """(N,) bool: the observation starts an episode."""


class VecEnv(ABC):
    """N copies of one environment, stepped together (gym3's observe/act protocol).

    The copies reset themselves when an episode ends: after the act() that ends an
    episode, observe() returns that action's reward with the first observation of the
    next episode, and `first` True.
    """

    num_envs: int
    observation_shape: tuple[int, int, int]
    action_combos: tuple[tuple[str, ...], ...]
    """The buttons of each action, for grouping actions (LEFT, RIGHT, UP, DOWN)."""
    action_names: tuple[str, ...]

    @property
    def num_actions(self) -> int:
        return len(self.action_names)

    @abstractmethod
    def observe(self) -> EnvStep:
        """Reward of the previous act(), current observations and episode starts."""

    @abstractmethod
    def act(self, actions: np.ndarray) -> None:
        """Take one action (an index < num_actions) in each copy."""

    def frames(self) -> np.ndarray:
        """Full-resolution RGB frames of the current observations, (N, H', W', 3) uint8.

        Only when created with `full_resolution=True`: 512x512 for Procgen, the 210x160
        screen (max of the last two frames, as the observation) for Atari.
        """
        raise EnvironmentNotAvailable(
            "full-resolution frames were not requested: create the environment with "
            "full_resolution=True")

    def close(self) -> None:
        """Release the environments."""

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_vec_env(spec: EnvSpec, num_envs: int, seed: int, full_resolution: bool = False,
                 threads: int | None = None) -> VecEnv:
    """`num_envs` seeded copies of the environment `spec` describes. `threads`: Procgen's
    stepping threads (None: its default, 4; 0 steps the environments in the calling
    thread). The observations are the same with any number."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, not {num_envs}")
    if spec.env_kind == "procgen":
        env: VecEnv = ProcgenVecEnv(spec, num_envs, seed, full_resolution, threads)
    else:
        env = AtariVecEnv(spec, num_envs, seed, full_resolution)
    if spec.frame_stack > 1:
        env = FrameStack(env, spec.frame_stack)
    return env


def action_names(spec: EnvSpec) -> tuple[str, ...]:
    """The names of the environment's actions, in index order."""
    if spec.env_kind == "procgen":
        return tuple(combo_name(c) for c in PROCGEN_COMBOS)
    return atari_action_names(spec.env_name)


def atari_action_names(env_id: str) -> tuple[str, ...]:
    """ALE's names of an Atari game's (minimal) action set, e.g. ('NOOP', 'FIRE', ...)."""
    env = _make_ale(EnvSpec("atari", _atari_id(env_id)))
    try:
        return tuple(env.unwrapped.get_action_meanings())
    finally:
        env.close()


# --- Procgen -----------------------------------------------------------------------------


class ProcgenVecEnv(VecEnv):
    """Procgen's own vectorised gym3 environment, observations from its 'rgb' key."""

    def __init__(self, spec: EnvSpec, num_envs: int, seed: int, full_resolution: bool = False,
                 threads: int | None = None):
        kwargs = dict(spec.options)
        if kwargs["distribution_mode"] == "exploration":  # procgen picks the level itself
            del kwargs["num_levels"], kwargs["start_level"]
        if threads is not None:
            kwargs["num_threads"] = threads
        self._env = _procgen().ProcgenGym3Env(
            num=num_envs, env_name=spec.env_name, rand_seed=_procgen_seed(seed),
            render_mode="rgb_array" if full_resolution else None, **kwargs)
        self._full_resolution = full_resolution
        self.num_envs = num_envs
        self.observation_shape = (64, 64, 3)
        self.action_combos = tuple(tuple(c) for c in self._env.combos)
        self.action_names = tuple(combo_name(c) for c in self.action_combos)

    def observe(self) -> EnvStep:
        reward, obs, first = self._env.observe()
        # gym3 may hand out buffers it later overwrites; the copies are cheap
        return EnvStep(reward.astype(np.float32), obs["rgb"].copy(), first.astype(bool))

    def act(self, actions: np.ndarray) -> None:
        self._env.act(np.asarray(actions, dtype=np.int32))

    def frames(self) -> np.ndarray:
        if not self._full_resolution:
            return super().frames()
        return np.stack([info["rgb"] for info in self._env.get_info()])

    def level_seeds(self) -> np.ndarray:
        """The level each copy is playing, (N,) int (Procgen's `level_seed`)."""
        return np.array([info["level_seed"] for info in self._env.get_info()])

    def close(self) -> None:
        self._env = None  # gym3 environments are released by garbage collection


def _procgen() -> Any:
    # procgen imports the unmaintained `gym` only to register its ids there, and gym prints
    # a notice to migrate to gymnasium -- which this package already uses -- on import
    with contextlib.redirect_stderr(io.StringIO()):
        import procgen
    return procgen


def _procgen_seed(seed: int) -> int:
    return int(seed) % 2**31  # procgen takes a non-negative C int


# --- Atari -------------------------------------------------------------------------------


#: Sticky actions: the previous action is repeated with this probability (the -v0 games).
STICKY_ACTION_PROBABILITY = 0.25


def _make_ale(spec: EnvSpec) -> Any:
    import ale_py

    gymnasium.register_envs(ale_py)
    # ALE's -v0 and -v4 games differ only in this probability; setting it on -v4 avoids
    # gymnasium's "out of date" warning
    game_id = spec.atari_game_id.replace("-v0", "-v4")
    sticky = STICKY_ACTION_PROBABILITY if spec.sticky_actions else 0.0
    return gymnasium.make(game_id, repeat_action_probability=sticky)


def make_atari_env(spec: EnvSpec, noop_max: int = ATARI_NOOP_MAX) -> Any:
    """One Atari game with the DeepMind preprocessing of the original training code.

    Innermost first: random no-ops on reset, max-and-skip 4, episodic life, fire on reset
    (games with a FIRE action), 84x84 grayscale. Rewards are not clipped.
    """
    env = _make_ale(spec)
    if noop_max > 0:
        env = NoopReset(env, noop_max)
    env = MaxAndSkip(env, ATARI_SKIP)
    env = EpisodicLife(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireReset(env)
    return WarpFrame(env, ATARI_SIZE)


class AtariVecEnv(VecEnv):
    """A plain loop over `num_envs` preprocessed Atari games; copy i is seeded seed + i."""

    def __init__(self, spec: EnvSpec, num_envs: int, seed: int, full_resolution: bool = False):
        self._envs = [make_atari_env(spec) for _ in range(num_envs)]
        self._full_resolution = full_resolution
        self.num_envs = num_envs
        self.observation_shape = (ATARI_SIZE, ATARI_SIZE, 1)
        self.action_names = tuple(self._envs[0].unwrapped.get_action_meanings())
        self.action_combos = tuple(atari_combo(m) for m in self.action_names)
        self._obs = np.stack([env.reset(seed=int(seed) + i)[0]
                              for i, env in enumerate(self._envs)])
        self._reward = np.zeros(num_envs, np.float32)
        self._first = np.ones(num_envs, bool)

    def observe(self) -> EnvStep:
        return EnvStep(self._reward.copy(), self._obs.copy(), self._first.copy())

    def act(self, actions: np.ndarray) -> None:
        for i, (env, action) in enumerate(zip(self._envs, np.asarray(actions), strict=True)):
            obs, reward, terminated, truncated, _ = env.step(int(action))
            if terminated or truncated:
                obs, _ = env.reset()
            self._obs[i], self._reward[i] = obs, reward
            self._first[i] = terminated or truncated

    def frames(self) -> np.ndarray:
        if not self._full_resolution:
            return super().frames()
        return np.stack([env.rgb for env in self._envs])

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []


class NoopReset(gymnasium.Wrapper):
    """On reset, take a random number (1..noop_max) of NOOP actions (action 0)."""

    def __init__(self, env: Any, noop_max: int = ATARI_NOOP_MAX):
        super().__init__(env)
        self.noop_max = noop_max

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(**kwargs)
        noops = int(self.unwrapped.np_random.integers(1, self.noop_max + 1))
        for _ in range(noops):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info


class MaxAndSkip(gymnasium.Wrapper):
    """Repeat each action `skip` frames; sum the rewards; observe the pixel-wise max of the
    last two frames (Atari sprites flicker between frames).

    When the game ends early the max is over the frames of this step only (Baselines reused
    stale frames there); that observation is replaced by the reset one anyway.
    """

    def __init__(self, env: Any, skip: int = ATARI_SKIP):
        super().__init__(env)
        self.skip = skip

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        total, frames = 0.0, []
        for _ in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            frames = [*frames[-1:], obs]
            if terminated or truncated:
                break
        return np.max(frames, axis=0), total, terminated, truncated, info


class EpisodicLife(gymnasium.Wrapper):
    """A lost life ends the episode for the agent; the game itself resets only at game over.

    A reset after a lost life takes one NOOP step instead of restarting the game.
    """

    def __init__(self, env: Any):
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        if self.game_over or kwargs.get("seed") is not None:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, _, _, info = self.env.step(0)
        self.game_over = False
        self.lives = self.unwrapped.ale.lives()
        return obs, info


class FireReset(gymnasium.Wrapper):
    """After a reset press FIRE, then action 2 (games that wait for FIRE to start)."""

    def __init__(self, env: Any):
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        if meanings[1] != "FIRE" or len(meanings) < 3:
            raise EnvironmentNotAvailable(
                f"{env.spec.id}: fire reset expects action 1 to be FIRE, got {meanings}")

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        self.env.reset(**kwargs)
        for action in (1, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info


class WarpFrame(gymnasium.Wrapper):
    """RGB screen -> (size, size, 1) grayscale, resized by area averaging (OpenCV's
    INTER_AREA, as Baselines' WarpFrame). Keeps the last RGB screen as `rgb`."""

    def __init__(self, env: Any, size: int = ATARI_SIZE):
        super().__init__(env)
        height, width = env.observation_space.shape[:2]
        self._rows = AreaTaps.of(area_weights(height, size))
        self._cols = AreaTaps.of(area_weights(width, size))
        self.observation_space = gymnasium.spaces.Box(0, 255, (size, size, 1), np.uint8)
        self.rgb = np.zeros(env.observation_space.shape, np.uint8)

    def _warp(self, rgb: np.ndarray) -> np.ndarray:
        self.rgb = rgb
        gray = rgb_to_gray(rgb).astype(np.float32)
        resized = self._cols.apply(self._rows.apply(gray, axis=0), axis=1)
        return np.rint(resized).clip(0, 255).astype(np.uint8)[:, :, None]

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(**kwargs)
        return self._warp(obs), info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._warp(obs), reward, terminated, truncated, info


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8 luma, with OpenCV's fixed-point RGB2GRAY weights."""
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    return ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14).astype(np.uint8)


def area_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) matrix of area-averaging weights along one axis.

    Output cell i covers input [i * s, (i + 1) * s) with s = size_in / size_out; each input
    pixel weighs by the fraction of the cell it covers (overlaps under 1e-3 are dropped,
    as OpenCV does). Rows sum to 1.
    """
    scale = size_in / size_out
    starts = np.arange(size_out)[:, None] * scale
    pixels = np.arange(size_in)[None, :]
    overlap = np.clip(np.minimum(starts + scale, pixels + 1) - np.maximum(starts, pixels), 0, 1)
    overlap[overlap <= 1e-3] = 0
    return overlap / overlap.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class AreaTaps:
    """A sparse `area_weights` matrix: each output mixes a few neighbouring inputs.

    Applying it as a gather and a weighted sum is much faster than a dense matrix product
    on frames this small.
    """

    index: np.ndarray
    """(size_out, taps) input positions."""
    weight: np.ndarray
    """(size_out, taps) their weights (0 for padding)."""

    @classmethod
    def of(cls, weights: np.ndarray) -> AreaTaps:
        taps = int((weights > 0).sum(axis=1).max())
        index = np.argsort(weights <= 0, axis=1, kind="stable")[:, :taps]
        return cls(index, np.take_along_axis(weights, index, axis=1).astype(np.float32))

    def apply(self, image: np.ndarray, axis: int) -> np.ndarray:
        """Resize `image` (2-D) along `axis`."""
        if axis == 0:
            return np.einsum("ot,otw->ow", self.weight, image[self.index])
        return np.einsum("ot,hot->ho", self.weight, image[:, self.index])


# --- frame stacking ----------------------------------------------------------------------


class FrameStack(VecEnv):
    """The last k observations on the channel axis, oldest first (Baselines' VecFrameStack):
    at the start of an episode the older slots are zero."""

    def __init__(self, env: VecEnv, k: int):
        self.env, self.k = env, k
        self.num_envs = env.num_envs
        h, w, c = env.observation_shape
        self.observation_shape = (h, w, c * k)
        self.action_combos, self.action_names = env.action_combos, env.action_names
        self._stacked = np.zeros((env.num_envs, h, w, c * k), np.uint8)
        self._push(env.observe())

    def _push(self, step: EnvStep) -> None:
        channels = step.obs.shape[-1]
        self._stacked = np.roll(self._stacked, -channels, axis=-1)
        self._stacked[step.first] = 0
        self._stacked[..., -channels:] = step.obs
        self._last = step

    def observe(self) -> EnvStep:
        return EnvStep(self._last.reward, self._stacked.copy(), self._last.first)

    def act(self, actions: np.ndarray) -> None:
        self.env.act(actions)
        self._push(self.env.observe())

    def frames(self) -> np.ndarray:
        return self.env.frames()

    def close(self) -> None:
        self.env.close()
