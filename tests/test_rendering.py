"""The reference renderer (method.md 6) against values derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from gallery.method import rendering as r

S2 = math.sqrt(2) / 2


@pytest.mark.parametrize("angle, rgb", [
    (0, (1, 0, 0)), (60, (S2, S2, 0)), (120, (0, 1, 0)), (180, (0, S2, S2)),
    (240, (0, 0, 1)), (300, (S2, 0, S2)), (360, (1, 0, 0)), (-60, (S2, 0, S2)),
])
def test_hue_corners_are_the_normalised_corners(angle, rgb):
    assert_allclose(r.hue(angle), rgb, atol=1e-12)


def test_hue_warps_the_middle_of_a_sector():
    # 30 degrees: even sector, D = 0.5 -> sin(pi/4); mix (1 - s) red + s yellow/sqrt(2)
    s = math.sin(math.pi / 4)
    mix = np.array([1 - s + s * S2, s * S2, 0])
    assert_allclose(r.hue(30), mix / np.linalg.norm(mix), atol=1e-12)
    assert_allclose(r.hue(30), [0.845862, 0.533402, 0], atol=1e-6)
    # 90 degrees: odd sector, D = 0.5 -> 1 - sin(pi/4): the mirror image of 30 degrees
    assert_allclose(r.hue(90), [0.533402, 0.845862, 0], atol=1e-6)
    # the warp moves 15 degrees (D = 0.25) towards the far corner: sin(pi/8) = 0.383 > 0.25
    g = r.hue(15)[1] / r.hue(15)[0]
    assert g > 0.25 / (0.75 + 0.25 * S2)


def test_feature_hues_and_legend_colours():
    hues = r.feature_hues(8)
    assert_allclose(np.linalg.norm(hues, axis=1), 1, atol=1e-12)
    assert_allclose(hues[0], [1, 0, 0])
    assert_allclose(hues[4], [0, S2, S2], atol=1e-12)  # 180 degrees
    assert_allclose(hues[2], r.hue(90))
    legend = r.legend_colours(8)
    assert_allclose(legend.max(axis=1), 1)
    assert r.hex_colours(legend)[0] == "#ff0000"
    assert r.hex_colours(legend)[4] == "#00ffff"
    assert r.hex_colours(legend)[2] == "#a1ff00"  # 0.533402 / 0.845862 * 255 = 160.8


def test_colour_is_linear_in_the_features():
    x = np.zeros((2, 3))
    x[0, 0] = 2.0
    x[1] = [0.5, 0.5, 0.0]
    rgb = r.colour(x)
    assert_allclose(rgb[0], [2, 0, 0])
    assert_allclose(rgb[1], 0.5 * r.hue(0) + 0.5 * r.hue(120), atol=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        r.colour(-x)


def test_disk_kernel_values():
    k = r.disk_kernel()
    assert k.shape == (15, 15)
    assert k[7, 7] == 1.0
    assert k[7, 8] == pytest.approx(math.exp(-1))
    assert k[0, 7] == pytest.approx(math.exp(-7))  # on the disk's edge: kept
    assert k[9, 10] == pytest.approx(math.exp(-math.hypot(2, 3)))
    assert k[2, 2] == 0.0  # distance sqrt(50) > 7
    assert k[1, 3] == 0.0  # distance sqrt(52)
    assert k[2, 3] == pytest.approx(math.exp(-math.hypot(5, 4)))
    assert k[0, 0] == 0.0
    assert (k > 0).sum() == 149  # integer points with i^2 + j^2 <= 49
    assert_array_equal(k, k.T)
    assert_array_equal(k, k[::-1])


def test_smooth_is_unnormalised_same_convolution_with_zeros_outside():
    k = r.disk_kernel()
    image = np.zeros((1, 15, 15, 3))
    image[0, 7, 7, 1] = 2.0
    out = r.smooth(image)
    assert_allclose(out[0, :, :, 1], 2 * k)
    assert_allclose(out[0, :, :, [0, 2]], 0)
    corner = np.zeros((1, 10, 12, 1))
    corner[0, 0, 0, 0] = 1.0
    out = r.smooth(corner)[0, :, :, 0]
    expected = np.zeros((10, 12))
    expected[:8, :8] = k[7:, 7:]
    assert_allclose(out, expected)
    assert out.sum() < k.sum()  # mass that would land outside is lost, not renormalised


def test_brightness_to_opacity():
    rgba = r.brightness_to_opacity(np.array([[0.3, 0.4, 0.0], [3.0, 4.0, 0.0], [0, 0, 0]]))
    assert_allclose(rgba[0], [0.6, 0.8, 0.0, 0.5])
    assert_allclose(rgba[1], [3.0, 4.0, 0.0, 1.0])  # b = min(1, 5): colour rgb / 1
    assert_allclose(rgba[2], [0, 0, 0, 0])


def test_attribution_scale():
    x = np.zeros((3, 2, 2, 2))
    x[0, 0, 0, 0], x[1, 1, 1, 1], x[2, 0, 1, 0] = 1.0, 3.0, 2.0
    assert r.attribution_scale(x) == 2.0  # median of the per-frame maxima 1, 3, 2
    y = np.zeros((3, 1, 1, 2))
    y[2, 0, 0, 1] = 5.0
    assert r.attribution_scale(y) == 5.0  # median 0 -> the overall max
    assert r.attribution_scale(np.zeros((3, 1, 1, 2))) == 1.0
    assert r.attribution_scale(-np.arange(1, 4.0).reshape(3, 1, 1, 1)) == -2.0  # signed


def test_directions():
    x = np.array([-2.0, 0.0, 3.0])
    assert_array_equal(r.apply_direction(x, "abs"), [2, 0, 3])
    assert_array_equal(r.apply_direction(x, "pos"), [0, 0, 3])
    assert_array_equal(r.apply_direction(x, "neg"), [2, 0, 0])
    with pytest.raises(ValueError):
        r.apply_direction(x, "both")


def test_channel_views():
    feats = np.array([[1.0, 2.0, 0.5]])
    res = np.array([0.25])
    c = r.feature_hues(3)
    assert_allclose(r.channel_view(feats, res, "prin")[0], feats[0] @ c)
    assert_allclose(r.channel_view(feats, res, "all")[0], feats[0] @ c + 0.25)
    assert_allclose(r.channel_view(feats, res, 1)[0], 2.0 * c[1])
    assert_allclose(r.channel_view(feats, res, "res")[0], [0.25] * 3)
    assert r.views(3) == ["prin", "all", 0, 1, 2, "res"]
    assert r.views(3, single_features=False) == ["prin", "all"]
    with pytest.raises(ValueError):
        r.channel_view(feats, res, 3)


def test_render_attribution_of_an_impulse():
    feats = np.zeros((1, 15, 15, 2))
    feats[0, 7, 7, 0] = 4.0
    res = np.zeros((1, 15, 15))
    rgba = r.render_attribution(feats, res, scale=4.0, direction="abs", view="prin")
    k = r.disk_kernel()
    assert_allclose(rgba[0, ..., 3], np.minimum(1, k))  # red * kernel: brightness = kernel
    inside = k > 0
    assert_allclose(rgba[0][inside][:, :3], np.tile([1.0, 0, 0], (inside.sum(), 1)))
    neg = r.render_attribution(feats, res, scale=4.0, direction="neg", view="prin")
    assert_allclose(neg, 0)
    grey = r.render_attribution(feats, res + 0.5, scale=1.0, direction="abs", view="res")
    assert grey[0, 7, 7, 3] == pytest.approx(1.0)  # 0.5 * sqrt(3) * sum of the disk > 1


@pytest.mark.parametrize("width, cols", [(64, (42, 44)), (32, (21, 22)), (16, (10, 11)),
                                         (8, (5, 6)), (4, (3, 4)), (1, (0, 1))])
def test_scrub_columns(width, cols):
    s = r.scrub_columns(width)
    assert (s.start, s.stop) == cols


@pytest.mark.parametrize("width", [4, 8, 16, 32, 64])
@pytest.mark.parametrize("view", ["prin", "all", 1, "res"])
def test_scrub_of_the_crop_equals_scrub_of_the_whole(width, view):
    rng = np.random.default_rng(width)
    feats = rng.normal(size=(3, 5, width, 4)) * (rng.random((3, 5, width, 4)) < 0.3)
    res = rng.normal(size=(3, 5, width))
    for direction in r.DIRECTIONS:
        whole = r.render_attribution(feats, res, scale=0.7, direction=direction, view=view)
        part = r.render_attribution_scrub(feats, res, scale=0.7, direction=direction,
                                          view=view)
        assert_allclose(part, r.scrub_strip(whole), atol=1e-12)


@pytest.mark.parametrize("width", [1, 5, 16, 64])
def test_all_scrubs_at_once_equal_one_render_per_view(width):
    rng = np.random.default_rng(width + 1)
    feats = rng.normal(size=(4, 9, width, 3)) * (rng.random((4, 9, width, 3)) < 0.4)
    res = rng.normal(size=(4, 9, width)) * 0.3
    views = r.views(3)
    for scale in (0.8, -1.3):  # a negative scale flips the signs
        strips = r.render_attribution_scrubs(feats, res, scale=scale, views=views)
        assert set(strips) == {(d, v) for d in r.DIRECTIONS for v in views}
        for direction in r.DIRECTIONS:
            for view in views:
                whole = r.render_attribution(feats, res, scale=scale, direction=direction,
                                             view=view)
                assert_allclose(strips[(direction, view)], r.scrub_strip(whole), atol=1e-12)


def test_smooth_columns_is_smooth_at_those_columns():
    images = np.random.default_rng(3).random((2, 20, 30, 2))
    for cols in (slice(0, 3), slice(13, 15), slice(27, 30)):
        assert_allclose(r.smooth_columns(images, cols), r.smooth(images)[:, :, cols],
                        atol=1e-12)


def test_side_by_side_and_uint8():
    frames = np.arange(2 * 3 * 2 * 1).reshape(2, 3, 2, 1)
    laid = r.side_by_side(frames)
    assert laid.shape == (3, 4, 1)
    assert_array_equal(laid[:, :2], frames[0])
    assert_array_equal(laid[:, 2:], frames[1])
    assert_array_equal(r.to_uint8(np.array([0.0, 0.5, 1.0, 1.2, -0.1, 0.499 / 255])),
                       [0, 128, 255, 255, 0, 0])
