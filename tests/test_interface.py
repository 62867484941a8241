"""`gallery interface` / `generate_interface`: options, layer choice, and a whole (tiny)
interface of the real CoinRun checkpoint."""

from __future__ import annotations

import hashlib

import pytest

from gallery import bundle as bundles
from gallery.cli import main
from gallery.pipeline.interface import (
    InterfaceError,
    policy_layers,
    select_layers,
    viewer_assets,
)
from gallery.pipeline.options import AttributionOptions, LayerSelection

TINY = ["--num-envs", "1", "--num-steps", "16", "--obs-num-envs", "16", "--num-obs", "2",
        "--obs-every", "4", "--layer", "4a", "--image-effort", "fast"]


def test_layer_selection():
    offered = ["1a", "2a", "2b", "3a", "4a"]
    assert select_layers(offered, LayerSelection()) == offered
    assert select_layers(offered, LayerSelection(include=["2"])) == ["2a", "2b"]
    assert select_layers(offered, LayerSelection(discard_first_n=2)) == ["2b", "3a", "4a"]
    with pytest.raises(InterfaceError, match="no layer matches \\['9z'\\]; the checkpoint "
                                             "offers 1a, 2a"):
        select_layers(offered, LayerSelection(include=["9z"]))
    with pytest.raises(InterfaceError, match="no layer left"):
        select_layers(offered, LayerSelection(discard_first_n=5))
    assert select_layers(offered, LayerSelection(discard_first_n=5, input_layer=True)) == []


def test_policy_attribution_covers_one_layer_by_default():
    selected = ["1a", "2a", "2b", "3a", "4a"]
    assert policy_layers(selected, AttributionOptions()) == []
    assert policy_layers(selected, AttributionOptions(policy=True)) == ["2b"]
    assert policy_layers(["3a", "4a"], AttributionOptions(policy=True)) == ["4a"]
    assert policy_layers(selected, AttributionOptions(
        policy=True, policy_layers=["4a", "1a", "input"])) == ["1a", "4a"]
    assert policy_layers(["input", *selected], AttributionOptions(
        policy=True, policy_layers=["4", "input"])) == ["input", "4a"]
    assert policy_layers(["input", *selected], AttributionOptions(policy=True)) == ["2b"]
    with pytest.raises(InterfaceError, match="no layer shown matches policy layers "
                                             "\\['9z'\\]"):
        policy_layers(selected, AttributionOptions(policy=True, policy_layers=["9z"]))


def test_command_line_rejects_bad_values(tmp_path, capsys):
    code = main(["interface", "x.jd", "-o", str(tmp_path / "o"), "--num-steps", "0"])
    assert code == 2
    assert "trajectories.num_steps (--num-steps): Input should be greater than or equal to 2" \
        in capsys.readouterr().err
    code = main(["interface", str(tmp_path / "missing.jd"), "-o", str(tmp_path / "o")])
    assert code == 2 and "missing.jd" in capsys.readouterr().err


def test_viewer_assets_are_built():
    paths = viewer_assets()
    assert [p.name for p in paths] == ["viewer.js", "viewer.css"]
    assert "mountViewer" in paths[0].read_text()


