"""Every section and behaviour of interface.md in headless Chromium, on interfaces built
from the project's demo checkpoint. Any console error fails a test (see `open_page`).
Screenshots of the main views are saved in the `screenshots` folder (conftest.py)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from gallery.method import rendering


def state(page) -> dict:
    return page.evaluate("window.galleryViewer.getState()")


def drawn(page, row: int = 0) -> str:
    return page.evaluate(
        f"document.querySelector('canvas.attr[data-row=\"{row}\"]').dataset.drawn")


def wait_view(page, expected: str) -> None:
    """Wait until the popup's canvas shows `subdiv|expand|faded-or-opaque`."""
    page.wait_for_function(
        f"document.querySelector('[role=dialog] canvas')?.dataset.view === {json.dumps(expected)}")


def wait_revealed(page, revealed: bool) -> None:
    test = "!==" if revealed else "==="
    page.wait_for_function(
        f"document.querySelector('[role=dialog] canvas').dataset.revealed {test} ''")


def wait_drawn(page, prefix: str, row: int = 0) -> str:
    page.wait_for_function(
        f"(document.querySelector('canvas.attr[data-row=\"{row}\"]')?.dataset.drawn || '')"
        f".startsWith({json.dumps(prefix)})")
    return drawn(page, row)


def bundle_index(interface: dict) -> dict:
    return json.loads((interface["dir"] / "bundle" / "bundle.json").read_text())


def trajectory_data(interface: dict, e: int) -> dict:
    from gallery.bundle import read_json

    return read_json(interface["dir"] / "bundle" / "trajectories" / f"T{e}.json.gz")


def test_trajectories_bookmarks_and_layers(small_interface, open_page):
    page = open_page(small_interface["dir"])
    index = bundle_index(small_interface)
    assert page.locator(".gallery-viewer h1").inner_text() == "CoinRun (test)"
    # 1. trajectories
    labels = page.locator(".gv-trajectories label")
    assert labels.count() == 2
    assert "48 frames" in labels.nth(1).inner_text()
    labels.nth(1).click()
    assert state(page)["trajectory"] == 1
    wait_drawn(page, "4a|1|value|")
    # 2. bookmarks: links in order; a click jumps to that trajectory and frame
    low = page.locator(".gv-bookmarks ul.low button")
    high = page.locator(".gv-bookmarks ul.high button")
    assert low.count() == len(index["bookmarks"]["low"]) > 0
    assert high.count() == len(index["bookmarks"]["high"]) > 0
    mark = index["bookmarks"]["high"][0]
    label = f"trajectory {mark['trajectory'] + 1}, frame {mark['step'] + 1}"
    assert high.nth(0).inner_text() == label
    high.nth(0).click()
    s = state(page)
    assert (s["trajectory"], s["frame"]) == (mark["trajectory"], mark["step"])
    wait_drawn(page, f"4a|{mark['trajectory']}|value|{mark['step']}|")
    # 3. layers: switching shows the new layer's data at its own resolution
    radios = page.locator(".gv-layers label")
    assert [radios.nth(i).locator(".name").inner_text() for i in range(radios.count())] == \
        ["2b", "4a"]
    assert index["default_layer"] == "4a"  # the middle one of two, as in the reference
    radios.nth(0).click()
    wait_drawn(page, "2b|")
    assert page.evaluate("document.querySelector('canvas.attr').width") == 32
    radios.nth(1).click()
    wait_drawn(page, "4a|")
    assert page.evaluate("document.querySelector('canvas.attr').width") == 8


