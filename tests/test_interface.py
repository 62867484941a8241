"""`gallery interface` / `generate_interface`: options, layer choice, and a whole (tiny)
interface of the real CoinRun checkpoint."""

from __future__ import annotations

import hashlib
import inspect

import pytest

from gallery import bundle as bundles
from gallery.cli import main
from gallery.pipeline.interface import (
    InterfaceError,
    InterfaceOptions,
    generate_interface,
    options_from,
    select_layers,
    viewer_assets,
)

TINY = ["--num-envs", "1", "--num-steps", "16", "--obs-num-envs", "16", "--num-obs", "2",
        "--obs-every", "4", "--layer", "4a", "--fast-images"]


def test_defaults_are_the_methods():
    o = InterfaceOptions()
    assert (o.num_envs, o.num_steps, o.obs_num_envs, o.num_obs, o.obs_every) == \
        (8, 512, 32, 128, 128)
    assert (o.integrate_steps, o.nmf_features, o.nmf_integrate_steps, o.bookmarks) == \
        (10, 8, 10, 16)
    assert o.vis_subdiv_mults == (0.25, 0.5, 1, 2) and o.vis_expand_mults == (1, 2, 4, 8)
    assert (o.vis_subdiv_mult_default, o.vis_expand_mult_default) == (1, 4)
    assert o.scrub_range == (42 / 64, 44 / 64) and o.video_speed == 12
    assert o.attribution_weight == 0.9 and o.scrubber_visible_duration == 256
    assert not o.policy and not o.input_layer and o.single_features and o.discard_first_n == 0


@pytest.mark.parametrize("values, message", [
    ({"num_envs": 0}, "num_envs must be a positive integer"),
    ({"num_steps": 2.5}, "num_steps must be a positive integer"),
    ({"bookmarks": -1}, "bookmarks must be an integer >= 0"),
    ({"vis_expand_mults": (1, 2), "vis_expand_mult_default": 4}, "vis_expand_mult_default 4"),
    ({"scrub_range": (0.7, 0.6)}, "scrub_range"),
    ({"attribution_weight": 2}, "attribution_weight"),
    ({"max_paths": 0}, "max_paths"),
])
def test_invalid_options_are_named(values, message):
    with pytest.raises(InterfaceError, match=message):
        InterfaceOptions(**values)


def test_unknown_options_list_the_known_ones():
    with pytest.raises(InterfaceError, match="unknown interface option\\(s\\) colour.*num_envs"):
        options_from({"colour": "red"})
    assert options_from({"layers": ["2b"], "env": None}).layers == ("2b",)


def test_layer_selection():
    offered = ["1a", "2a", "2b", "3a", "4a"]
    assert select_layers(offered, InterfaceOptions()) == offered
    assert select_layers(offered, InterfaceOptions(layers=("2",))) == ["2a", "2b"]
    assert select_layers(offered, InterfaceOptions(discard_first_n=2)) == ["2b", "3a", "4a"]
    with pytest.raises(InterfaceError, match="no layer matches \\['9z'\\]; the checkpoint "
                                             "offers 1a, 2a"):
        select_layers(offered, InterfaceOptions(layers=("9z",)))
    with pytest.raises(InterfaceError, match="no layer left"):
        select_layers(offered, InterfaceOptions(discard_first_n=5))
    assert select_layers(offered, InterfaceOptions(discard_first_n=5, input_layer=True)) == []


def test_site_builder_keywords_are_accepted():
    """gallery.pipeline.build passes these keywords (filtered by the signature)."""
    parameters = inspect.signature(generate_interface).parameters
    for name in ("env", "num_envs", "num_steps", "seed", "bookmarks", "obs_num_envs",
                 "num_obs", "obs_every", "layers", "discard_first_n", "input_layer",
                 "integrate_steps", "policy", "single_features", "nmf_features",
                 "nmf_integrate_steps"):
        assert name in parameters, name
    assert "options" not in parameters  # the site's own options object is not ours


def test_command_line_rejects_bad_values(tmp_path, capsys):
    code = main(["interface", "x.jd", "-o", str(tmp_path / "o"), "--num-steps", "0"])
    assert code == 2
    assert "num_steps must be a positive integer" in capsys.readouterr().err
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
    assert provenance["settings"]["num_steps"] == 16 and provenance["settings"]["layers"] == ["4a"]
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
