"""Fixtures of the browser tests: small interfaces built from the project's demo checkpoint
(gallery/demo/coinrun-clear.jd, a real PPO agent, so they run on every machine), a static
server, and Chromium pages that fail the test on any console error.

Interfaces (built once per session, about a minute on two CPU cores):
- `small_interface`: 2 trajectories x 48 steps, 256 extra observations, layers 2b and 4a,
  value attribution, single-feature views;
- `policy_interface`: 1 trajectory x 24 steps, layer 4a plus the input layer, policy
  attribution (every action and action group: rows can be added and removed);
- `paper_interface`: the paper's own checkpoint (../shared/checkpoints/coinrun.jd, its
  residual IMPALA network), 1 trajectory x 24 steps, layers 2b and 4a; skipped without it.

Screenshots go to a temporary folder; `GALLERY_SCREENSHOTS=DIR` keeps them in DIR instead
(scripts/screenshots.sh refreshes docs/screenshots/ that way).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from gallery.bundle import codec as attribution_codec
from gallery.pipeline.interface import interface_builder

from .harness import chromium, chromium_path, serve

DEMO_CHECKPOINT = Path(__file__).resolve().parents[2] / "gallery" / "demo" / "coinrun-clear.jd"


def _build(checkpoint: Path, folder: Path, cache: Path, **options) -> dict:
    """Build an interface; `arrays` keeps the reduced attribution (features, residual) of
    every (layer, trajectory, output), for comparison with the reference renderer. They are
    caught where they are encoded and matched to the bundle's files by their sha256."""
    encoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    encode = attribution_codec.encode

    def keeping(features, residual, **kwargs):
        data = encode(features, residual, **kwargs)
        encoded[hashlib.sha256(data).hexdigest()] = (np.array(features), np.array(residual))
        return data

    with mock.patch.object(attribution_codec, "encode", keeping):
        summary = interface_builder(checkpoint, folder, cache_dir=cache, title="CoinRun (test)",
                                    obs_num_envs=16, num_obs=16, obs_every=16,
                                    image_effort="fast", **options).run()
    index = json.loads((folder / "bundle" / "bundle.json").read_text())
    arrays = {}
    for layer in index["layers"]:
        for output, files in layer["attribution"].items():
            for e, name in enumerate(files):
                found = encoded.get(index["files"][name]["sha256"]) if name else None
                if found is not None:
                    arrays[(layer["name"], e, output)] = found
    return {"dir": folder, "summary": summary, "arrays": arrays, "extra": None}


@pytest.fixture(scope="session")
def rollout_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rollouts")


@pytest.fixture(scope="session")
def small_interface(tmp_path_factory, rollout_cache) -> dict:
    return _build(DEMO_CHECKPOINT, tmp_path_factory.mktemp("small") / "interface",
                  rollout_cache, num_envs=2, num_steps=48, layers=["2b", "4a"])


@pytest.fixture(scope="session")
def policy_interface(tmp_path_factory, rollout_cache) -> dict:
    return _build(DEMO_CHECKPOINT, tmp_path_factory.mktemp("policy") / "interface",
                  rollout_cache, num_envs=1, num_steps=24, layers=["4a"], policy=True,
                  input_layer=True)


@pytest.fixture(scope="session")
def paper_interface(tmp_path_factory, rollout_cache) -> dict:
    from conftest import shared_path  # tests/conftest.py (tests/ is on sys.path)

    return _build(shared_path("checkpoints", "coinrun.jd"),
                  tmp_path_factory.mktemp("paper") / "interface", rollout_cache, num_envs=1,
                  num_steps=24, layers=["2b", "4a"])


@pytest.fixture(scope="session")
def browser():
    if chromium_path() is None:
        from conftest import skip_or_fail  # tests/conftest.py (tests/ is on sys.path)

        skip_or_fail("Chromium is not installed (scripts/build_viewer.sh installs it)")
    pytest.importorskip("playwright", reason="Playwright for Python is a test dependency")
    with chromium() as b:
        yield b


class Console:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


@pytest.fixture
def open_page(browser):
    """open_page(folder, hash='', viewport=(1280, 800)) -> page at the folder's index.html,
    ready (first frame drawn). Any console error fails the test."""
    contexts, consoles, servers = [], [], []

    def opener(folder: Path, hash: str = "", viewport=(1280, 800)):
        server = serve(folder)
        base = server.__enter__()
        servers.append(server)
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        contexts.append(context)
        page = context.new_page()
        consoles.append(Console(page))
        page.goto(base + "index.html" + hash)
        page.wait_for_function("window.galleryViewer !== undefined")
        page.evaluate("window.galleryViewer.ready")
        page.base_url = base
        return page

    yield opener
    for context in contexts:
        context.close()
    for server in servers:
        server.__exit__(None, None, None)
    errors = [e for c in consoles for e in c.errors]
    assert not errors, f"console errors: {errors}"


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where the tests save their screenshots: a temporary folder (tests write nothing into
    the repository), or $GALLERY_SCREENSHOTS."""
    chosen = os.environ.get("GALLERY_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
