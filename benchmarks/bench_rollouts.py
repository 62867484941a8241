"""Rollout throughput: environment steps per second, with and without the policy.

    .venv/bin/python benchmarks/bench_rollouts.py [--checkpoint PATH] [--steps N]

Prints one line per case: Procgen and Atari stepped with uniformly random actions
(environment only), then the real policy sampling its actions the way
`gallery.environments.rollouts`
records trajectories (8 environments) and gathers extra observations (32 environments).
Counts are environment steps of all copies together.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gallery.environments import EnvSpec, make_vec_env
from gallery.environments.rollouts import PolicySampler, record_trajectories, torch_threads

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "checkpoints" / "coinrun.jd"


def env_only(spec: EnvSpec, num_envs: int, steps: int) -> float:
    """Steps/s of the environment alone, actions drawn in advance."""
    with make_vec_env(spec, num_envs, seed=0) as env:
        actions = np.random.default_rng(0).integers(0, env.num_actions, (steps, num_envs))
        env.observe()
        start = time.perf_counter()
        for step_actions in actions:
            env.act(step_actions)
            env.observe()
        return steps * num_envs / (time.perf_counter() - start)


def with_policy(spec: EnvSpec, choose: Callable[[np.ndarray], np.ndarray], num_envs: int,
                steps: int) -> float:
    """Steps/s of `record_trajectories` (policy, sampling and recording included)."""
    with make_vec_env(spec, num_envs, seed=0) as env, torch_threads(1):
        start = time.perf_counter()
        record_trajectories(env, choose, steps)
        return (steps + 1) * num_envs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--steps", type=int, default=256, help="steps per case (default 256)")
    args = parser.parse_args()

    coinrun = EnvSpec.from_args({"env_name": "coinrun"})
    breakout = EnvSpec.from_args({"env_kind": "atari", "env_id": "breakout"})
    print(f"{'case':<46} {'steps/s':>9}")
    for name, spec, n in [("procgen coinrun, random actions", coinrun, 8),
                          ("procgen coinrun, random actions", coinrun, 32),
                          ("atari breakout, random actions", breakout, 8)]:
        print(f"{name + f', {n} envs':<46} {env_only(spec, n, args.steps):>9.0f}")
    if not args.checkpoint.exists():
        print(f"{args.checkpoint} is missing: policy cases skipped")
        return
    from gallery import load_policy

    policy = load_policy(args.checkpoint)
    spec = EnvSpec.from_args(policy.args)
    for n in (8, 32):
        rate = with_policy(spec, PolicySampler(policy, seed=0), n, args.steps)
        print(f"{f'{spec.env_name}, {policy.architecture} policy sampling, {n} envs':<46} "
              f"{rate:>9.0f}")


if __name__ == "__main__":
    main()
