"""The bundle format: attribution codec (levels, error diffusion, rANS, file layout), the
writer, and the reader/validator. Fast: synthetic arrays only."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from gallery import bundle as bundles
from gallery.bundle import codec
from gallery.method import rendering
from tests.bundle_helpers import synthetic_attribution, write_small_bundle

# --- levels and error diffusion --------------------------------------------------------------


def test_levels_are_uniform_then_geometric():
    table = codec.LevelTable(0.01)
    levels = table.values()
    assert table.linear == 50 and levels[0] == 0 and len(levels) == codec.NUM_LEVELS
    np.testing.assert_allclose(levels[:51], np.arange(51) * 0.01)
    ratios = levels[52:] / levels[51:-1]
    np.testing.assert_allclose(ratios, 1 + 1 / 50)
    assert np.all(np.diff(levels) > 0) and levels[-1] > 1e4
    assert codec.LevelTable(1.0).linear == 8 and codec.LevelTable(1e-4).linear == 64


def test_nearest_level_rounds_to_the_closer_level():
    levels = codec.LevelTable(0.1).values()
    got = codec.nearest_level(np.array([0.0, 0.04, 0.06, 0.149, 0.151, 1e60]), levels)
    assert got.tolist() == [0, 0, 1, 1, 2, codec.NUM_LEVELS - 1]


@pytest.mark.parametrize("step", [0.1, 0.0123, 0.002])
def test_nearest_codes_with_a_table_per_row_match_the_table_search(step):
    rng = np.random.default_rng(11)
    tables = codec.level_tables([step, 2 * step])
    values = np.concatenate([rng.exponential(step * 40, (2, 500)), rng.random((2, 10)) * 1e6],
                            axis=1)
    rows = np.array([[0], [1]])
    steps = np.array([[step], [2 * step]])
    linears = np.array([[codec.linear_steps(step)], [codec.linear_steps(2 * step)]])
    got = codec.nearest_codes(values, steps, linears, tables, rows)
    for r in range(2):
        want = codec.nearest_level(values[r], tables[r])
        # the same level, or one exactly as near (a tie)
        same = got[r] == want
        near = np.isclose(np.abs(tables[r][got[r]] - values[r]),
                          np.abs(tables[r][want] - values[r]), rtol=1e-9, atol=0)
        assert np.all(same | near)


def test_joint_error_diffusion_keeps_sums_and_zeros():
    rng = np.random.default_rng(0)
    k = 3
    shape = (4, 2 * (k + 1), 16, 16)
    values = np.where(rng.random(shape) < 0.3, rng.exponential(0.004, shape), 0.0)
    codes = codec.joint_diffuse(values, np.full(4, 0.01))
    rebuilt = codec.dequantise(codes, np.full(4, 0.01))
    # every rounding error is carried on: each plane's sum is kept to within the last
    # position's error (up to about a step: joint rounding may take the farther level)
    assert np.all(np.abs(rebuilt.sum(axis=(2, 3)) - values.sum(axis=(2, 3))) <= 0.015)
    # plain rounding would lose most small values
    levels = codec.LevelTable(0.01).values()
    plain = levels[codec.nearest_level(values, levels)]
    assert np.abs(plain.sum() - values.sum()) > 10 * np.abs(rebuilt.sum() - values.sum())
    assert not codec.joint_diffuse(np.zeros((2, 8, 4, 4)), np.full(2, 0.01)).any()


def test_joint_rounding_lowers_the_error_of_views_that_add_planes():
    """The colour error of the `all` view is what independent rounding of many planes
    adds up; joint rounding makes it smaller without losing the single views."""
    rng = np.random.default_rng(8)
    k = 8
    shape = (6, 2 * (k + 1), 24, 24)
    values = np.where(rng.random(shape) < 0.5, rng.exponential(0.01, shape), 0.0)
    steps = np.full(6, 0.01)
    joint = codec.dequantise(codec.joint_diffuse(values, steps), steps) - values
    alone = codec.dequantise(codec.joint_diffuse(values, steps, np.eye(2 * (k + 1))),
                             steps) - values
    colours = np.concatenate([rendering.feature_hues(k), np.ones((1, 3))])
    colours = np.concatenate([colours, colours])

    def all_view(err):
        return np.abs(codec.smooth_planes(np.einsum("tphw,pc->tchw", err, colours))).mean()

    def single(err):
        return np.abs(codec.smooth_planes(err)).mean()

    assert all_view(joint) < 0.8 * all_view(alone)
    assert single(joint) < 1.5 * single(alone)


def test_fast_check_equals_the_reference_renderer():
    """`frame_errors` (FFT smoothing, views mixed after it) gives the reference's numbers."""
    features, residual = synthetic_attribution(frames=3, h=9, w=13, k=3)
    scale = rendering.attribution_scale(features)
    steps = np.array([0.02, 0.05, 0.2])
    codes = codec.quantise(features, residual, scale, steps)
    planes = codec.split_planes(features, residual, scale)
    mae, psnr = codec.frame_errors(planes, codec.dequantise(codes, steps), as_drawn=False)
    drawn, _ = codec.frame_errors(planes, codec.dequantise(codes, steps))
    # 8-bit straight colour, then premultiplied (the viewer): about the same error
    assert np.all(np.abs(drawn - mae) <= 0.3 / 255)
    for t in range(3):
        want = codec.worst_errors(features[t:t + 1], residual[t:t + 1], scale, codes[t:t + 1],
                                  steps[t:t + 1])
        assert mae[t] == pytest.approx(want[0], abs=0.01 / 255)
        assert psnr[t] == pytest.approx(want[1], abs=0.05)
    smoothed = codec.smooth_planes(planes)
    direct = rendering.smooth(planes.reshape(-1, 9, 13, 1)).reshape(planes.shape)
    np.testing.assert_allclose(smoothed, direct, atol=1e-12)


