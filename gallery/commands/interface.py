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
from gallery.pipeline.interface import (
    InterfaceError,
    InterfaceOptions,
    generate_interface,
    options_from,
)
from gallery.pipeline.units import Interrupted, local_pool

DEFAULTS = InterfaceOptions()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interface", help="generate the interactive interface of one checkpoint",
        description="Analyse CHECKPOINT (trajectories, attribution, NMF features, dataset "
        "examples; method of 'Understanding RL Vision') and write an interface into DIR, "
        "viewable with any static web server (e.g. `python3 -m http.server` in DIR).")
    p.add_argument("checkpoint", help="checkpoint file (.jd), or module:factory of an adapter")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--adapter", metavar="MODULE:FACTORY",
                   help="load CHECKPOINT through a PyTorch adapter (see docs/adapters.md)")
    g = p.add_argument_group("trajectories and observations")
    g.add_argument("--num-envs", type=int, default=DEFAULTS.num_envs,
                   help=f"trajectories (default {DEFAULTS.num_envs})")
    g.add_argument("--num-steps", type=int, default=DEFAULTS.num_steps,
                   help=f"steps per trajectory (default {DEFAULTS.num_steps})")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed (default 0)")
    g.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="override an environment option of the checkpoint (repeatable)")
    g.add_argument("--obs-num-envs", type=int, default=DEFAULTS.obs_num_envs,
                   help="environments for the extra observations "
                   f"(default {DEFAULTS.obs_num_envs})")
    g.add_argument("--num-obs", type=int, default=DEFAULTS.num_obs,
                   help=f"extra observations per environment (default {DEFAULTS.num_obs})")
    g.add_argument("--obs-every", type=int, default=DEFAULTS.obs_every,
                   help=f"steps between kept observations (default {DEFAULTS.obs_every})")
    g.add_argument("--resample", action="store_true",
                   help="record again even if saved rollouts match")
    g.add_argument("--cache-dir", help="where rollouts are kept (default: $GALLERY_CACHE or "
                   "the user cache folder)")
    g = p.add_argument_group("analysis")
    g.add_argument("--layer", dest="layers", action="append", metavar="SUBSTRING",
                   help="only layers whose name contains this (repeatable; default: all)")
    g.add_argument("--discard-first-n", type=int, default=0, metavar="N",
                   help="drop the first N layers")
    g.add_argument("--input-layer", action="store_true",
                   help="also show gradients with respect to the observation")
    g.add_argument("--policy", action="store_true",
                   help="attribute every action and action group too (much slower, larger)")
    g.add_argument("--no-single-features", dest="single_features", action="store_false",
                   help="no single-feature views (no hover isolation in the legend)")
    g.add_argument("--integrate-steps", type=int, default=DEFAULTS.integrate_steps,
                   help=f"integrated-gradients steps (default {DEFAULTS.integrate_steps})")
    g.add_argument("--multi-path", action="store_true",
                   help="multi-path attribution through NMF feature space")
    g.add_argument("--max-paths", type=int, help="with --multi-path: paths drawn")
    g.add_argument("--nmf-features", type=int, default=DEFAULTS.nmf_features,
                   help=f"NMF features per layer (default {DEFAULTS.nmf_features})")
    g.add_argument("--nmf-integrate-steps", type=int, default=DEFAULTS.nmf_integrate_steps,
                   help=f"steps of the attribution NMF is fitted on (default "
                   f"{DEFAULTS.nmf_integrate_steps})")
    g.add_argument("--bookmarks", type=int, default=DEFAULTS.bookmarks,
                   help=f"bookmarks of each sign (default {DEFAULTS.bookmarks})")
    g = p.add_argument_group("feature visualisation and presentation")
    g.add_argument("--vis-subdiv-mults", type=_floats, default=DEFAULTS.vis_subdiv_mults,
                   metavar="A,B,..", help="patch-count multipliers (default 0.25,0.5,1,2)")
    g.add_argument("--vis-subdiv-mult-default", type=float,
                   default=DEFAULTS.vis_subdiv_mult_default)
    g.add_argument("--vis-expand-mults", type=_floats, default=DEFAULTS.vis_expand_mults,
                   metavar="A,B,..", help="zoom multipliers (default 1,2,4,8)")
    g.add_argument("--vis-expand-mult-default", type=float,
                   default=DEFAULTS.vis_expand_mult_default)
    g.add_argument("--video-speed", type=float, default=DEFAULTS.video_speed,
                   help="playback frames per second (default 12)")
    g.add_argument("--title", help="page title (default: the checkpoint's file name)")
    g.add_argument("--fast-images", dest="image_effort", action="store_const", const="fast",
                   default="best", help="encode observation images quickly (about twice "
                   "the size; for previews)")
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


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, not {text!r}") from None


OPTION_NAMES = ("num_envs", "num_steps", "seed", "obs_num_envs", "num_obs", "obs_every",
                "resample", "cache_dir", "layers", "discard_first_n", "input_layer", "policy",
                "single_features", "integrate_steps", "multi_path", "max_paths",
                "nmf_features", "nmf_integrate_steps", "bookmarks", "vis_subdiv_mults",
                "vis_subdiv_mult_default", "vis_expand_mults", "vis_expand_mult_default",
                "video_speed", "title", "image_effort")


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
    values: dict[str, Any] = {name: getattr(args, name) for name in OPTION_NAMES}
    values["env"] = parse_overrides(args.env)
    try:
        options = options_from(values)
    except InterfaceError as err:
        raise UsageError(str(err)) from None

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
                summary = generate_interface(args.checkpoint, args.output,
                                             adapter=args.adapter, config=options,
                                             progress=say, device=args.device)
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