def test_timeline_readout_navigation_graphs_and_scrubbers(small_interface, open_page):
    page = open_page(small_interface["dir"])
    data = trajectory_data(small_interface, 0)
    names = bundle_index(small_interface)["action_names"]

    def readout():
        return (page.locator(".gv-frame").inner_text(), page.locator(".gv-reward").inner_text(),
                page.locator(".gv-action").inner_text())

    assert readout() == ("1", "–", names[data["actions"][0]])
    # policy bar: one bar per action, widths are the softmax of the logits
    bars = page.locator(".policy .bar")
    assert bars.count() == len(names)
    logits = data["logits"][0]
    top = max(logits)
    probs = [math.exp(v - top) for v in logits]
    probs = [p / sum(probs) for p in probs]
    widths = page.evaluate(
        "[...document.querySelectorAll('.policy .bar')].map(b => parseFloat(b.style.width))")
    assert max(abs(w - 100 * p) for w, p in zip(widths, probs, strict=True)) < 0.01
    assert page.locator(".policy .bar.taken").count() == 1
    taken = page.evaluate("[...document.querySelectorAll('.policy .bar')]"
                          ".findIndex(b => b.classList.contains('taken'))")
    assert taken == data["actions"][0]
    # navigation buttons
    nav = page.locator(".navigator")
    nav.get_by_label("Step forward").click()
    assert state(page)["frame"] == 1
    assert readout() == ("2", format(data["rewards"][0], "g"), names[data["actions"][1]])
    nav.get_by_label("Go to end").click()
    assert state(page)["frame"] == 47
    nav.get_by_label("Step back").click()
    assert state(page)["frame"] == 46
    nav.get_by_label("Go to start").click()
    assert state(page)["frame"] == 0
    page.locator(".navigator input[type=range]").fill("20")
    assert state(page)["frame"] == 20
    wait_drawn(page, "4a|0|value|20|")
    # play at 12 fps, then pause
    page.evaluate("window.galleryViewer.stats.reset()")
    nav.get_by_label("Play").click()
    time.sleep(0.75)
    nav.get_by_label("Pause").click()
    advanced = state(page)["frame"] - 20
    assert 4 <= advanced <= 11, advanced
    # while playing, the render worker had the frames ready
    stats = page.evaluate("({p: window.galleryViewer.stats.preparedDraws, "
                          "n: window.galleryViewer.stats.draws})")
    assert stats["p"] >= stats["n"] - 1 > 0, stats
    # the arrows still step while a button has the focus; space is the button's own
    before = state(page)["frame"]
    nav.get_by_label("Step forward").focus()
    page.keyboard.press("ArrowRight")
    assert state(page)["frame"] == before + 1
    page.keyboard.press("ArrowLeft")
    assert state(page)["frame"] == before
    # graphs: the advantage and the value function, with their current values
    graphs = page.locator(".graph .label")
    assert graphs.count() == 2
    assert graphs.nth(0).inner_text().startswith("advantage: ")
    assert graphs.nth(1).inner_text().startswith("value function: ")
    frame = state(page)["frame"]
    assert graphs.nth(1).inner_text() == f"value function: {data['values'][frame]:.3f}"
    # scrubbers: observations and one attribution row; pressing right of centre moves on
    assert page.locator(".strips .scrubber").count() == 2
    strip = page.locator(".strips .scrubber canvas").first
    box = strip.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
    assert state(page)["frame"] == min(47, frame + 64)
    page.mouse.click(box["x"] + box["width"] * 0.5 - box["width"] / 256 * 10,
                     box["y"] + box["height"] / 2)
    assert state(page)["frame"] == min(47, frame + 64) - 10
    # the scrubber strips have content (observation slices are not blank)
    filled = page.evaluate("""() => { const c = document.querySelector('.strips .scrubber canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] !== 230) n++; return n; }""")
    assert filled > 100


