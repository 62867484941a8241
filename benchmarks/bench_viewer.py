"""Viewer smoothness, first load and fidelity in headless Chromium, on a real bundle.

    .venv/bin/python benchmarks/bench_viewer.py [--work .cache/bench-bundle] [--seconds 10]
                                                [--no-fidelity] [--json OUT]

Uses the interface of coinrun.jd at the default settings that benchmarks/bench_bundle.py
leaves in WORK/interface-value (8 x 512 frames, layers 1a 2a 2b 3a 4a), served with the
viewer as built now (gallery/viewer_dist). Measures:

- first load: from navigation to interactive (bundle index read, first frame drawn), and
  the bytes downloaded by then (Resource Timing; target <= 3 MB);
- frame draw time, per layer (trajectory 0, value, abs, view 'all' -- the densest): the
  main-thread time to show an attribution frame, stepping through 200 frames and jumping
  37 frames at a time, with the render worker (frames prepared ahead) and without it
  (`worker: false`: every frame decoded and drawn on the main thread when shown);
- playback at the video speed (12 fps) with attribution for SECONDS on the largest layer:
  the main-thread time of each played frame for every section (p50 / p95 / max; target
  p95 <= 8 ms), frames due against frames shown, dropped frames (shown more than one frame
  interval after they were due), animation frames longer than 50 ms, display frames missed;
- fidelity: every direction and view of sampled frames of every layer, read back from the
  canvas and compared with gallery.method.rendering (MAE <= 1/255, PSNR >= 40 dB per image).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser.harness import chromium, premultiply, read_attribution, serve  # noqa: E402

from gallery.bundle.codec import image_errors, premultiplied_uint8  # noqa: E402
from gallery.method import rendering  # noqa: E402
from gallery.pipeline.interface import viewer_assets, write_page  # noqa: E402

SETUP = """async ({layer, frame}) => {
  const v = window.galleryViewer;
  v.setState({layer, trajectory: 0, frame, rows: [{output: 'value', direction: 'abs', view: 'all'}]});
  const c = () => document.querySelector('canvas.attr[data-row="0"]');
  const next = () => new Promise((r) => requestAnimationFrame(() => r()));
  while (!(c().dataset.drawn || '').startsWith(`${layer}|0|value|${frame}|`)) await next();
  // let the worker draw the strip and the frames around this one
  await new Promise((r) => setTimeout(r, 1500));
}"""

DRAW = """async ({layer, frames}) => {
  const v = window.galleryViewer;
  const c = () => document.querySelector('canvas.attr[data-row="0"]');
  const next = () => new Promise((r) => requestAnimationFrame(() => r()));
  v.stats.reset();
  for (const t of frames) {
    v.setState({frame: t});
    while (!(c().dataset.drawn || '').startsWith(`${layer}|0|value|${t}|`)) await next();
    await next();
  }
  return {times: v.stats.drawTimes.slice(), prepared: v.stats.preparedDraws, draws: v.stats.draws};
}"""

PLAY = """async ({seconds}) => {
  const v = window.galleryViewer;
  const long = [];
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) long.push(e.duration);
  });
  try { observer.observe({type: 'long-animation-frame'}); } catch (e) {}
  v.stats.reset();
  const ticks = [];
  const start = performance.now();
  document.querySelector('.navigator button.play').click();
  await new Promise((resolve) => {
    requestAnimationFrame(function tick(now) {
      ticks.push(now);
      if (now - start < seconds * 1000) requestAnimationFrame(tick); else resolve();
    });
  });
  document.querySelector('.navigator button.play').click();
  observer.disconnect();
  return {elapsed: (performance.now() - start) / 1000, played: v.stats.playedFrames,
          frameTimes: v.stats.frameTimes.slice(), drawTimes: v.stats.drawTimes.slice(),
          prepared: v.stats.preparedDraws, draws: v.stats.draws, log: v.stats.playLog.slice(),
          ticks, long};
}"""

LOAD = """() => {
  const ready = window.galleryViewer.stats.readyAt;
  const entries = [...performance.getEntriesByType('navigation'),
                   ...performance.getEntriesByType('resource')];
  const by = entries.filter((e) => e.responseEnd <= ready);
  return {ready_ms: ready, requests: by.length,
          transfer_bytes: by.reduce((s, e) => s + e.transferSize, 0),
          body_bytes: by.reduce((s, e) => s + e.encodedBodySize, 0),
          files: by.map((e) => e.name.split('/').slice(-2).join('/'))};
}"""


def percentiles(times: list[float]) -> dict:
    a = np.array(times, float)
    if not len(a):
        return {"n": 0}
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "max_ms": round(float(a.max()), 2)}


NO_WORKER = """<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">
<link rel="stylesheet" href="viewer/viewer.css"></head><body><div id="app"></div>
<script type="module">
import { mountViewer } from "./viewer/viewer.js";
window.galleryViewer = mountViewer(document.getElementById("app"),
                                   { bundleUrl: "bundle/bundle.json", worker: false });
