"""PPO for the gallery's architectures, in one readable file (Baselines PPO2 semantics).

Why our own PPO rather than Stable-Baselines3: the network must be exactly one of the
rl-clarity graphs (so the saved checkpoint is the format the rest of the gallery reads,
TensorFlow variable names included), the environments speak gym3's observe/act protocol,
and the algorithm is ~200 lines. The update follows OpenAI Baselines' PPO2, with which the
original checkpoints were trained: GAE(gamma, lambda), clipped surrogate and clipped value
loss, entropy bonus, per-minibatch advantage normalisation, global gradient clipping, Adam.

Training is resumable: `checkpoint.jd` (the policy, rl-clarity format) and
`train_state.pt` (optimizer and counters, loadable with `weights_only=True`) are written
atomically every `save_every` updates; `train(..., resume=True)` continues from them.
`keep_every` also keeps snapshots `checkpoint-<steps>.jd` along the run (the untrained
weights as `checkpoint-0.jd`), so that one run yields the checkpoints of a training
comparison. `init_from` continues a run whose optimizer state is lost, from the weights and
step count of a checkpoint this trainer saved (Adam's moments start again from zero).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import torch
import torch.nn.functional as F

from gallery.environments import EnvSpec, make_vec_env
from gallery.models.checkpoint import ARG_DEFAULTS, read_checkpoint
from gallery.models.networks import build_network, export_params
from gallery.models.policy import Policy, policy_from_checkpoint

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved into the checkpoint's `args`)."""

    env_name: str = "coinrun"
    """Procgen game, or Atari id with env_kind='atari'."""
    env_kind: str = "procgen"
    """'procgen' or 'atari'."""
    distribution_mode: str = "easy"
    """Procgen difficulty."""
    num_levels: int = 0
    """Procgen training levels (0: unlimited)."""
    start_level: int = 0
    """Procgen first level seed."""
    cnn: str = "clear"
    """Architecture: clear, impala or nature."""
    stack_channels: str = "16_32_32"
    """IMPALA depths."""
    emb_size: int = 256
    """IMPALA dense width."""
    total_steps: int = 1_000_000
    """Environment steps to train for (all copies together)."""
    num_envs: int = 64
    """Parallel environments."""
    num_steps: int = 256
    """Steps per environment per update."""
    epochs: int = 3
    """Passes over each batch."""
    minibatches: int = 8
    """Minibatches per epoch."""
    learning_rate: float = 5e-4
    """Adam step size."""
    gamma: float = 0.999
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO ratio clipping (also the value clipping)."""
    entropy_coeff: float = 0.01
    """Entropy bonus."""
    vf_coeff: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient clipping."""
    seed: int = 0
    """Seeds the environments, the initial weights and the action sampling."""
    save_every: int = 10
    """Updates between checkpoints."""
    keep_every: int = 0
    """Updates between kept snapshots checkpoint-<steps>.jd, from checkpoint-0.jd (0: none)."""
    threads: int = 0
    """torch threads (0: leave torch's default)."""

    def args(self) -> dict[str, Any]:
        """The checkpoint `args` (checkpoint-format.md) describing this run."""
        args = {**ARG_DEFAULTS, "env_kind": self.env_kind, "cnn": self.cnn,
                "stack_channels": self.stack_channels, "emb_size": self.emb_size,
                "gamma": self.gamma, "lambda": self.lam, "num_envs": self.num_envs,
                "num_steps": self.num_steps, "ppo_epochs": self.epochs,
                "num_minibatches": self.minibatches, "learning_rate": self.learning_rate,
                "clip_range": self.clip_range, "entropy_coeff": self.entropy_coeff,
                "library": "gallery", "seed": self.seed}
        if self.env_kind == "procgen":
            args.update(env_name=self.env_name, distribution_mode=self.distribution_mode,
                        num_levels=self.num_levels, start_level=self.start_level)
        else:
            args.update(env_id=self.env_name)
        return args