def test_split_planes_separates_signs_of_features_and_residual():
    features = np.array([[[[1.0, -2.0]]]])
    residual = np.array([[[-4.0]]])
    planes = codec.split_planes(features, residual, scale=2.0)
    # P of (f0, f1, res), then N of (f0, f1, res)
    assert planes[0, :, 0, 0].tolist() == [0.5, 0.0, 0.0, 0.0, 1.0, 2.0]


# --- drawing from planes equals the reference renderer when nothing is lost ----------------


def test_planes_draw_exactly_like_the_reference():
    """The viewer draws from P and N planes; unquantised, they give the reference pixels."""
    rng = np.random.default_rng(1)
    features = rng.normal(0, 0.3, (3, 12, 12, 4)) * (rng.random((3, 12, 12, 4)) < 0.3)
    residual = rng.normal(0, 0.1, (3, 12, 12))
    scale = rendering.attribution_scale(features)
    planes = codec.split_planes(features, residual, scale)
    for direction in rendering.DIRECTIONS:
        for view in rendering.views(4, True):
            ref = rendering.render_attribution(features, residual, scale=scale,
                                               direction=direction, view=view)
            got = codec.render_planes(planes, direction, view)
            np.testing.assert_allclose(got, ref, atol=1e-12)


def test_negative_scale_swaps_the_planes():
    features = -np.abs(np.random.default_rng(7).normal(size=(3, 4, 4, 2)))
    scale = rendering.attribution_scale(features)
    assert scale < 0
    planes = codec.split_planes(features, np.zeros((3, 4, 4)), scale)
    assert planes[:, :3].min() >= 0 and planes[:, 3:].max() == 0


# --- rANS --------------------------------------------------------------------------------


def test_rans_round_trip_many_streams():
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 50, (3, codec.NUM_LEVELS)) * (rng.random((3, codec.NUM_LEVELS)) < 0.02)
    counts[:, 0] += 1000
    freq = np.stack([codec.normalise_counts(c) for c in counts])
    assert np.all(freq.sum(axis=1) == codec.PROB_SCALE)
    streams, n = 7, 500
    tables = rng.integers(0, 3, (streams, n))
    symbols = np.zeros((streams, n), np.int64)
    for s in range(streams):
        for t in range(n):
            p = freq[tables[s, t]] / codec.PROB_SCALE
            symbols[s, t] = rng.choice(codec.NUM_LEVELS, p=p)
    encoded = codec.rans_encode(symbols, tables, freq)
    decoded = codec.rans_decode(encoded, tables, freq, n)
    assert np.array_equal(decoded, symbols)
    # the compiled coder writes the NumPy loop's bytes
    assert encoded == codec.rans_encode(symbols, tables, freq, compiled=False)
    ideal = -np.log2(freq[tables, symbols] / codec.PROB_SCALE).sum() / 8
    assert sum(len(e) for e in encoded) <= ideal + 4 * streams + 8


