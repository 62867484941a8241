"""Feature-view files (.gfv) and extra-observation atlases of a bundle (docs/bundle.md)."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gallery import bundle as bundles
from gallery.method import dataset_examples as examples
from gallery.method import rendering
from tests.bundle_helpers import write_small_bundle

# --- helpers ------------------------------------------------------------------------------


def _grids_from_examples(acts: np.ndarray, subdiv_mults=(0.25, 0.5, 1, 2)
                         ) -> list[bundles.FeatureGrid]:
    """The writer's grids for feature activations (N, h, w), as the interface makes them."""
    out = []
    for s in subdiv_mults:
        g = examples.feature_grid(acts, np.zeros((len(acts), 1, 1, 3), np.uint8),
                                  subdiv_mult=s)
        out.append(bundles.FeatureGrid(s, g.indices, g.activations, g.centres[:, 0, 0],
                                       g.centres[0, :, 1], g.layer_hw))
    return out


def _smooth_acts(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Non-negative, spatially smooth activations (NMF-like) of n observations."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, h // 2 + 1, w // 2 + 1)) ** 3
    up = np.repeat(np.repeat(base, 2, axis=1), 2, axis=2)[:, :h, :w]
    return (up + 0.05 * rng.random((n, h, w))).astype(np.float32)


def _round_trip(grids, layer_hw=(8, 8), observation_hw=(64, 64), expand_mults=(1, 2, 4, 8)):
    data = bundles.encode_feature_views(3, layer_hw, observation_hw, expand_mults, grids)
    return data, bundles.decode_feature_views(data)


def _assert_same_grids(grids, detail):
    assert len(detail["grids"]) == len(grids)
    for g, d in zip(grids, detail["grids"], strict=True):
        np.testing.assert_array_equal(d["indices"], g.indices)
        assert np.array_equal(d["centre_rows"], np.asarray(g.centre_rows, np.float64))
        assert np.array_equal(d["centre_cols"], np.asarray(g.centre_cols, np.float64))
        acts = np.asarray(g.acts, np.float64)
        exact = acts / (acts.max() if acts.max() != 0 else 1)
        assert np.abs(d["alphas"] - exact).max() <= 0.5 / d["act_levels"] + 1e-12
        assert d["act_max"] == float(acts.max())


# --- the grid encoding ---------------------------------------------------------------------


def test_round_trip_of_interface_grids():
    """Grids as the interface makes them (every subdiv_mult): indices and centres exact,
    amounts to half a level; the centres are the resampling rule's, so not stored."""
    grids = _grids_from_examples(_smooth_acts(40, 8, 8))
    data, detail = _round_trip(grids)
    _assert_same_grids(grids, detail)
    header = json.loads(data[8:8 + struct.unpack_from("<I", data, 4)[0]])
    assert all("centre_rows" not in g for g in header["grids"])
    assert [g["shape"] for g in header["grids"]] == [list(g.indices.shape) for g in grids]
    assert (detail["feature"], detail["layer_shape"], detail["observation_shape"],
            detail["expand_mults"]) == (3, [8, 8], [64, 64], [1.0, 2.0, 4.0, 8.0])


def test_centres_rule_is_the_resampling_rule():
    for h in (1, 3, 8, 15, 16, 32, 64):
        for s in (0.25, 0.5, 1, 2, 3):
            try:
                _, centres = examples.resample_grid(np.zeros((1, h, h)), s)
            except examples.FeatureVisualisationError:
                continue
            rule = bundles.resampled_centres(h, centres.shape[0])
            assert np.array_equal(rule, centres[:, 0, 0]), (h, s)


def test_other_centres_are_stored_exactly():
    rng = np.random.default_rng(1)
    rows, cols = np.array([0.1, 1 / 3, 2.7]), np.array([np.pi, 1e-9])
    grid = bundles.FeatureGrid(1.0, rng.integers(0, 9, (3, 2)), rng.random((3, 2)), rows,
                               cols, (4, 4))
    _, detail = _round_trip([grid], layer_hw=(4, 4))
    _assert_same_grids([grid], detail)


@pytest.mark.parametrize("largest", [0, 1, 65535, 65536, 2**32 - 1])
def test_one_cell_grids_and_largest_indices(largest):
    grids = [bundles.FeatureGrid(1.0, np.array([[largest]]), np.array([[0.5]]),
                                 bundles.resampled_centres(1, 1), bundles.resampled_centres(1, 1),
                                 (1, 1)),
             bundles.FeatureGrid(2.0, np.array([[largest, 0], [largest, largest]]),
                                 np.array([[0.0, 2.0], [1.0, 0.25]]),
                                 bundles.resampled_centres(1, 2), bundles.resampled_centres(1, 2),
                                 (1, 1))]
    data, detail = _round_trip(grids, layer_hw=(1, 1))
    _assert_same_grids(grids, detail)
    header = json.loads(data[8:8 + struct.unpack_from("<I", data, 4)[0]])
    assert header["index_bytes"] == (2 if largest < 65536 else 4)


def test_indices_beyond_four_bytes_are_refused():
    grid = bundles.FeatureGrid(1.0, np.array([[2**32]]), np.array([[1.0]]), np.array([0.5]),
                               np.array([0.5]), (1, 1))
    with pytest.raises(bundles.BundleError, match="index"):
        bundles.encode_feature_views(0, (1, 1), (8, 8), (1,), [grid])


def test_all_zero_amounts():
    grid = bundles.FeatureGrid(1.0, np.zeros((4, 4), int), np.zeros((4, 4)),
                               np.arange(4) + 0.5, np.arange(4) + 0.5, (4, 4))
    _, detail = _round_trip([grid], layer_hw=(4, 4))
    _assert_same_grids([grid], detail)
    assert not detail["grids"][0]["alphas"].any()


def test_repetitive_grids_compress():
    """Indices repeated between neighbours and between grids cost little: the symbols."""
    rng = np.random.default_rng(2)
    coarse = rng.integers(0, 4000, (16, 16))
    fine = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)
    acts = rng.random((32, 32))
    grids = [bundles.FeatureGrid(1.0, coarse, acts[::2, ::2], bundles.resampled_centres(16, 16),
                                 bundles.resampled_centres(16, 16), (16, 16)),
             bundles.FeatureGrid(2.0, fine, acts, bundles.resampled_centres(16, 32),
                                 bundles.resampled_centres(16, 32), (16, 16))]
    data, detail = _round_trip(grids, layer_hw=(16, 16))
    _assert_same_grids(grids, detail)
    body = zlib.decompress(data[8 + struct.unpack_from("<I", data, 4)[0]:])
    fine_symbols = np.frombuffer(body, np.uint8, 32 * 32, 16 * 16 * 3 + 2 * 256)
    assert (fine_symbols != bundles.LITERAL).mean() > 0.95