def initial_params(seed: int) -> Callable[[str, tuple[int, ...]], np.ndarray]:
    """Orthogonal weights (gain sqrt 2; 0.01 for the policy head, 1 for the value head),
    zero biases, as Baselines initialises PPO networks."""
    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name.endswith(("b:0", "bias:0")):
            return np.zeros(shape, np.float32)
        gain = 0.01 if name == "ppo2_model/pi/w:0" else 1.0 if name.startswith(
            "ppo2_model/vf/") else math.sqrt(2.0)
        flat = (int(np.prod(shape[:-1])), shape[-1])
        a = rng.normal(size=(max(flat), min(flat)))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))
        q = q if flat[0] >= flat[1] else q.T
        return (gain * q[: flat[0], : flat[1]]).reshape(shape).astype(np.float32)

    return init


def fresh_policy(cfg: TrainConfig, spec: EnvSpec, action_names: list[str]) -> Policy:
    network, problems = build_network(cfg.cnn, {}, spec.observation_shape, cfg.stack_channels,
                                      cfg.emb_size, n_actions=len(action_names),
                                      init=initial_params(cfg.seed))
    assert not problems, problems
    return Policy(network, args=cfg.args(), action_names=action_names,
                  observation_shape=spec.observation_shape)


def save_checkpoint(policy: Policy, path: Path, extra: dict[str, Any]) -> None:
    """Write the policy in the rl-clarity format, atomically."""
    data = {"params": export_params(policy.network), "args": dict(policy.args),
            "extra": extra, "time": time.time()}
    tmp = path.with_suffix(".tmp")
    joblib.dump(data, tmp)
    os.replace(tmp, path)


def gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_value: np.ndarray,
        last_done: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """GAE advantages over a (T, N) rollout; dones[t] is 1 when step t ended its episode."""
    adv = np.zeros_like(rewards)
    running = np.zeros_like(last_value)
    for t in reversed(range(rewards.shape[0])):
        next_value = last_value if t == rewards.shape[0] - 1 else values[t + 1]
        done = last_done if t == rewards.shape[0] - 1 else dones[t]
        nonterminal = 1.0 - done
        delta = rewards[t] + gamma * next_value * nonterminal - values[t]
        running = delta + gamma * lam * nonterminal * running
        adv[t] = running
    return adv


class EpisodeTracker:
    """Returns and lengths of the episodes that end, from gym3's (reward, first) stream."""

    def __init__(self, num_envs: int, window: int = 100):
        self.returns, self.lengths = np.zeros(num_envs), np.zeros(num_envs, dtype=int)
        self.recent: deque[tuple[float, int]] = deque(maxlen=window)
        self.count = 0

    def update(self, reward: np.ndarray, first: np.ndarray) -> None:
        """`reward` was earned by the last action; `first` says the new obs starts an episode."""
        self.returns += reward
        self.lengths += 1
        for i in np.flatnonzero(first):
            self.recent.append((float(self.returns[i]), int(self.lengths[i])))
            self.count += 1
        self.returns[first] = 0.0
        self.lengths[first] = 0

    def mean_return(self) -> float:
        return float(np.mean([r for r, _ in self.recent])) if self.recent else float("nan")

    def mean_length(self) -> float:
        return float(np.mean([n for _, n in self.recent])) if self.recent else float("nan")


