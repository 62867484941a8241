"""The site: a small generated project built by real `mkdocs build --strict`, asserted on its
HTML; escaping and sanitising of manifest text; charts."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from gallery.pipeline.manifest import parse_manifest
from gallery.site import (
    BuildInfo,
    ComparisonEntry,
    EpisodeSummary,
    ModelEntry,
    ModelResult,
    SharedObservations,
    SiteBuildError,
    build_site,
    plan_project,
    write_project,
)
from gallery.site.charts import Series, bar_chart, histogram_series, nice_ticks, scatter_chart
from gallery.site.pages import mkdocs_config
from gallery.site.project import ProjectPlan, check_output_dir
from gallery.site.sanitize import escape, plain_text, render_markdown

SHA = "ab" * 32
XSS_TITLE = '<img src=x onerror=alert("title")></title><script>alert("t2")</script>'
XSS_DESCRIPTION = """Hello **world**.

<script>alert("desc")</script>
<img src="https://example.org/y.png" onerror="alert('img')">
[click](javascript:alert('link'))
<a href="https://example.org" onclick="alert('a')">fine link</a>
"""
XSS_TAG = '<svg onload=alert("tag")>'
INTERFACE_TOKEN = "zzinterfacetokenzz"

MANIFEST = f"""
site:
  name: "Zoo <b>bold</b>"
  url: https://example.org/zoo/
  description: A test zoo.
models:
  - id: alpha
    title: '{XSS_TITLE}'
    checkpoint: https://example.org/alpha.jd
    sha256: "{SHA}"
    description: |
{chr(10).join('      ' + line for line in XSS_DESCRIPTION.splitlines())}
    tags: [coinrun, '{XSS_TAG}']
    features: {{2b: {{0: coin, 3: buzzsaw}}, nope: {{1: x}}}}
    training_steps: 25000000
    citation: Cite *us*.
  - id: beta
    title: Beta
    checkpoint: https://example.org/beta.jd
    sha256: "{SHA}"
    tags: [coinrun, easy]
    features: {{3a: {{1: coin}}}}
  - id: gamma
    title: Gamma (fails)
    checkpoint: https://example.org/gamma.jd
    sha256: "{SHA}"
comparisons:
  - id: alpha-beta
    title: Alpha and beta
    models: [alpha, beta, gamma]
    description: Compare *them*.
"""


def fake_result(model_id: str, *, mean_return: float | None = 5.0, seed: int = 0,
                interface: str | None = None, thumbnail: str | None = "thumbnail.png"
                ) -> ModelResult:
    """A ModelResult as the per-model step would produce it (no torch, no environment)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return ModelResult(
        model_id=model_id, key=f"key-{model_id}", checkpoint_sha256=SHA, architecture="clear",
        parameters=363216, observation_shape=[64, 64, 3], actions=["LEFT", "RIGHT"],
        layers=[{"name": "2b", "shape": [32, 32, 32]}, {"name": "3a", "shape": [16, 16, 32]}],
        environment={"env_kind": "procgen", "env_name": "coinrun", "frame_stack": 1,
                     "sticky_actions": False, "options": {"distribution_mode": "hard"}},
        environment_description="procgen coinrun (distribution_mode=hard)",
        training_args={"cnn": "clear", "learning_rate": 0.0005, "env_name": "coinrun"},
        training_steps=None, settings={"trajectories": {"num_envs": 2, "num_steps": 16}},
        episodes=EpisodeSummary(3 if mean_return is not None else 0, mean_return, 120.0),
        steps_recorded=[2, 16], gamma=0.999, lam=0.95,
        values_vs_returns=rng.normal(5, 2, (40, 2)).round(3).tolist(),
        advantages=rng.normal(0, 1, 200).round(3).tolist(),
        thumbnail=thumbnail, interface=interface, built_at="2024-01-01 00:00 UTC",
        seconds=1.5, versions={"gallery": "0.1.0"})


