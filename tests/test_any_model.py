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
                        {"id": "all", "title": "Three games", "models": ["clear", "sb3", "cleanrl"]}]}
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
    # viewers showing different layers cannot follow one another's layer: each its own
    assert len(set(re.findall(r'data-group="([^"]+)"', coinrun))) == 2
    assert "each viewer plays on its own" in coinrun
    # models of different games share their statistics table (returns, lengths, values)
    across = (out / "compare" / "all" / "index.html").read_text()
    assert all(title in across for title in ("rl-clarity", "SB3 PPO", "CleanRL"))
    assert "breakout" in across and "sb3-ActorCriticCnnPolicy-nature-cnn" in across
    page = (out / "models" / "sb3" / "index.html").read_text()
    assert "NOOP" in page or "breakout" in page.lower()