def _ppo_update(policy: Policy, optim: torch.optim.Optimizer, cfg: TrainConfig,
                batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, float]:
    n = batch["actions"].shape[0]
    size = n // cfg.minibatches
    stats: dict[str, list[float]] = {"pg_loss": [], "vf_loss": [], "entropy": [], "clipfrac": []}
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        for k in range(cfg.minibatches):
            idx = order[k * size:(k + 1) * size]
            obs = batch["obs"][idx].float() / 255.0
            logits, value = policy(obs)
            logp_all = F.log_softmax(logits, -1)
            logp = logp_all.gather(1, batch["actions"][idx, None])[:, 0]
            entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
            adv = batch["advantages"][idx]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            ratio = torch.exp(logp - batch["logp"][idx])
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_range,
                                                                 1 + cfg.clip_range)).mean()
            old_v, ret = batch["values"][idx], batch["returns"][idx]
            v_clipped = old_v + (value - old_v).clamp(-cfg.clip_range, cfg.clip_range)
            vf_loss = 0.5 * torch.max((value - ret) ** 2, (v_clipped - ret) ** 2).mean()
            loss = pg_loss - cfg.entropy_coeff * entropy + cfg.vf_coeff * vf_loss
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optim.step()
            stats["pg_loss"].append(pg_loss.item())
            stats["vf_loss"].append(vf_loss.item())
            stats["entropy"].append(entropy.item())
            stats["clipfrac"].append(((ratio - 1).abs() > cfg.clip_range).float().mean().item())
    return {k: float(np.mean(v)) for k, v in stats.items()}


