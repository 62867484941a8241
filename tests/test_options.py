"""One options model (gallery.pipeline.options): its defaults are the method's, and the
manifest, the command line and the Python API read it the same way."""

from __future__ import annotations

import argparse

import pytest

from gallery.pipeline.interface import InterfaceError, interface_builder
from gallery.pipeline.manifest import ManifestError, parse_manifest
from gallery.pipeline.options import (
    InterfaceOptions,
    OptionsError,
    add_arguments,
    flags,
    from_arguments,
    from_flags,
    validate,
)


def test_defaults_are_the_methods():
    o = InterfaceOptions()
    t, obs, a, v, p = o.trajectories, o.observations, o.attribution, o.visualisation, \
        o.presentation
    assert (t.num_envs, t.num_steps, t.seed, t.bookmarks) == (8, 512, 0, 16)
    assert (obs.num_envs, obs.num_obs, obs.obs_every) == (32, 128, 128)
    assert (a.integrate_steps, o.nmf.features, o.nmf.integrate_steps) == (10, 8, 10)
    assert not a.policy and a.policy_layers is None and a.single_features
    assert o.layers.include is None and o.layers.discard_first_n == 0
    assert v.subdiv_mults == (0.25, 0.5, 1, 2) and v.expand_mults == (1, 2, 4, 8)
    assert (v.subdiv_mult_default, v.expand_mult_default) == (1, 4)
    assert p.scrub_range == (42 / 64, 44 / 64) and p.video_speed == 12
    assert p.attribution_weight == 0.9 and p.scrubber_visible_duration == 256


def test_every_option_has_one_flag_and_a_description():
    seen = [flag for flag, *_ in flags()]
    assert len(seen) == len(set(seen))
    for flag, section, name, field in flags():
        assert field.description, f"{section}.{name} has no description"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    for flag in seen:
        assert f"--{flag}" in text


@pytest.mark.parametrize("values, message", [
    ({"num_envs": 0}, "trajectories.num_envs (--num-envs): Input should be greater than"),
    ({"num_steps": 2.5}, "trajectories.num_steps (--num-steps)"),
    ({"bookmarks": -1}, "trajectories.bookmarks (--bookmarks)"),
    ({"vis_expand_mults": (1, 2)}, "expand_mult_default 4.0 is not one of expand_mults"),
    ({"scrub_range": (0.7, 0.6)}, "scrub_range must be two fractions"),
    ({"attribution_weight": 2}, "presentation.attribution_weight (--attribution-weight)"),
    ({"max_paths": 0}, "attribution.max_paths (--max-paths)"),
    ({"image_effort": "slow"}, "presentation.image_effort (--image-effort)"),
])
def test_invalid_options_are_named_by_key_and_flag(values, message):
    with pytest.raises(OptionsError, match=message.replace("(", "\\(").replace(")", "\\)")):
        from_flags(values)


def test_unknown_options_list_the_known_ones():
    with pytest.raises(OptionsError, match="unknown interface option\\(s\\) colour.*num_envs"):
        from_flags({"colour": "red"})
    assert from_flags({"layers": ["2b"]}).layers.include == ["2b"]
    assert from_flags({"layer": ["2b"]}) == from_flags({"layers": ["2b"]})
    assert from_flags({"nmf-features": 4}).nmf.features == 4


def test_flags_override_a_base_and_none_keeps_it():
    base = validate({"trajectories": {"num_envs": 3}, "nmf": {"features": 5}})
    got = from_flags({"num_envs": None, "integrate_steps": 4}, base)
    assert got.trajectories.num_envs == 3 and got.nmf.features == 5
    assert got.attribution.integrate_steps == 4


def test_manifest_command_line_and_api_give_the_same_options(tmp_path):
    """The same settings written three ways: a manifest's defaults + model options, the
    flags of `gallery interface`, the keywords of generate_interface."""
    (tmp_path / "m.jd").write_bytes(b"x")
    manifest = parse_manifest("""
defaults:
  trajectories: {num_envs: 2, num_steps: 16}
  layers: {include: [2b, 4a]}
  attribution: {policy: true, policy_layers: [4a]}
models:
  - id: m
    title: M
    checkpoint: m.jd
    options: {nmf: {features: 4}, presentation: {video_speed: 6}}
""", tmp_path / "checkpoints.yaml")
    from_manifest = manifest.settings("m")

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--num-envs", "2", "--num-steps", "16", "--layer", "2b",
                              "--layer", "4a", "--policy", "--policy-layer", "4a",
                              "--nmf-features", "4", "--video-speed", "6"])
    from_cli = from_arguments(args)
    from_api = interface_builder(tmp_path / "m.jd", tmp_path / "out", num_envs=2,
                                 num_steps=16, layers=["2b", "4a"], policy=True,
                                 policy_layers=["4a"], nmf_features=4, video_speed=6).options
    assert from_manifest == from_cli == from_api


def test_bad_options_in_each_entrance():
    with pytest.raises(ManifestError, match="nmf.features"):
        parse_manifest("""
models:
  - {id: m, title: M, checkpoint: https://example.org/m.jd, sha256: "%s",
     options: {nmf: {features: 0}}}
""" % ("0" * 64))
    with pytest.raises(InterfaceError, match="nmf.features \\(--nmf-features\\)"):
        interface_builder("m.jd", "out", nmf_features=0)
    with pytest.raises(InterfaceError, match="nmf.colour: Extra inputs are not permitted"):
        interface_builder("m.jd", "out", {"nmf": {"colour": 1}})