def test_attribution_rows_chart_legend_and_hotkeys(small_interface, open_page, screenshots):
    page = open_page(small_interface["dir"], "#layer=2b&frame=10")
    wait_drawn(page, "2b|0|value|10|abs|all")
    row = page.locator(".gv-attribution .row").first
    # selectors: no output choice without policy attribution; three directions; all views
    assert row.locator("select").count() == 2
    assert row.get_by_label("Direction of row 1").locator("option").count() == 3
    views = row.get_by_label("View of row 1").locator("option")
    assert [views.nth(i).get_attribute("value") for i in range(views.count())] == \
        [str(v) for v in rendering.views(8, True)]
    row.get_by_label("Direction of row 1").select_option("neg")
    row.get_by_label("View of row 1").select_option("3")
    wait_drawn(page, "2b|0|value|10|neg|3")
    assert page.locator(".gv-attribution button", has_text="Add row").count() == 0
    # the chart: per-feature totals at this frame, from the file's float totals
    label = page.locator(".gv-attribution [role=img]").filter(
        has=page.locator("canvas.chart")).first.get_attribute("aria-label")
    features, residual = small_interface["arrays"][("2b", 0, "value")]
    expected = f"feature 1 {float(features[10].sum(axis=(0, 1))[0]):.3g}"
    assert label.startswith("Attribution summed over positions: ")
    assert float(label.split("feature 1 ")[1].split(",")[0]) == pytest.approx(
        float(features[10].sum(axis=(0, 1))[0]), rel=5e-3, abs=1e-6), expected
    # legend: one thumbnail per feature; hovering isolates it in the attribution row
    items = page.locator(".gv-legend .item")
    assert items.count() == 8
    items.nth(5).hover()
    wait_drawn(page, "2b|0|value|10|neg|5")
    page.mouse.move(5, 5)
    wait_drawn(page, "2b|0|value|10|neg|3")
    # hotkeys (listed on the page): arrows step, space plays, arrows set the direction
    assert page.locator(".gv-hotkeys dt").count() == 3
    page.locator(".gallery-viewer h1").click()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert state(page)["frame"] == 12
    page.keyboard.press("ArrowLeft")
    assert state(page)["frame"] == 11
    page.keyboard.press(" ")
    page.keyboard.press("ArrowLeft")
    time.sleep(0.5)
    page.keyboard.press(" ")
    assert state(page)["frame"] < 11
    page.evaluate("window.galleryViewer.setState("
                  "{frame: 30, rows: [{output: 'value', direction: 'abs', view: 'all'}]})")
    wait_drawn(page, "2b|0|value|30|abs|all")
    page.screenshot(path=str(screenshots / "viewer-overview.png"), full_page=True)


def test_feature_popup(small_interface, open_page, screenshots):
    page = open_page(small_interface["dir"], "#layer=2b&frame=5")
    page.locator(".gv-legend .item").nth(2).click()
    dialog = page.get_by_role("dialog")
    assert "layer 2b, feature 3" in dialog.locator("h2").inner_text()
    assert state(page)["feature"] == 2
    canvas = dialog.locator("canvas")
    wait_view(page, "1|4|faded")
    # zoom slider (expand_mult) and the mouse wheel; patch-count slider (subdiv_mult)
    zoom = dialog.get_by_label("Zoom (patch size)")
    zoom.fill("3")
    wait_view(page, "1|8|faded")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    wait_view(page, "1|8|opaque")
    page.mouse.wheel(0, -100)
    wait_view(page, "1|4|opaque")
    page.mouse.move(box["x"] - 40, box["y"] - 40)  # leave: weak patches faded again
    wait_view(page, "1|4|faded")
    patches = dialog.get_by_label("Number of patches")
    assert patches.get_attribute("max") == "3"
    patches.fill("3")
    wait_view(page, "2|4|faded")
    patches.fill("2")
    wait_view(page, "1|4|faded")
    page.screenshot(path=str(screenshots / "viewer-feature-popup.png"))
    # pressing a patch reveals the whole observation it came from (the grid says which)
    detail = feature_detail(small_interface, "2b", 2)
    grid = next(g for g in detail["grids"] if g["subdiv_mult"] == 1)
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6
    expected = expected_cell(detail, grid, 4, 0.3, 0.6)
    page.mouse.move(x, y)
    page.mouse.down()
    wait_revealed(page, True)
    assert int(canvas.get_attribute("data-revealed")) == expected
    assert page.evaluate("document.querySelector('[role=dialog] canvas').width") == 64
    page.mouse.up()
    wait_revealed(page, False)
    page.keyboard.press("Escape")
    assert page.get_by_role("dialog").count() == 0
    assert state(page)["feature"] is None


def feature_detail(interface: dict, layer: str, feature: int) -> dict:
    from gallery.bundle import decode_feature_views

    index = bundle_index(interface)
    entry = next(la for la in index["layers"] if la["name"] == layer)
    path = interface["dir"] / "bundle" / entry["feature_views"][feature]
    detail = decode_feature_views(path.read_bytes())
    for grid in detail["grids"]:  # flat, row by row, as the viewer holds them
        grid["indices"] = grid["indices"].ravel().tolist()
    return detail


