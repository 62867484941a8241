"""Viewer speed and fidelity in headless Chromium, on the default-settings bundle.

    .venv/bin/python benchmarks/bench_viewer.py [--work .cache/bench-bundle] [--json OUT]

Needs the interface and arrays that benchmarks/bench_bundle.py leaves in WORK. Measures,
for every layer (trajectory 0, first output, direction abs, view 'all' -- the densest):

- frame draw time: decoding the frame's codes, drawing attribution (method.md 6) and
  putting it on the canvas, over 200 frames each; p50 / p95 / max (target: p95 <= 8 ms);
- playback at the video speed (12 fps) for 6 s on the layer with the largest positions:
  frames shown against frames due, and draws that ran behind;
- fidelity: every direction and view of sampled frames of every layer, read back from the
  canvas and compared with gallery.rendering (MAE <= 1/255, PSNR >= 40 dB per image).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser.harness import chromium, premultiply, read_attribution, serve  # noqa: E402

from gallery import rendering  # noqa: E402
from gallery.attribution_codec import image_errors, premultiplied_uint8  # noqa: E402

DRAW = """async ({layer, frames}) => {
  const v = window.galleryViewer;
  const row = {output: 'value', direction: 'abs', view: 'all'};
  v.setState({layer, trajectory: 0, frame: 0, rows: [row]});
  const c = () => document.querySelector('canvas.attr[data-row="0"]');
  const next = () => new Promise((r) => requestAnimationFrame(() => r()));
  while (!(c().dataset.drawn || '').startsWith(layer + '|0|value|0|')) await next();
  v.stats.reset();
  for (let t = 0; t < frames; t++) {
    v.setState({frame: t});
    while (!(c().dataset.drawn || '').startsWith(`${layer}|0|value|${t}|`)) await next();
  }
  return v.stats.drawTimes.slice();
}"""

PLAY = """async ({layer, seconds}) => {
  const v = window.galleryViewer;
  const row = {output: 'value', direction: 'abs', view: 'all'};
  v.setState({layer, trajectory: 0, frame: 0, rows: [row]});
  const c = () => document.querySelector('canvas.attr[data-row="0"]');
  const next = () => new Promise((r) => requestAnimationFrame(() => r()));
  while (!(c().dataset.drawn || '').startsWith(layer + '|0|value|0|')) await next();
  v.stats.reset();
  const shown = [];
  const start = performance.now();
  document.querySelector('.navigator button.play').click();
  while (performance.now() - start < seconds * 1000) {
    await next();
    shown.push([performance.now() - start, v.getState().frame, c().dataset.drawn]);
  }
  document.querySelector('.navigator button.play').click();
  const elapsed = (performance.now() - start) / 1000;
  return {elapsed, played: v.stats.playedFrames, draws: v.stats.draws,
          drawTimes: v.stats.drawTimes.slice(), shown};
}"""


def percentiles(times: list[float]) -> dict:
    a = np.array(times)
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p95_ms": round(float(np.percentile(a, 95)), 3), "max_ms": round(float(a.max()), 3)}


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
                     "worst_psnr_db": round(worst_psnr, 2)}
        print(f"  fidelity {name}: {out[name]}", file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=".cache/bench-bundle")
    parser.add_argument("--kind", default="value")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    interface = work / f"interface-{args.kind}"
    index = json.loads((interface / "bundle" / "bundle.json").read_text())
    figures: dict = {"draw": {}, "fidelity": {}}
    with serve(interface) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(base + "index.html")
        page.wait_for_function("window.galleryViewer !== undefined")
        page.evaluate("window.galleryViewer.ready")
        everything = []
        for layer in index["layers"]:
            times = page.evaluate(DRAW, {"layer": layer["name"], "frames": args.frames})
            everything += times
            figures["draw"][layer["name"]] = percentiles(times)
            print(f"  draw {layer['name']}: {figures['draw'][layer['name']]}", file=sys.stderr)
        figures["draw"]["all_layers"] = percentiles(everything)
        biggest = max(index["layers"], key=lambda la: la["shape"][0] * la["shape"][1])["name"]
        play = page.evaluate(PLAY, {"layer": biggest, "seconds": 6})
        due = play["elapsed"] * index["presentation"]["video_speed"]
        drawn_frames = {int(s[2].split("|")[3]) for s in play["shown"] if s[2]}
        figures["playback"] = {
            "layer": biggest, "seconds": round(play["elapsed"], 2),
            "frames_shown": play["played"], "frames_due": round(due, 1),
            "fps": round(play["played"] / play["elapsed"], 2),
            "every_frame_drawn": drawn_frames >= set(range(1, play["played"] + 1)),
            "draw_ms": percentiles(play["drawTimes"]) if play["drawTimes"] else None,
        }
        print(f"  playback: {figures['playback']}", file=sys.stderr)
        figures["fidelity"] = fidelity(page, work / f"arrays-{args.kind}", index)
        figures["console_errors"] = errors
    figures["draw_p95_ok"] = figures["draw"]["all_layers"]["p95_ms"] <= 8
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
