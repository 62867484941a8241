"""Pages built for exploring, in headless Chromium: interface pages take the whole window
(no navigation or table of contents beside the viewer, the reference sizes of interface.md),
comparison pages put their interfaces side by side from a laptop's width (1400 px) and stack
them on a narrow screen (800 px), and every view offers a link and an embed snippet that
restore it. The gallery is test_site_browser.py's (built once per session)."""

from __future__ import annotations

import html
import re

from .conftest import Console
from .test_site_browser import gallery_site, site_page, wait_viewers  # noqa: F401 (fixtures)

VIEWERS = "[data-gallery-viewer]"


def boxes(page) -> list[dict]:
    return [page.locator(VIEWERS).nth(i).bounding_box() for i in range(page.locator(VIEWERS)
                                                                         .count())]


def sidebars_hidden(page) -> bool:
    """Material's navigation and table of contents: absent or hidden, none takes width."""
    return page.evaluate("""[...document.querySelectorAll('.md-sidebar')].every(s =>
        s.hidden || s.getBoundingClientRect().width === 0 ||
        getComputedStyle(s).display === 'none' || getComputedStyle(s).visibility === 'hidden')""")


def test_model_page_viewer_takes_the_page_width(site_page):
    page = site_page("models/one/", viewport=(1400, 900))
    wait_viewers(page, 1)
    assert sidebars_hidden(page)
    (box,) = boxes(page)
    assert box["width"] >= 0.9 * 1400, box
    # the reference sizes (interface.md): video 16em, scrubbers 48em, at the viewer's 14 px
    font = page.evaluate("parseFloat(getComputedStyle(document.querySelector("
                         "'.gallery-viewer')).fontSize)")
    strips = page.locator(f"{VIEWERS} .strips").bounding_box()
    stack = page.locator(f"{VIEWERS} .stack").first.bounding_box()
    assert abs(strips["width"] - 48 * font) <= 2, (strips, font)
    assert abs(stack["width"] - 16 * font) <= 2, (stack, font)
    # the side column sits beside the timeline at this width
    side = page.locator(f"{VIEWERS} .gv-side").bounding_box()
    assert side["x"] + side["width"] <= strips["x"]


def test_comparison_side_by_side_when_wide_stacked_when_narrow(site_page):
    page = site_page("compare/pair/", viewport=(1400, 900))
    wait_viewers(page, 2)
    assert sidebars_hidden(page)
    first, second = boxes(page)
    assert abs(first["y"] - second["y"]) < 2, (first, second)
    assert second["x"] >= first["x"] + first["width"], (first, second)
    assert first["width"] + second["width"] >= 0.9 * 1400
    # each viewer is in its compact layout (navigator above), its scrubbers at full size
    for i in (0, 1):
        viewer = page.locator(VIEWERS).nth(i)
        side = viewer.locator(".gv-side").bounding_box()
        strips = viewer.locator(".strips").bounding_box()
        assert side["y"] + side["height"] <= strips["y"]
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400

    narrow = site_page("compare/pair/", viewport=(800, 900))
    wait_viewers(narrow, 2)
    first, second = boxes(narrow)
    assert second["y"] >= first["y"] + first["height"], (first, second)
    assert abs(first["x"] - second["x"]) < 2
    assert first["width"] >= 0.9 * 800
    assert narrow.evaluate("document.documentElement.scrollWidth") <= 800


def open_share(viewer) -> tuple[str, str]:
    """(link, embed snippet) from a viewer's share panel."""
    viewer.get_by_role("button", name="Share or embed").click()
    link = viewer.locator(".gv-share__link").input_value()
    snippet = viewer.locator(".gv-share__embed").input_value()
    return link, snippet


def iframe_src(snippet: str) -> str:
    match = re.fullmatch(r'<iframe src="([^"]+)" title="[^"]*" [^<>]*></iframe>', snippet)
    assert match, snippet
    return html.unescape(match.group(1))


def test_model_page_link_and_embed_restore_the_view(site_page, browser):
    page = site_page("models/one/", viewport=(1400, 900))
    wait_viewers(page, 1)
    page.evaluate("window.galleryViewers[0].setState({layer: '2b', frame: 3, trajectory: 1})")
    page.wait_for_function("location.hash.includes('frame=3')")
    link, snippet = open_share(page.locator(VIEWERS))
    deep = page.evaluate("window.galleryViewers[0].deepLink()")
    assert "layer=2b" in deep and "frame=3" in deep and "trajectory=1" in deep
    assert link == page.base_url + "models/one/" + deep
    src = iframe_src(snippet)
    assert src == page.base_url + "models/one/interface/index.html" + deep

    # the plain link opens this page on this view
    other = site_page(link.removeprefix(page.base_url), viewport=(1400, 900))
    wait_viewers(other, 1)
    state = other.evaluate("window.galleryViewers[0].getState()")
    assert (state["layer"], state["frame"], state["trajectory"]) == ("2b", 3, 1)

    # the snippet, pasted into a page, shows the standalone interface on this view
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        host = context.new_page()
        console = Console(host)
        host.set_content(f"<!doctype html><title>A blog post</title><p>See:</p>{snippet}")
        host.frame_locator("iframe").locator(".gallery-viewer").wait_for(timeout=60_000)
        embedded = next(f for f in host.frames if f.url.startswith(src.split("#")[0]))
        embedded.wait_for_function("window.galleryViewer !== undefined")
        embedded.evaluate("window.galleryViewer.ready")
        state = embedded.evaluate("window.galleryViewer.getState()")
        assert (state["layer"], state["frame"], state["trajectory"]) == ("2b", 3, 1)
        assert not console.errors
    finally:
        context.close()


def test_comparison_links_go_to_the_standalone_interface(site_page):
    page = site_page("compare/pair/", viewport=(1400, 900))
    wait_viewers(page, 2)
    page.evaluate("window.galleryViewers[1].setState({layer: '4a', frame: 5})")
    page.wait_for_function("window.galleryViewers[0].getState().frame === 5")
    link, snippet = open_share(page.locator(VIEWERS).nth(1))
    # the comparison page does not keep a view in its address: both go to the interface
    assert link.startswith(page.base_url + "compare/pair/interface/two/index.html#")
    assert iframe_src(snippet) == link
    assert "layer=4a" in link and "frame=5" in link
    other = site_page(link.removeprefix(page.base_url), viewport=(1400, 900))
    other.wait_for_function("window.galleryViewer !== undefined")
    other.evaluate("window.galleryViewer.ready")
    state = other.evaluate("window.galleryViewer.getState()")
    assert (state["layer"], state["frame"]) == ("4a", 5)