def expected_cell(detail: dict, grid: dict, expand: float, fx: float, fy: float) -> int:
    """The observation under (fx, fy) of a view, from the layout of dataset_examples."""
    from gallery.method.dataset_examples import patch_bounds

    (H, W), (h, w) = detail["observation_shape"], detail["layer_shape"]
    heights = [b - a for a, b in (patch_bounds(c, H / h, expand) for c in grid["centre_rows"])]
    widths = [b - a for a, b in (patch_bounds(c, W / w, expand) for c in grid["centre_cols"])]
    y, x = fy * sum(heights), fx * sum(widths)
    i = next(k for k in range(len(heights)) if y < sum(heights[:k + 1]))
    j = next(k for k in range(len(widths)) if x < sum(widths[:k + 1]))
    return grid["indices"][i * grid["shape"][1] + j]


def test_feature_view_matches_dataset_examples(small_interface, open_page):
    """The popup's layout of patches equals gallery.method.dataset_examples.feature_view."""
    import numpy as np

    from gallery.method import rendering
    from gallery.method.dataset_examples import FeatureGrid as ExampleGrid
    from gallery.method.dataset_examples import render_grid, rescale_opacity

    page = open_page(small_interface["dir"], "#layer=4a&feature=1")
    wait_view(page, "1|4|faded")
    pixels = page.evaluate("""() => { const c = document.querySelector('[role=dialog] canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return {w: c.width, h: c.height, d: Array.from(d)}; }""")
    got = np.array(pixels["d"], np.uint8).reshape(pixels["h"], pixels["w"], 4)
    detail = feature_detail(small_interface, "4a", 1)
    grid = next(g for g in detail["grids"] if g["subdiv_mult"] == 1)
    assert got.shape[:2] == (sum(b - a for a, b in _bounds(detail, grid, 4, 0)),
                             sum(b - a for a, b in _bounds(detail, grid, 4, 1)))
    # alpha per patch: rescale_opacity of activation / max, as the reference assembles it
    assert rescale_opacity is not None
    alpha = got[..., 3].astype(float) / 255
    assert alpha.min() >= 15 / 255 - 1 / 255 and alpha.max() == 1.0
    # every pixel as gallery.method.dataset_examples draws the decoded grid from the extra
    # observations as Pillow decodes their atlases (AVIF): Chromium decodes them alike
    expected = rendering.to_uint8(render_grid(ExampleGrid(
        1, np.reshape(grid["indices"], grid["shape"]), grid["alphas"],
        np.stack(np.meshgrid(grid["centre_rows"], grid["centre_cols"], indexing="ij"), -1),
        tuple(detail["layer_shape"])), extra_observations(small_interface), expand_mult=4).image)
    assert np.abs(got[..., 3].astype(int) - expected[..., 3]).max() <= 1
    # the canvas holds premultiplied colour: compare that
    premultiplied = [np.round(x[..., :3] * (x[..., 3:] / 255.0)) for x in (got, expected)]
    error = np.abs(premultiplied[0] - premultiplied[1])
    assert error.mean() < 0.1 and error.max() <= 2, (error.mean(), error.max())


def extra_observations(interface: dict):
    """The extra observations (by original index) as Pillow decodes the bundle's atlases."""
    import numpy as np
    from PIL import Image

    extra = bundle_index(interface)["extra_observations"]
    (th, tw), columns = extra["tile"], extra["columns"]
    out = np.zeros((max(extra["indices"]) + 1, th, tw, 3), np.uint8)
    for atlas in extra["atlases"]:
        with Image.open(interface["dir"] / "bundle" / atlas["file"]) as image:
            pixels = np.asarray(image.convert("RGB"))
        for k in range(atlas["count"]):
            r, c = divmod(k, columns)
            out[extra["indices"][atlas["start"] + k]] = pixels[r * th:(r + 1) * th,
                                                               c * tw:(c + 1) * tw]
    return out


def _bounds(detail, grid, expand, axis):
    from gallery.method.dataset_examples import patch_bounds

    size = detail["observation_shape"][axis] / detail["layer_shape"][axis]
    centres = grid["centre_rows"] if axis == 0 else grid["centre_cols"]
    return [patch_bounds(c, size, expand) for c in centres]