def test_tiny_interface_end_to_end(coinrun_path, tmp_path, capsys):
    out = tmp_path / "interface"
    code = main(["interface", str(coinrun_path), "-o", str(out), *TINY,
                 "--cache-dir", str(tmp_path / "cache"), "--title", "Tiny CoinRun"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "layers        4a" in printed and "python3 -m http.server" in printed
    index = bundles.validate_bundle(out / "bundle", decode_frames=2)
    assert (out / "index.html").is_file()
    assert (out / "viewer" / "viewer.js").read_bytes() == viewer_assets()[0].read_bytes()
    page = (out / "index.html").read_text()
    assert "Tiny CoinRun" in page and "python3 -m http.server" in page
    # provenance: checkpoint hash, settings, versions, date
    provenance = index["provenance"]
    assert provenance["checkpoint"]["sha256"] == hashlib.sha256(
        coinrun_path.read_bytes()).hexdigest()
    settings = provenance["settings"]
    assert settings["trajectories"]["num_steps"] == 16
    assert settings["layers"]["include"] == ["4a"] and "image_effort" not in settings[
        "presentation"]
    assert {"torch", "numpy", "gallery"} <= set(provenance["versions"])
    assert provenance["created"].endswith("Z")
    # contents
    assert [t["length"] for t in index["trajectories"]] == [16]
    assert [la["name"] for la in index["layers"]] == ["4a"]
    layer = index["layers"][0]
    assert layer["shape"] == [8, 8, 32] and layer["features"] == 8
    assert list(layer["attribution"]) == ["value"] and len(layer["feature_views"]) == 8
    assert index["action_names"][7] == "RIGHT" and len(index["action_names"]) == 15
    assert [g["id"] for g in index["action_groups"]] == [
        "group-RIGHT", "group-LEFT", "group-UP", "group-DOWN", "group-none"]
    assert len(index["bookmarks"]["high"]) <= 16
    data = bundles.read_json(out / "bundle" / index["trajectories"][0]["data"])
    assert len(data["logits"]) == 16 and len(data["logits"][0]) == 15
    # a second run reuses the recorded rollouts (same key)
    code = main(["interface", str(coinrun_path), "-o", str(tmp_path / "again"), *TINY,
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    again = bundles.read_bundle(tmp_path / "again" / "bundle")
    assert again["files"][layer["attribution"]["value"][0]] == \
        index["files"][layer["attribution"]["value"][0]]


def test_a_small_layer_keeps_the_patch_counts_that_fit(tmp_path):
    """SB3's NatureCNN on 64x64 CoinRun ends in a 4x4 layer: the coarsest patch count
    (0.25) leaves no cell there, so its feature views offer the others."""
    from pathlib import Path

    from gallery.pipeline.interface import _grid_fits, generate_interface

    assert not _grid_fits([4, 4], 0.25) and _grid_fits([4, 4], 0.5)
    assert _grid_fits([8, 8], 0.25)
    zip_path = Path(__file__).resolve().parents[1] / "gallery" / "demo" / "coinrun-sb3.zip"
    out = tmp_path / "interface"
    generate_interface(zip_path, out, env={"env_kind": "procgen", "env_name": "coinrun"},
                       cache_dir=tmp_path / "cache", num_envs=1, num_steps=8,
                       obs_num_envs=4, num_obs=4, obs_every=4, layers=["conv3"],
                       nmf_features=2, integrate_steps=2, nmf_integrate_steps=2,
                       image_effort="fast")
    index = bundles.validate_bundle(out / "bundle", decode_frames=0)
    layer = index["layers"][0]
    assert layer["name"] == "conv3" and layer["shape"][:2] == [4, 4]
    views = bundles.decode_feature_views((out / "bundle" / layer["feature_views"][0])
                                         .read_bytes())
    assert [g["subdiv_mult"] for g in views["grids"]] == [0.5, 1, 2]


def test_trajectories_of_another_interface_must_fit_the_model(tmp_path):
    """`rollouts=<another builder>`: an Atari network cannot be shown CoinRun frames; the
    plan says so before anything is computed."""
    from pathlib import Path

    from gallery.pipeline.interface import interface_builder

    demo = Path(__file__).resolve().parents[1] / "gallery" / "demo" / "coinrun-clear.jd"
    coinrun = interface_builder(demo, tmp_path / "a", cache_dir=tmp_path / "cache",
                                title="CoinRun")
    breakout = interface_builder(None, tmp_path / "b", cache_dir=tmp_path / "cache",
                                 adapter="examples.adapters.cleanrl_atari:make",
                                 title="Breakout", rollouts=coinrun)
    with pytest.raises(InterfaceError, match=r"CoinRun's observations are \(64, 64, 3\), "
                       r"Breakout takes \(84, 84, 4\): they cannot share trajectories"):
        breakout.plan()
    assert not (tmp_path / "cache" / "units").exists() or not any(
        (tmp_path / "cache" / "units").iterdir())


def test_an_interface_on_a_saved_rollouts_file(tmp_path):
    """`rollouts=<file>` (`gallery interface --rollouts FILE`): the file's trajectories and
    extra observations, read by one unit, are what the bundle shows and indexes."""
    from pathlib import Path

    from gallery.environments import EnvSpec
    from gallery.environments.rollouts import (
        ObservationConfig,
        TrajectoryConfig,
        load_or_collect,
    )
    from gallery.models.policy import load_policy
    from gallery.pipeline.interface import generate_interface
    from gallery.pipeline.units import UnitStore

    demo = Path(__file__).resolve().parents[1] / "gallery" / "demo" / "coinrun-clear.jd"
    policy = load_policy(demo)
    saved = tmp_path / "shared.npz"
    load_or_collect(saved, policy, EnvSpec.from_args(policy.args, {}),
                    trajectories=TrajectoryConfig(2, 12),
                    observations=ObservationConfig(4, 4, 2), seed=3)
    out = tmp_path / "interface"
    generate_interface(demo, out, rollouts=saved, cache_dir=tmp_path / "cache",
                       layers=["4a"], nmf_features=2, integrate_steps=2,
                       nmf_integrate_steps=2, image_effort="fast")
    index = bundles.validate_bundle(out / "bundle", decode_frames=0)
    assert [t["length"] for t in index["trajectories"]] == [12, 12]
    assert max(index["extra_observations"]["indices"]) < 16  # the file's 4 x 4
    assert index["provenance"]["settings"]["rollouts"] == "shared.npz"
    events = UnitStore(tmp_path / "cache" / "units").events()
    assert [e["label"] for e in events if e["kind"] == "rollouts"] == [
        "coinrun-clear: rollouts (given)"]