def test_frequency_tables_round_trip_in_varints():
    rng = np.random.default_rng(12)
    counts = rng.integers(0, 3000, (36, codec.NUM_LEVELS))
    counts *= rng.random(counts.shape) < 0.05
    counts[0] = 0  # an unused context
    counts[1, [0, codec.NUM_LEVELS - 1]] = [5, 5]  # the first and the last code
    freq = np.stack([codec.normalise_counts(c) for c in counts])
    packed = codec.pack_tables(freq)
    got, used = codec.unpack_tables(memoryview(packed), 36)
    assert used == len(packed) and np.array_equal(got, freq)
    # about two bytes per entry (u16 code + u16 frequency before)
    assert len(packed) < 2.6 * (freq > 0).sum() + 2 * len(freq)
    with pytest.raises(codec.CodecError, match="truncated"):
        codec.unpack_tables(memoryview(packed[:-3]), 36)
    with pytest.raises(codec.CodecError, match="longer than two bytes"):
        codec.unpack_tables(memoryview(bytes([0x80, 0x80, 0x01])), 1)
    with pytest.raises(codec.CodecError, match="out of range"):
        codec.unpack_tables(memoryview(bytes([2, 0x80 | 0x7F, 0x08, 1, 1, 1])), 1)


def test_contexts_count_causal_neighbours_and_earlier_planes():
    codes = np.zeros((1, 4, 5, 6), np.uint16)  # K = 1: planes P0, Pres, N0, Nres
    codes[0, 0, 1, 1] = 7  # an escaped code
    codes[0, 0, 2, 3] = 1
    codes[0, 2, 2, 2] = 2
    local, count, earlier = codec.context_parts(codes)
    # (2, 2) of plane 0: left 0, up 0; neighbours within two rows above and two
    # columns either side: (1, 1) and (2, 3)? (2, 3) is to the right: not causal
    assert count[0, 0, 2, 2] == 1 and count[0, 0, 3, 3] == 2 and count[0, 0, 0, 0] == 0
    assert local[0, 0, 2, 2] == 0 and local[0, 0, 2, 4] == 3 and local[0, 0, 3, 3] == 1
    assert local[0, 0, 1, 2] == 3 * 2  # left neighbour 7, capped at 2
    # plane 2 (N0) at (2, 3): the matching P code is non-zero, left is 2
    assert local[0, 2, 2, 3] == 9 + 3 * 2
    # earlier planes with a non-zero code at the same position
    assert earlier[0, 0, 2, 3] == 0 and earlier[0, 1, 2, 3] == 1 and earlier[0, 3, 2, 3] == 1
    assert earlier[0, 3, 2, 2] == 1 and earlier[0, 2, 2, 2] == 0
    assert codec.plane_classes(4).tolist() == [0, 1, 2, 3]
    assert codec.plane_classes(8).tolist() == [0, 0, 0, 1, 2, 2, 2, 3]
    model = codec.ContextModel(False, 3, 2)
    ctx = codec.contexts(codes, model)
    # ((class * 18 + local) * density buckets + count) * activity buckets + earlier:
    # N0 at (2, 3): class 2, local 15, one neighbour ((2, 2)), one earlier plane (P0)
    assert ctx[0, 2, 2, 3] == ((2 * 18 + 15) * 3 + 1) * 2 + 1
    # P0 at (3, 3): class 0, up 1, two neighbours ((2, 3), (1, 1)? no: (1, 1) is two
    # columns left and two rows up, within the window), none earlier
    assert ctx[0, 0, 3, 3] == ((0 * 18 + 1) * 3 + 2) * 2 + 0
    # counts beyond the last bucket share it
    assert codec.contexts(codes, codec.ContextModel(True, 2, 1))[0, 0, 3, 3] == 1 * 2 + 1
    assert ctx.max() < model.tables(4)


def test_joint_counts_give_every_models_counts():
    """One count of (plane, contexts, first symbol) summed into each model's tables: the
    same counts as counting each model's `contexts` directly."""
    rng = np.random.default_rng(8)
    codes = ((rng.random((5, 10, 9, 11)) < 0.4) * rng.integers(0, 9, (5, 10, 9, 11))
             ).astype(np.uint16)
    joint = codec.joint_counts(codes)
    for model in codec.CONTEXT_MODELS:
        direct = np.bincount((codec.contexts(codes, model) * (codec.ESCAPE + 1)
                              + np.minimum(codes, codec.ESCAPE)).ravel(),
                             minlength=model.tables(10) * (codec.ESCAPE + 1))
        assert np.array_equal(codec.model_counts(joint, model), direct.reshape(-1, 4))
        assert direct.sum() == codes.size and (direct > 0).sum() > 20


