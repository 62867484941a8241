"""Data collected from the environment (method.md section 1): trajectories and extra
observations, recorded while the agent samples actions from its policy.

- **Trajectories**: E environments (8) step together; one step is taken and discarded,
  then T steps (512) are recorded. For step t of trajectory e: `observations[e, t]` is
  what the agent saw, `firsts[e, t]` whether it starts an episode, `actions[e, t]` the
  action it sampled, `rewards[e, t]` the reward that action earned, and `dones[e, t]`
  whether that action ended the episode (so `dones[:, t] == firsts[:, t + 1]`).
- **Extra observations**: 32 environments run the policy; every 128 steps the current
  observation of each is kept, 128 times: 4096 observations, ordered block by block
  (index k * 32 + i is environment i after (k + 1) * 128 - 1 steps).

Everything is seeded: the same policy, environment, configuration and seed give identical
arrays. `load_or_collect` keeps the result in an `.npz` file with a JSON sidecar and
reuses it while its key (policy, environment, configuration, seed, format) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gallery.environments import EnvSpec, VecEnv, action_names, make_vec_env
from gallery.errors import EnvironmentNotAvailable, GalleryError
from gallery.method.attribution import policy_device

log = logging.getLogger(__name__)

#: Version of the saved layout; a change invalidates every saved file.
FORMAT_VERSION = 2
#: `min_episodes` extends a recording by at most this many times `num_steps`.
MAX_BLOCKS = 64
#: torch threads while collecting (see `torch_threads`); None leaves torch's setting.
TORCH_THREADS: int | None = 1
#: Procgen's stepping threads while collecting: 0 steps the environments in the thread
#: that acts, between the network's forward passes. Its default, 4 threads, made two
#: processes collecting at once (a unit on each core) 5% slower on a 2-core machine.
ENV_THREADS = 0

Progress = Callable[[str, int, int], None]
"""Called as progress(stage, done, total) while collecting; stage is 'trajectories' or
'observations'; counts are environment steps of all copies together (for trajectories the
total is the end of the current block, which `min_episodes` may extend)."""
ChooseActions = Callable[[np.ndarray], np.ndarray]
"""Maps observations (N, H, W, C) uint8 to actions (N,) int."""


@dataclass(frozen=True)
class TrajectoryConfig:
    """How trajectories are recorded."""

    num_envs: int = 8
    """Environments stepped together; one trajectory each (E)."""
    num_steps: int = 512
    """Steps recorded per trajectory (T), after one discarded step."""
    full_resolution: bool = False
    """Also record full-resolution frames (Procgen: 512x512 RGB) for display; 0.8 MB per
    step and environment, 3.2 GB at the defaults."""
    min_episodes: int = 0
    """Keep recording, num_steps more at a time, until at least this many episodes have
    completed within the recording (at most MAX_BLOCKS * num_steps); 0: exactly num_steps."""

    def __post_init__(self) -> None:
        _check_positive(self, "num_envs", "num_steps")
        if self.min_episodes < 0:
            raise ValueError(f"min_episodes must be >= 0, not {self.min_episodes}")


@dataclass(frozen=True)
class ObservationConfig:
    """How the extra observations (for NMF and feature visualisation) are gathered."""

    num_envs: int = 32
    """Environments running the policy."""
    num_obs: int = 128
    """Observations kept per environment."""
    obs_every: int = 128
    """Steps between two kept observations."""
    full_resolution: bool = False
    """Also keep full-resolution frames of the kept observations."""

    def __post_init__(self) -> None:
        _check_positive(self, "num_envs", "num_obs", "obs_every")


def _check_positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, "
                             f"not {value!r}")


@dataclass
class Trajectories:
    """E trajectories of T steps; arrays are indexed [e, t]."""

    observations: np.ndarray
    """(E, T, H, W, C) uint8: what the agent saw before acting."""
    firsts: np.ndarray
    """(E, T) bool: the observation starts an episode."""
    actions: np.ndarray
    """(E, T) int64: the action sampled from the policy."""
    rewards: np.ndarray
    """(E, T) float32: the reward that action earned."""
    dones: np.ndarray
    """(E, T) bool: that action ended the episode (firsts shifted by one, plus the last)."""
    observations_full: np.ndarray | None = None
    """(E, T, H', W', 3) uint8 full-resolution frames, when recorded."""
    discarded_firsts: np.ndarray | None = None
    """(E,) bool: the discarded step's observation starts an episode (True after a reset)."""
    discarded_rewards: np.ndarray | None = None
    """(E,) float32: the reward the discarded step earned. With `discarded_firsts` it
    completes the episode in progress when the recording starts (each environment's first),
    which the (E, T) arrays alone would leave out."""

    @property
    def num_envs(self) -> int:
        return int(self.firsts.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.firsts.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        names = ("observations", "firsts", "actions", "rewards", "dones", "observations_full",
                 "discarded_firsts", "discarded_rewards")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def episodes(self) -> EpisodeStatistics:
        """Returns and lengths of the episodes completed within the recording, the one in
        progress when it starts included when the discarded step is known (it began there
        or earlier: it is counted only when it began there)."""
        if self.discarded_firsts is None or self.discarded_rewards is None:
            return episode_statistics(self.firsts, self.rewards, self.dones)
        return episode_statistics(
            np.concatenate([self.discarded_firsts[:, None], self.firsts], axis=1),
            np.concatenate([self.discarded_rewards[:, None], self.rewards], axis=1),
            np.concatenate([self.firsts[:, :1], self.dones], axis=1))


@dataclass
class Rollouts:
    """Trajectories and extra observations of one policy in one environment."""

    trajectories: Trajectories
    observations: np.ndarray | None = None
    """(N, H, W, C) uint8 extra observations, when gathered."""
    observations_full: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    """What the sidecar JSON holds: key, environment, seed, configs, action names, ..."""
    reused: bool = False
    """Loaded from a saved file rather than collected now."""


# --- episode statistics ------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodeStatistics:
    """Returns and lengths of the episodes completed within a recording."""

    returns: np.ndarray
    lengths: np.ndarray

    @property
    def count(self) -> int:
        return int(self.returns.size)

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean()) if self.count else float("nan")

    @property
    def mean_length(self) -> float:
        return float(self.lengths.mean()) if self.count else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count,
                "mean_return": None if not self.count else self.mean_return,
                "mean_length": None if not self.count else self.mean_length}