def fake_folder(folder: Path, result: ModelResult) -> Path:
    """The files a result names, as the per-model step leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    if result.thumbnail:
        Image.new("RGB", (256, 256), (40, 90, 160)).save(folder / result.thumbnail)
    if result.interface:
        ui = folder / result.interface
        (ui / "data").mkdir(parents=True, exist_ok=True)
        (ui / "index.html").write_text(f"<!doctype html><title>ui</title><p>{INTERFACE_TOKEN}")
        (ui / "data" / "layer-2b.json").write_text(json.dumps({"token": INTERFACE_TOKEN}))
    return folder


class Page(HTMLParser):
    """Elements with their attributes, and the text of every <script>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The site of MANIFEST with alpha (interface), beta (built), gamma (failed)."""
    root = tmp_path_factory.mktemp("site")
    manifest = parse_manifest(MANIFEST, root / "checkpoints.yaml")
    alpha = fake_result("alpha", interface="interface")
    beta = fake_result("beta", mean_return=None, seed=1)
    legends = root / "r" / "alpha-legends"
    legends.mkdir(parents=True)
    for k in range(4):
        Image.new("RGBA", (24, 24), (40, 200, 40, 255)).save(legends / f"f-L0-f{k}.png")
    models = [
        ModelEntry(manifest.model("alpha"), alpha, fake_folder(root / "r" / "alpha", alpha),
                   legends={"2b": [legends / f"f-L0-f{k}.png" for k in range(4)]}),
        ModelEntry(manifest.model("beta"), beta, fake_folder(root / "r" / "beta", beta)),
        ModelEntry(manifest.model("gamma"), error="fetch: HTTP 404 <script>alert(1)</script>"),
    ]
    shared_folder = root / "r" / "cmp"
    shared_folder.mkdir(parents=True)
    Image.new("RGB", (64 * 4, 64)).save(shared_folder / "frames.png")
    for model_id in ("alpha", "beta"):
        ui = shared_folder / "interface" / model_id
        (ui / "bundle").mkdir(parents=True)
        (ui / "index.html").write_text(f"<!doctype html><p>{INTERFACE_TOKEN}")
        (ui / "bundle" / "bundle.json").write_text(json.dumps({"token": INTERFACE_TOKEN}))
    (shared_folder / "matched").mkdir()
    for name in ("alpha-L0-f0.png", "alpha-L0-f1.png", "beta-L0-f1.png", "beta-L0-f0.png"):
        Image.new("RGBA", (24, 24), (200, 40, 40, 255)).save(shared_folder / "matched" / name)
    matched = [{"layer": "2b", "models": ["alpha", "beta"], "rows": [
        {"cells": [{"model": "alpha", "feature": 0, "similarity": None,
                    "image": "matched/alpha-L0-f0.png"},
                   {"model": "beta", "feature": 1, "similarity": 0.912,
                    "image": "matched/beta-L0-f1.png"}]},
        {"cells": [{"model": "alpha", "feature": 1, "similarity": None,
                    "image": "matched/alpha-L0-f1.png"},
                   {"model": "beta", "feature": 0, "similarity": 0.25,
                    "image": "matched/beta-L0-f0.png"}]}]}]
    shared = SharedObservations("alpha", "frames.png", {"alpha": [1.0, 2.0, 3.0, 4.0],
                                                        "beta": [2.0, 2.5, 2.0, 1.0]},
                                {"alpha": ["LEFT"] * 4, "beta": ["RIGHT"] * 4},
                                interfaces={"alpha": "interface/alpha",
                                            "beta": "interface/beta"},
                                matched=matched, shared_steps=[2, 16])
    comparisons = [ComparisonEntry(manifest.comparisons[0], shared, shared_folder)]
    plan = plan_project(manifest.site, models, comparisons, BuildInfo("2024-01-02", "0.1.0"))
    project, output = root / "project", root / "out"
    write_project(plan, project)
    build_site(project, output, strict=True)
    return {"root": root, "project": project, "out": output, "plan": plan,
            "manifest": manifest, "models": models, "comparisons": comparisons}


def html_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.html"))


def test_site_map(built):
    out = built["out"]
    for page in ("index.html", "404.html", "models/alpha/index.html", "models/beta/index.html",
                 "models/gamma/index.html", "compare/alpha-beta/index.html",
                 "models/alpha/thumbnail.png", "models/alpha/interface/index.html",
                 "models/alpha/interface/data/layer-2b.json", "compare/alpha-beta/frames.png",
                 "css/gallery.css", "js/zoo.js", "js/viewers.js", "viewer/viewer.js",
                 "viewer/viewer.css", "compare/alpha-beta/interface/beta/bundle/bundle.json",
                 "compare/alpha-beta/matched/beta-L0-f1.png", "sitemap.xml",
                 "search/search_index.json"):
        assert (out / page).is_file(), page


def test_every_relative_link_resolves(built):
    out = built["out"]
    mount = urlsplit(built["manifest"].site.url).path  # 404.html links from the site's root
    broken = []
    for path in html_files(out):
        base = "/" + path.relative_to(out).parent.as_posix() + "/"
        for tag, attrs in parse(path).elements:
            for name in ("href", "src"):
                url = attrs.get(name)
                if not url or urlsplit(url).scheme or url.startswith(("#", "//", "data:")):
                    continue
                target = urlsplit(url).path
                if target.startswith(mount):
                    target = "/" + target[len(mount):]
                resolved = Path(unquote(target if target.startswith("/") else base + target))
                file = out / str(resolved).lstrip("/")
                if not (file.is_file() or (file / "index.html").is_file()):
                    broken.append(f"{path.relative_to(out)}: <{tag} {name}={url!r}>")
    assert not broken, "\n".join(broken)


def test_xss_payloads_stay_inert(built):
    out = built["out"]
    for path in html_files(out):
        page = parse(path)
        for tag, attrs in page.elements:
            for name, value in attrs.items():
                assert not (name.startswith("on") and "alert" in value), (path, tag, name)
                if name in ("href", "src"):
                    assert not value.strip().lower().startswith("javascript:"), (path, value)
            assert not (tag == "img" and attrs.get("src") == "x"), path  # the title's payload
            assert not (tag == "svg" and "onload" in attrs), path
        assert not any("alert" in s for s in page.scripts), path
    index = (out / "search" / "search_index.json").read_text()
    for raw in ("<script>alert", "<img src=x", "<svg onload", "onerror=\\\"alert"):
        assert raw not in index


def test_escaped_text_is_shown_as_text(built):
    alpha = (built["out"] / "models/alpha/index.html").read_text()
    assert '&lt;img src=x onerror=alert("title")&gt;' in alpha.replace("&#34;", '"').replace(
        "&quot;", '"')
    title = re.search(r"<title>(.*?)</title>", alpha, re.S).group(1)
    assert "<" not in title and "&lt;/title&gt;" in title
    assert "<strong>world</strong>" in alpha and ">fine link</a>" in alpha
    assert 'rel="noopener noreferrer nofollow"' in alpha


def test_zoo_cards_and_tag_filter(built):
    index = parse(built["out"] / "index.html")
    cards = [a for t, a in index.elements if t == "article" and "gallery-card" in a["class"]]
    assert len(cards) == 3
    assert json.loads(cards[0]["data-tags"]) == ["coinrun", XSS_TAG]
    assert "gallery-card--failed" in cards[2]["class"]
    buttons = [a["data-tag"] for t, a in index.elements if t == "button" and "data-tag" in a]
    assert buttons == sorted(["coinrun", "easy", XSS_TAG])
    text = (built["out"] / "index.html").read_text()
    for fact in ("coinrun (hard)", "clear", "25M", "5.00", "n/a (no episode completed)"):
        assert fact in text
    assert 'href="compare/alpha-beta/"' in text
    assert '<script src="js/zoo.js"></script>' in text


def test_model_page_card(built):
    text = (built["out"] / "models/alpha/index.html").read_text()
    mounts = [a for t, a in parse(built["out"] / "models/alpha/index.html").elements
              if "data-gallery-viewer" in a]
    assert len(mounts) == 1 and mounts[0]["data-bundle"] == "interface/bundle/bundle.json"
    assert mounts[0]["data-sync-url"] == "true"  # deep links live in the address
    assert mounts[0]["data-viewer-js"] == "../../viewer/viewer.js"
    assert 'href="interface/index.html"' in text and '<script src="../../js/viewers.js">' in text
    # the features: legend thumbnails numbered as in the viewer, with the manifest's labels
    items = re.findall(r'<figure class="gallery-legend__item">(.*?)</figure>', text, re.S)
    assert len(items) == 4 and 'src="features/f-L0-f0.png"' in items[0]
    assert "1 <strong>coin</strong>" in items[0] and "4 <strong>buzzsaw</strong>" in items[3]
    assert (built["out"] / "models/alpha/features/f-L0-f3.png").is_file()
    for fact in ("https://example.org/alpha.jd", SHA, "363,216", "25,000,000",
                 "procgen coinrun (distribution_mode=hard)", "learning_rate", "0: coin",
                 "3: buzzsaw", "Feature labels name layers this model does not offer: nope",
                 "2024-01-01 00:00 UTC", "10.23915/distill.00029", "Cite <em>us</em>",
                 "<svg class=\"gallery-chart\""):
        assert fact in text, fact
    beta = (built["out"] / "models/beta/index.html").read_text()
    assert 'src="thumbnail.png"' in beta and "data-gallery-viewer" not in beta


def test_failed_model_page_shows_the_error(built):
    text = (built["out"] / "models/gamma/index.html").read_text()
    assert "This model failed to build" in text
    assert "fetch: HTTP 404 &lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_comparison_page(built):
    text = (built["out"] / "compare/alpha-beta/index.html").read_text()
    assert text.count('<svg class="gallery-chart"') == 4
    assert "Missing from the charts: Gamma (fails)" in text
    assert 'src="frames.png"' in text
    mounts = [a for t, a in parse(built["out"] / "compare/alpha-beta/index.html").elements
              if "data-gallery-viewer" in a]
    assert [m["data-bundle"] for m in mounts] == ["interface/alpha/bundle/bundle.json",
                                                  "interface/beta/bundle/bundle.json"]
    assert len({m["data-group"] for m in mounts}) == 1 and "data-sync-url" not in mounts[1]
    assert "Every model on the same 2 × 16 recorded steps" in text
    assert "These models share one checkpoint" in text  # fake results: one sha256
    rows = re.findall(r'<tr class="gallery-matched__row">(.*?)</tr>', text, re.S)
    assert len(rows) == 2
    assert 'src="matched/alpha-L0-f0.png"' in rows[0] and "<strong>coin</strong>" in rows[0]
    assert 'src="matched/beta-L0-f1.png"' in rows[0] and "similarity 0.91" in rows[0]
    assert re.search(r"<td>coin</td><td>2b: 0</td><td>3a: 1</td>", text)
    assert "Compare <em>them</em>" in text


def test_search_covers_the_manifest_and_never_the_interface(built):
    index = json.loads((built["out"] / "search/search_index.json").read_text())
    docs = {d["location"]: d for d in index["docs"]}
    everything = json.dumps(index)
    assert INTERFACE_TOKEN not in everything
    assert not any("/interface/" in location for location in docs)
    assert "bundle.json" not in everything and "viewer.js" not in everything
    # titles, descriptions, tags, environments, layers, labels: a few kB per page
    size = (built["out"] / "search/search_index.json").stat().st_size
    assert size < 8000 * len(docs), size
    alpha = " ".join(d["title"] + " " + d["text"] for loc, d in docs.items()
                     if loc.startswith("models/alpha/"))
    for term in ("Hello", "coinrun", "buzzsaw", "2b", "distribution_mode", "clear",
                 "&lt;svg onload"):
        assert term in alpha, term
    assert docs["models/alpha/"]["title"].startswith("&lt;img")  # shown as text, not markup
    zoo = docs[""]["text"]
    assert "Environment" not in zoo  # the cards are not indexed a second time


def test_meta_tags_palette_and_404(built):
    out = built["out"]
    alpha = parse(out / "models/alpha/index.html")
    meta = {a.get("property") or a.get("name"): a.get("content") for t, a in alpha.elements
            if t == "meta"}
    assert meta["og:url"] == "https://example.org/zoo/models/alpha/"
    assert meta["og:image"] == "https://example.org/zoo/models/alpha/thumbnail.png"
    assert meta["og:site_name"] == "Zoo <b>bold</b>"  # parsed: escaped in the HTML
    assert meta["description"].startswith("Hello world. click")
    assert meta["description"].endswith("fine link")
    assert meta["twitter:card"] == "summary"
    schemes = [a.get("data-md-color-scheme") for t, a in alpha.elements
               if t == "input" and a.get("data-md-color-scheme")]
    assert schemes == ["default", "slate"]
    not_found = (out / "404.html").read_text()
    assert "Page not found" in not_found and "Back to the model zoo" in not_found
    assert 'href="https://example.org/zoo/"' in not_found


def test_rewriting_an_unchanged_project_touches_nothing(built):
    assert write_project(built["plan"], built["project"]) == 0


def test_stale_project_files_are_removed(tmp_path):
    plan = ProjectPlan(texts={"docs/a.md": "a", "docs/b.md": "b"})
    assert write_project(plan, tmp_path) == 2
    del plan.texts["docs/b.md"]
    assert write_project(plan, tmp_path) == 1
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["a.md"]


def test_strict_build_fails_on_a_broken_link(built, tmp_path):
    project = tmp_path / "p"
    write_project(ProjectPlan(texts={
        "mkdocs.yml": "site_name: x\ntheme: {name: material}\n",
        "docs/index.md": "# x\n\n[gone](gone.md)\n"}), project)
    with pytest.raises(SiteBuildError, match="gone.md"):
        build_site(project, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_output_folder_safety(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    from gallery.errors import GalleryError

    with pytest.raises(GalleryError, match="refusing"):
        check_output_dir(tmp_path)
    with pytest.raises(GalleryError, match="does not hold a built site"):
        check_output_dir(tmp_path / "notes")
    with pytest.raises(GalleryError, match="refusing"):
        check_output_dir(tmp_path / "m", protected=[tmp_path / "m" / "cache"])
    check_output_dir(tmp_path / "new")


def test_config_escapes_titles():
    manifest = parse_manifest(MANIFEST, "m.yaml")
    entries = [ModelEntry(m) for m in manifest.models]
    config = mkdocs_config(manifest.site, entries, [], BuildInfo("2024", "0"))
    assert config["site_name"] == "Zoo &lt;b&gt;bold&lt;/b&gt;"
    assert list(config["nav"][1]["Models"][0]) == [escape(XSS_TITLE)]
    assert "Comparisons" not in json.dumps(config["nav"])


def test_markdown_is_sanitised():
    html = render_markdown(XSS_DESCRIPTION + "\n# Heading\n")
    assert "<script" not in html and "onerror" not in html and "onclick" not in html
    assert "javascript:" not in html
    assert "<strong>world</strong>" in html and "<h2>Heading</h2>" in html
    assert plain_text("A **b** <script>x</script> c") == "A b c"


def test_nice_ticks_by_hand():
    assert nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(-0.3, 0.9) == [-0.5, 0.0, 0.5, 1.0]  # 1.2 / 5 = 0.24 -> steps of 0.5
    assert nice_ticks(5, 5) == [5.0, 5.2, 5.4, 5.6, 5.8, 6.0]


def test_charts_escape_labels_and_handle_missing_values():
    svg = bar_chart("t<", ["a<b", "c"], [1.0, None], "y")
    assert "a&lt;b" in svg and "<title>t&lt;</title>" in svg and "n/a" in svg
    svg = scatter_chart("s", [Series("m&m", [0, 1], [0, 1])], "x", "y", diagonal=True)
    assert svg.count("<circle") == 2 and "m&amp;m" in svg and 'class="diagonal"' in svg
    series = histogram_series({"a": [0.0, 1.0, 1.0], "b": [0.5]}, bins=4)
    assert [s.name for s in series] == ["a", "b"] and len(series[0].x) == 4


def test_tag_filter_in_a_real_browser(built):
    """zoo.js in headless Chromium, when one is installed: #tags=easy hides the others."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which(
        "google-chrome")
    if browser is None:
        pytest.skip("no Chromium here")
    url = (built["out"] / "index.html").as_uri() + "#tags=easy"
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=3000", "--dump-dom", url],
        capture_output=True, text=True, timeout=60).stdout
    cards = re.findall(r'<article class="gallery-card[^"]*" data-tags="([^"]*)"( hidden="")?',
                       dom)
    visible = [json.loads(tags.replace("&quot;", '"')) for tags, hidden in cards if not hidden]
    assert len(cards) == 3 and visible == [["coinrun", "easy"]]
    assert "1 of 3 models tagged easy" in dom


