"""The MkDocs project on disk, and the static site MkDocs builds from it.

`plan_project` lists every file of the project (text computed by pages.py, or a file to
link in from the cache, the package's static/ and theme/, the built viewer, and the zoo's
own site_src/ pages and theme/ overrides beside its manifest);
`write_project` makes the folder match the plan, touching only what changed (so `mkdocs serve` reloads only then, and a
no-change rebuild writes nothing); `build_site` runs `mkdocs build --strict` into a
temporary folder and moves the finished site into place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from gallery.errors import GalleryError
from gallery.site.pages import (
    LEGENDS_DIR,
    VIEWER_CSS,
    VIEWER_JS,
    BuildInfo,
    comparison_page,
    mkdocs_config,
    model_page,
    zoo_page,
)
from gallery.site.results import ComparisonEntry, ModelEntry

log = logging.getLogger(__name__)

PACKAGE_SITE = Path(str(resources.files("gallery.site")))
SITE_SRC = PACKAGE_SITE / "static"
"""Static sources copied into docs/ (css, js, images): package data of gallery.site."""
THEME_DIR = PACKAGE_SITE / "theme"
"""Material overrides (main.html with meta tags, 404.html), the project's overrides/."""
VIEWER_DIST = Path(str(resources.files("gallery"))) / "viewer_dist"
"""The built viewer (viewer.js, viewer.css), copied once into docs/viewer/."""
ZOO_PAGES = "site_src"
"""Beside a manifest: the zoo's own pages (Markdown, with their images), merged into docs/
and listed in the navigation after the zoo."""
ZOO_THEME = "theme"
"""Beside a manifest: template overrides, merged over THEME_DIR (Material's custom_dir:
a file here wins over the gallery's file of the same path, and over Material's own)."""
#: Generated pages and folders that a zoo's own pages may not replace.
_GENERATED = ("index.md", "models/", "compare/", "viewer/")


class SiteBuildError(GalleryError):
    """MkDocs could not build the site (strict mode turns its warnings into this)."""

    exit_code = 1