def test_amount_levels_follow_the_threshold():
    """Few levels where the opacity threshold is high, more where one cell dominates."""
    flat = bundles.FeatureGrid(1.0, np.zeros((8, 8), int), np.full((8, 8), 0.9),
                               np.arange(8) + 0.5, np.arange(8) + 0.5, (8, 8))
    spiky = bundles.FeatureGrid(1.0, np.zeros((8, 8), int), np.full((8, 8), 0.001),
                                np.arange(8) + 0.5, np.arange(8) + 0.5, (8, 8))
    spiky.acts[3, 4] = 1.0
    _, a = _round_trip([flat], layer_hw=(8, 8))
    _, b = _round_trip([spiky], layer_hw=(8, 8))
    assert a["grids"][0]["act_levels"] == bundles.ACT_LEVELS_NUMERATOR
    assert b["grids"][0]["act_levels"] == 10 * bundles.ACT_LEVELS_NUMERATOR


@pytest.mark.parametrize("damage", ["magic", "version", "truncated", "symbol", "long",
                                    "header"])
def test_damaged_files_are_refused(damage):
    grids = _grids_from_examples(_smooth_acts(20, 4, 4), (1, 2))
    data = bytearray(bundles.encode_feature_views(0, (4, 4), (16, 16), (1, 2), grids))
    n = struct.unpack_from("<I", data, 4)[0]
    header = json.loads(data[8:8 + n])
    body = bytearray(zlib.decompress(bytes(data[8 + n:])))
    if damage == "magic":
        data[:4] = b"GATR"
    elif damage == "version":
        header["version"] = 9
    elif damage == "truncated":
        data = data[:-10]
    elif damage == "symbol":
        body[0] = 7
    elif damage == "long":
        body += b"\0"
        header["body_bytes"] += 1
    elif damage == "header":
        header["grids"][0]["shape"] = [10**6, 10**6]
    if damage in ("version", "symbol", "long", "header"):
        text = json.dumps(header).encode()
        data = bundles.FEATURE_MAGIC + struct.pack("<I", len(text)) + text + zlib.compress(
            bytes(body))
    with pytest.raises(bundles.BundleError):
        bundles.decode_feature_views(bytes(data))


