"""Dataset-example feature visualisation (method.md 7) on small constructed inputs."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from gallery.method.dataset_examples import (
    FeatureVisualisationError,
    assign_with_max_repetition,
    extract_patch,
    feature_thumbnail,
    feature_view,
    patch_bounds,
    resample_grid,
    rescale_opacity,
    rgb_frames,
)

M = 15 / 255


def _constant_frames(n: int, size: int = 8) -> np.ndarray:
    """Frame i is filled with (i + 1) / 100: a patch tells which observation it is from."""
    return np.repeat((np.arange(1, n + 1) / 100).astype(np.float32), size * size * 3
                     ).reshape(n, size, size, 3)


def test_rescale_opacity_by_hand():
    alphas = np.arange(10) / 10
    image = np.zeros((1, 10, 4))
    image[..., 3] = alphas
    # 90th percentile (linear) of 0, .1, ..., .9 is .81; max / 10 = .09
    full = rescale_opacity(image)
    assert_allclose(full[0, :, 3], np.minimum(1, M + alphas * (1 - M) / 0.81), rtol=1e-6)
    # thumbnails: max_scale 1 -> threshold max(.81, .9); zeros stay zero
    thumb = rescale_opacity(image, max_scale=1, keep_zeros=True)
    expected = np.minimum(1, M + alphas * (1 - M) / 0.9)
    expected[0] = 0
    assert_allclose(thumb[0, :, 3], expected, rtol=1e-6)
    assert thumb[0, -1, 3] == pytest.approx(1.0)
    # all zero: threshold 1, everything at the minimum opacity (or kept at zero)
    assert_allclose(rescale_opacity(np.zeros((2, 2, 4)))[..., 3], M)
    assert_allclose(rescale_opacity(np.zeros((2, 2, 4)), keep_zeros=True)[..., 3], 0)


def test_patch_bounds_and_checkerboard():
    assert patch_bounds(0.5, 2, 4) == (-3, 5)
    assert patch_bounds(1.25, 1, 1) == (1, 2)
    assert patch_bounds(1.0, 1, 1) == (0, 2)  # 0.5 -> 0 and 1.5 -> 2: half to even
    frame = np.arange(16, dtype=np.float32).reshape(4, 4, 1) / 16
    patch = extract_patch(frame, (-2, 2), (-1, 3))
    assert patch.shape == (4, 4, 3)
    assert_allclose(patch[2:, 1:, 0], frame[:2, :3, 0])
    assert_allclose(patch[2:, 1:, 2], frame[:2, :3, 0])  # grey shown in all three channels
    # outside the frame: 1.0 where y + x is odd, 0.75 where even (image coordinates)
    assert_allclose(patch[0, :, 0], [1.0, 0.75, 1.0, 0.75])  # y = -2, x = -1 .. 2
    assert_allclose(patch[2:, 0, 0], [1.0, 0.75])  # x = -1, y = 0, 1


def test_rgb_frames():
    grey = np.full((1, 2, 2, 1), 51, np.uint8)
    assert_allclose(rgb_frames(grey), np.full((1, 2, 2, 3), 0.2))
    stacked = np.concatenate([np.zeros((1, 2, 2, 3)), np.ones((1, 2, 2, 3))], -1)
    assert_allclose(rgb_frames(stacked), 1.0)  # the latest frame of a stack
    grey_stack = np.stack([np.zeros((2, 2)), np.full((2, 2), 0.5)], -1)[None]
    assert_allclose(rgb_frames(grey_stack), 0.5)


SCORES = np.array([
    # items: 0     1     2     3
    [0.9, 0.8, 0.7, 0.1],  # choice 0
    [0.5, 0.6, 0.2, 0.9],  # choice 1
    [0.1, 0.3, 0.6, 0.2],  # choice 2
])


def test_assignment_moves_the_weakest_to_their_next_choice():
    # best: items 0, 1, 2 on choice 0 (3 > 2): item 2, the weakest, moves to its 2nd best
    assert_array_equal(assign_with_max_repetition(SCORES, max_rep=2, strict=True),
                       [0, 0, 2, 1])
    assert_array_equal(assign_with_max_repetition(SCORES, max_rep=3, strict=True),
                       [0, 0, 0, 1])


def test_assignment_rounds_follow_the_reference():
    # max_rep 1. Round 1: items 2 (0.7) and 1 (0.8) leave choice 0 for their 2nd best
    # (2 and 1). Round 2: choice 1 holds items 1 (0.6) and 3 (0.9): item 1 goes to its
    # 3rd best, 2. Strict stops after the last rank, choice 2 over-full; otherwise one
    # more round sends the weaker of choice 2 (item 1, 0.3) back to its best.
    assert_array_equal(assign_with_max_repetition(SCORES, max_rep=1, strict=True),
                       [0, 2, 2, 1])
    assert_array_equal(assign_with_max_repetition(SCORES, max_rep=1, strict=False),
                       [0, 0, 2, 1])


def test_assignment_ties():
    # equal choices: the lower index ranks first; equal items: the lower index counts as
    # the weaker and moves first (round 1: items 0, 1 to choice 1; round 2: item 0 to 2)
    assert_array_equal(assign_with_max_repetition(np.ones((3, 2)), max_rep=2, strict=True),
                       [0, 0])
    assert_array_equal(assign_with_max_repetition(np.ones((3, 3)), max_rep=1, strict=True),
                       [2, 1, 0])


def _peaks(positions: list[tuple[int, int]], values: list[float], hw: int = 4) -> np.ndarray:
    acts = np.zeros((len(positions), hw, hw), np.float32)
    for i, ((h, w), v) in enumerate(zip(positions, values)):
        acts[i, h, w] = v
    return acts


def test_thumbnail_arranges_the_top_16_by_position():
    positions = [(3 - i // 4, i % 4) for i in range(16)]
    acts = _peaks(positions, [1.0] * 16)
    thumb = feature_thumbnail(acts, _constant_frames(16), num_mult=4, expand_mult=1)
    assert_array_equal(thumb.indices, [[12, 13, 14, 15], [8, 9, 10, 11], [4, 5, 6, 7],
                                       [0, 1, 2, 3]])
    assert thumb.image.shape == (8, 8, 4)  # 4 x 4 patches of one 2-pixel cell
    assert_allclose(thumb.image[0:2, 0:2, :3], 13 / 100)  # observation 12
    assert_allclose(thumb.image[6:8, 6:8, :3], 4 / 100)  # observation 3
    assert_allclose(thumb.image[..., 3], 1.0)  # equal activations: all opaque


def test_thumbnail_rows_are_resorted_by_column():
    # in (h, w) order the first four are (0,1) (0,2) (0,3) (1,0): one row, sorted by w
    positions = [(1, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1),
                 (2, 2), (2, 3), (3, 0), (3, 1), (3, 2), (3, 3), (0, 0), (3, 3)]
    values = [1.0] * 15 + [0.5, 0.9]  # observation 15, the weakest, is left out
    thumb = feature_thumbnail(_peaks(positions, values), _constant_frames(17), num_mult=4,
                              expand_mult=1)
    assert_array_equal(thumb.indices, [[0, 1, 2, 3],  # (1,0) first: the smallest w
                                       [7, 4, 5, 6], [11, 8, 9, 10],
                                       [12, 13, 14, 16]])  # equal places: by rank


def test_thumbnail_limits_repetition_of_a_position():
    # 20 observations all best at (0, 0), weaker in order; second best at (i % 4, 1 + i % 3)
    n = 20
    acts = np.zeros((n, 4, 4), np.float32)
    for i in range(n):
        acts[i, 0, 0] = 1.0 - i / 100
        acts[i, i % 4, 1 + i % 3] = 0.5 - i / 100
    thumb = feature_thumbnail(acts, _constant_frames(n), num_mult=4, expand_mult=1)
    # observations 0-3 keep (0, 0): the strongest 4; ranked first, they fill row 0
    assert_array_equal(thumb.indices[0, :1], [0])
    assert set(thumb.indices.ravel()) == set(range(16))
    alphas = thumb.image[..., 3]
    assert alphas.max() == pytest.approx(1.0)
    assert alphas.min() > M  # thumbnails keep only zero alphas at zero


def test_full_view_picks_the_best_observation_per_cell():
    acts = np.zeros((10, 2, 2), np.float32)
    acts[3, 0, 0], acts[7, 0, 1], acts[1, 1, 0], acts[3, 1, 1] = 1.0, 0.5, 0.8, 0.9
    view = feature_view(acts, _constant_frames(10, 4), subdiv_mult=1, expand_mult=1)
    assert_array_equal(view.indices, [[3, 7], [1, 3]])
    assert view.image.shape == (4, 4, 4)
    assert_allclose(view.image[0:2, 0:2, :3], 4 / 100)
    assert_allclose(view.image[2:4, 0:2, :3], 2 / 100)
    alphas = view.image[::2, ::2, 3]
    raw = np.array([[1.0, 0.5], [0.8, 0.9]])
    threshold = max(np.percentile(np.repeat(np.repeat(raw, 2, 0), 2, 1), 90), 0.1)
    assert_allclose(alphas, np.minimum(1, M + raw * (1 - M) / threshold), rtol=1e-6)
    wide = feature_view(acts, _constant_frames(10, 4), subdiv_mult=1, expand_mult=2)
    assert wide.image.shape == (8, 8, 4)  # patches of 4 pixels, centred on the cells
    assert_allclose(wide.image[0, 0, :3], 0.75)  # checkerboard at (-1, -1): even


def test_full_view_limits_repetition_of_an_observation():
    # 40 observations, 4 cells: each observation may serve ceil(4 / 4) = 1 cell
    acts = np.zeros((40, 2, 2), np.float32)
    acts[0] = [[0.9, 0.8], [0.7, 0.6]]
    acts[1] = [[0.0, 0.50], [0.52, 0.54]]
    acts[2] = [[0.0, 0.40], [0.42, 0.44]]
    acts[3] = [[0.0, 0.30], [0.32, 0.34]]
    view = feature_view(acts, _constant_frames(40, 4), subdiv_mult=1, expand_mult=1)
    # round 1: cells 3, 2, 1 leave observation 0 for 1; round 2: the two weakest of
    # observation 1 (cells 1, 2) go to 2; round 3: cell 1 goes to 3
    assert_array_equal(view.indices, [[0, 3], [2, 1]])


def test_resample_grid_by_hand():
    acts = np.array([[[0.0, 1.0], [2.0, 3.0]]])
    grid, centres = resample_grid(acts, 2)
    weights = np.array([0, 0, 0.5, 1, 1])  # edge-padded linear interpolation
    assert_allclose(grid[0], 2 * weights[:, None] + weights[None, :], atol=1e-12)
    assert_allclose(centres[:, 0, 0], [0, 0.5, 1, 1.5, 2])
    assert_allclose(centres[0, :, 1], [0, 0.5, 1, 1.5, 2])
    same, centres1 = resample_grid(acts, 1)
    assert_allclose(same, acts)
    assert_allclose(centres1[..., 0], [[0.5, 0.5], [1.5, 1.5]])
    with pytest.raises(FeatureVisualisationError, match="too small"):
        resample_grid(acts, 0.25)


@pytest.mark.parametrize("shape", [(3, 2, 2), (5, 8, 8), (2, 7, 11), (4, 32, 32)])
@pytest.mark.parametrize("subdiv", [0.25, 0.5, 1, 2])
def test_resampling_is_scipys_zoom(shape, subdiv):
    """The reference tool's scipy.ndimage.zoom(order=1, mode='nearest') on the padded grid."""
    from scipy import ndimage

    acts = np.random.default_rng(0).random(shape).astype(np.float32)
    h, w = shape[1:]
    zoom = [1, subdiv - (subdiv - 1) / (h + 2), subdiv - (subdiv - 1) / (w + 2)]
    padded = np.pad(acts, [(0, 0), (1, 1), (1, 1)], mode="edge")
    expected = ndimage.zoom(padded, zoom, order=1, mode="nearest")[:, 1:-1, 1:-1]
    cells = np.indices((h + 2, w + 2)).transpose(1, 2, 0).astype(float)
    centres = ndimage.zoom(cells, zoom[1:] + [1], order=1, mode="nearest")[1:-1, 1:-1] - 0.5
    if expected.size == 0:
        with pytest.raises(FeatureVisualisationError):
            resample_grid(acts, subdiv)
        return
    grid, ours = resample_grid(acts, subdiv)
    assert_allclose(grid, expected, rtol=1e-5, atol=1e-6)
    assert_allclose(ours, centres, atol=1e-9)


