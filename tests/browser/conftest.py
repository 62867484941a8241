"""Fixtures of the browser tests: small interfaces built from the real CoinRun checkpoint,
a static server, and Chromium pages that fail the test on any console error.

Interfaces (built once per session, about a minute on two CPU cores):
- `small_interface`: 2 trajectories x 48 steps, 256 extra observations, layers 2b and 4a,
  value attribution, single-feature views;
- `policy_interface`: 1 trajectory x 24 steps, layer 4a plus the input layer, policy
  attribution (every action and action group: rows can be added and removed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from gallery import attribution_codec
from gallery.interface import InterfaceBuilder, InterfaceOptions

from .harness import chromium, chromium_path, serve

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _build(coinrun_path: Path, folder: Path, cache: Path, **options) -> dict:
    """Build an interface; `arrays` keeps the reduced attribution (features, residual) of
    every (layer, trajectory, output), for comparison with the reference renderer. They are
    caught where they are encoded and matched to the bundle's files by their sha256."""
    options = InterfaceOptions(obs_num_envs=16, num_obs=16, obs_every=16,
                               cache_dir=str(cache), title="CoinRun (test)", image_effort="fast",
                               **options)
    encoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    encode = attribution_codec.encode

    def keeping(features, residual, **kwargs):
        data = encode(features, residual, **kwargs)
        encoded[hashlib.sha256(data).hexdigest()] = (np.array(features), np.array(residual))
        return data

    with mock.patch.object(attribution_codec, "encode", keeping):
        summary = InterfaceBuilder(str(coinrun_path), folder, options, None,
                                   lambda m: None).run()
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
def small_interface(coinrun_session_path, tmp_path_factory, rollout_cache) -> dict:
    return _build(coinrun_session_path, tmp_path_factory.mktemp("small") / "interface",
                  rollout_cache, num_envs=2, num_steps=48, layers=("2b", "4a"))


@pytest.fixture(scope="session")
def policy_interface(coinrun_session_path, tmp_path_factory, rollout_cache) -> dict:
    return _build(coinrun_session_path, tmp_path_factory.mktemp("policy") / "interface",
                  rollout_cache, num_envs=1, num_steps=24, layers=("4a",), policy=True,
                  input_layer=True)


@pytest.fixture(scope="session")
def coinrun_session_path() -> Path:
    from conftest import shared_path  # tests/conftest.py (tests/ is on sys.path)

    return shared_path("checkpoints", "coinrun.jd")


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
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
