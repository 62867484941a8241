"""`gallery build [-m checkpoints.yaml] [-o site/]`: the whole gallery, as a static site."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from gallery.commands.interface import add_workers_argument, working
from gallery.errors import UsageError
from gallery.models.fetch import Cache, FetchPolicy, resolve_cache_dir
from gallery.pipeline import distributed
from gallery.pipeline.build import BuildConfig, build_gallery, format_summary
from gallery.pipeline.manifest import Manifest, load_manifest

log = logging.getLogger(__name__)

DEMO_MANIFEST = Path(__file__).resolve().parents[2] / "checkpoints.yaml"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build", help="build the gallery website from a manifest (checkpoints.yaml)",
        description="Fetch every checkpoint of the manifest, build what changed, generate the "
        "MkDocs project and build the static site. Without -m, ./checkpoints.yaml, else the "
        "bundled demo.")
    add_build_arguments(p)
    add_workers_argument(p)
    p.add_argument("-o", "--output", default="site", metavar="DIR",
                   help="folder for the built site (default: site/)")
    p.set_defaults(func=run)


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `gallery build` and `gallery serve`."""
    p.add_argument("-m", "--manifest", metavar="FILE",
                   help="the manifest (default: ./checkpoints.yaml, else the bundled demo)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="downloads and computed results (default: $GALLERY_CACHE, else the "
                   "user cache folder)")
    p.add_argument("--seed-cache", action="append", default=[], metavar="FILE",
                   help="add a local copy of a checkpoint to the cache first, so that a "
                   "manifest entry with its URL and sha256 builds offline (repeatable)")
    p.add_argument("--interfaces", action=argparse.BooleanOptionalAction, default=True,
                   help="generate each model's interactive interface and the comparisons' "
                   "side-by-side interfaces (default); --no-interfaces: statistics and model "
                   "cards only (much faster)")
    p.add_argument("--force", action="store_true",
                   help="recompute every model, even those whose results are cached")
    p.add_argument("--retries", type=int, default=FetchPolicy.retries,
                   help=f"download retries (default {FetchPolicy.retries})")
    p.add_argument("--no-strict", dest="strict", action="store_false",
                   help="let MkDocs warnings (broken links, ...) pass instead of failing")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads per process (default: the cores divided by the MPI "
                   "ranks on this node); run under `mpiexec -n N` to spread the interface "
                   "units of all models over N ranks (docs/scaling.md)")
    p.add_argument("--device", metavar="DEVICE",
                   help="torch device of every network: cpu (default), cuda (under MPI each "
                   "rank takes the GPU local_rank %% GPUs) or cuda:N")


def resolve_manifest(option: str | None) -> Path:
    if option:
        return Path(option)
    local = Path("checkpoints.yaml")
    if local.is_file():
        return local
    log.info("no checkpoints.yaml here: building the bundled demo (%s)", DEMO_MANIFEST)
    return DEMO_MANIFEST


def prepare(args: argparse.Namespace) -> tuple[Manifest, BuildConfig]:
    """The manifest (validated before any work) and the build's configuration."""
    manifest = load_manifest(resolve_manifest(args.manifest))
    cache_dir = resolve_cache_dir(args.cache_dir)
    for path in args.seed_cache:
        digest = Cache(cache_dir).add(path)
        log.info("cache: %s added as sha256 %s", path, digest)
    config = BuildConfig(output=Path(getattr(args, "output", "site")), cache_dir=cache_dir,
                         force=args.force, fetch=FetchPolicy(retries=args.retries),
                         strict=args.strict, interfaces=getattr(args, "interfaces", True))
    return manifest, config


def run(args: argparse.Namespace) -> int:
    if getattr(args, "device", None):  # checked now, then the default of every unit
        distributed.resolve_device(args.device)
        os.environ[distributed.DEVICE_ENV] = args.device
    # under `mpiexec -n N`, ranks other than 0 compute interface units, rank 0 does the rest
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be 0 or more, not {workers}")
    with distributed.session(getattr(args, "threads", None)) as context:
        if context is None:
            return 0
        with working(context, workers):
            return _run(args)


def _run(args: argparse.Namespace) -> int:
    manifest, config = prepare(args)
    print(f"gallery build: {manifest.path} ({len(manifest.models)} models, "
          f"{len(manifest.comparisons)} comparisons) -> {config.output}/; cache {config.cache_dir}",
          file=sys.stderr)
    report = build_gallery(manifest, config)
    print(format_summary(report))
    if report.output:
        print(f"view it: gallery serve -m {manifest.path}   (or: python -m http.server "
              f"-d {report.output})")
    return report.exit_code