</script></body></html>
"""


def prepare_site(interface: Path, folder: Path) -> None:
    """The bundle (linked) with index.html and the viewer as built now; no-worker.html
    mounts it drawing every frame on the main thread."""
    (folder / "bundle").symlink_to(interface / "bundle", target_is_directory=True)
    title = json.loads((interface / "bundle" / "bundle.json").read_text())["model"].get("title", "")
    write_page(folder, str(title), viewer_assets())
    (folder / "no-worker.html").write_text(NO_WORKER)


def open_viewer(browser, url: str, errors: list[str]):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(url)
    page.wait_for_function("window.galleryViewer !== undefined")
    page.evaluate("window.galleryViewer.ready")
    return page


def first_load(browser, base: str) -> dict:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(base + "index.html")
    page.wait_for_function("window.galleryViewer !== undefined")
    page.evaluate("window.galleryViewer.ready")
    out = page.evaluate(LOAD)
    context.close()
    out["ready_ms"] = round(out["ready_ms"], 1)
    out["transfer_mb"] = round(out["transfer_bytes"] / 1e6, 3)
    return out


def draw_times(page, layer: str, length: int, count: int) -> dict:
    page.evaluate(SETUP, {"layer": layer, "frame": 0})
    steps = page.evaluate(DRAW, {"layer": layer, "frames": list(range(1, min(length, count + 1)))})
    jumps = [(37 * i) % length for i in range(1, 41)]
    jumped = page.evaluate(DRAW, {"layer": layer, "frames": jumps})
    return {"stepping": {**percentiles(steps["times"]), "prepared": steps["prepared"]},
            "jumping": {**percentiles(jumped["times"]), "prepared": jumped["prepared"]}}


def playback(page, layer: str, seconds: float, fps: float) -> dict:
    page.evaluate(SETUP, {"layer": layer, "frame": 0})
    play = page.evaluate(PLAY, {"seconds": seconds})
    interval = 1000 / fps
    late = [shown - due for _, due, shown in play["log"]]
    frames = [f for f, _, _ in play["log"]]
    gaps = np.diff(play["ticks"])
    vsync = float(np.median(gaps)) if len(gaps) else 1000 / 60
    return {
        "layer": layer, "seconds": round(play["elapsed"], 2),
        "frames_due": int(play["elapsed"] * fps), "frames_shown": play["played"],
        "frames_in_order": frames == list(range(1, len(frames) + 1)),
        "dropped_frames": int(sum(d > interval for d in late)),
        "latest_ms": round(max(late), 1) if late else None,
        "frame_ms": percentiles(play["frameTimes"]),
        "attribution_draw_ms": percentiles(play["drawTimes"]),
        "prepared_by_worker": f"{play['prepared']}/{play['draws']}",
        "long_animation_frames": len(play["long"]),
        "display_frame_ms": round(vsync, 2),
        "display_frames_missed": int(sum(max(0, round(g / vsync) - 1) for g in gaps)),
    }


def fidelity(page, arrays: Path, index: dict) -> dict:
    out = {}
    for layer in index["layers"]:
        name = layer["name"]
        folder = arrays / name.replace("/", "_")
        f = np.load(folder / "T0-value-features.npy")
        r = np.load(folder / "T0-value-residual.npy")
        scale = rendering.attribution_scale(f)
        frames = sorted({0, len(f) // 3, 2 * len(f) // 3, len(f) - 1})
        items = read_attribution(page, name, 0, "value", frames, list(rendering.DIRECTIONS),
                                 layer["views"])
        worst_mae, worst_psnr = 0.0, float("inf")
        for item in items:
            v = item["view"]
            ref = rendering.render_attribution(
                f[item["frame"]:item["frame"] + 1], r[item["frame"]:item["frame"] + 1],
                scale=scale, direction=item["direction"], view=int(v) if v.isdigit() else v)[0]
            mae, psnr = image_errors(premultiplied_uint8(ref), premultiply(item["image"]))
            worst_mae, worst_psnr = max(worst_mae, mae), min(worst_psnr, psnr)
        out[name] = {"images": len(items), "worst_mae_255": round(worst_mae * 255, 3),
                     "worst_psnr_db": round(float(worst_psnr), 2)}
        print(f"  fidelity {name}: {out[name]}", file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=".cache/bench-bundle")
    parser.add_argument("--kind", default="value")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--no-fidelity", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    interface = work / f"interface-{args.kind}"
    if not (interface / "bundle" / "bundle.json").is_file():
        print(f"no interface in {interface}: run benchmarks/bench_bundle.py first", file=sys.stderr)
        return 2
    index = json.loads((interface / "bundle" / "bundle.json").read_text())
    fps = index["presentation"]["video_speed"]
    length = index["trajectories"][0]["length"]
    figures: dict = {"bundle": str(interface / "bundle"), "draw": {}}
    with tempfile.TemporaryDirectory() as tmp, chromium() as browser:
        prepare_site(interface, Path(tmp))
        with serve(Path(tmp)) as base:
            figures["first_load"] = first_load(browser, base)
            print(f"  first load: {figures['first_load']}", file=sys.stderr)
            errors: list[str] = []
            page = open_viewer(browser, base + "no-worker.html", errors)
            figures["draw_on_main_thread"] = {}
            for layer in index["layers"]:
                figures["draw_on_main_thread"][layer["name"]] = draw_times(
                    page, layer["name"], length, args.frames)["stepping"]
                print(f"  draw on the main thread {layer['name']}: "
                      f"{figures['draw_on_main_thread'][layer['name']]}", file=sys.stderr)
            page.close()
            page = open_viewer(browser, base + "index.html", errors)
            for layer in index["layers"]:
                figures["draw"][layer["name"]] = draw_times(page, layer["name"], length,
                                                            args.frames)
                print(f"  draw {layer['name']}: {figures['draw'][layer['name']]}", file=sys.stderr)
            biggest = max(index["layers"], key=lambda la: la["shape"][0] * la["shape"][1])
            figures["playback"] = playback(page, biggest["name"], args.seconds, fps)
            print(f"  playback: {figures['playback']}", file=sys.stderr)
            if not args.no_fidelity:
                figures["fidelity"] = fidelity(page, work / f"arrays-{args.kind}", index)
            figures["console_errors"] = errors
    play = figures["playback"]
    figures["targets"] = {
        "play_frame_p95_le_8ms": play["frame_ms"]["p95_ms"] <= 8,
        "no_dropped_frames": play["dropped_frames"] == 0,
        "first_load_le_3mb": figures["first_load"]["transfer_bytes"] <= 3e6,
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
