"""Viewers of one sync group (mountViewer's `group` option) on two bundles whose layers are
named differently, as a clear CNN (2b, 4a) beside another architecture (here the same
bundle with its layers renamed conv1 and conv2). Scrubbing, stepping, playing or choosing
a trajectory in one moves the other; a layer chosen in one stays there; and the group
settles: after the last change the number of state updates stays the same (no viewer sends
back an update it received, so the two never ping-pong between layers)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import Console
from .harness import serve

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,">
<link rel="stylesheet" href="a/viewer/viewer.css"></head>
<body><div id="a"></div><div id="b"></div>
<script type="module">
import { mountViewer } from "./a/viewer/viewer.js";
window.updates = [0, 0];
// a runaway loop of updates can keep the page too busy to answer the test at all: past
// RUNAWAY updates the page takes both viewers down (which ends any loop) and says so
const RUNAWAY = 1000;
window.runaway = false;
const count = (i) => {
  window.updates[i] += 1;
  if (window.updates[i] > RUNAWAY && !window.runaway) {
    window.runaway = true;
    for (const v of window.viewers) { try { v.destroy(); } catch (err) { /* ends anyway */ } }
  }
};
const mountOne = (id, i) => mountViewer(document.getElementById(id), {
  bundleUrl: `${id}/bundle/bundle.json`, group: "pair", hotkeys: i === 0,
  onStateChange: () => count(i),
});
window.viewers = [mountOne("a", 0), mountOne("b", 1)];
Promise.all(window.viewers.map((v) => v.ready)).then(() => { window.allReady = true; },
  (err) => { window.allReady = String(err); });
</script></body></html>
"""

RENAMED = {"2b": "conv1", "4a": "conv2"}


