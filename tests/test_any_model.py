"""One manifest, three entrances: an rl-clarity checkpoint, a Stable-Baselines3 zip and an
adapter model, built by `gallery build` into one site."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from examples.adapters import cleanrl_procgen
from gallery.cli import main
from tests.test_build import TINY_DEFAULTS

DEMO = Path(__file__).resolve().parents[1] / "gallery" / "demo" / "coinrun-clear.jd"


def test_one_manifest_builds_three_kinds_of_model(tmp_path, monkeypatch, capsys):
    sb3 = pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

    from gallery.environments import EnvSpec, make_atari_env

    shutil.copy(DEMO, tmp_path / "clear.jd")
    spec = EnvSpec.from_args({"env_kind": "atari", "env_id": "breakout"})
    env = VecFrameStack(DummyVecEnv([lambda: make_atari_env(spec)]), 4)
    sb3.PPO("CnnPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu").save(
        tmp_path / "breakout-ppo.zip")
    torch.manual_seed(0)
    torch.save(cleanrl_procgen.Agent().state_dict(), tmp_path / "cleanrl.pt")
    manifest = {
        "site": {"name": "Three entrances"}, "defaults": TINY_DEFAULTS,
        "models": [
            {"id": "clear", "title": "rl-clarity", "checkpoint": "clear.jd"},
            {"id": "sb3", "title": "SB3 PPO", "checkpoint": "breakout-ppo.zip",
             "env": {"env_kind": "atari", "env_id": "BreakoutNoFrameskip-v4"},
             "options": {"layers": {"include": ["conv3"]}}},
            {"id": "cleanrl", "title": "CleanRL", "checkpoint": "cleanrl.pt",
             "adapter": "examples.adapters.cleanrl_procgen:make",
             "options": {"layers": {"include": ["out"]}}}],
        "comparisons": [{"id": "coinrun", "title": "Two CoinRun agents",
                         "models": ["clear", "cleanrl"]},
                        {"id": "all", "title": "Two games", "models": ["clear", "sb3", "cleanrl"]}]}
    path = tmp_path / "checkpoints.yaml"
    path.write_text(json.dumps(manifest))  # JSON is YAML
    monkeypatch.setenv("GALLERY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "site"
    assert main(["build", "-m", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "models: 3 built, 0 cached, 0 failed" in printed.out
    bundles = {i: json.loads((out / "models" / i / "interface" / "bundle" /
                              "bundle.json").read_text()) for i in ("clear", "sb3", "cleanrl")}
    assert [la["name"] for la in bundles["sb3"]["layers"]] == ["conv3"]
    assert [la["name"] for la in bundles["cleanrl"]["layers"]] == ["out"]
    assert (out / "compare" / "coinrun" / "index.html").is_file()
    # the two CoinRun models side by side on the same trajectories
    for model_id in ("clear", "cleanrl"):
        assert (out / "compare" / "coinrun" / "interface" / model_id / "bundle" /
                "bundle.json").is_file()
    # two architectures naming their layers differently: matched at their last layers
    coinrun = (out / "compare" / "coinrun" / "index.html").read_text()
    assert "Layer <code>4a / out</code>" in coinrun
    assert coinrun.count('class="gallery-matched__row"') == 4  # K = 4 features of 4a
    # viewers showing different layers play in step: each takes the layers it has
    assert len(set(re.findall(r'data-group="([^"]+)"', coinrun))) == 1
    assert "The viewers play in step" in coinrun
    assert "play different games" not in coinrun
    # models of different games share their statistics table (returns, lengths, values)
    across = (out / "compare" / "all" / "index.html").read_text()
    assert all(title in across for title in ("rl-clarity", "SB3 PPO", "CleanRL"))
    assert "breakout" in across and "sb3-ActorCriticCnnPolicy-nature-cnn" in across
    # ... found different before any was evaluated on another's frames: a note, nothing shared
    assert "These models play different games: each interface shows its own trajectories" \
        in across
    assert "procgen coinrun, 64 × 64 × 3 observations" in across
    assert "atari breakout, 84 × 84 × 4 observations" in across
    assert re.search(r"\ball +compare +These models play different games", printed.err)
    assert not (out / "compare" / "all" / "interface").exists()
    assert not (out / "compare" / "all" / "frames.png").exists()
    assert "Value on shared observations" not in across
    assert "Features matched across models" not in across
    # each model's own interface, in a viewer group of its own
    page_dir = out / "compare" / "all"
    mounts = re.findall(r'<div class="gallery-viewer__mount"[^>]*>', across)
    assert [re.search(r'data-model="([^"]+)"', m)[1] for m in mounts] == \
        ["clear", "sb3", "cleanrl"]
    for mount in mounts:
        model_id = re.search(r'data-model="([^"]+)"', mount)[1]
        bundle = re.search(r'data-bundle="([^"]+)"', mount)[1]
        assert bundle == f"../../models/{model_id}/interface/bundle/bundle.json"
        assert (page_dir / bundle).resolve() == \
            (out / "models" / model_id / "interface" / "bundle" / "bundle.json").resolve()
        assert (page_dir / bundle).is_file()
    assert len({re.search(r'data-group="([^"]+)"', m)[1] for m in mounts}) == 3
    # each model's features per layer, unmatched: its legend thumbnails, one per feature
    assert "Features of each model" in across
    for model_id, bundle in bundles.items():
        for layer in bundle["layers"]:
            group = re.search(rf'<div class="gallery-legend"[^>]*data-model="{model_id}" '
                              rf'data-layer="{re.escape(layer["name"])}">(.*?)</div>',
                              across, re.DOTALL)
            assert group, (model_id, layer["name"])
            images = re.findall(r'<img src="([^"]+)"', group[1])
            assert len(images) == layer["features"] > 0
            assert all(src.startswith(f"../../models/{model_id}/features/") and
                       (page_dir / src).is_file() for src in images)
    page = (out / "models" / "sb3" / "index.html").read_text()
    assert "NOOP" in page or "breakout" in page.lower()
