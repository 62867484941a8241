"""`gallery interface CHECKPOINT -o DIR`: one standalone interactive interface."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from gallery.commands.rollout import parse_overrides
from gallery.errors import UsageError
from gallery.pipeline import distributed, progress
from gallery.pipeline.interface import generate_interface
from gallery.pipeline.options import OptionsError, add_arguments, from_arguments
from gallery.pipeline.units import Interrupted, local_pool


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interface", help="generate the interactive interface of one checkpoint",
        description="Analyse CHECKPOINT (trajectories, attribution, NMF features, dataset "
        "examples; method of 'Understanding RL Vision') and write an interface into DIR, "
        "viewable with any static web server (e.g. `python3 -m http.server` in DIR).")
    p.add_argument("checkpoint", help="an rl-clarity checkpoint (.jd), a Stable-Baselines3 "
                   "zip, or the weights file an adapter reads")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--adapter", metavar="MODULE:FACTORY",
                   help="load CHECKPOINT through a PyTorch adapter (see docs/adapters.md)")
    p.add_argument("--title", help="page title (default: the checkpoint's file name)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="the environment where the file does not name it, or an override "
                   "of the checkpoint's environment option (repeatable)")
    p.add_argument("--rollouts", metavar="FILE", help="show these saved rollouts "
                   "(`gallery rollout`'s .npz) instead of recording new ones")
    p.add_argument("--resample", action="store_true",
                   help="compute every unit again, even if the cache holds it")
    p.add_argument("--cache-dir", help="where units are kept (default: $GALLERY_CACHE or "
                   "the user cache folder)")
    add_arguments(p)
    g = p.add_argument_group("execution (docs/scaling.md)")
    g.add_argument("--device", default="cpu", help="torch device of the analysis: cpu "
                   "(default); under MPI each rank takes its node's GPU by local rank")
    g.add_argument("--threads", type=int, metavar="N", help="torch threads per process "
                   "(default: the cores divided by the MPI ranks on this node)")
    add_workers_argument(g)
    p.set_defaults(func=run)


def add_workers_argument(g: Any) -> None:
    g.add_argument("--workers", type=int, metavar="N", help="worker processes beside this "
                   "one, computing units that do not depend on each other at once (default: "
                   "$GALLERY_WORKERS, else the cores less one; 0: one process; ignored under "
                   "MPI). The output is the same with any number")


@contextlib.contextmanager
def working(context: distributed.Context, workers: int | None) -> Iterator[None]:
    """Progress bars on stderr and, without MPI, the local worker processes."""
    with progress.installed(progress.Reporter(sys.stderr)):
        if context.executor is not None:
            yield
            return
        try:
            pool = local_pool(workers)
        except ValueError as err:  # a bad $GALLERY_WORKERS
            raise UsageError(str(err)) from None
        with pool:
            yield


def run(args: argparse.Namespace) -> int:
    try:
        options = from_arguments(args)
    except OptionsError as err:
        raise UsageError(str(err)) from None
    env = parse_overrides(args.env)

    def say(message: str) -> None:
        print(f"[interface] {message}", file=sys.stderr, flush=True)

    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be a positive integer, not {args.threads}")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be 0 or more, not {args.workers}")
    with distributed.session(args.threads) as context:
        if context is None:  # an MPI worker rank: it served units; rank 0 reports
            return 0
        try:
            with working(context, args.workers):
                summary = generate_interface(
                    args.checkpoint, args.output, options, adapter=args.adapter, env=env,
                    title=args.title, rollouts=args.rollouts, cache_dir=args.cache_dir,
                    resample=args.resample, progress=say, device=args.device)
        except Interrupted as stop:
            print(f"gallery interface: stopped; {stop.summary.describe()}. Run the same "
                  "command again to finish: finished units are kept.", file=sys.stderr)
            return 130
    sizes = summary["sizes"]
    print(f"wrote {summary['output_dir']}")
    print(f"layers        {', '.join(summary['layers'])}")
    print(f"outputs       {len(summary['outputs'])}")
    print(f"bundle        {sizes['total_bytes'] / 1e6:.1f} MB in {sizes['files']} files "
          f"(largest {sizes['largest_file']['bytes'] / 1e6:.1f} MB)")
    print(f"first load    {sizes['first_load_bytes'] / 1e6:.2f} MB")
    print("seconds       " + ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items()))
    print(f"view it with  cd {summary['output_dir']} && python3 -m http.server 8000")
    return 0
