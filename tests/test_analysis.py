"""The orchestration: everything an interface needs, consistent with the parts."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from benchmarks.analysis import (
    AnalysisConfig,
    TrajectoryArrays,
    analyze,
    layer_features,
    outputs_for,
    select_layers,
)
from gallery.method import rendering
from gallery.method.advantages import bookmarks, dones_from_firsts, gae_advantages, policy_outputs
from gallery.method.attribution import AnalysisError, UnknownLayerError, integrated_gradients
from gallery.method.dataset_examples import FeatureVisualisationError
from tests.test_attribution import TinyPolicy

SMALL = AnalysisConfig(nmf_features=2, subdiv_mults=(1, 2), expand_mults=(1, 2),
                       thumbnail_expand_mult=1, bookmarks=3)


def _trajectories(e: int = 2, t: int = 6, seed: int = 0) -> TrajectoryArrays:
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 256, (e, t, 2, 3, 2), dtype=np.uint8)
    firsts = np.zeros((e, t))
    firsts[:, 0] = 1
    firsts[0, 3] = 1
    return TrajectoryArrays(obs, firsts, rng.integers(0, 5, (e, t)), rng.normal(size=(e, t)))


def _observations(n: int = 40, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 2, 3, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def result():
    config = AnalysisConfig(**{**SMALL.__dict__, "policy_attribution": True,
                               "input_layer": True})
    return analyze(TinyPolicy(), _trajectories(), _observations(), config)


def test_layers_outputs_and_counts(result):
    assert result.layers == ["input", "h", "g"]
    kinds = [o.kind for o in result.outputs]
    assert kinds == ["value"] + ["action"] * 5 + ["action_group"] * 3
    assert [o.name for o in result.outputs[-3:]] == ["RIGHT", "UP", "none"]
    assert len(result.attributions) == 3 * 2 * 9  # layers x trajectories x outputs
    assert result.feature_colours.shape == (2, 3)


def test_trajectory_analysis_is_gae_of_the_policy_outputs(result):
    policy, traj = TinyPolicy(), _trajectories()
    outputs = policy_outputs(policy, traj.observations)
    ta = result.trajectories
    assert_allclose(ta.values, outputs.values)
    assert_allclose(ta.logits, outputs.logits)
    dones = dones_from_firsts(traj.firsts)
    assert_array_equal(ta.dones, dones)
    expected = gae_advantages(outputs.values, traj.rewards, dones, gamma=0.999, lam=0.95)
    assert_allclose(ta.advantages, expected)
    assert ta.bookmarks_high == bookmarks(expected, dones, sign=1, num=3)
    assert ta.bookmarks_low == bookmarks(expected, dones, sign=-1, num=3)
    assert ta.observation_scrubs.shape == (2, 6, 2, 1, 2)  # width 3: column [2, 3)
    assert_array_equal(ta.observation_scrubs, traj.observations[:, :, :, 2:3])


def test_reduced_attribution_matches_the_parts(result):
    policy, traj = TinyPolicy(), _trajectories()
    nmf = result.features["h"].nmf
    by_key = {(a.layer, a.trajectory, a.output.name): a for a in result.attributions}
    frames = traj.observations[1]
    value = by_key[("h", 1, "value")]
    feats, res = nmf.reduce_attribution(integrated_gradients(policy, frames, "h"))
    assert_allclose(value.features, feats, rtol=1e-5, atol=1e-7)
    assert_allclose(value.residual, res, rtol=1e-5, atol=1e-6)
    assert_allclose(value.feature_totals, feats.sum(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert_allclose(value.residual_totals, res.sum(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert value.scale == pytest.approx(rendering.attribution_scale(feats), rel=1e-5)
    # an action group: reduced from the sum of its actions' attributions
    group = by_key[("h", 1, "UP")]
    raw = integrated_gradients(policy, frames, "h", [1, 2])
    feats, res = nmf.reduce_attribution(raw)
    assert_allclose(group.features, feats, rtol=1e-4, atol=1e-6)
    assert_allclose(group.residual, res, rtol=1e-4, atol=1e-5)


def test_scrubs_are_the_rendered_columns(result):
    item = next(a for a in result.attributions if a.layer == "g" and a.output.kind == "action")
    views = rendering.views(2)
    assert set(item.scrubs) == {(d, v) for d in rendering.DIRECTIONS for v in views}
    strip = item.scrubs[("pos", "all")]
    assert strip.dtype == np.uint8 and strip.shape == (6, 2, 1, 4)
    expected = rendering.render_attribution(item.features, item.residual, scale=item.scale,
                                            direction="pos", view="all")
    assert_array_equal(strip, rendering.to_uint8(rendering.scrub_strip(expected)))


def test_input_layer_holds_gradients(result):
    item = next(a for a in result.attributions if a.layer == "input" and a.trajectory == 0
                and a.output.kind == "value")
    policy, traj = TinyPolicy(), _trajectories()
    assert_allclose(item.features, integrated_gradients(policy, traj.observations[0], "input"),
                    rtol=1e-6)
    assert_allclose(item.residual, 0)
    assert {v for _, v in item.scrubs} == {"prin", "all"}


def test_features_of_a_layer(result):
    features = result.features["h"]
    assert features.directions.shape == (2, 2)
    assert len(features.thumbnails) == 2
    assert set(features.views) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    view = features.views[(1, 1)][0]
    assert view.indices.shape == (2, 3) and view.image.shape == (2, 3, 4)  # 1-pixel cells
    assert_allclose(features.colours, rendering.legend_colours(2))


def test_progress_reports_every_stage():
    seen = {}
    analyze(TinyPolicy(), _trajectories(1, 4), _observations(20),
            AnalysisConfig(**{**SMALL.__dict__, "layers": ("g",)}),
            progress=lambda stage, done, total: seen.__setitem__(stage, (done, total)))
    assert seen == {"outputs": (4, 4), "nmf g": (20, 20), "fit g": (1, 1),
                    "transform g": (1, 1), "features g": (10, 10), "attribution g": (4, 4)}


def test_streaming_equals_in_memory_and_memory_is_bounded():
    from benchmarks.analysis import attribution_bytes, iter_attributions

    policy, traj, obs = TinyPolicy(), _trajectories(), _observations()
    config = AnalysisConfig(**{**SMALL.__dict__, "policy_attribution": True})
    features = {layer: layer_features(policy, obs, layer, config) for layer in ("h", "g")}
    streamed = list(iter_attributions(policy, traj, features, config))
    in_memory = analyze(policy, traj, obs, config).attributions
    assert [(a.layer, a.trajectory, a.output) for a in streamed] == \
        [(a.layer, a.trajectory, a.output) for a in in_memory]
    for a, b in zip(streamed, in_memory):
        assert_allclose(a.features, b.features)
    # 2 layers x 6 positions x (2 features + residual) x 4 bytes x 12 frames x 9 outputs
    assert attribution_bytes(policy, (2, 6), config) == 2 * 6 * 3 * 4 * 12 * 9
    with pytest.raises(AnalysisError, match="iter_attributions"):
        analyze(policy, traj, obs, config, max_bytes=1000)


def test_layer_selection():
    policy = TinyPolicy()
    assert select_layers(policy, AnalysisConfig()) == ["h", "g"]
    assert select_layers(policy, AnalysisConfig(discard_first_n=1)) == ["g"]
    assert select_layers(policy, AnalysisConfig(include=("g",))) == ["g"]
    assert select_layers(policy, AnalysisConfig(layers=("g", "h"))) == ["g", "h"]
    with pytest.raises(UnknownLayerError, match="'h', 'g'"):
        select_layers(policy, AnalysisConfig(layers=("2b",)))
    assert [o.kind for o in outputs_for(policy, AnalysisConfig())] == ["value"]


def test_bad_inputs():
    policy = TinyPolicy()
    traj = _trajectories()
    with pytest.raises(AnalysisError, match="rewards"):
        analyze(policy, TrajectoryArrays(traj.observations, traj.firsts, traj.actions,
                                         traj.rewards[:, :3]), _observations(), SMALL)
    with pytest.raises(FeatureVisualisationError, match="at least 16"):
        layer_features(policy, _observations(10), "h", SMALL)
    with pytest.raises(AnalysisError, match="at most 2"):
        layer_features(policy, _observations(), "h", AnalysisConfig())  # 8 features, 2 ch
    with pytest.raises(AnalysisError, match="integrate_steps"):
        AnalysisConfig(integrate_steps=0)
    with pytest.raises(AnalysisError, match="scrub_range"):
        AnalysisConfig(scrub_range=(0.5, 0.25))


def test_a_real_network_end_to_end(tmp_path):
    from gallery.models.policy import load_policy
    from tests.reference.checkpoints import make_checkpoint, write_checkpoint

    policy = load_policy(write_checkpoint(tmp_path / "clear.jd", make_checkpoint("clear")))
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (1, 4, 64, 64, 3), dtype=np.uint8)
    traj = TrajectoryArrays(obs, np.eye(1, 4), np.zeros((1, 4), int), np.zeros((1, 4)))
    config = AnalysisConfig(layers=("4a",), subdiv_mults=(1,), expand_mults=(4,))
    out = analyze(policy, traj, rng.integers(0, 256, (24, 64, 64, 3), dtype=np.uint8), config)
    (item,) = out.attributions
    assert item.features.shape == (4, 8, 8, 8) and item.residual.shape == (4, 8, 8)
    features = out.features["4a"]
    assert features.thumbnails[0].image.shape == (128, 128, 4)  # 4 x 4 patches of 32 px
    assert features.views[(1, 4)][0].image.shape == (256, 256, 4)  # 8 x 8 cells of 32 px
