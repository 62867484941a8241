"""The built gallery in headless Chromium, served over http on 127.0.0.1: the zoo's tag
filter, search by a feature label, a card opening its page, the viewer mounted into the
model page (deep link in the address), and the comparison page's viewers playing in step
with its matched features. Any console error fails a test.

The gallery is built once per session by `gallery build` (interfaces on, the default) from
two synthetic `clear` checkpoints at tiny settings (2 x 16 frames, 64 observations, layers
2b and 4a): about a minute on two cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gallery.cli import main
from tests.reference.checkpoints import make_checkpoint, write_checkpoint

from .conftest import Console
from .harness import serve

TINY_DEFAULTS = {
    "trajectories": {"num_envs": 2, "num_steps": 16, "bookmarks": 2},
    "observations": {"num_envs": 4, "num_obs": 16, "obs_every": 4},
    "layers": {"include": ["2b", "4a"]},
    "attribution": {"integrate_steps": 2},
    "nmf": {"features": 4, "integrate_steps": 2},
}


@pytest.fixture(scope="session")  # shared with test_pages_layout.py
def gallery_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gallery")
    for seed in (1, 2):
        write_checkpoint(root / f"m{seed}.jd", make_checkpoint("clear", seed=seed))
    manifest = {
        "site": {"name": "Browser zoo"},
        "defaults": TINY_DEFAULTS,
        "models": [
            {"id": "one", "title": "Model one", "checkpoint": "m1.jd", "tags": ["easy", "x"],
             "description": "The first model.", "features": {"2b": {0: "zzcoinlabel"}}},
            {"id": "two", "title": "Model two", "checkpoint": "m2.jd", "tags": ["hard"],
             "env": {"distribution_mode": "hard"}},
        ],
        "comparisons": [{"id": "pair", "title": "One and two", "models": ["one", "two"]}],
    }
    (root / "checkpoints.yaml").write_text(json.dumps(manifest))
    previous = os.environ.get("GALLERY_CACHE")
    os.environ["GALLERY_CACHE"] = str(root / "cache")
    try:
        code = main(["build", "-m", str(root / "checkpoints.yaml"), "-o", str(root / "site"),
                     "--retries", "0"])
    finally:
        if previous is None:
            os.environ.pop("GALLERY_CACHE", None)
        else:
            os.environ["GALLERY_CACHE"] = previous
    assert code == 0
    return root / "site"


@pytest.fixture
def site_page(browser, gallery_site):
    """site_page(path, viewport) -> a page of the served gallery; console errors fail."""
    contexts, consoles = [], []
    server = serve(gallery_site)
    base = server.__enter__()

    def opener(path: str = "", viewport=(1280, 900)):
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        contexts.append(context)
        page = context.new_page()
        consoles.append(Console(page))
        page.goto(base + path)
        page.base_url = base
        return page

    yield opener
    for context in contexts:
        context.close()
    server.__exit__(None, None, None)
    errors = [e for c in consoles for e in c.errors]
    assert not errors, f"console errors: {errors}"


def wait_viewers(page, count: int) -> None:
    page.wait_for_function(
        f"document.querySelectorAll('[data-gallery-viewer][data-ready=true]').length === "
        f"{count} || document.querySelector('[data-gallery-viewer][data-ready=failed]')",
        timeout=60_000)
    assert page.locator("[data-gallery-viewer][data-ready=failed]").count() == 0


def visible_cards(page) -> list[str]:
    return page.eval_on_selector_all(
        "article.gallery-card", "cards => cards.filter(c => !c.hidden)"
        ".map(c => c.querySelector('.gallery-card__title').textContent.trim())")


def test_zoo_filter_search_and_card(site_page, screenshots):
    page = site_page()
    assert visible_cards(page) == ["Model one", "Model two"]
    page.click("button.gallery-filter__tag[data-tag=hard]")
    assert visible_cards(page) == ["Model two"]
    assert "tags=hard" in page.url
    page.click("button.gallery-filter__tag[data-tag=hard]")
    assert visible_cards(page) == ["Model one", "Model two"]
    page.screenshot(path=str(screenshots / "site-zoo.png"))

    # Material's search finds the model page by a feature label of the manifest
    page.keyboard.press("s")  # Material's search hotkey
    page.type("input.md-search__input", "zzcoinlabel", delay=20)
    result = page.locator(".md-search-result__item a[href*='models/one/']").first
    result.wait_for(timeout=20_000)
    assert "zzcoinlabel" in page.inner_text(".md-search-result")

    page.goto(page.base_url)
    page.click("article.gallery-card >> text=Model one")
    page.wait_for_url("**/models/one/")
    wait_viewers(page, 1)
    assert page.locator("[data-gallery-viewer] .gv-timeline").count() == 1


def test_model_page_viewer_and_deep_link(site_page, screenshots):
    page = site_page("models/one/#layer=4a&frame=5")
    wait_viewers(page, 1)
    state = page.evaluate("window.galleryViewers[0].getState()")
    assert (state["layer"], state["frame"]) == ("4a", 5)
    page.click("[data-gallery-viewer] button[aria-label='Step forward']")
    page.wait_for_function("location.hash.includes('frame=6')")
    for text in ("zzcoinlabel", "sha256", "Mean episode return", "Build settings",
                 "How to cite"):
        assert text in page.content(), text
    # the manifest's feature label is in the viewer's own legend on the labelled layer
    page.evaluate("window.galleryViewers[0].setState({layer: '2b'})")
    legend = page.locator("[data-gallery-viewer] .gv-legend")
    legend.get_by_text("zzcoinlabel").wait_for()
    assert "zzcoinlabel" in legend.locator("button").first.inner_text()
    page.screenshot(path=str(screenshots / "site-model.png"))


def test_comparison_viewers_play_in_step(site_page, screenshots):
    page = site_page("compare/pair/", viewport=(1920, 1080))  # wide: two columns
    wait_viewers(page, 2)
    boxes = [page.locator("[data-gallery-viewer]").nth(i).bounding_box() for i in (0, 1)]
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 2 and boxes[1]["x"] > boxes[0]["x"] + 400
    frames = "window.galleryViewers.map(v => v.getState().frame)"
    assert page.evaluate(frames) == [0, 0]
    first = page.locator("[data-gallery-viewer]").nth(0)
    first.locator("button[aria-label='Step forward']").click()
    first.locator("button[aria-label='Step forward']").click()
    page.wait_for_function(f"JSON.stringify({frames}) === '[2,2]'")
    # the second viewer drives the first too, and a layer chosen in one is shown in both
    second = page.locator("[data-gallery-viewer]").nth(1)
    second.locator("button[aria-label='Step back']").click()
    page.wait_for_function(f"JSON.stringify({frames}) === '[1,1]'")
    page.evaluate("window.galleryViewers[1].setState({layer: '4a', trajectory: 1})")
    page.wait_for_function("window.galleryViewers[0].getState().layer === '4a' && "
                           "window.galleryViewers[0].getState().trajectory === 1")
    # matched features: one row per feature of the first model, thumbnails loaded
    rows = page.locator("tr.gallery-matched__row")
    assert rows.count() == 2 * 4
    assert "similarity" in rows.first.inner_text()
    page.locator("h2#interfaces-side-by-side").scroll_into_view_if_needed()
    page.evaluate("document.getElementById('interfaces-side-by-side').scrollIntoView()")
    page.screenshot(path=str(screenshots / "site-compare.png"))
    rows.first.scroll_into_view_if_needed()
    page.wait_for_function("[...document.querySelectorAll('tr.gallery-matched__row img')]"
                           ".slice(0, 4).every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(screenshots / "site-compare-features.png"))