def test_deep_link_restores_the_view(small_interface, open_page):
    link = "#layer=2b&trajectory=1&frame=17&rows=value.pos.res&feature=4"
    page = open_page(small_interface["dir"], link)
    s = state(page)
    assert (s["layer"], s["trajectory"], s["frame"], s["feature"]) == ("2b", 1, 17, 4)
    assert s["rows"] == [{"output": "value", "direction": "pos", "view": "res"}]
    assert page.get_by_role("dialog").count() == 1
    page.keyboard.press("Escape")
    wait_drawn(page, "2b|1|value|17|pos|res")
    # the URL follows the view, and reloading it restores the same view
    page.evaluate("window.galleryViewer.setState({frame: 33, layer: '4a'})")
    page.wait_for_function("location.hash.includes('frame=33')")
    url = page.url
    assert "layer=4a" in url and "trajectory=1" in url and "rows=value.pos.res" in url
    page.goto(url)
    page.reload()
    page.wait_for_function("window.galleryViewer !== undefined")
    page.evaluate("window.galleryViewer.ready")
    s = state(page)
    assert (s["layer"], s["trajectory"], s["frame"]) == ("4a", 1, 33)
    wait_drawn(page, "4a|1|value|33|pos|res")
    # nonsense in a link is ignored, not an error
    page.evaluate("location.hash = '#layer=nope&frame=abc&rows=zzz.up.9'")
    time.sleep(0.2)
    assert state(page)["layer"] == "4a"


def test_switching_never_shows_stale_frames(small_interface, open_page):
    """After a switch of layer or trajectory, the attribution, the observations and the
    scrubber strips are blank or show the new selection, checked before every paint."""
    page = open_page(small_interface["dir"], "#layer=2b")
    wait_drawn(page, "2b|0|")
    seen = page.evaluate("""async () => {
      const v = window.galleryViewer, q = (s) => document.querySelector(s);
      const out = [];
      const beforePaint = () => new Promise((r) => requestAnimationFrame(() => r()));
      const steps = [['4a', 0, 5], ['4a', 1, 5], ['2b', 1, 40], ['2b', 0, 40], ['4a', 1, 12]];
      for (const [layer, trajectory, frame] of steps) {
        v.setState({layer, trajectory, frame});
        for (let i = 0; i < 30; i++) {
          await beforePaint();  // what the next paint will show
          out.push({layer, trajectory, frame, attr: q('canvas.attr').dataset.drawn,
                    width: q('canvas.attr').width, obs: q('canvas.obs').dataset.shown,
                    under: q('canvas.under').dataset.shown,
                    obsStrip: q('.strips .scrubber canvas').dataset.strip,
                    attrStrip: document.querySelectorAll('.strips .scrubber canvas')[1].dataset.strip});
        }
      }
      return out;
    }""")
    names = [la["name"] for la in bundle_index(small_interface)["layers"]]
    for s in seen:
        layer, trajectory, frame = s["layer"], s["trajectory"], s["frame"]
        if s["attr"]:
            assert s["attr"].startswith(f"{layer}|{trajectory}|value|{frame}|"), s
            assert s["width"] == (32 if layer == "2b" else 8)
        for shown in (s["obs"], s["under"]):
            assert shown in ("", f"{trajectory}|{frame}"), s
        assert s["obsStrip"] in ("", str(trajectory)), s
        if s["attrStrip"]:
            assert f"/L{names.index(layer)}/T{trajectory}-value.gatr|" in s["attrStrip"], s
    last = seen[-1]  # and the new selection does arrive
    assert last["attr"] and last["obs"] and last["obsStrip"] and last["attrStrip"], last