@pytest.mark.parametrize("model", codec.CONTEXT_MODELS)
def test_every_context_model_round_trips_escaped_codes(model):
    rng = np.random.default_rng(3)
    codes = (rng.random((4, 6, 7, 9)) < 0.3) * rng.integers(0, 40, (4, 6, 7, 9))
    codes[1, 2, 3, 4] = codec.NUM_LEVELS - 1  # the largest code
    codes[2] = 0  # a frame without escapes
    codes = codes.astype(np.uint16)
    freq = codec.frequency_tables(codes, model)
    first, ctx, excess, tables = codec._symbols(codes, model)
    assert np.array_equal(first.reshape(codes.shape), np.minimum(codes, codec.ESCAPE))
    assert (excess.shape[1] == (codes >= codec.ESCAPE).reshape(4, -1).sum(axis=1).max())
    streams = codec.rans_encode(np.concatenate([first, excess], axis=1),
                                np.concatenate([ctx, tables], axis=1),
                                np.concatenate([freq, codec.certain_table()]))
    header = codec.AttributionHeader(codec.CODEC_VERSION, 4, 7, 9, 2, 1.0, [0.01], [50],
                                     [0.006], [64], 0.0, 99.0, model.as_list(), 1.0)
    data = codec._assemble(header, codec.pack_tables(freq), np.zeros((4, 3), "<f2"),
                           np.zeros(4, np.uint8), streams)
    parsed = codec.decode(data)
    assert parsed.model == model
    assert np.array_equal(parsed.codes(), codes)
    assert np.array_equal(parsed.codes(np.array([1, 3])), codes[[1, 3]])


def test_the_encoder_picks_the_smallest_context_model():
    features, residual = synthetic_attribution(frames=6, h=16, w=16, k=3, seed=5)
    sizes = {m: len(codec.encode(features, residual, model=m, table=codec.LevelTable(0.01)))
             for m in codec.CONTEXT_MODELS}
    chosen = codec.decode(codec.encode(features, residual, table=codec.LevelTable(0.01)))
    assert chosen.model in sizes
    # the choice is made from estimated sizes: within 2% of the smallest real file
    assert sizes[chosen.model] <= min(sizes.values()) * 1.02
    assert len(set(sizes.values())) > 1