def episode_statistics(firsts: np.ndarray, rewards: np.ndarray,
                       dones: np.ndarray | None = None) -> EpisodeStatistics:
    """Episodes that both start (a `first`) and end (a `done`) within the recording.

    `firsts`, `rewards` and `dones` are (E, T); without `dones` an episode ends where the
    next one starts (`dones[:, t] = firsts[:, t + 1]`), so the last step ends none.
    Episodes are listed trajectory by trajectory, in time order.
    """
    firsts, rewards = np.asarray(firsts, bool), np.asarray(rewards, np.float64)
    if dones is None:
        dones = np.concatenate([firsts[:, 1:], np.zeros_like(firsts[:, :1])], axis=1)
    returns: list[float] = []
    lengths: list[int] = []
    for first, reward, done in zip(firsts, rewards, np.asarray(dones, bool), strict=True):
        starts, ends = np.flatnonzero(first), np.flatnonzero(done)
        following = np.searchsorted(ends, starts)  # the first end at or after each start
        for start, k in zip(starts, following, strict=True):
            if k < ends.size:
                returns.append(float(reward[start:ends[k] + 1].sum()))
                lengths.append(int(ends[k] - start + 1))
    return EpisodeStatistics(np.array(returns, np.float64), np.array(lengths, np.int64))


# --- acting ------------------------------------------------------------------------------


