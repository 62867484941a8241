"""`gallery inspect CHECKPOINT`: architecture, environment, actions, layers, parameters."""

from __future__ import annotations

import argparse
import json

from ..adapters import load_any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="describe a checkpoint: architecture, actions, layers")
    p.add_argument("checkpoint", help="checkpoint file (.jd), or module:factory of an adapter")
    p.add_argument("--adapter", metavar="MODULE:FACTORY",
                   help="load CHECKPOINT through a PyTorch adapter (see docs/adapters.md)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = load_any(args.checkpoint, adapter=args.adapter).describe()
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
    return 0