@pytest.mark.parametrize("frames_hw, layer_hw", [((8, 8), (4, 4)), ((84, 84), (20, 20)),
                                                 ((64, 64), (7, 9))])
@pytest.mark.parametrize("subdiv, expand", [(1, 1), (2, 3), (0.5, 8), (2, 1)])
def test_vectorised_view_equals_patch_by_patch(frames_hw, layer_hw, subdiv, expand):
    """Non-integer cells (84 / 20 = 4.2 pixels) and odd expansions included."""
    from gallery.method.dataset_examples import extract_patch, feature_grid, patch_bounds

    rng = np.random.default_rng(1)
    n = 30
    acts = (rng.random((n,) + layer_hw) ** 4).astype(np.float32)
    frames = rng.integers(0, 256, (n,) + frames_hw + (3,), dtype=np.uint8)
    try:
        grid = feature_grid(acts, frames, subdiv_mult=subdiv)
    except FeatureVisualisationError:
        return
    view = feature_view(acts, frames, subdiv_mult=subdiv, expand_mult=expand)
    cell_h, cell_w = frames_hw[0] / layer_hw[0], frames_hw[1] / layer_hw[1]
    rows = []
    for i in range(grid.indices.shape[0]):
        row = []
        for j in range(grid.indices.shape[1]):
            r = patch_bounds(grid.centres[i, j, 0], cell_h, expand)
            c = patch_bounds(grid.centres[i, j, 1], cell_w, expand)
            row.append(extract_patch(frames[grid.indices[i, j]], r, c))
        rows.append(np.concatenate(row, axis=1))
    assert_allclose(view.image[..., :3], np.concatenate(rows, axis=0), atol=1e-7)