def test_scrubber_strip_shows_only_drawn_frames(small_interface, open_page):
    """While a trajectory's attribution strip is being drawn, every column of the scrubber
    row is either what it finally shows or the grey of 'nothing here': a frame not drawn
    yet is never shown black (which reads as 'no attribution'), for every trajectory."""
    page = open_page(small_interface["dir"], "#layer=2b&frame=40")
    captures = page.evaluate("""async () => {
      const v = window.galleryViewer;
      const canvas = () => document.querySelectorAll('.strips .scrubber canvas')[1];
      const beforePaint = () => new Promise((r) => requestAnimationFrame(() => r()));
      const out = [];
      for (const [layer, trajectory] of [['2b', 1], ['2b', 0], ['4a', 1], ['4a', 0]]) {
        v.setState({layer, trajectory, frame: 40});
        const shots = [];
        for (let i = 0; i < 600; i++) {
          await beforePaint();
          const c = canvas();
          if (!c.dataset.strip) continue;
          shots.push({missing: c.dataset.stripMissing, width: c.width, height: c.height,
                      pixels: Array.from(c.getContext('2d').getImageData(0, 0, c.width,
                                                                         c.height).data)});
          if (c.dataset.stripMissing === '0') break;
        }
        out.push({layer, trajectory, shots});
      }
      return out;
    }""")
    grey = np.array([230, 230, 230, 255], np.uint8)  # #e6e6e6
    for case in captures:
        shots = case["shots"]
        assert shots and shots[-1]["missing"] == "0", (case["layer"], case["trajectory"])
        images = [np.array(s["pixels"], np.uint8).reshape(s["height"], s["width"], 4)
                  for s in shots]
        final = images[-1]
        assert (final[..., :3] < 8).all(axis=(0, 2)).sum() < final.shape[1] // 2  # drawn
        for image in images:
            same = (image == final).all(axis=(0, 2))
            waiting = (image == grey).all(axis=(0, 2))
            assert (same | waiting).all(), (case["layer"], case["trajectory"],
                                             np.flatnonzero(~(same | waiting))[:8])


def test_attribution_is_overlaid_on_the_observation(small_interface, open_page):
    """As the reference draws it (method.md 6): the observation in grey, fully opaque, and
    the attribution over it at opacity 0.9; where the attribution is transparent, the
    grey observation shows. Without the overlay, the attribution is on black."""
    from io import BytesIO

    import numpy as np
    from PIL import Image, ImageFilter

    page = open_page(small_interface["dir"], "#layer=2b&frame=30")
    wait_drawn(page, "2b|0|value|30|abs|all")
    # a view with transparent parts (the demo agent's 'all' view covers the whole frame)
    for view in ["all", *map(str, range(8))]:
        page.evaluate(f"window.galleryViewer.setState({{rows: [{{output: 'value', "
                      f"direction: 'pos', view: '{view}'}}]}})")
        wait_drawn(page, f"2b|0|value|30|pos|{view}")
        if (canvas_pixels(page, "canvas.attr")[..., 3] < 3).mean() > 0.25:
            break
    style = page.evaluate("""() => {
      const s = (q) => getComputedStyle(document.querySelector(q));
      return {under: s('canvas.under').filter, visible: s('canvas.under').visibility,
              attr: s('canvas.attr').opacity, stack: s('.stack').backgroundColor};
    }""")
    assert style == {"under": "grayscale(1)", "visible": "visible", "attr": "0.9",
                     "stack": "rgb(0, 0, 0)"}
    attr = canvas_pixels(page, "canvas.attr")
    obs = canvas_pixels(page, "canvas.obs").astype(float)
    shot = Image.open(BytesIO(page.locator(".stack canvas.under").screenshot()))
    shot = np.asarray(shot.convert("RGB").resize((64, 64), Image.BOX), float)
    # where the attribution (upsampled to the observation's size) is transparent nearby
    alpha = np.asarray(Image.fromarray(attr[..., 3]).resize((64, 64), Image.BILINEAR), float)
    clear = np.asarray(Image.fromarray((alpha < 3).astype(np.uint8) * 255).filter(
        ImageFilter.MinFilter(5)), bool)
    assert clear.sum() > 100, clear.sum()
    grey = obs[..., :3] @ np.array([0.2126, 0.7152, 0.0722])
    assert np.abs(shot[clear] - grey[clear][:, None]).mean() < 12
    # under strong attribution the colour is the attribution's, not the observation's
    strong = alpha > 250
    if strong.any():
        assert np.abs(shot[strong] - grey[strong][:, None]).mean() > 12
    page.get_by_label("overlay on observations").uncheck()
    assert page.evaluate("getComputedStyle(document.querySelector('canvas.under')).visibility") \
        == "hidden"
    page.wait_for_function("location.hash.includes('overlay=0')")


