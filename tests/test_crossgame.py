"""Comparisons of models of different games: found from the built results before any model
is evaluated on another's frames; the page shows each model's own interface and features.
(The whole path, from three real checkpoints, is tests/test_any_model.py.)"""

from __future__ import annotations

import re

from PIL import Image

from gallery.models.fetch import Fetched
from gallery.pipeline.build import shared_observations
from gallery.pipeline.manifest import parse_manifest
from gallery.site import (
    BuildInfo,
    ComparisonEntry,
    ModelEntry,
    build_site,
    matching,
    plan_project,
    write_project,
)
from gallery.site.pages import comparison_page
from tests.test_site import fake_folder, fake_result

SHA = "ab" * 32
MANIFEST = f"""
site: {{name: Games}}
models:
  - {{id: easy, title: CoinRun easy, checkpoint: "https://example.org/easy.jd", sha256: {SHA},
     features: {{2b: {{1: coin}}}}}}
  - {{id: hard, title: CoinRun hard, checkpoint: "https://example.org/hard.jd", sha256: {SHA}}}
  - {{id: pong, title: Pong <b>bold</b>, checkpoint: "https://example.org/p.zip", sha256: {SHA}}}
comparisons:
  - {{id: mixed, title: Mixed, models: [easy, pong, hard]}}
  - {{id: coinrun, title: CoinRun, models: [easy, hard]}}
"""


def atari(result, name: str = "pong", stack: int = 4):
    result.environment = {"env_kind": "atari", "env_name": name, "frame_stack": stack,
                          "sticky_actions": False, "options": {}}
    result.observation_shape = [84, 84, stack]
    return result


def test_a_game_is_the_environment_and_the_observation_shape():
    easy, hard = fake_result("easy"), fake_result("hard")
    hard.environment = {**hard.environment, "options": {"distribution_mode": "easy"}}
    assert matching.game(easy) == ("procgen", "coinrun", (64, 64, 3)) == matching.game(hard)
    assert list(matching.by_game([easy, hard]).values()) == [[0, 1]]  # options: one game
    pong, pong1 = atari(fake_result("p")), atari(fake_result("q"), stack=1)
    assert matching.by_game([easy, pong, hard, pong1]) == {
        ("procgen", "coinrun", (64, 64, 3)): [0, 2], ("atari", "pong", (84, 84, 4)): [1],
        ("atari", "pong", (84, 84, 1)): [3]}  # another frame stack: other observations
    maze = fake_result("m")
    maze.environment = {**maze.environment, "env_name": "maze"}
    assert len(matching.by_game([easy, maze])) == 2


def test_models_of_different_games_are_not_evaluated_on_shared_frames(tmp_path):
    manifest = parse_manifest(MANIFEST, tmp_path / "checkpoints.yaml")
    models = {"easy": ModelEntry(manifest.model("easy"), fake_result("easy"), tmp_path),
              "hard": ModelEntry(manifest.model("hard"), fake_result("hard"), tmp_path),
              "pong": ModelEntry(manifest.model("pong"), atari(fake_result("pong")), tmp_path)}
    # checkpoints that do not exist: evaluating any model would raise
    fetched = {i: Fetched(tmp_path / f"{i}.missing", "00" * 32, "local") for i in models}
    shared, folder, note = shared_observations(manifest.comparisons[0], models, fetched,
                                               tmp_path / "cache", manifest=manifest)
    assert shared is None and folder is None
    assert note == ("These models play different games: each interface shows its own "
                    "trajectories, and their features are shown unmatched (CoinRun easy, "
                    "CoinRun hard: procgen coinrun, 64 × 64 × 3 observations; Pong <b>bold</b>: "
                    "atari pong, 84 × 84 × 4 observations).")
    assert not (tmp_path / "cache").exists()


def test_the_page_of_a_mixed_comparison(tmp_path):
    """Two CoinRun models and a Pong one: every model on its own trajectories and features,
    in a real strict MkDocs build (every link and image of the page resolves)."""
    manifest = parse_manifest(MANIFEST, tmp_path / "checkpoints.yaml")
    legends = tmp_path / "legends"
    legends.mkdir()
    models = []
    for model_id in ("easy", "hard", "pong"):
        result = fake_result(model_id, interface="interface")
        if model_id == "pong":
            atari(result)
        folder = fake_folder(tmp_path / model_id, result)
        (folder / "interface" / "bundle").mkdir()
        (folder / "interface" / "bundle" / "bundle.json").write_text("{}")
        paths = []
        for k in range(3):
            paths.append(legends / f"{model_id}-f{k}.png")
            Image.new("RGB", (24, 24), (k * 80, 90, 160)).save(paths[-1])
        models.append(ModelEntry(manifest.model(model_id), result, folder,
                                 legends={"2b": paths}))
    by_id = {m.spec.id: m for m in models}
    comparisons = [ComparisonEntry(c) for c in manifest.comparisons]
    text = comparison_page(comparisons[0], by_id)
    assert "These models play different games" in text
    assert "Pong &lt;b&gt;bold&lt;/b&gt;: atari pong, 84 × 84 × 4 observations" in text
    mounts = re.findall(r'data-group="([^"]+)" data-model="([^"]+)" data-bundle="([^"]+)"', text)
    assert mounts == [(f"compare-mixed-{i}", i, f"../../models/{i}/interface/bundle/bundle.json")
                      for i in ("easy", "pong", "hard")]  # the comparison's order
    assert "Features of each model" in text and "Features matched" not in text
    assert "None: these models play different games" in text
    # the one labelled feature keeps its label; every model's thumbnails, by model and layer
    assert re.search(r'src="../../models/easy/features/easy-f1.png" alt="Feature 2 of '
                     r'CoinRun easy, layer 2b: coin"', text)
    for model_id in ("easy", "pong", "hard"):
        assert f'data-model="{model_id}" data-layer="2b"' in text
    # a comparison within one game is unchanged: no note, features matched (here: none yet)
    same = comparison_page(comparisons[1], by_id)
    assert "different games" not in same and "Features matched across models" in same

    project, out = tmp_path / "project", tmp_path / "out"
    write_project(plan_project(manifest.site, models, comparisons, BuildInfo("2024-01-02",
                                                                             "0.1.0")), project)
    build_site(project, out, strict=True)
    page = out / "compare" / "mixed" / "index.html"
    html = page.read_text()
    targets = re.findall(r'(?:src|data-bundle|href)="(\.\./\.\./models/[^"#]+)"', html)
    assert len(targets) > 3 * 3
    for target in targets:
        path = page.parent / target
        assert (path / "index.html" if target.endswith("/") else path).is_file(), target
