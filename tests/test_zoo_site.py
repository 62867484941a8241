"""A zoo's own pages (site_src/) and look (theme/) merged into the generated project, the
repository's demo zoo using both, and the generated site built by `mkdocs build --strict`
and by `zensical build --strict`, with nothing a visitor sees left to a plugin or hook."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from test_site import fake_folder, fake_result  # tests/ is on sys.path (conftest)

from gallery.pipeline.manifest import parse_manifest
from gallery.site import BuildInfo, ModelEntry, SiteBuildError, build_site, plan_project
from gallery.site.project import write_project

REPO = Path(__file__).resolve().parents[1]
INFO = BuildInfo("2024-01-02", "0.1.0")
MANIFEST = """
site: {name: Own zoo}
models:
  - {id: alpha, title: Alpha, checkpoint: "https://example.org/alpha.jd", sha256: "abababababababababababababababababababababababababababababababab"}
"""
FOOTER_TOKEN = "zzownfooterzz"


def zoo(root: Path) -> Path:
    """A manifest folder with site_src/ (two pages, one in a sub-folder, an image) and
    theme/ (a partial Material has, and the 404 page the gallery has)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "checkpoints.yaml").write_text(MANIFEST)
    pages = root / "site_src"
    (pages / "guide" / "img").mkdir(parents=True)
    (pages / "about.md").write_text("---\ntitle: About <us>\n---\n\n# Ignored heading\n\n"
                                    "Back to [the zoo](index.md). ![x](guide/img/x.png)\n")
    (pages / "guide" / "reading.md").write_text("# Reading an interface\n\nSee "
                                                "[about](../about.md).\n")
    Image.new("RGB", (8, 8)).save(pages / "guide" / "img" / "x.png")
    (root / "theme" / "partials").mkdir(parents=True)
    (root / "theme" / "partials" / "copyright.html").write_text(
        f'<div class="md-copyright">{FOOTER_TOKEN}</div>')
    (root / "theme" / "404.html").write_text(
        '{% extends "main.html" %}{% block content %}<h1>zzown404zz</h1>{% endblock %}')
    return root


def models(root: Path) -> tuple[object, list[ModelEntry]]:
    manifest = parse_manifest((root / "checkpoints.yaml").read_text(),
                              root / "checkpoints.yaml")
    result = fake_result("alpha", interface="interface")
    return manifest, [ModelEntry(manifest.model("alpha"), result,
                                 fake_folder(root / "r" / "alpha", result))]


def test_own_pages_and_theme_are_merged(tmp_path):
    root = zoo(tmp_path / "zoo")
    manifest, entries = models(root)
    plan = plan_project(manifest.site, entries, [], INFO, zoo_dir=manifest.root)
    config = yaml.safe_load(plan.texts["mkdocs.yml"])
    assert config["nav"][:3] == [{"Zoo": "index.md"}, {"About &lt;us&gt;": "about.md"},
                                 {"Reading an interface": "guide/reading.md"}]
    assert plan.files["docs/guide/img/x.png"] == root / "site_src" / "guide" / "img" / "x.png"
    # theme/ wins over the gallery's built-in templates, which stay for the rest
    assert plan.files["overrides/404.html"] == root / "theme" / "404.html"
    assert plan.files["overrides/partials/copyright.html"].parent.parent == root / "theme"
    assert plan.files["overrides/main.html"].is_relative_to(REPO / "gallery" / "site" / "theme")

    project, out = tmp_path / "project", tmp_path / "out"
    write_project(plan, project)
    build_site(project, out, strict=True)
    assert "Reading an interface" in (out / "guide" / "reading" / "index.html").read_text()
    assert (out / "guide" / "img" / "x.png").is_file()
    about = (out / "about" / "index.html").read_text()
    assert FOOTER_TOKEN in about and 'property="og:title"' in about  # override + built-in
    assert "zzown404zz" in (out / "404.html").read_text()
    assert FOOTER_TOKEN in (out / "models" / "alpha" / "index.html").read_text()