def canvas_pixels(page, selector: str):
    import numpy as np

    got = page.evaluate("""(q) => { const c = document.querySelector(q);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return {w: c.width, h: c.height, d: Array.from(d)}; }""", selector)
    return np.array(got["d"], np.uint8).reshape(got["h"], got["w"], 4)


def test_policy_rows_input_layer_and_narrow_screen(policy_interface, open_page, screenshots):
    page = open_page(policy_interface["dir"], "#layer=4a")
    index = bundle_index(policy_interface)
    assert [la["name"] for la in index["layers"]] == ["input", "4a"]
    # outputs: value, 15 actions, 5 groups; rows can be added and removed
    output = page.get_by_label("Output of row 1")
    assert output.locator("option").count() == 1 + 15 + 5
    page.get_by_role("button", name="Add row").click()
    assert page.locator(".gv-attribution .row").count() == 2
    page.get_by_label("Output of row 2").select_option("group-RIGHT")
    wait_drawn(page, "4a|0|group-RIGHT|", row=1)
    labels = page.locator(".graph .label")
    assert labels.count() == 3
    assert labels.nth(2).inner_text().startswith("[ RIGHT+DOWN | RIGHT | RIGHT+UP ] logit sum")
    page.get_by_label("Output of row 1").select_option("action-7")
    wait_drawn(page, "4a|0|action-7|", row=0)
    assert labels.nth(1).inner_text().startswith("RIGHT logit")
    assert page.locator(".strips .scrubber").count() == 3
    page.screenshot(path=str(screenshots / "viewer-policy-rows.png"), full_page=True)
    page.get_by_role("button", name="Remove row 2").click()
    assert page.locator(".gv-attribution .row").count() == 1
    assert page.get_by_role("button", name="Remove row 1").count() == 0
    # the input layer shows gradients, and says so; policy attribution covers layer 4a
    # only (the default: one layer), so there the row shows the value and says why
    page.locator(".gv-layers label", has_text="input").click()
    assert "gradients" in page.locator(".gv-layers label", has_text="input").inner_text()
    assert page.locator("#gv-attribution-h").inner_text().startswith("Gradients")
    assert list(index["layers"][0]["attribution"]) == ["value"]
    wait_drawn(page, "input|0|value|")
    assert "attributed at layer 4a" in page.locator(".gv-attribution .note").inner_text()
    assert page.get_by_label("Output of row 1").count() == 0
    assert page.get_by_role("button", name="Add row").count() == 0
    assert page.evaluate("document.querySelector('canvas.attr').width") == 64
    views = page.get_by_label("View of row 1").locator("option")
    assert [views.nth(i).get_attribute("value") for i in range(views.count())] == ["prin", "all"]
    # back at 4a the row's own output returns
    page.locator(".gv-layers label", has_text="4a").click()
    wait_drawn(page, "4a|0|action-7|", row=0)
    assert page.get_by_label("Output of row 1").input_value() == "action-7"
    # a deep link restores every row (output, direction, view) and the overlay
    link = "#layer=4a&frame=5&rows=action-7.pos.prin~group-RIGHT.neg.all&overlay=0"
    linked = open_page(policy_interface["dir"], link)
    s = state(linked)
    assert s["rows"] == [{"output": "action-7", "direction": "pos", "view": "prin"},
                         {"output": "group-RIGHT", "direction": "neg", "view": "all"}]
    assert (s["frame"], s["overlay"]) == (5, False)
    assert linked.get_by_label("Output of row 2").input_value() == "group-RIGHT"
    assert linked.get_by_label("Direction of row 1").input_value() == "pos"
    assert not linked.get_by_label("overlay on observations").is_checked()
    wait_drawn(linked, "4a|0|group-RIGHT|5|neg|all", row=1)
    linked.reload()
    linked.wait_for_function("window.galleryViewer !== undefined")
    linked.evaluate("window.galleryViewer.ready")
    assert state(linked) == s
    # readable on a narrow screen: the page is no wider than the viewport
    narrow = open_page(policy_interface["dir"], "#layer=4a", viewport=(390, 844))
    width = narrow.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, width
    narrow.screenshot(path=str(screenshots / "viewer-narrow.png"), full_page=True)