def _collect(policy: Policy, env: Any, cfg: TrainConfig, tracker: EpisodeTracker,
             generator: torch.Generator, state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    T, N = cfg.num_steps, cfg.num_envs
    obs_buf = np.zeros((T, N, *env.observation_shape), np.uint8)
    actions, logps = np.zeros((T, N), np.int64), np.zeros((T, N), np.float32)
    values, rewards = np.zeros((T, N), np.float32), np.zeros((T, N), np.float32)
    dones = np.zeros((T, N), np.float32)
    obs = state["obs"]
    with torch.inference_mode():
        for t in range(T):
            logits, value = policy(torch.from_numpy(obs).float() / 255.0)
            action = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
            obs_buf[t], actions[t] = obs, action.numpy()
            logps[t] = F.log_softmax(logits, -1).gather(1, action[:, None])[:, 0].numpy()
            values[t] = value.numpy()
            env.act(actions[t])
            reward, obs, first = env.observe()
            rewards[t], dones[t] = reward, first  # a new episode starts: step t ended one
            tracker.update(reward, first)
        _, last_value = policy(torch.from_numpy(obs).float() / 255.0)
    state["obs"] = obs
    adv = gae(rewards, values, dones, last_value.numpy(), dones[-1], cfg.gamma, cfg.lam)
    flat = lambda a: torch.from_numpy(a.reshape(T * N, *a.shape[2:]))  # noqa: E731
    return {"obs": flat(obs_buf), "actions": flat(actions), "logp": flat(logps),
            "values": flat(values), "advantages": flat(adv), "returns": flat(adv + values)}


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = True,
          on_update: Callable[[dict[str, Any]], None] | None = None,
          init_from: str | Path | None = None) -> Path:
    """Train with PPO; returns the path of the final checkpoint (out_dir/checkpoint.jd).

    `init_from` names a checkpoint written by this trainer whose weights and step count the
    run continues from, with a fresh optimizer (for a run whose train_state.pt is gone); it
    is refused when `out_dir` already holds a run to resume."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt_path, state_path = out / "checkpoint.jd", out / "train_state.pt"
    spec = EnvSpec.from_args(cfg.args())
    updates_done, steps_done, elapsed = 0, 0, 0.0
    resumed = resume and ckpt_path.exists() and state_path.exists()
    if init_from is not None and resumed:
        raise ValueError(f"{out} already holds a run to resume; drop --init-from to continue "
                         "it, or use --no-resume to start again from the checkpoint")
    probe = make_vec_env(spec, 1, cfg.seed)
    names = list(probe.action_names)
    probe.close()
    if resumed:
        policy = policy_from_checkpoint(read_checkpoint(ckpt_path))
        policy.action_names = names
        saved = torch.load(state_path, weights_only=True)
        updates_done, steps_done = int(saved["updates"]), int(saved["steps"])
        elapsed = float(saved["elapsed"])
        log.info("resuming from update %d (%d steps)", updates_done, steps_done)
    elif init_from is not None:
        source = read_checkpoint(init_from)
        extra = source.extra or {}
        if "steps" not in extra or "updates" not in extra:
            raise ValueError(f"{init_from}: not a checkpoint saved by gallery train (its "
                             "'extra' holds no steps/updates); train from scratch instead")
        if source.args.get("cnn") != cfg.cnn:
            raise ValueError(f"{init_from} holds a {source.args.get('cnn')!r} network, "
                             f"the run asks for --cnn {cfg.cnn}")
        policy = policy_from_checkpoint(source)
        policy.args = cfg.args()
        policy.action_names = names
        updates_done, steps_done = int(extra["updates"]), int(extra["steps"])
        elapsed = float(extra.get("elapsed_s", 0.0))
        log.info("continuing %s from update %d (%d steps) with a fresh optimizer",
                 init_from, updates_done, steps_done)
    else:
        policy = fresh_policy(cfg, spec, names)
    for p in policy.parameters():
        p.requires_grad_(True)
    optim = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
    if resumed:
        optim.load_state_dict(saved["optimizer"])
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + updates_done)
    env = make_vec_env(spec, cfg.num_envs, cfg.seed + updates_done)
    tracker = EpisodeTracker(cfg.num_envs)
    _, obs, _ = env.observe()
    state = {"obs": obs}
    per_update = cfg.num_envs * cfg.num_steps
    total_updates = math.ceil(cfg.total_steps / per_update)
    log_file = (out / "progress.csv").open("a", newline="")
    writer = csv.writer(log_file)
    if not resumed:
        writer.writerow(["update", "steps", "elapsed_s", "steps_per_s", "episodes",
                         "mean_return", "mean_length", "pg_loss", "vf_loss", "entropy"])

    def save(keep: bool = False, state: bool = True) -> None:
        extra = {"steps": steps_done, "updates": updates_done, "mean_return": tracker.mean_return(),
                 "episodes": tracker.count, "elapsed_s": round(elapsed, 1), "config": asdict(cfg)}
        if keep:
            save_checkpoint(policy, out / f"checkpoint-{steps_done}.jd", extra)
        if not state:
            return
        save_checkpoint(policy, ckpt_path, extra)
        torch.save({"optimizer": optim.state_dict(), "updates": updates_done,
                    "steps": steps_done, "elapsed": elapsed}, state_path.with_suffix(".tmp"))
        os.replace(state_path.with_suffix(".tmp"), state_path)

    if cfg.keep_every and not resumed and init_from is None:
        save(keep=True, state=False)  # the untrained weights, checkpoint-0.jd
    try:
        while updates_done < total_updates:
            start = time.perf_counter()
            policy.eval()
            batch = _collect(policy, env, cfg, tracker, generator, state)
            policy.train()
            stats = _ppo_update(policy, optim, cfg, batch, generator)
            updates_done += 1
            steps_done += per_update
            took = time.perf_counter() - start
            elapsed += took
            row = {"update": updates_done, "steps": steps_done, "elapsed_s": round(elapsed, 1),
                   "steps_per_s": round(per_update / took, 1), "episodes": tracker.count,
                   "mean_return": round(tracker.mean_return(), 3),
                   "mean_length": round(tracker.mean_length(), 1), **stats}
            writer.writerow([row[k] for k in ("update", "steps", "elapsed_s", "steps_per_s",
                                              "episodes", "mean_return", "mean_length",
                                              "pg_loss", "vf_loss", "entropy")])
            log_file.flush()
            if on_update:
                on_update(row)
            keep = bool(cfg.keep_every) and updates_done % cfg.keep_every == 0
            if keep or updates_done % cfg.save_every == 0 or updates_done == total_updates:
                save(keep=keep)
    finally:
        log_file.close()
        env.close()
        policy.eval()
    return ckpt_path
