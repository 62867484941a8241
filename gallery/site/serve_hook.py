"""MkDocs hook used by `gallery serve` only: before each rebuild, bring the generated
project up to date with the manifest (new or changed models are built; unchanged files are
not rewritten, so the rebuild this triggers settles at once). Thin: the work is
`gallery.pipeline.build.refresh_project`."""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("mkdocs.plugins.gallery")


def on_pre_build(config: object) -> None:
    state = os.environ.get("GALLERY_SERVE")
    if not state:
        return
    from gallery.errors import GalleryError
    from gallery.pipeline.build import refresh_project

    try:
        changed = refresh_project(**json.loads(state))
    except GalleryError as err:  # keep serving the last good pages while the manifest is edited
        log.error("gallery: %s", err)
        return
    if changed:
        log.info("gallery: %d project file(s) updated", changed)