def test_without_site_src_and_theme_nothing_changes(tmp_path):
    root = tmp_path / "zoo"
    root.mkdir()
    (root / "checkpoints.yaml").write_text(MANIFEST)
    manifest, entries = models(root)
    plain = plan_project(manifest.site, entries, [], INFO)
    merged = plan_project(manifest.site, entries, [], INFO, zoo_dir=manifest.root)
    assert plain.texts == merged.texts and plain.files == merged.files


@pytest.mark.parametrize("name", ["index.md", "models/alpha/index.md", "viewer/viewer.js"])
def test_own_pages_cannot_replace_generated_ones(tmp_path, name):
    root = zoo(tmp_path / "zoo")
    target = root / "site_src" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("# Mine\n")
    manifest, entries = models(root)
    with pytest.raises(SiteBuildError, match="rename the file"):
        plan_project(manifest.site, entries, [], INFO, zoo_dir=manifest.root)


def test_symbolic_links_are_refused(tmp_path):
    root = zoo(tmp_path / "zoo")
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    os.symlink(secret, root / "site_src" / "leak.txt")
    manifest, entries = models(root)
    with pytest.raises(SiteBuildError, match="symbolic link"):
        plan_project(manifest.site, entries, [], INFO, zoo_dir=manifest.root)


def test_the_demo_zoo_has_its_own_pages_and_theme():
    pages = sorted(p.name for p in (REPO / "site_src").glob("*.md"))
    assert {"about.md", "methods.md"} <= set(pages)
    methods = (REPO / "site_src" / "methods.md").read_text()
    for term in ("integrated gradients", "hidden layer", "NMF", "residual", "zero *at that "
                 "layer*"):
        assert term in methods, term
    own = {p.relative_to(REPO / "theme").as_posix() for p in (REPO / "theme").rglob("*")
           if p.is_file()}
    material = Path(importlib.util.find_spec("material").origin).parent / "templates"
    assert own and all((material / rel).is_file() for rel in own)  # real overrides


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory) -> Path:
    """The generated project of a zoo with an interface and the repository's own pages."""
    root = tmp_path_factory.mktemp("demo")
    (root / "checkpoints.yaml").write_text(MANIFEST)
    for name in ("site_src", "theme"):
        os.symlink(REPO / name, root / name)
    manifest, entries = models(root)
    plan = plan_project(manifest.site, entries, [], INFO, zoo_dir=manifest.root)
    write_project(plan, root / "project")
    return root / "project"


def test_no_plugin_or_hook_shapes_what_visitors_see(demo_project):
    config = yaml.safe_load((demo_project / "mkdocs.yml").read_text())
    # search is built into Zensical; `gallery serve` adds its hook only while serving
    assert config["plugins"] == [{"search": {"lang": "en"}}]
    assert "hooks" not in config


def test_mkdocs_strict_build(demo_project, tmp_path):
    build_site(demo_project, tmp_path / "site", strict=True)
    methods = (tmp_path / "site" / "methods" / "index.html").read_text()
    assert "Integrated gradients" in methods


def test_zensical_build(demo_project, tmp_path):
    if importlib.util.find_spec("zensical") is None:
        from conftest import skip_or_fail

        skip_or_fail("zensical is a test dependency (pip install -e '.[test]')")
    project = tmp_path / "project"
    subprocess.run(["cp", "-rL", str(demo_project), str(project)], check=True)
    done = subprocess.run([sys.executable, "-m", "zensical", "build", "--strict", "-f",
                           "mkdocs.yml"], cwd=project, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    site = project / "site"
    model = (site / "models" / "alpha" / "index.html").read_text()
    # what the visitor sees without any plugin: hidden sidebars, the viewer's mount, the
    # gallery's meta tags and the zoo's own footer (theme overrides) and pages
    assert 'data-md-type="navigation" hidden' in model
    assert "data-gallery-viewer" in model and 'property="og:title"' in model
    assert "Interfaces after" in model
    assert "Integrated gradients" in (site / "methods" / "index.html").read_text()
    assert (site / "css" / "gallery.css").is_file() and (site / "js" / "viewers.js").is_file()