class PolicySampler:
    """Samples actions from a policy's softmax, reproducibly (a seeded torch generator).

    The policy follows docs/dev-contract.md: `logits, value = policy(obs)` with obs float
    (N, H, W, C) in [0, 1]. It runs under `torch.inference_mode`, `batch_size` at a time.
    """

    def __init__(self, policy: nn.Module, seed: int, batch_size: int = 512):
        self.policy = policy
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(int(seed))

    def logits(self, obs: np.ndarray) -> torch.Tensor:
        """(N, A) float32 logits on the CPU for uint8 observations (N, H, W, C); the policy
        runs on its own device, every environment's observation in one batch."""
        device = policy_device(self.policy)
        with torch.inference_mode():
            return torch.cat([self.policy(torch.from_numpy(obs[i:i + self.batch_size])
                                          .to(device).float().div_(255))[0].float().cpu()
                              for i in range(0, len(obs), self.batch_size)])

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        # sampled on the CPU with the seeded generator, whatever the policy's device
        probs = torch.softmax(self.logits(obs), dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0].numpy()


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run torch on `num_threads` intra-op threads for a while (None: as it is).

    Batches of a few observations run fastest on one thread; more threads mostly wait for
    each other, and thrash when the cores are shared with the environments or other work.
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_compatible(policy: nn.Module, env: VecEnv) -> None:
    """Refuse a policy whose actions or observations do not fit the environment."""
    sample = np.zeros((1, *env.observation_shape), np.uint8)
    expected = getattr(policy, "observation_shape", None)
    if expected is not None and tuple(expected) != env.observation_shape:
        raise EnvironmentNotAvailable(
            f"the policy takes {tuple(expected)} observations but the environment gives "
            f"{env.observation_shape}")
    num_actions = PolicySampler(policy, 0).logits(sample).shape[-1]
    if num_actions != env.num_actions:
        raise EnvironmentNotAvailable(
            f"the policy has {num_actions} actions but the environment has "
            f"{env.num_actions} ({', '.join(env.action_names)})")


# --- recording (pure: no files, no printing) -----------------------------------------------


def record_trajectories(env: VecEnv, choose: ChooseActions, num_steps: int, *,
                        full_resolution: bool = False, min_episodes: int = 0,
                        progress: Progress | None = None) -> Trajectories:
    """Step `env` with `choose`: one discarded step, then `num_steps` recorded ones
    (repeated up to MAX_BLOCKS times while fewer than `min_episodes` have completed)."""
    _, obs, first = env.observe()
    env.act(choose(obs))
    discarded_reward = env.observe().reward
    blocks: list[Trajectories] = []
    while True:
        blocks.append(_record_block(env, choose, num_steps, full_resolution, progress,
                                    done_before=len(blocks) * num_steps))
        blocks[0].discarded_firsts = np.asarray(first, bool).copy()
        blocks[0].discarded_rewards = np.asarray(discarded_reward, np.float32).copy()
        if min_episodes <= episode_count(blocks) or len(blocks) == MAX_BLOCKS:
            break
    if len(blocks) == MAX_BLOCKS and episode_count(blocks) < min_episodes:
        log.warning("only %d of %d episodes completed in %d steps", episode_count(blocks),
                    min_episodes, MAX_BLOCKS * num_steps)
    return _concatenate(blocks)


def episode_count(blocks: list[Trajectories]) -> int:
    """Episodes completed within consecutive blocks of one recording."""
    return _concatenate(blocks).episodes().count


def _record_block(env: VecEnv, choose: ChooseActions, num_steps: int, full_resolution: bool,
                  progress: Progress | None, done_before: int) -> Trajectories:
    n = env.num_envs
    out = Trajectories(
        observations=np.zeros((n, num_steps, *env.observation_shape), np.uint8),
        firsts=np.zeros((n, num_steps), bool), actions=np.zeros((n, num_steps), np.int64),
        rewards=np.zeros((n, num_steps), np.float32), dones=np.zeros((n, num_steps), bool))
    frames = []
    _, obs, first = env.observe()
    for t in range(num_steps):
        if full_resolution:
            frames.append(env.frames())
        out.observations[:, t], out.firsts[:, t] = obs, first
        out.actions[:, t] = choose(obs)
        env.act(out.actions[:, t])
        out.rewards[:, t], obs, first = env.observe()
        out.dones[:, t] = first
        if progress:
            progress("trajectories", (done_before + t + 1) * n, (done_before + num_steps) * n)
    if full_resolution:
        out.observations_full = np.stack(frames, axis=1)
    return out


def _concatenate(blocks: list[Trajectories]) -> Trajectories:
    if len(blocks) == 1:
        return blocks[0]
    arrays = {name: (np.concatenate([b.arrays()[name] for b in blocks], axis=1)
                     if name not in ("discarded_firsts", "discarded_rewards") else value)
              for name, value in blocks[0].arrays().items()}
    return Trajectories(**arrays)