def test_mount_api_and_opened_from_disk(small_interface, open_page, browser):
    folder: Path = small_interface["dir"]
    (folder / "embed.html").write_text("""<!doctype html><html><head><meta charset="utf-8">
<link rel="icon" href="data:,"><link rel="stylesheet" href="viewer/viewer.css"></head>
<body><div id="a"></div><script type="module">
import { mountViewer, parseDeepLink } from "./viewer/viewer.js";
const changes = [];
window.galleryViewer = mountViewer(document.getElementById("a"), {
  bundleUrl: "bundle/bundle.json", state: "#layer=2b&frame=7", hotkeys: false,
  onStateChange: (s) => changes.push(s.frame) });
window.changes = changes;
window.parsed = parseDeepLink("#frame=3&rows=value.neg.all");
</script></body></html>""")
    page = open_page(folder)
    page.goto(page.base_url + "embed.html")
    page.wait_for_function("window.galleryViewer !== undefined")
    page.evaluate("window.galleryViewer.ready")
    assert state(page)["frame"] == 7 and state(page)["layer"] == "2b"
    assert page.evaluate("window.parsed") == {
        "frame": 3, "rows": [{"output": "value", "direction": "neg", "view": "all"}]}
    page.evaluate("window.galleryViewer.setState({frame: 9})")
    page.wait_for_function("window.changes.includes(9)")
    assert page.evaluate("window.galleryViewer.deepLink()").startswith("#model=")
    page.keyboard.press("ArrowRight")  # hotkeys off for this viewer
    assert state(page)["frame"] == 9
    page.evaluate("window.galleryViewer.destroy()")
    assert page.evaluate("document.getElementById('a').children.length") == 0
    # opened from disk: the page says how to view it, and loads nothing
    context = browser.new_context()
    disk = context.new_page()
    errors = []
    disk.on("console", lambda m: m.type == "error" and errors.append(m.text))
    disk.goto((folder / "index.html").as_uri())
    assert disk.locator("#gallery-from-disk").is_visible()
    assert "python3 -m http.server" in disk.locator("#gallery-from-disk").inner_text()
    # the folder named is the one this browser opened; the page file names none
    assert disk.locator("#gallery-folder").inner_text() == f"{folder.resolve()}/"
    assert str(folder.resolve()) not in (folder / "index.html").read_text()
    assert not errors
    context.close()


def test_first_load_fetches_only_what_the_first_view_needs(small_interface, browser):
    """Lazy loading: the index, the first trajectory, the default layer's attribution of
    it and that layer's legend; other layers and trajectories only when chosen."""
    from .harness import serve

    index = bundle_index(small_interface)
    with serve(small_interface["dir"]) as base:
        context = browser.new_context()
        page = context.new_page()
        fetched: list[str] = []
        page.on("request", lambda r: fetched.append(r.url[len(base):]))
        page.goto(base + "index.html")
        page.wait_for_function("window.galleryViewer !== undefined")
        page.evaluate("window.galleryViewer.ready")
        page.wait_for_timeout(500)
        bundle_files = sorted(f[len("bundle/"):] for f in fetched if f.startswith("bundle/"))
        layer = next(la for la in index["layers"] if la["name"] == index["default_layer"])
        assert bundle_files == sorted([
            "bundle.json", index["trajectories"][0]["data"],
            *[a["file"] for a in index["trajectories"][0]["frames"]["atlases"]],
            layer["attribution"]["value"][0], layer["legend"]["file"]])
        total = sum((small_interface["dir"] / f).stat().st_size for f in fetched
                    if (small_interface["dir"] / f).is_file())
        assert total < 3_000_000
        fetched.clear()
        page.evaluate("window.galleryViewer.setState({trajectory: 1})")
        page.wait_for_function("document.querySelector('canvas.attr').dataset.drawn"
                               ".startsWith('4a|1|')")
        assert any(f.endswith(index["layers"][1]["attribution"]["value"][1]) for f in fetched)
        assert not any("L0/" in f for f in fetched)  # the other layer is still not loaded
        context.close()