@dataclass
class ProjectPlan:
    """Every file of a MkDocs project, by path relative to the project folder."""

    texts: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    """Files to link (or copy) from elsewhere."""

    def add_tree(self, source: Path, prefix: str) -> None:
        for path in sorted(source.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                self.files[f"{prefix}/{path.relative_to(source).as_posix()}"] = path


def plan_project(site: object, models: list[ModelEntry], comparisons: list[ComparisonEntry],
                 info: BuildInfo, zoo_dir: Path | None = None) -> ProjectPlan:
    """The project for a manifest's site, its models and comparisons (nothing written);
    `zoo_dir`, the manifest's folder, may hold the zoo's own site_src/ and theme/."""
    plan = ProjectPlan()
    own_pages = _zoo_files(zoo_dir / ZOO_PAGES) if zoo_dir else {}
    pages = [(_page_title(path), rel) for rel, path in own_pages.items() if rel.endswith(".md")]
    config = mkdocs_config(site, models, comparisons, info, pages=pages)
    plan.texts["mkdocs.yml"] = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    plan.texts["docs/index.md"] = zoo_page(site, models, comparisons, info)
    by_id = {m.spec.id: m for m in models}
    viewers = False
    for entry in models:
        base = f"docs/models/{entry.spec.id}"
        plan.texts[f"{base}/index.md"] = model_page(entry, info)
        result, folder = entry.result, entry.folder
        if result and folder:
            if result.thumbnail:
                plan.files[f"{base}/{result.thumbnail}"] = folder / result.thumbnail
            if result.interface:
                plan.add_tree(folder / result.interface, f"{base}/{result.interface}")
                label_bundle(plan, f"{base}/{result.interface}", entry.spec.features)
                viewers = True
            for paths in entry.legends.values():
                for path in paths:
                    plan.files[f"{base}/{LEGENDS_DIR}/{path.name}"] = path
    for comparison in comparisons:
        base = f"docs/compare/{comparison.spec.id}"
        plan.texts[f"{base}/index.md"] = comparison_page(comparison, by_id)
        shared, folder = comparison.shared, comparison.folder
        if shared and folder:
            if shared.frames:
                plan.files[f"{base}/{shared.frames}"] = folder / shared.frames
            for model_id, interface in shared.interfaces.items():
                plan.add_tree(folder / interface, f"{base}/{interface}")
                if model_id in by_id:
                    label_bundle(plan, f"{base}/{interface}", by_id[model_id].spec.features)
                viewers = True
            for layer in shared.matched:
                for row in layer["rows"]:
                    for cell in row["cells"]:
                        if cell.get("image"):
                            plan.files[f"{base}/{cell['image']}"] = folder / cell["image"]
    if viewers:
        for name in (VIEWER_JS, VIEWER_CSS):
            source = VIEWER_DIST / Path(name).name
            if not source.is_file():
                raise SiteBuildError(f"{source} is missing: the viewer is not built; run "
                                     "`bash scripts/build_viewer.sh` (needs Node.js 20+)")
            plan.files[f"docs/{name}"] = source
    _check_sources()
    plan.add_tree(SITE_SRC, "docs")
    plan.add_tree(THEME_DIR, "overrides")
    for rel, path in own_pages.items():
        if rel.startswith(_GENERATED) or f"docs/{rel}" in plan.texts:
            raise SiteBuildError(f"{zoo_dir / ZOO_PAGES / rel}: the gallery generates "
                                 f"{rel.split('/')[0]}; rename the file (the zoo's own pages "
                                 "may not replace the zoo page, models/, compare/ or viewer/)")
        plan.files[f"docs/{rel}"] = path  # may replace a static file (css/gallery.css)
    if zoo_dir:
        for rel, path in _zoo_files(zoo_dir / ZOO_THEME).items():
            plan.files[f"overrides/{rel}"] = path
    return plan


def _zoo_files(folder: Path) -> dict[str, Path]:
    """The files under a zoo's site_src/ or theme/ by relative path; none if it is absent.
    Symbolic links are refused: the site would publish whatever they point to."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise SiteBuildError(f"{path} is a symbolic link; copy the file into "
                                 f"{folder.name}/ instead")
        if path.is_file() and "__pycache__" not in path.parts and not path.name.startswith("."):
            found[path.relative_to(folder).as_posix()] = path
    return found


def _page_title(path: Path) -> str:
    """A zoo page's title in the navigation: its front matter's title, else its first
    heading, else its file name."""
    text = path.read_text(encoding="utf-8")
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end > 0:
            try:
                meta = yaml.safe_load(text[3:end])
            except yaml.YAMLError as err:
                raise SiteBuildError(f"{path}: its front matter is not valid YAML: {err}") \
                    from None
            if isinstance(meta, dict) and meta.get("title"):
                return str(meta["title"])
            text = text[end + 4:]
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip().strip("#").strip()
    return path.stem.replace("-", " ").replace("_", " ").capitalize()


#: Where an interface folder keeps its bundle index.
BUNDLE_INDEX = "bundle/bundle.json"


def label_bundle(plan: ProjectPlan, prefix: str, labels: dict[str, dict[int, str]]) -> None:
    """Give the interface under `prefix` the manifest's feature labels: the site's copy of
    its bundle.json gets `labels` ({feature index: text}) on each labelled layer, which
    the viewer's legend shows. Labels are presentation: the cached bundle is not touched,
    so a changed label rebuilds pages only. (The viewer renders them as text.)"""
    key = f"{prefix}/{BUNDLE_INDEX}"
    source = plan.files.get(key)
    if not labels or source is None:
        return
    index = json.loads(source.read_text())
    for layer in index.get("layers", []):
        named = labels.get(layer.get("name"))
        if named:
            layer["labels"] = {str(k): str(v) for k, v in sorted(named.items())
                               if 0 <= int(k) < int(layer.get("features", 0))}
    del plan.files[key]
    plan.texts[key] = json.dumps(index, separators=(",", ":"))


def _check_sources() -> None:
    for folder in (SITE_SRC, THEME_DIR):
        if not folder.is_dir():
            raise SiteBuildError(f"{folder} is missing: the site's static sources are package "
                                 "data of gallery.site; reinstall gallery")


def write_project(plan: ProjectPlan, project: Path) -> int:
    """Make `project` hold exactly the planned files; returns how many were (re)written."""
    project.mkdir(parents=True, exist_ok=True)
    changed = 0
    for rel, text in plan.texts.items():
        changed += _write_text(project / rel, text)
    for rel, source in plan.files.items():
        changed += _link(source, project / rel)
    wanted = {project / rel for rel in [*plan.texts, *plan.files]}
    for path in sorted(project.rglob("*"), reverse=True):
        if path.is_file() and path not in wanted:
            path.unlink()
            changed += 1
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return changed


def _write_text(path: Path, text: str) -> int:
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return 0
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return 1


def _link(source: Path, target: Path) -> int:
    """Hard-link `source` at `target` (a copy across file systems), unless already there."""
    try:
        if target.samefile(source):
            return 0
        have, want = target.stat(), source.stat()
        if (have.st_size, have.st_mtime_ns) == (want.st_size, want.st_mtime_ns):
            return 0
    except OSError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)
    return 1


# --- building with MkDocs ------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def check_output_dir(output: Path, protected: list[Path] = ()) -> None:
    """Refuse to replace a folder that is not a previously built site: MkDocs empties it."""
    output = output.resolve()
    forbidden = {Path.home().resolve(), Path("/").resolve(), Path.cwd().resolve(),
                 *(p.resolve() for p in protected)}
    if output in forbidden or any(output == p or p.is_relative_to(output) for p in protected):
        raise GalleryError(f"{output}: refusing to build the site here (it would replace this "
                           "folder); choose another -o, e.g. site/")
    if output.is_dir() and any(output.iterdir()) and not (output / "sitemap.xml").exists():
        raise GalleryError(f"{output} is not empty and does not hold a built site; choose "
                           "another -o or empty it first")


def build_site(project: Path, output: Path, strict: bool = True) -> None:
    """`mkdocs build` of `project` into `output` (built aside, then moved into place)."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort, ConfigurationError

    output = output.resolve()
    partial = output.with_name(f".{output.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    collect = _Collect()
    mkdocs_log = logging.getLogger("mkdocs")
    mkdocs_log.addHandler(collect)
    previous_level = mkdocs_log.level
    mkdocs_log.setLevel(logging.WARNING)
    mkdocs_log.propagate = False
    try:
        config = load_config(config_file=str(project / "mkdocs.yml"), site_dir=str(partial),
                             strict=strict)
        build(config)
    except (Abort, ConfigurationError) as err:
        shutil.rmtree(partial, ignore_errors=True)
        details = "\n".join(f"  {m}" for m in collect.messages) or f"  {err}"
        raise SiteBuildError(f"mkdocs could not build the site from {project}:\n{details}") \
            from None
    finally:
        mkdocs_log.removeHandler(collect)
        mkdocs_log.setLevel(previous_level)
        mkdocs_log.propagate = True
    _replace_dir(partial, output)


def _replace_dir(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
