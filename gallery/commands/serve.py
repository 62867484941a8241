"""`gallery serve`: build, then preview the site locally with live reload."""

from __future__ import annotations

import argparse
import json
import os
import sys

from gallery.commands.build import add_build_arguments, prepare
from gallery.pipeline.build import build_gallery, format_summary, project_dir_for

HOOK = os.path.join(os.path.dirname(os.path.dirname(__file__)), "site", "serve_hook.py")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="build the gallery, then preview it with live reload",
        description="Build as `gallery build` does, then serve the site on a local address; "
        "edits of the manifest, gallery/site/static/ or gallery/site/theme/ rebuild the "
        "affected pages.")
    add_build_arguments(p)
    p.add_argument("-o", "--output", default="site", metavar="DIR",
                   help="folder for the built site (default: site/)")
    p.add_argument("-a", "--dev-addr", default="127.0.0.1:8000", metavar="HOST:PORT",
                   help="address to serve on (default 127.0.0.1:8000)")
    p.add_argument("--open", action="store_true", help="open the site in a browser")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mkdocs.commands.serve import serve

    from gallery.site.project import SITE_SRC, THEME_DIR

    manifest, config = prepare(args)
    report = build_gallery(manifest, config)
    print(format_summary(report), file=sys.stderr)
    project = project_dir_for(manifest, config.cache_dir)
    if not (project / "mkdocs.yml").is_file():
        return report.exit_code or 1
    # the hook regenerates the pages before each rebuild (see gallery/site/serve_hook.py)
    os.environ["GALLERY_SERVE"] = json.dumps({
        "manifest": str(manifest.path.resolve()), "cache_dir": str(config.cache_dir),
        "project": str(project), "retries": config.fetch.retries,
        "interfaces": config.interfaces})
    serve(config_file=str(project / "mkdocs.yml"), livereload=True,
          watch=[str(manifest.path.resolve()), str(SITE_SRC), str(THEME_DIR)],
          open_in_browser=args.open, dev_addr=args.dev_addr, hooks=[HOOK],
          strict=False)
    return report.exit_code