def test_features_matched_by_correlation():
    import numpy as np

    from gallery.site.matching import common_layers, feature_similarity, match_layer, sample_frames

    rng = np.random.default_rng(0)
    a = rng.random((6, 4, 4, 3))                      # 6 frames, 4 x 4 positions, K = 3
    b = a[..., [2, 0, 1]] * 5 + 1                       # the same features, permuted, scaled
    b = np.concatenate([b, np.zeros((6, 4, 4, 1))], -1)  # and a dead feature
    rows = match_layer([a, b])
    assert {r["feature"]: r["matches"][0]["feature"] for r in rows} == {0: 1, 1: 2, 2: 0}
    assert all(r["matches"][0]["similarity"] == 1.0 for r in rows)
    corr = feature_similarity(a.reshape(-1, 3), b.reshape(-1, 4))
    assert corr.shape == (3, 4) and np.all(corr[:, 3] == 0)  # constant: 0, not NaN
    # other spatial shapes: one sample per frame
    small = a[:, :2, :2] * 0 + a.mean(axis=(1, 2), keepdims=True)
    assert [m["feature"] for r in sorted(match_layer([a, small]), key=lambda r: r["feature"])
            for m in r["matches"]] == [0, 1, 2]
    assert common_layers([["1a", "2b", "4a"], ["4a", "2b"], ["2b", "4a", "x"]]) == ["2b", "4a"]
    frames = sample_frames(np.arange(2 * 50 * 1 * 1 * 1).reshape(2, 50, 1, 1, 1), limit=10)
    assert len(frames) == 10 and frames[0, 0, 0, 0] == 0 and frames[-1, 0, 0, 0] == 99


