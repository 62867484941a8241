"""`gallery train --env NAME -o DIR`: train a PPO agent, saving rl-clarity checkpoints."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from gallery.training import TrainConfig, train

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a PPO agent on a Procgen or Atari game")
    p.add_argument("--env", required=True, dest="env_name",
                   help="Procgen game (coinrun, ...) or Atari id with --env-kind atari")
    p.add_argument("-o", "--output", required=True, help="folder for checkpoint.jd and logs")
    p.add_argument("--no-resume", action="store_true",
                   help="start afresh even if the folder holds a run")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="continue from the weights and step count of a checkpoint saved by "
                        "gallery train whose train_state.pt is gone (fresh optimizer)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "env_name":
            continue
        flag = "--" + f.name.replace("_", "-")
        p.add_argument(flag, type=type(f.default), default=f.default,
                       help=f"{_doc(f.name)} (default: {f.default})")
    p.set_defaults(func=run)


def _doc(name: str) -> str:
    """The one-line docstring under each TrainConfig field."""
    import inspect
    lines = inspect.getsource(TrainConfig).splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{name}:") and i + 1 < len(lines):
            return lines[i + 1].strip().strip('"').rstrip(".")
    return name


def run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})

    def report(row: dict) -> None:
        log.info("update %4d  steps %9d  %6.0f steps/s  episodes %6d  mean return %6.2f  "
                 "entropy %.3f", row["update"], row["steps"], row["steps_per_s"],
                 row["episodes"], row["mean_return"], row["entropy"])

    path = train(cfg, args.output, resume=not args.no_resume, on_update=report,
                 init_from=args.init_from)
    log.info("checkpoint: %s", path)
    return 0
