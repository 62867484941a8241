"""`gallery inspect CHECKPOINT`: architecture, environment, actions, layers, parameters;
with an adapter, also the checks of its offered layers on real frames."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gallery.commands.rollout import parse_overrides
from gallery.models.adapters import ADAPTER_PATTERN, AdapterPolicy, check_adapter, load_any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="describe a checkpoint: architecture, actions, layers")
    p.add_argument("checkpoint", help="checkpoint file (rl-clarity .jd, Stable-Baselines3 "
                   ".zip, or the weights an adapter reads), or module:factory of an adapter")
    p.add_argument("--adapter", metavar="MODULE:FACTORY",
                   help="load CHECKPOINT through a PyTorch adapter (see docs/adapters.md)")
    p.add_argument("--env", metavar="KEY=VALUE", action="append", default=[],
                   help="the environment where the file does not name it, e.g. "
                   "--env env_kind=atari --env env_id=BreakoutNoFrameskip-v4")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the adapter checks (they run the policy in its environment)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    policy = load_any(args.checkpoint, adapter=args.adapter, env=parse_overrides(args.env))
    info = policy.describe()
    through_adapter = args.adapter or (ADAPTER_PATTERN.match(args.checkpoint)
                                       and not Path(args.checkpoint).exists())
    if args.check and through_adapter and isinstance(policy, AdapterPolicy):
        info["checks"] = check_adapter(policy)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    env = info["environment"]
    print(f"checkpoint   {info['source']}")
    if info.get("sha256"):
        print(f"sha256       {info['sha256']}")
    print(f"architecture {info['architecture']}")
    print(f"environment  {', '.join(f'{k}={v}' for k, v in env.items())}")
    print(f"observation  {'x'.join(str(d) for d in info['observation_shape'])} (H x W x C)")
    print(f"actions      {len(info['actions'])}: {', '.join(info['actions'])}")
    print(f"parameters   {info['parameters']:,}")
    print("layers offered for attribution:")
    for layer in info["layers"]:
        print(f"  {layer['name']:<16} {' x '.join(str(d) for d in layer['shape'])}")
    if "checks" in info:
        print("adapter checks passed:")
        for line in info["checks"]:
            print(f"  {line}")
    return 0