@pytest.fixture(scope="module")
def pair_folder(small_interface, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("group")
    shutil.copytree(small_interface["dir"], root / "a")
    shutil.copytree(small_interface["dir"], root / "b")
    index_path = root / "b" / "bundle" / "bundle.json"
    index = json.loads(index_path.read_text())
    assert {layer["name"] for layer in index["layers"]} == set(RENAMED)
    for layer in index["layers"]:
        layer["name"] = RENAMED[layer["name"]]
    index["default_layer"] = RENAMED[index["default_layer"]]
    index_path.write_text(json.dumps(index))
    (root / "index.html").write_text(PAGE)
    return root


@pytest.fixture
def pair_page(browser, pair_folder):
    with serve(pair_folder) as base:
        context = browser.new_context(viewport={"width": 1280, "height": 1600})
        page = context.new_page()
        console = Console(page)
        page.goto(base + "index.html")
        page.wait_for_function("window.allReady !== undefined", timeout=60_000)
        assert page.evaluate("window.allReady") is True
        yield page
        context.close()
    assert not console.errors, f"console errors: {console.errors}"


STATES = "window.viewers.map((v) => v.getState())"


def states(page) -> list[dict]:
    return page.evaluate(STATES)


_SETTLED = """([quiet, token]) => {
  const now = JSON.stringify(window.updates), t = performance.now();
  const s = window.settle;
  if (!s || s.token !== token || s.last !== now) {
    window.settle = {token, last: now, since: t};
    return false;
  }
  return t - s.since >= quiet;
}"""
_tokens = iter(range(10**9))


def settled_updates(page, quiet_ms: int = 1500) -> list[int]:
    """The update counts once they have not changed for `quiet_ms`; a loop never settles
    (fails after 10 s) or runs away (the page stops it, see PAGE)."""
    page.wait_for_function(_SETTLED, arg=[quiet_ms, next(_tokens)], polling=50,
                           timeout=10_000 + quiet_ms)
    assert not page.evaluate("window.runaway"), "the viewers kept updating each other"
    return page.evaluate("window.updates")


def viewer(page, i: int):
    return page.locator(".gallery-viewer").nth(i)


def test_group_of_differently_named_layers_moves_together_and_settles(pair_page):
    page = pair_page
    a, b = states(page)
    assert a["layer"] in RENAMED and b["layer"] == RENAMED[a["layer"]]  # each its own
    assert a["frame"] == b["frame"] == 0
    before = settled_updates(page)

    # scrub the first viewer's observation strip: press right of centre, drag left
    strip = viewer(page, 0).locator("canvas[aria-label^='Observations over time']")
    box = strip.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.55, y)
    page.mouse.down()
    for k in range(1, 6):
        page.mouse.move(box["x"] + box["width"] * (0.55 - 0.04 * k), y)
    page.mouse.up()
    page.wait_for_function(f"(() => {{ const s = {STATES}; "
                           "return s[0].frame > 0 && s[0].frame === s[1].frame; })()")
    a, b = states(page)
    assert a["layer"] in RENAMED and b["layer"] == RENAMED[a["layer"]]
    after_scrub = settled_updates(page)
    moved = after_scrub[0] - before[0]
    assert moved >= 1
    # the second viewer changed at most once per change of the first (no echoes)
    assert after_scrub[1] - before[1] <= moved

    # the second viewer drives the first
    viewer(page, 1).locator("button[aria-label='Step back']").click()
    page.wait_for_function(f"(() => {{ const s = {STATES}; "
                           f"return s[0].frame === {a['frame'] - 1} && s[1].frame === "
                           f"{a['frame'] - 1}; }})()")

    # a layer one viewer has and the other lacks stays in the one that has it
    other = next(name for name in RENAMED if name != a["layer"])
    own = b["layer"]
    viewer(page, 0).locator(f"input[type=radio][value='{other}']").check()
    page.wait_for_function(f"window.viewers[0].getState().layer === '{other}'")
    counts = settled_updates(page)
    a, b = states(page)
    assert a["layer"] == other and b["layer"] == own
    # the second viewer's own layer list still shows its choice (its radios are its own)
    assert viewer(page, 1).locator(f"input[type=radio][value='{b['layer']}']").is_checked()

    # a trajectory and the overlay chosen in either are shown in both
    viewer(page, 0).locator(".gv-trajectories input[type=radio][value='1']").check()
    viewer(page, 1).locator(".gv-attribution input[type=checkbox]").uncheck()
    page.wait_for_function(f"(() => {{ const s = {STATES}; return s.every((x) => "
                           "x.trajectory === 1 && x.overlay === false); })()")

    # playing one plays the other, frame by frame, and both stop together
    viewer(page, 0).locator("button[aria-label='Go to start']").click()
    page.wait_for_function(f"{STATES}.every((x) => x.frame === 0)")
    viewer(page, 0).locator("button[aria-label='Play']").click()
    page.wait_for_function("window.viewers[1].getState().frame >= 6", timeout=20_000)
    viewer(page, 0).locator("button[aria-label='Pause']").click()
    final = settled_updates(page)
    a, b = states(page)
    assert a["frame"] == b["frame"] >= 6
    assert final[1] - counts[1] <= final[0] - counts[0] + 2
    # still quiet a while later: no loop
    page.wait_for_timeout(1000)
    assert page.evaluate("window.updates") == final


def test_layers_and_rows_are_shared_when_both_have_them(pair_page):
    """Two viewers on one bundle layout share everything but the feature popup: here the
    first viewer's layer goes to the second only when the second has it."""
    page = pair_page
    page.evaluate("window.viewers[1].setState({layer: 'conv2', frame: 5})")
    page.wait_for_function(f"{STATES}.every((x) => x.frame === 5)")
    a, b = states(page)
    assert b["layer"] == "conv2" and a["layer"] in RENAMED  # not pushed into the first
    # rows with an output both have go across
    rows = [{"output": a["rows"][0]["output"], "direction": "pos", "view": "all"}]
    page.evaluate("(rows) => window.viewers[0].setState({rows})", rows)
    page.wait_for_function(f"{STATES}[1].rows[0].direction === 'pos'")
    # rows naming an output the other lacks are not (and are ignored by the first too)
    settled = settled_updates(page)
    page.evaluate("window.viewers[0].setState({rows: [{output: 'nothing', direction: 'neg', "
                  "view: 'all'}]})")
    assert settled_updates(page, 800) == settled
    assert [s["rows"][0]["direction"] for s in states(page)] == ["pos", "pos"]