# --- what is drawn -------------------------------------------------------------------------


def _observations(n: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


@pytest.mark.parametrize("case", ["smooth", "one-bright-cell", "sparse"])
def test_drawn_views_are_within_one_level_of_the_exact(case):
    """Every expand_mult of every grid, drawn from the decoded grid, against the view drawn
    from the exact one (gallery.method.dataset_examples.render_grid, 8 bits): the same colours, and
    alpha within 1/255 (the quantisation's bound; most pixels equal)."""
    h = w = 8
    acts = _smooth_acts(60, h, w, seed=4)
    if case == "one-bright-cell":  # opacity threshold at its lowest: max / 10
        acts = acts * 0.01
        acts[7, 3, 5] = 1.0
    elif case == "sparse":
        acts = acts * (np.random.default_rng(5).random(acts.shape) < 0.1)
    observations = _observations(60, 32)
    expand_mults = (1, 2, 4, 8)
    grids = _grids_from_examples(acts)
    _, detail = _round_trip(grids, layer_hw=(h, w), observation_hw=(32, 32),
                            expand_mults=expand_mults)
    worst, differing = 0, 0
    for g, d in zip(grids, detail["grids"], strict=True):
        centres = np.stack(np.meshgrid(g.centre_rows, g.centre_cols, indexing="ij"), -1)
        exact = examples.FeatureGrid(g.subdiv_mult, g.indices, g.acts, centres, (h, w))
        decoded = examples.FeatureGrid(g.subdiv_mult, d["indices"], d["alphas"], centres, (h, w))
        for e in expand_mults:
            a = rendering.to_uint8(examples.render_grid(exact, observations, expand_mult=e).image)
            b = rendering.to_uint8(examples.render_grid(decoded, observations,
                                                        expand_mult=e).image)
            np.testing.assert_array_equal(a[..., :3], b[..., :3])
            diff = np.abs(a[..., 3].astype(int) - b[..., 3])
            worst, differing = max(worst, int(diff.max())), differing + int((diff > 0).sum())
    assert worst <= 1


def test_quantisation_bound_holds_at_the_lowest_threshold():
    """The bound of ACT_LEVELS_NUMERATOR, checked directly: drawn opacity of every cell with
    amounts moved by up to half a level in the worst direction, threshold 0.1."""
    levels = bundles.ACT_LEVELS_NUMERATOR * 10
    rng = np.random.default_rng(0)
    alphas = np.concatenate([[1.0], rng.random(999) * 0.09])
    threshold = max(np.percentile(alphas, 90), 0.1)
    assert threshold == 0.1
    min_opacity = examples.MIN_OPACITY

    def drawn(a, t):
        return np.round(255 * np.minimum(1, min_opacity + a * (1 - min_opacity) / t))

    for da, dt in [(0.5, -0.5), (-0.5, 0.5), (0.5, 0.5), (-0.5, -0.5)]:
        moved = drawn(np.clip(alphas + da / levels, 0, 1), threshold + dt / levels)
        assert np.abs(moved - drawn(alphas, threshold)).max() <= 1


# --- in a bundle ---------------------------------------------------------------------------


def test_bundle_feature_views_validate_and_refer_to_extra_observations(tmp_path):
    index = write_small_bundle(tmp_path / "b")
    layer = index["layers"][0]
    assert all(f.endswith(".gfv") for f in layer["feature_views"])
    referenced = set()
    for k, name in enumerate(layer["feature_views"]):
        detail = bundles.decode_feature_views((tmp_path / "b" / name).read_bytes())
        assert detail["feature"] == k
        referenced |= {int(i) for g in detail["grids"] for i in g["indices"].ravel()}
    assert index["extra_observations"]["indices"] == sorted(referenced)
    bundles.validate_bundle(tmp_path / "b")


def _replace(root, index, name, data):
    (root / name).write_bytes(data)
    index["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (root / bundles.INDEX_FILE).write_text(json.dumps(index))


def test_validator_checks_feature_views(tmp_path):
    root = tmp_path / "b"
    index = write_small_bundle(root)
    views = index["layers"][0]["feature_views"]
    # a view of another feature in feature 0's place
    _replace(root, index, views[0], (root / views[1]).read_bytes())
    with pytest.raises(bundles.BundleError, match="not feature 0"):
        bundles.validate_bundle(root)
    # a view naming an extra observation the bundle does not have
    index = write_small_bundle(root)
    grid = bundles.FeatureGrid(1.0, np.full((4, 4), 999), np.ones((4, 4)), np.arange(4) + 0.5,
                               np.arange(4) + 0.5, (4, 4))
    _replace(root, index, views[0],
             bundles.encode_feature_views(0, (4, 4), (16, 16), (1, 2), [grid]))
    with pytest.raises(bundles.BundleError, match="does not have"):
        bundles.validate_bundle(root)
    # damaged bytes
    index = write_small_bundle(root)
    _replace(root, index, views[2], (root / views[2]).read_bytes()[:-5])
    with pytest.raises(bundles.BundleError, match=views[2]):
        bundles.validate_bundle(root)


def test_writer_refuses_negative_or_odd_grids(tmp_path):
    writer = bundles.BundleWriter(tmp_path / "b", model={"id": "m"},
                                  outputs=[bundles.value_output()], action_names=["A"])
    writer.add_layer(bundles.LayerSpec("conv", (4, 4, 2), "attribution", 2))
    c = np.arange(4) + 0.5
    for indices, acts, match in [(np.zeros((4, 4), int), -np.ones((4, 4)), "non-negative"),
                                 (np.zeros((4, 4), int), np.full((4, 4), np.nan), "finite"),
                                 (-np.ones((4, 4), int), np.ones((4, 4)), "indices"),
                                 (np.zeros((4, 4)), np.ones((4, 4)), "indices")]:
        with pytest.raises(bundles.BundleError, match=match):
            writer.add_feature_views("conv", 0, [bundles.FeatureGrid(1.0, indices, acts, c, c,
                                                                     (4, 4))],
                                     expand_mults=(1,), observation_shape=(16, 16))


# --- extra observations --------------------------------------------------------------------


def _game_like_atlas(seed: int = 0) -> np.ndarray:
    """A 16 x 16 atlas of 64 x 64 'observations': flat sky, tiled ground, a few sprites with
    hard edges, a little texture (what CoinRun looks like to an image coder)."""
    rng = np.random.default_rng(seed)
    frames = np.empty((256, 64, 64, 3), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    for f in frames:
        f[:] = rng.integers(60, 200, 3)
        ground = int(rng.integers(36, 56))
        f[ground:] = rng.integers(20, 120, 3)
        f[ground:][(yy[ground:] // 8 + xx[ground:] // 8) % 2 == 0] += 25
        for _ in range(3):
            y, x, r = rng.integers(4, 60), rng.integers(4, 60), rng.integers(3, 9)
            f[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = rng.integers(0, 256, 3)
        f[:] = np.clip(f.astype(int) + rng.integers(-3, 4, f.shape), 0, 255)
    return bundles.tile(frames, 16)


def test_extra_observations_are_avif_within_the_error_bound():
    """The atlas codec: AVIF (where Pillow has it) at a mean error no worse than the lossy
    WebP quality 80 used before, and smaller; about a second to encode."""
    atlas = _game_like_atlas()
    data, extension = bundles.encode_extra(atlas)
    if not bundles.pil_features.check("avif"):
        pytest.skip("this Pillow has no AVIF")
    assert extension == "avif" and data[4:12] == b"ftypavif"
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), float)
    error = np.abs(decoded - atlas).mean()
    webp = bundles.encode_image(atlas, lossy_quality=bundles.EXTRA_WEBP_QUALITY)
    webp_error = np.abs(np.asarray(Image.open(io.BytesIO(webp)).convert("RGB"), float)
                        - atlas).mean()
    assert error <= 5.0 and error <= webp_error, (error, webp_error)
    assert len(data) < len(webp)
    assert bundles.encode_extra(atlas)[0] == data  # one thread: reproducible


BENCH = Path(__file__).resolve().parents[1] / ".cache" / "bench-bundle"


@pytest.mark.skipif(not (BENCH / "interface-value" / "bundle" / "bundle.json").is_file(),
                    reason="needs the CoinRun benchmark bundle (benchmarks/bench_bundle.py)")
def test_extra_observations_of_coinrun_beat_the_webp():
    """On an atlas of the CoinRun benchmark's extra observations: AVIF at under 4/255 mean
    error, no worse than the WebP quality 80 used before, at under 60% of its bytes."""
    if not bundles.pil_features.check("avif"):
        pytest.skip("this Pillow has no AVIF")
    index = json.loads((BENCH / "interface-value" / "bundle" / "bundle.json").read_text())
    saved = sorted((BENCH / "cache" / "rollouts").glob("*.npz"))
    if len(saved) != 1:
        pytest.skip("the benchmark's rollouts are not (only) there")
    extra = index["extra_observations"]
    frames = bundles.display_frames(np.load(saved[0])["observations"][extra["indices"][:256]])
    atlas = bundles.tile(frames, extra["columns"])
    data, _ = bundles.encode_extra(atlas)
    webp = bundles.encode_image(atlas, lossy_quality=bundles.EXTRA_WEBP_QUALITY)
    error, webp_error = (np.abs(np.asarray(Image.open(io.BytesIO(d)).convert("RGB"), float)
                                - atlas).mean() for d in (data, webp))
    assert error < 4.0 and error <= webp_error, (error, webp_error)
    assert len(data) < 0.6 * len(webp)


def test_extra_observations_fall_back_to_webp(tmp_path, monkeypatch):
    monkeypatch.setattr(bundles.pil_features, "check", lambda name: False)
    data, extension = bundles.encode_extra(_game_like_atlas()[:128, :128])
    assert extension == "webp" and data[8:12] == b"WEBP"
    index = write_small_bundle(tmp_path / "b")
    assert all(a["file"].endswith(".webp") for a in index["extra_observations"]["atlases"])
    bundles.validate_bundle(tmp_path / "b")


def test_bundle_extra_atlases_are_checked(tmp_path):
    root = tmp_path / "b"
    index = write_small_bundle(root)
    atlas = index["extra_observations"]["atlases"][0]
    if bundles.pil_features.check("avif"):
        assert atlas["file"].endswith(".avif")
    count = atlas["count"]
    with Image.open(root / atlas["file"]) as image:  # 16 x 16 observations, 16 per row
        assert image.size == (16 * min(16, count), 16 * -(-count // 16))
    small = io.BytesIO()
    Image.new("RGB", (16, 16)).save(small, "PNG")
    _replace(root, index, atlas["file"], small.getvalue())
    with pytest.raises(bundles.BundleError, match="expected"):
        bundles.validate_bundle(root)