def test_stream_lengths_are_leb128():
    for value in (0, 1, 127, 128, 300, 16383, 16384, 2**21 - 1, 2**21, 2**28 - 1):
        raw = codec._leb128(value)
        assert len(raw) == max(1, -(-value.bit_length() // 7))
        got, pos = codec._read_leb128(memoryview(raw + b"\0"), 0, 1)
        assert got.tolist() == [value] and pos == len(raw)
    with pytest.raises(codec.CodecError, match="stream lengths"):
        codec._read_leb128(memoryview(bytes([0x80, 0x80])), 0, 1)
    with pytest.raises(codec.CodecError, match="stream lengths"):
        codec._read_leb128(memoryview(bytes([0xFF] * 5)), 0, 1)


def test_normalise_counts_keeps_every_seen_symbol():
    counts = np.zeros(codec.NUM_LEVELS, np.int64)
    counts[[0, 5, 900]] = [10**9, 1, 1]
    freq = codec.normalise_counts(counts)
    assert freq.sum() == codec.PROB_SCALE and freq[5] >= 1 and freq[900] >= 1
    assert not codec.normalise_counts(np.zeros(codec.NUM_LEVELS, np.int64)).any()


# --- the attribution file ------------------------------------------------------------------


def test_attribution_file_round_trip_and_fidelity():
    features, residual = synthetic_attribution()
    data = codec.encode(features, residual)
    parsed = codec.decode(data)
    head = parsed.header
    assert (head.version, head.frames, head.height, head.width, head.features) == \
        (codec.CODEC_VERSION, 5, 10, 12, 3)
    assert head.scale == pytest.approx(rendering.attribution_scale(features))
    # totals in float16 multiples of the file's unit: 3 significant digits
    exact = np.concatenate([features.sum(axis=(1, 2)), residual.sum(axis=(1, 2))[:, None]], 1)
    np.testing.assert_allclose(parsed.totals, exact, rtol=1e-3, atol=np.abs(exact).max() * 1e-6)
    assert np.abs(parsed.totals).max() == pytest.approx(np.abs(exact).max(), rel=1e-3)
    assert set(parsed.frame_steps()) <= set(codec.FidelityTarget().steps)
    steps = parsed.plane_steps()
    ratio = codec.FidelityTarget().residual_ratio
    np.testing.assert_allclose(steps[:, [3, 7]], steps[:, [0, 4]] * ratio)
    expected = codec.quantise(features, residual, head.scale, steps)
    assert np.array_equal(parsed.codes(), expected)
    assert np.array_equal(parsed.codes(np.array([3])), expected[3:4])
    mae, psnr = codec.worst_errors(features, residual, head.scale, expected, steps)
    target = codec.FidelityTarget()
    # the header's errors are of the frames as the viewer draws them (8-bit straight
    # colour, then premultiplied), which differ a little from the reference's rounding
    assert head.worst_mae <= target.max_mae and head.worst_psnr >= target.min_psnr
    assert head.worst_mae == pytest.approx(mae, abs=0.3 / 255)
    assert mae <= target.max_mae + 0.3 / 255 and psnr >= target.min_psnr - 1
    np.testing.assert_allclose(parsed.planes_values(), codec.dequantise(expected, steps))


def test_a_given_scale_replaces_the_computed_one():
    features, residual = synthetic_attribution(frames=3, h=8, w=9, k=2, seed=8)
    m = rendering.attribution_scale(features)
    assert codec.encode(features, residual, scale=m) == codec.encode(features, residual)
    doubled = codec.decode(codec.encode(features, residual, scale=np.float32(2 * m)))
    assert doubled.header.scale == pytest.approx(2 * m)
    steps = doubled.plane_steps()
    assert np.array_equal(doubled.codes(),
                          codec.quantise(features, residual, 2 * m, steps))
    with pytest.raises(ValueError, match="scale"):
        codec.encode(features, residual, scale=0.0)


def test_every_frame_gets_the_coarsest_step_that_meets_the_target():
    # 20 frames: three searches from a trial step (frames 0, 8, 16), the others from
    # their nearest one's answer, some of which is wrong for them (quiet frames)
    features, residual = synthetic_attribution(frames=20, h=12, w=12, k=3, seed=9)
    features[[1, 2, 3, 9, 17]] *= 0.05  # quiet frames, relative to the scale
    target = codec.FidelityTarget()
    scale = rendering.attribution_scale(features)
    planes = codec.split_planes(features, residual, scale)
    steps, _, mae, psnr = codec.choose_steps(planes, target)
    ladder = sorted(target.steps, reverse=True)
    assert np.all(mae <= target.max_mae) and np.all(psnr >= target.min_psnr)
    for t in range(20):
        i = ladder.index(steps[t])
        if i > 0:  # the next coarser step fails for this frame
            coarser = np.array([ladder[i - 1]])
            coarser = codec.plane_steps(coarser, coarser * target.residual_ratio, 8)
            c = codec.joint_diffuse(planes[t:t + 1], coarser)
            m, p = codec.frame_errors(planes[t:t + 1], codec.dequantise(c, coarser))
            assert m[0] > target.max_mae or p[0] < target.min_psnr
    assert len(set(steps)) > 1


def test_all_zero_attribution_encodes_to_almost_nothing():
    features = np.zeros((8, 16, 16, 4), np.float32)
    data = codec.encode(features, np.zeros((8, 16, 16), np.float32))
    parsed = codec.decode(data)
    assert parsed.header.scale == 1.0 and not parsed.codes().any()
    assert len(data) < 1000


def test_empty_attribution_file():
    parsed = codec.decode(codec.encode(np.zeros((0, 4, 4, 2)), np.zeros((0, 4, 4))))
    assert parsed.header.frames == 0 and parsed.codes().shape == (0, 6, 4, 4)


def test_attribution_file_golden_bytes():
    """The layout is a contract with the viewer: a change needs a new CODEC_VERSION."""
    features, residual = synthetic_attribution(frames=3, h=6, w=5, k=2, seed=4)
    data = codec.encode(features, residual, table=codec.LevelTable(0.01))
    assert data[:4] == b"GATR"
    meta_len = int.from_bytes(data[4:8], "little")
    header = json.loads(data[8:8 + meta_len])
    assert list(header) == ["version", "frames", "height", "width", "features", "scale",
                            "steps", "linears", "residual_steps", "residual_linears",
                            "worst_mae", "worst_psnr", "context_model", "totals_unit"]
    assert header["version"] == 3 and header["steps"] == [0.01] and header["linears"] == [50]
    assert header["residual_steps"] == [0.006] and header["residual_linears"] == [64]
    assert header["context_model"] in [m.as_list() for m in codec.CONTEXT_MODELS]
    pos = 8 + meta_len
    body_len = int.from_bytes(data[pos:pos + 4], "little")
    pos += 4 + body_len
    totals = np.frombuffer(data[pos:pos + 2 * 3 * 3], "<f2").reshape(3, 3)  # (T, K + 1)
    np.testing.assert_allclose(totals * header["totals_unit"],
                               np.concatenate([features.sum(axis=(1, 2)),
                                               residual.sum(axis=(1, 2))[:, None]], 1),
                               rtol=1e-3)
    pos += 2 * 3 * 3 + 2  # padded to 4 bytes
    assert data[pos:pos + 4] == bytes([0, 0, 0, 0])  # step indices, padded to 4 bytes
    pos += 4
    parsed = codec.decode(data)
    lengths = [len(s) for s in parsed.streams]
    assert data[pos:pos + 3] == b"".join(codec._leb128(n) for n in lengths)  # < 128 each
    assert data[pos + 4:pos + 4 + lengths[0]] == parsed.streams[0]
    assert parsed.header.steps == [0.01] and parsed.step_index.tolist() == [0, 0, 0]
    # the residual planes (2 and 5 with K = 2) at 0.6 times the features' step
    steps = np.array([[0.01, 0.01, 0.006, 0.01, 0.01, 0.006]] * 3)
    np.testing.assert_array_equal(parsed.plane_steps(), steps)
    assert np.array_equal(parsed.codes(),
                          codec.quantise(features, residual, parsed.header.scale, steps))


def test_decode_rejects_damaged_files():
    features, residual = synthetic_attribution(frames=2)
    data = codec.encode(features, residual)
    with pytest.raises(codec.CodecError, match="magic"):
        codec.decode(b"XXXX" + data[4:])
    with pytest.raises(codec.CodecError, match="truncated"):
        codec.decode(data[:-3])
    newer = data.replace(b'"version":3', b'"version":9')
    with pytest.raises(codec.CodecError, match="version 9"):
        codec.decode(newer)
    # a context model the encoder never writes (it could declare millions of tables)
    model = json.dumps(codec.decode(data).header.context_model, separators=(",", ":"))
    other = data.replace(model.encode(), b"[1,9,9]".ljust(len(model)))
    with pytest.raises(codec.CodecError, match="context_model"):
        codec.decode(other)


# --- writer, reader, validator ------------------------------------------------------------


def test_written_bundle_validates(tmp_path):
    index = write_small_bundle(tmp_path / "b")
    assert index["format"] == bundles.FORMAT_NAME
    assert index["format_version"] == bundles.FORMAT_VERSION
    assert index["default_layer"] == "conv"
    layer = index["layers"][0]
    assert layer["views"] == ["prin", "all", "0", "1", "2", "res"]
    assert layer["colours"] == rendering.hex_colours(rendering.legend_colours(3))
    np.testing.assert_allclose(layer["hues"], rendering.feature_hues(3))
    checked = bundles.validate_bundle(tmp_path / "b", decode_frames=2)
    assert checked["files"] == index["files"]
    # feature views: .gfv files with the grid; extra observations only those referenced
    detail = bundles.decode_feature_views((tmp_path / "b" / layer["feature_views"][1]).read_bytes())
    assert detail["grids"][0]["shape"] == [4, 4] and detail["expand_mults"] == [1.0, 2.0]
    referenced = sorted({int(i) for k in range(3) for i in bundles.decode_feature_views(
        (tmp_path / "b" / layer["feature_views"][k]).read_bytes())["grids"][0]["indices"].ravel()})
    assert index["extra_observations"]["indices"] == referenced
    sizes = bundles.bundle_sizes(tmp_path / "b", viewer_bytes=100)
    assert sizes["total_bytes"] == sum(m["bytes"] for m in index["files"].values()) + \
        (tmp_path / "b" / "bundle.json").stat().st_size
    assert sizes["first_load_bytes"] < sizes["total_bytes"] + 100


def test_extra_atlases_made_beforehand_give_the_same_bundle(tmp_path, monkeypatch):
    """An interface encodes the extra observations' atlases in a unit of their own
    (`encode_extra_atlases`) and hands them to the writer: the bundle is the one the writer
    makes by itself, file for file; atlases of other observations are refused."""
    index = write_small_bundle(tmp_path / "a")
    shown = np.array(index["extra_observations"]["indices"])
    add = bundles.BundleWriter.add_extra_observations

    def beforehand(indices):
        return lambda self, observations: add(
            self, observations, bundles.encode_extra_atlases(observations, indices))

    monkeypatch.setattr(bundles.BundleWriter, "add_extra_observations", beforehand(shown))
    write_small_bundle(tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    assert any(str(f).startswith("observations/extra-") for f in files)
    for f in files:
        if (tmp_path / "a" / f).is_file():
            assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    monkeypatch.setattr(bundles.BundleWriter, "add_extra_observations", beforehand(shown[1:]))
    with pytest.raises(bundles.BundleError, match="other observations"):
        write_small_bundle(tmp_path / "c")


def test_trajectory_json_holds_the_arrays(tmp_path):
    write_small_bundle(tmp_path / "b", grid=False)
    data = bundles.read_json(tmp_path / "b" / "trajectories" / "T0.json.gz")
    assert data["length"] == 6 and len(data["logits"][0]) == 4
    assert set(data) == {"length", "actions", "rewards", "firsts", "dones", "logits", "values",
                         "advantages"}


def test_validation_names_the_broken_file(tmp_path):
    root = tmp_path / "b"
    index = write_small_bundle(root)
    name = index["layers"][0]["attribution"]["value"][1]
    (root / name).write_bytes((root / name).read_bytes()[:-1])
    with pytest.raises(bundles.BundleError, match=name):
        bundles.validate_bundle(root)
    (root / name).unlink()
    with pytest.raises(bundles.BundleError, match=f"{name}: missing"):
        bundles.validate_bundle(root)


def test_reader_refuses_other_versions_and_non_bundles(tmp_path):
    root = tmp_path / "b"
    write_small_bundle(root, grid=False)
    index = json.loads((root / "bundle.json").read_text())
    index["format_version"] = 99
    (root / "bundle.json").write_text(json.dumps(index))
    with pytest.raises(bundles.BundleError, match="version 99.*rebuild"):
        bundles.read_bundle(root)
    with pytest.raises(bundles.BundleError, match="bundle.json is missing"):
        bundles.read_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{}")
    with pytest.raises(bundles.BundleError, match="not a gallery"):
        bundles.read_bundle(tmp_path)


def test_writer_refuses_wrong_shapes_unknown_outputs_and_big_files(tmp_path, monkeypatch):
    writer = bundles.BundleWriter(tmp_path / "b", model={}, outputs=[bundles.value_output()],
                                  action_names=["A"])
    rng = np.random.default_rng(6)
    writer.add_trajectory(bundles.TrajectoryData(
        rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8), np.zeros(4), np.zeros(4),
        np.zeros(4), np.zeros(4), np.zeros((4, 1)), np.zeros(4), np.zeros(4)))
    writer.add_layer(bundles.LayerSpec("l", (2, 2, 4), "attribution", 2))
    with pytest.raises(bundles.BundleError, match="expected \\(4, 2, 2, 2\\)"):
        writer.add_attribution("l", 0, "value", np.zeros((4, 2, 2, 3)), np.zeros((4, 2, 2)))
    with pytest.raises(bundles.BundleError, match="not one of the bundle's outputs"):
        writer.add_attribution("l", 0, "action-0", np.zeros((4, 2, 2, 2)), np.zeros((4, 2, 2)))
    with pytest.raises(bundles.BundleError, match="not added"):
        writer.add_attribution("other", 0, "value", np.zeros((4, 2, 2, 2)), np.zeros((4, 2, 2)))
    with pytest.raises(bundles.BundleError, match="uint8"):
        bundles.TrajectoryData(np.zeros((4, 8, 8, 3)), *[np.zeros(4)] * 4, np.zeros((4, 1)),
                               np.zeros(4), np.zeros(4))
    monkeypatch.setattr(bundles, "MAX_FILE_BYTES", 10)
    with pytest.raises(bundles.BundleError, match="over the 10 byte limit"):
        writer.add_attribution("l", 0, "value", np.ones((4, 2, 2, 2)), np.zeros((4, 2, 2)))


def test_finish_refuses_missing_attribution(tmp_path):
    writer = bundles.BundleWriter(tmp_path / "b", model={}, outputs=[bundles.value_output()],
                                  action_names=["A"])
    for _ in range(2):
        writer.add_trajectory(bundles.TrajectoryData(
            np.zeros((3, 8, 8, 3), np.uint8), *[np.zeros(3)] * 4, np.zeros((3, 1)),
            np.zeros(3), np.zeros(3)))
    writer.add_layer(bundles.LayerSpec("l", (2, 2, 4), "attribution", 2))
    writer.add_attribution("l", 0, "value", np.ones((3, 2, 2, 2)), np.zeros((3, 2, 2)))
    with pytest.raises(bundles.BundleError, match="missing for trajectories \\[1\\]"):
        writer.finish({})


def test_display_frames_and_tiles():
    grey = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1)
    assert bundles.display_frames(grey).shape == (2, 3, 3, 3)
    stacked = np.zeros((1, 2, 2, 6), np.uint8)
    stacked[..., 3:] = 7
    assert (bundles.display_frames(stacked) == 7).all()
    frames = np.arange(5)[:, None, None, None] * np.ones((5, 2, 2, 1), np.uint8)
    atlas = bundles.tile(frames, 2)
    assert atlas.shape == (6, 4, 1) and atlas[2, 2, 0] == 3 and atlas[4, 2, 0] == 0


def test_hash_of_files_is_recorded(tmp_path):
    index = write_small_bundle(tmp_path / "b", grid=False)
    for name, meta in index["files"].items():
        data = (tmp_path / "b" / name).read_bytes()
        assert meta == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("layer", ["3a", "4a"])
def test_compiled_loops_give_the_numpy_results_on_real_frames(layer):
    """gallery.bundle.compiled (Numba) against the codec's NumPy loops: the same codes,
    drawings and errors on the demo agent's value attribution of real CoinRun frames,
    reduced by an NMF, at several steps, one per frame and one per plane; the same file
    from the compiled rANS coder."""
    from pathlib import Path

    from gallery.environments import EnvSpec
    from gallery.environments.rollouts import TrajectoryConfig, collect_trajectories
    from gallery.method.attribution import integrated_gradients
    from gallery.method.nmf import NMFSettings, fit_nmf
    from gallery.models.policy import load_policy

    policy = load_policy(Path(__file__).resolve().parents[1] / "gallery" / "demo" /
                         "coinrun-clear.jd")
    obs = collect_trajectories(policy, EnvSpec.from_args(policy.args),
                               TrajectoryConfig(1, 24), seed=3).observations[0]
    attr = integrated_gradients(policy, obs, layer, "value", 4)
    features, residual = fit_nmf(attr, NMFSettings(4, 0)).reduce_attribution(attr)
    planes = codec.split_planes(features, residual, rendering.attribution_scale(features))
    rng = np.random.default_rng(0)
    for steps in (np.full(len(planes), 0.004), np.full(len(planes), 0.03),
                  rng.choice([0.006, 0.012, 0.05], size=(len(planes), planes.shape[1]))):
        reference = codec.joint_diffuse(planes, steps, compiled=False)
        assert np.array_equal(codec.joint_diffuse(planes, steps, compiled=True), reference)
        assert reference.any()
        assert_compiled_views_equal_numpy(planes, codec.dequantise(reference, steps))
    # the whole file: the compiled rANS coder writes the NumPy coder's bytes
    files = {}
    for compiled in (False, True):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(codec, "COMPILED_RANS", compiled)
            files[compiled] = codec.encode(features, residual)
    assert files[True] == files[False]
    assert codec.decode(files[True]).codes().shape == planes.shape


def assert_compiled_views_equal_numpy(planes, trial):
    """gallery.bundle.compiled.views against `_premultiplied_views` in NumPy: the same
    reference drawing and the same errors of `trial`, both roundings, with and without
    the single-feature views."""
    for single in (True, False):
        drawn = {}
        for compiled in (False, True):
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(codec, "COMPILED_VIEWS", compiled)
                views = codec.reference_views(planes, single)
                drawn[compiled] = (views, *codec.frame_errors(None, trial, single, views=views),
                                   *codec.frame_errors(planes, trial, single, as_drawn=False))
        for a, b in zip(drawn[False], drawn[True], strict=True):
            assert np.array_equal(a, b)
        assert drawn[True][0].any() and (drawn[True][1] > 0).any()


def test_compiled_loops_on_random_planes():
    rng = np.random.default_rng(5)
    for k, h, w in ((1, 3, 5), (3, 7, 4), (8, 6, 6)):
        planes = np.abs(rng.standard_normal((5, 2 * (k + 1), h, w))) * rng.choice(
            [0.0, 0.01, 0.3], size=(5, 2 * (k + 1), h, w))
        steps = rng.choice([0.002, 0.01, 0.04], size=5)
        codes = codec.joint_diffuse(planes, steps, compiled=False)
        assert np.array_equal(codec.joint_diffuse(planes, steps, compiled=True), codes)
        assert_compiled_views_equal_numpy(planes, codec.dequantise(codes, steps))