def record_observations(env: VecEnv, choose: ChooseActions, num_obs: int, obs_every: int, *,
                        full_resolution: bool = False, progress: Progress | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """Run `env` with `choose`; at the last of every `obs_every` steps keep the observation
    acted on. Returns (num_obs * N, H, W, C) observations, block by block, and the
    matching full-resolution frames (or None)."""
    n = env.num_envs
    kept = np.zeros((num_obs, n, *env.observation_shape), np.uint8)
    frames = []
    _, obs, _ = env.observe()
    for k in range(num_obs):
        for step in range(obs_every):
            if step == obs_every - 1:
                kept[k] = obs
                if full_resolution:
                    frames.append(env.frames())
            env.act(choose(obs))
            _, obs, _ = env.observe()
        if progress:
            progress("observations", (k + 1) * obs_every * n, num_obs * obs_every * n)
    full = np.concatenate(frames) if full_resolution else None
    return kept.reshape(-1, *env.observation_shape), full


# --- collecting with a policy ------------------------------------------------------------


def rollout_seeds(seed: int) -> dict[str, int]:
    """Independent seeds for each environment and each action sampler, derived from `seed`."""
    names = ("trajectory_env", "trajectory_actions", "observation_env", "observation_actions")
    children = np.random.SeedSequence(int(seed)).spawn(len(names))
    return {name: int(c.generate_state(1)[0]) for name, c in zip(names, children, strict=True)}


def collect_trajectories(policy: nn.Module, spec: EnvSpec,
                         config: TrajectoryConfig = TrajectoryConfig(), seed: int = 0,
                         progress: Progress | None = None) -> Trajectories:
    """Record `config.num_envs` trajectories of `policy` sampling its actions in `spec`."""
    seeds = rollout_seeds(seed)
    with make_vec_env(spec, config.num_envs, seeds["trajectory_env"],
                      config.full_resolution, ENV_THREADS) as env, \
            torch_threads(TORCH_THREADS):
        check_compatible(policy, env)
        return record_trajectories(
            env, PolicySampler(policy, seeds["trajectory_actions"]), config.num_steps,
            full_resolution=config.full_resolution, min_episodes=config.min_episodes,
            progress=progress)


def collect_observations(policy: nn.Module, spec: EnvSpec,
                         config: ObservationConfig = ObservationConfig(), seed: int = 0,
                         progress: Progress | None = None, group: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray | None]:
    """Gather the extra observations: `config.num_envs * config.num_obs` of them. `group`
    numbers one of several groups of environments collected separately (an interface's
    observation units): each group has its own environment and action seeds."""
    seeds = rollout_seeds(seed)
    env_seed, action_seed = seeds["observation_env"], seeds["observation_actions"]
    if group is not None:
        env_seed, action_seed = (int(np.random.SeedSequence([s, group]).generate_state(1)[0])
                                 for s in (env_seed, action_seed))
    with make_vec_env(spec, config.num_envs, env_seed,
                      config.full_resolution, ENV_THREADS) as env, \
            torch_threads(TORCH_THREADS):
        check_compatible(policy, env)
        return record_observations(
            env, PolicySampler(policy, action_seed), config.num_obs,
            config.obs_every, full_resolution=config.full_resolution, progress=progress)


def collect(policy: nn.Module, spec: EnvSpec, trajectories: TrajectoryConfig,
            observations: ObservationConfig | None, seed: int,
            progress: Progress | None = None) -> Rollouts:
    """Trajectories, then (unless `observations` is None) the extra observations."""
    start = time.perf_counter()
    recorded = collect_trajectories(policy, spec, trajectories, seed, progress)
    seconds = {"trajectories": time.perf_counter() - start}
    extra, extra_full = None, None
    if observations is not None:
        start = time.perf_counter()
        extra, extra_full = collect_observations(policy, spec, observations, seed, progress)
        seconds["observations"] = time.perf_counter() - start
    return Rollouts(recorded, extra, extra_full, {"collection_seconds": seconds})


# --- saving and reusing ------------------------------------------------------------------


def policy_fingerprint(policy: nn.Module, checkpoint_sha256: str | None = None) -> str:
    """What identifies the policy in a key: its checkpoint's sha256 when known, else a
    hash of its parameters and buffers."""
    sha = checkpoint_sha256 or getattr(policy, "sha256", "")
    if sha:
        return f"checkpoint-sha256:{sha}"
    digest = hashlib.sha256()
    for name, tensor in sorted(policy.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"state-dict-sha256:{digest.hexdigest()}"


def rollout_key(policy_id: str, spec: EnvSpec, trajectories: TrajectoryConfig,
                observations: ObservationConfig | None, seed: int) -> str:
    """sha256 of everything the collected arrays depend on."""
    described = {"format_version": FORMAT_VERSION, "policy": policy_id, "env": spec.to_dict(),
                 "trajectories": asdict(trajectories),
                 "observations": None if observations is None else asdict(observations),
                 "seed": int(seed)}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def metadata_path(path: str | Path) -> Path:
    """The JSON sidecar of a rollouts file: OUT.npz -> OUT.json."""
    return Path(path).with_suffix(".json")


def save_rollouts(path: str | Path, rollouts: Rollouts) -> None:
    """Write the arrays (compressed npz) then the sidecar; each file appears whole or not
    at all, and the sidecar last, so a half-written pair is never reused."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"trajectories.{k}": v for k, v in rollouts.trajectories.arrays().items()}
    for name in ("observations", "observations_full"):
        if getattr(rollouts, name) is not None:
            arrays[name] = getattr(rollouts, name)
    with _replacing(path) as f:
        np.savez_compressed(f, **arrays)
    with _replacing(metadata_path(path)) as f:
        f.write(json.dumps(rollouts.metadata, indent=2, sort_keys=True).encode() + b"\n")


class _replacing:
    """Open `path + '.tmp'` for writing; on success move it over `path`."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")

    def __enter__(self) -> Any:
        self.file = open(self.tmp, "wb")
        return self.file

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def load_rollouts(path: str | Path) -> Rollouts:
    """Read a rollouts file and its sidecar."""
    path = Path(path)
    try:
        meta = json.loads(metadata_path(path).read_text())
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise GalleryError(f"{path}: cannot read saved rollouts ({err}); delete it (and "
                           f"{metadata_path(path).name}) to collect again") from err
    prefix = "trajectories."
    trajectories = Trajectories(**{k[len(prefix):]: v for k, v in arrays.items()
                                   if k.startswith(prefix)})
    return Rollouts(trajectories, arrays.get("observations"), arrays.get("observations_full"),
                    meta, reused=True)


def saved_key(path: str | Path) -> str | None:
    """The key of a saved rollouts file, or None when there is no complete one."""
    try:
        meta = json.loads(metadata_path(path).read_text())
    except (OSError, ValueError):
        return None
    return meta.get("key") if Path(path).exists() else None


def load_or_collect(path: str | Path, policy: nn.Module, spec: EnvSpec, *,
                    trajectories: TrajectoryConfig = TrajectoryConfig(),
                    observations: ObservationConfig | None = ObservationConfig(),
                    seed: int = 0, checkpoint_sha256: str | None = None,
                    progress: Progress | None = None, force: bool = False) -> Rollouts:
    """The rollouts saved at `path` if their key matches, else collect and save them.

    The key covers the policy (checkpoint sha256, or a hash of its weights), the
    environment, both configurations, the seed and FORMAT_VERSION. `force` recollects.
    """
    checkpoint_sha256 = checkpoint_sha256 or getattr(policy, "sha256", None) or None
    policy_id = policy_fingerprint(policy, checkpoint_sha256)
    key = rollout_key(policy_id, spec, trajectories, observations, seed)
    if not force and saved_key(path) == key:
        log.info("reusing rollouts saved in %s", path)
        return load_rollouts(path)
    rollouts = collect(policy, spec, trajectories, observations, seed, progress)
    rollouts.metadata = _metadata(key, policy_id, checkpoint_sha256, spec, trajectories,
                                  observations, seed, rollouts)
    save_rollouts(path, rollouts)
    return rollouts


def _metadata(key: str, policy_id: str, checkpoint_sha256: str | None, spec: EnvSpec,
              trajectories: TrajectoryConfig, observations: ObservationConfig | None,
              seed: int, rollouts: Rollouts) -> dict[str, Any]:
    recorded = rollouts.trajectories
    return {
        "format_version": FORMAT_VERSION, "key": key, "policy": policy_id,
        "checkpoint_sha256": checkpoint_sha256,
        "env": spec.to_dict(), "env_description": spec.describe(), "seed": int(seed),
        "trajectories": asdict(trajectories),
        "observations": None if observations is None else asdict(observations),
        "action_names": list(action_names(spec)),
        "episodes": recorded.episodes().to_dict(),
        "collection_seconds": rollouts.metadata.get("collection_seconds"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": dict(_versions()),
    }


def _versions() -> Iterator[tuple[str, str]]:
    for name in ("gallery", "procgen", "ale-py", "gymnasium", "torch", "numpy"):
        try:
            yield name, package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            pass