def test_static_sources_are_package_data():
    """site_src/ and theme/ live in the package (gallery/site/static, gallery/site/theme) and
    are declared package data, so a non-editable install finds them."""
    import tomllib
    from importlib import resources

    from gallery.site.project import SITE_SRC, THEME_DIR

    root = resources.files("gallery.site")
    assert (root / "static" / "js" / "viewers.js").is_file()
    assert (root / "theme" / "main.html").is_file()
    assert SITE_SRC == Path(str(root / "static")) and THEME_DIR == Path(str(root / "theme"))
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["gallery"]
    assert "site/static/**/*" in data and "site/theme/*" in data


def test_a_wheel_install_finds_the_static_sources(tmp_path):
    """A non-editable install (wheel) carries static/, theme/ and the built viewer, and the
    site finds them inside the installed package."""
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).parents[1]
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    shutil.copytree(repo / "gallery", source / "gallery",
                    ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("gallery-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--target", str(tmp_path / "target"),
                          str(wheel)], check=True, capture_output=True)
    probe = ("import gallery.site.project as p; "
             "print(p.SITE_SRC, (p.SITE_SRC / 'js/viewers.js').is_file(), "
             "(p.THEME_DIR / 'main.html').is_file(), (p.VIEWER_DIST / 'viewer.js').is_file())")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True, text=True,
                         capture_output=True, env={"PYTHONPATH": str(tmp_path / "target"),
                                                   "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0].startswith(str(tmp_path / "target")) and out[1:] == ["True"] * 3


# --- reproducible builds --------------------------------------------------------------------


def test_demo_site_is_byte_identical_across_caches(tmp_path, monkeypatch):
    """The demo manifest (two models, one comparison, interfaces on) at tiny settings, built
    twice with SOURCE_DATE_EPOCH into two output folders from two cache folders: every file
    of the two sites (pages, bundles, viewer, search index, sitemap.xml.gz) is the same,
    byte for byte, and none names a folder of the machine that built it."""
    import shutil

    import yaml

    from gallery.cli import main

    root = Path(__file__).resolve().parents[1]
    manifest = yaml.safe_load((root / "checkpoints.yaml").read_text())
    manifest["defaults"] = {
        "trajectories": {"num_envs": 2, "num_steps": 16, "seed": 0, "bookmarks": 2},
        "observations": {"num_envs": 4, "num_obs": 16, "obs_every": 4},
        "layers": {"include": ["2b", "4a"]},
        "attribution": {"integrate_steps": 2},
        "nmf": {"features": 4, "integrate_steps": 2},
    }
    # the checkpoints beside the manifest, named as the demo names them
    for model in manifest["models"]:
        target = tmp_path / "zoo" / model["checkpoint"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / model["checkpoint"], target)
    (tmp_path / "zoo" / "checkpoints.yaml").write_text(yaml.safe_dump(manifest))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    monkeypatch.delenv("GALLERY_CACHE", raising=False)
    sites = []
    for name in ("one", "two"):
        site = tmp_path / f"site-{name}"
        assert main(["build", "-m", str(tmp_path / "zoo" / "checkpoints.yaml"), "-o", str(site),
                     "--cache-dir", str(tmp_path / f"cache-{name}"), "--retries", "0"]) == 0
        sites.append(site)
    files = [sorted(p.relative_to(s).as_posix() for p in s.rglob("*") if p.is_file())
             for s in sites]
    assert files[0] == files[1]
    assert any(f.endswith("interface/index.html") for f in files[0])
    assert "sitemap.xml.gz" in files[0]
    different = [f for f in files[0] if (sites[0] / f).read_bytes() != (sites[1] / f).read_bytes()]
    assert not different, different
    model_page = (sites[0] / "models" / "coinrun-final" / "index.html").read_text()
    assert "2023-11-14 22:13 UTC" in model_page  # the model card's "Built" line
    folders = [str(tmp_path), str(Path.home()), str(root)]
    for f in files[0]:
        data = (sites[0] / f).read_bytes()
        named = [d for d in folders if d.encode() in data]
        assert not named, (f, named)
