"""Serving an interface folder and driving it in headless Chromium (Playwright).

Shared by the browser tests and benchmarks/bench_viewer.py. Chromium is Debian's
(/usr/bin/chromium, installed by scripts/build_viewer.sh); Playwright's own browser
downloads are never used.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def chromium_path() -> str | None:
    """Debian's Chromium (or $GALLERY_CHROMIUM), None when there is none."""
    for candidate in (os.environ.get("GALLERY_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """A static HTTP server for `directory` on a free local port; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def chromium() -> Iterator[object]:
    """A Playwright Browser on Debian's Chromium."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("Chromium is not installed: run scripts/build_viewer.sh")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


READ_ATTRIBUTION = """async ({layer, trajectory, output, frames, directions, views}) => {
  const viewer = window.galleryViewer;
  await viewer.ready;
  const canvas = () => document.querySelector('.gv-attribution canvas.attr[data-row="0"]');
  const next = () => new Promise((r) => requestAnimationFrame(() => r()));
  const out = [];
  for (const frame of frames) {
    for (const direction of directions) {
      for (const view of views) {
        viewer.setState({layer, trajectory, frame, rows: [{output, direction, view}]});
        const want = `${layer}|${trajectory}|${output}|${frame}|${direction}|${view}`;
        let tries = 0;
        while (canvas()?.dataset.drawn !== want) {
          await next();
          if (++tries > 600) throw new Error(`not drawn: ${want}, got ${canvas()?.dataset.drawn}`);
        }
        const c = canvas();
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        out.push({frame, direction, view, width: c.width, height: c.height,
                  pixels: Array.from(data)});
      }
    }
  }
  return out;
}"""


def premultiply(rgba: np.ndarray) -> np.ndarray:
    """uint8 straight RGBA (as getImageData returns) -> uint8 premultiplied RGBA."""
    rgba = np.asarray(rgba, np.float64)
    out = rgba.copy()
    out[..., :3] = np.round(rgba[..., :3] * rgba[..., 3:] / 255)
    return out.astype(np.uint8)


def read_attribution(page, layer: str, trajectory: int, output: str, frames: list[int],
                     directions: list[str], views: list[str]) -> list[dict]:
    """Canvas pixels of the first attribution row for each (frame, direction, view), as
    (h, w, 4) uint8 straight RGBA arrays under 'image'."""
    items = page.evaluate(READ_ATTRIBUTION, {
        "layer": layer, "trajectory": trajectory, "output": output, "frames": frames,
        "directions": directions, "views": views})
    for item in items:
        item["image"] = np.array(item.pop("pixels"), np.uint8).reshape(
            item["height"], item["width"], 4)
    return items
