"""`gallery deploy [--remote R] [--branch gh-pages]`: publish the built site to GitHub Pages
(or any git remote's branch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gallery import __version__
from gallery.models.fetch import resolve_cache_dir
from gallery.site.budget import mb
from gallery.site.deploy import deploy


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy", help="publish the built site to a gh-pages branch of a git remote",
        description="Commit the built site (from `gallery build`) to BRANCH of REMOTE, on top "
        "of its history, with .nojekyll, and push. REMOTE is a remote name of the repository "
        "here, a URL or a path. GitHub Pages then serves the branch (Settings > Pages > "
        "Deploy from a branch).")
    p.add_argument("-o", "--site-dir", default="site", metavar="DIR",
                   help="the built site (default: site/)")
    p.add_argument("--remote", default="origin", help="remote name, URL or path (default: origin)")
    p.add_argument("--branch", default="gh-pages", help="branch to publish to (default: gh-pages)")
    p.add_argument("--message", help="commit message")
    p.add_argument("--cname", metavar="DOMAIN", help="custom domain written to CNAME")
    p.add_argument("--cache-dir", metavar="DIR", help="where the deploy repository is kept")
    p.add_argument("--allow-oversize", action="store_true",
                   help="publish even when the site exceeds GitHub Pages' limits (1 GB in all, "
                   "100 MB per file); without it such a site is refused")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = deploy(Path(args.site_dir), args.remote, args.branch,
                    cache_dir=resolve_cache_dir(args.cache_dir),
                    message=args.message or f"Deploy the gallery site (gallery {__version__})",
                    cname=args.cname, allow_oversize=args.allow_oversize)
    if result.size:
        print(f"site: {result.size.files} files, {mb(result.size.total_bytes)}")
    if result.changed:
        print(f"published {result.files} files to {result.remote} {result.branch} "
              f"({result.commit[:12]})")
    else:
        print(f"{result.remote} {result.branch} already holds this site ({result.commit[:12]})")
    return 0
