"""Training throughput: PPO environment steps per second on this machine.

    .venv/bin/python benchmarks/bench_training.py [--cnn clear] [--updates 3]

Prints steps/s per update (rollout + PPO update together) and the machine's load, since
on a shared machine the figure moves with whatever else is running.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from gallery.training import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cnn", default="clear")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--num-steps", type=int, default=128)
    args = parser.parse_args()
    rows: list[dict] = []
    cfg = TrainConfig(env_name="coinrun", distribution_mode="easy", cnn=args.cnn,
                      num_envs=args.num_envs, num_steps=args.num_steps, minibatches=4,
                      total_steps=args.updates * args.num_envs * args.num_steps,
                      save_every=10**6)
    with tempfile.TemporaryDirectory() as out:
        train(cfg, out, resume=False, on_update=rows.append)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    for row in rows:
        print(f"update {row['update']}: {row['steps_per_s']:.1f} steps/s")
    rates = [r["steps_per_s"] for r in rows[1:]] or [rows[0]["steps_per_s"]]
    print(f"mean after the first update: {sum(rates) / len(rates):.1f} steps/s "
          f"({cfg.cnn}, {cfg.num_envs} envs x {cfg.num_steps} steps, {cfg.epochs} epochs)")


if __name__ == "__main__":
    main()