def test_every_documented_view_size_works_on_a_real_layer_shape():
    rng = np.random.default_rng(0)
    acts = (rng.random((40, 8, 8)) * (rng.random((40, 8, 8)) < 0.2)).astype(np.float32)
    frames = rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    for subdiv in (0.25, 0.5, 1, 2):
        for expand in (1, 2, 4, 8):
            view = feature_view(acts, frames, subdiv_mult=subdiv, expand_mult=expand)
            gh, gw = view.indices.shape
            assert view.image.shape[2] == 4 and view.image.dtype == np.float32
            assert 0 <= view.image.min() and view.image.max() <= 1
            counts = np.bincount(view.indices.ravel(), minlength=40)
            assert counts.max() <= int(np.ceil(gh * gw / 4))


def test_bad_inputs():
    with pytest.raises(FeatureVisualisationError, match="at least 16 observations"):
        feature_thumbnail(np.ones((15, 2, 2)), _constant_frames(15))
    with pytest.raises(FeatureVisualisationError, match="N = 3"):
        feature_view(np.ones((3, 2, 2)), _constant_frames(4))
    with pytest.raises(FeatureVisualisationError, match="NaN"):
        feature_view(np.full((3, 2, 2), np.nan), _constant_frames(3))
    with pytest.raises(FeatureVisualisationError, match="> 0"):
        feature_view(np.ones((3, 2, 2)), _constant_frames(3), expand_mult=0)
    with pytest.raises(FeatureVisualisationError, match="no observations"):
        feature_view(np.ones((0, 2, 2)), _constant_frames(0))


@pytest.mark.parametrize("seed", range(4))
def test_ranking_prefix_changes_nothing(seed, monkeypatch):
    import gallery.method.dataset_examples as de

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(30, 200)).astype(np.float32)  # many ties
    results = []
    for prefix in (1, 2, 1000):  # 1000: every ranking complete from the start
        monkeypatch.setattr(de, "RANKED_PREFIX", prefix)
        results.append([assign_with_max_repetition(scores, max_rep=m, strict=strict)
                        for m in (2, 7) for strict in (True, False)])
    for other in results[:2]:
        for a, b in zip(other, results[2], strict=True):
            assert_array_equal(a, b)
