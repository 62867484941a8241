"""`gallery rollout CHECKPOINT -o OUT.npz`: record the agent playing, and how well it did."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import yaml

from gallery.environments import EnvSpec
from gallery.environments.rollouts import (
    ObservationConfig,
    TrajectoryConfig,
    load_or_collect,
)
from gallery.errors import UsageError
from gallery.models.adapters import load_any
from gallery.pipeline.distributed import resolve_device


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rollout", help="record trajectories of a checkpoint's agent (npz + JSON sidecar)",
        description="Run the agent of CHECKPOINT in its environment, sampling its actions, "
        "and save the recorded trajectories to OUT.npz (metadata in OUT.json). An existing "
        "OUT.npz recorded with the same settings is reused.")
    p.add_argument("checkpoint", help="checkpoint file (.jd), or module:factory of an adapter")
    p.add_argument("--adapter", metavar="MODULE:FACTORY",
                   help="load CHECKPOINT through a PyTorch adapter (see docs/adapters.md)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="file to write")
    p.add_argument("--num-envs", type=int, default=8, help="trajectories (default 8)")
    p.add_argument("--num-steps", type=int, default=512,
                   help="steps recorded per trajectory (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--episodes", type=int, default=0, metavar="N",
                   help="keep recording, NUM_STEPS more at a time, until N episodes complete")
    p.add_argument("--full-resolution", action="store_true",
                   help="also record full-resolution frames (Procgen: 512x512)")
    p.add_argument("--observations", action="store_true",
                   help="also gather the extra observations (32 envs x 128, for NMF)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="override an environment option of the checkpoint, e.g. "
                   "distribution_mode=easy or env_name=coinrun (repeatable; YAML values)")
    p.add_argument("--force", action="store_true", help="record again even if OUT.npz matches")
    p.add_argument("--device", metavar="DEVICE",
                   help="torch device of the policy: cpu (default), cuda or cuda:N; the "
                   "environments step on the CPU")
    p.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['num_levels=100', 'use_backgrounds=false'] -> {'num_levels': 100, ...}."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--env {item!r}: expected KEY=VALUE, e.g. distribution_mode=easy")
        try:
            overrides[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise UsageError(f"--env {item!r}: cannot read the value ({err})") from None
    return overrides


class ProgressPrinter:
    """Prints a line to stderr each time collection passes another tenth of its total."""

    def __init__(self) -> None:
        self.shown: dict[tuple[str, int], int] = {}
        self.started: dict[str, tuple[float, int]] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        start, done_at_start = self.started.setdefault(stage, (now, done))
        tenth = 10 * done // max(total, 1)
        if tenth > self.shown.get((stage, total), 0):  # totals grow with --episodes
            self.shown[stage, total] = tenth
            rate = (done - done_at_start) / max(now - start, 1e-9)
            print(f"  {stage}: {done}/{total} steps ({rate:.0f} steps/s)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        trajectories = TrajectoryConfig(args.num_envs, args.num_steps, args.full_resolution,
                                        args.episodes)
    except ValueError as err:
        raise UsageError(str(err)) from None
    device = resolve_device(args.device)  # (checked before anything is loaded)
    policy = load_any(args.checkpoint, adapter=args.adapter, env=parse_overrides(args.env))
    policy.to(device)
    spec = EnvSpec.from_args(policy.args, parse_overrides(args.env))
    print(f"{args.checkpoint}: {spec.describe()}, {trajectories.num_envs} x "
          f"{trajectories.num_steps} steps, seed {args.seed}", file=sys.stderr)
    rollouts = load_or_collect(
        args.output, policy, spec, trajectories=trajectories,
        observations=ObservationConfig() if args.observations else None, seed=args.seed,
        checkpoint_sha256=policy.sha256 or None, progress=ProgressPrinter(), force=args.force)
    print_summary(args.output, rollouts)
    return 0


def print_summary(output: str, rollouts: Any) -> None:
    recorded = rollouts.trajectories
    stats = recorded.episodes()
    steps = recorded.num_envs * recorded.num_steps
    seconds = (rollouts.metadata.get("collection_seconds") or {}).get("trajectories")
    speed = "reused from the saved file" if rollouts.reused else ""
    if not rollouts.reused and seconds:
        speed = f"{seconds:.1f} s, {steps / seconds:.0f} steps/s with environment start-up"
    print(f"wrote {output}" if not rollouts.reused else f"{output} is up to date")
    print(f"steps              {recorded.num_envs} x {recorded.num_steps} = {steps} ({speed})")
    print(f"episodes completed {stats.count}")
    if stats.count:
        print(f"mean return        {stats.mean_return:.3f}")
        print(f"mean length        {stats.mean_length:.1f}")
