"""Compact encoding of reduced attribution for the browser viewer (docs/bundle.md).

The reference tool stored one PNG strip per (layer, trajectory, output, direction, view):
gigabytes per model. The viewer instead receives, per (layer, trajectory, output), the
reduced attribution itself and draws every direction and view in the browser
(method.md section 6). This module turns the float arrays into a few bits per position
and back, with an error the drawing keeps below 1/255 (see `FidelityTarget`).

Representation
--------------
Every direction of method.md 6 is linear in two non-negative parts of the scaled
attribution x = features / m: `pos` draws P = max(x, 0), `neg` draws N = max(-x, 0) and
`abs` draws P + N; the views and the smoothing after that are linear until the opacity
step. So a frame is stored as 2 (K + 1) non-negative *planes* of (h, w): P of each feature,
P of the residual, then N of each feature and N of the residual.

Quantisation
------------
Plane values are rounded to a table of levels (`LevelTable`): L uniform steps of `q`
(L = round(0.5 / q), between 8 and MAX_LINEAR), then geometric steps of ratio (1 + 1 / L),
1024 levels in all (so values up to about 10^6 q are represented). Rounding uses
error diffusion (Floyd-Steinberg weights, serpentine scan) inside each plane, so rounding
errors are pushed to high spatial frequencies -- which the smoothing kernel of method.md 6
attenuates -- and the sum over any region is kept, instead of small values being lost.

Entropy coding
--------------
Codes are coded with rANS (range asymmetric numeral systems: 32-bit state, byte-wise
renormalisation, 12-bit probabilities) against static frequency tables, one per
(plane, context); the context of a code is its left and upper neighbours in the plane
(each 0, 1 or 2+) and, in N planes, whether the P plane has a code at that position. One
stream per frame, so the viewer decodes any frame on its own. Encoding runs all frames of
a file in lock step (NumPy over frames); the viewer's decoder is viewer/src/lib/codec.ts.

File layout (little-endian): b"GATR", u32 n, n bytes of JSON header (`AttributionHeader`,
space-padded to a multiple of 4), u32 m, m bytes of frequency tables (`pack_tables`,
zero-padded), float32 totals (T, K + 1), u32 stream offsets (T + 1), the streams.

Everything here is pure: arrays in, bytes out.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass

import numpy as np

from . import rendering
from .errors import GalleryError

MAGIC = b"GATR"
#: Version of the attribution file layout; the reader refuses others.
CODEC_VERSION = 1
PROB_BITS = 12
PROB_SCALE = 1 << PROB_BITS
RANS_LOW = 1 << 23
NUM_LEVELS = 1024
#: Uniform levels below the knee at most (the relative precision above it is 1/this).
MAX_LINEAR = 64
#: Contexts per plane: 3 (left) x 3 (up) x 2 (the matching P code is non-zero).
NUM_CONTEXTS = 18


#: Codes per frame a file may declare (planes x height x width): 84 x 84 positions with
#: 64 NMF features is about 0.9 million. The reader refuses more before allocating.
MAX_CODES_PER_FRAME = 1 << 20


class CodecError(GalleryError, ValueError):
    """Bytes that are not a valid attribution file of this version."""


# --- levels ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelTable:
    """NUM_LEVELS non-negative levels: 0, q, ..., L q, then geometric steps of 1 + 1/L."""

    step: float

    @property
    def linear(self) -> int:
        """L, the number of uniform steps."""
        return linear_steps(self.step)

    def values(self) -> np.ndarray:
        """(NUM_LEVELS,) float64 levels, increasing, levels[0] == 0."""
        return level_values(self.step, self.linear)


def linear_steps(step: float) -> int:
    """L = round(0.5 / step) clipped to [8, MAX_LINEAR]."""
    return int(min(MAX_LINEAR, max(8, round(0.5 / step))))


def level_values(step: float, linear: int) -> np.ndarray:
    """The level table; the viewer computes the same numbers (codec.ts `levelValues`)."""
    if not step > 0 or linear < 1:
        raise ValueError(f"step and linear must be positive, not {step}, {linear}")
    codes = np.arange(NUM_LEVELS, dtype=np.float64)
    top = linear * step
    geometric = top * (1.0 + 1.0 / linear) ** (codes - linear)
    return np.where(codes <= linear, codes * step, geometric)


def nearest_level(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest level for non-negative values (ties go down)."""
    upper = np.clip(np.searchsorted(levels, values), 1, len(levels) - 1)
    lower = upper - 1
    pick_upper = (levels[upper] - values) < (values - levels[lower])
    return np.where(pick_upper, upper, lower)


def error_diffuse(planes: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Codes (N, h, w) uint16 of non-negative values (N, h, w), rounded with error diffusion.

    Floyd-Steinberg weights (7, 3, 5, 1)/16 on a serpentine scan, vectorised over N; at
    the borders the weights of the neighbours that exist are rescaled to sum to 1, so no
    error leaves the plane before its last position (small layers, whose every position
    the smoothing kernel spreads over the whole image, need their sums kept).
    """
    n, h, w = planes.shape
    work = np.array(planes, dtype=np.float64)
    codes = np.zeros((n, h, w), dtype=np.uint16)
    for i in range(h):
        step = 1 if i % 2 == 0 else -1
        for j in (range(w) if step == 1 else range(w - 1, -1, -1)):
            value = work[:, i, j]
            code = np.where(value > 0, nearest_level(np.maximum(value, 0), levels), 0)
            codes[:, i, j] = code
            error = value - levels[code]
            targets = [(i, j + step, 7), (i + 1, j - step, 3), (i + 1, j, 5),
                       (i + 1, j + step, 1)]
            targets = [(a, b, wt) for a, b, wt in targets if a < h and 0 <= b < w]
            total = sum(wt for _, _, wt in targets)
            for a, b, wt in targets:
                work[:, a, b] += error * (wt / total)
    return codes


def split_planes(features: np.ndarray, residual: np.ndarray, scale: float) -> np.ndarray:
    """(T, 2(K+1), h, w) non-negative planes of x = features / scale and residual / scale."""
    x = np.concatenate([np.asarray(features, np.float64),
                        np.asarray(residual, np.float64)[..., None]], axis=-1) / scale
    x = x.transpose(0, 3, 1, 2)
    return np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=1)


def quantise(features: np.ndarray, residual: np.ndarray, scale: float,
             table: LevelTable) -> np.ndarray:
    """Codes (T, 2(K+1), h, w) uint16 of one (layer, trajectory, output)."""
    planes = split_planes(features, residual, scale)
    t, p, h, w = planes.shape
    return error_diffuse(planes.reshape(t * p, h, w), table.values()).reshape(t, p, h, w)


# --- drawing from planes (what the viewer does) -----------------------------------------


def directed(planes: np.ndarray, direction: rendering.Direction
             ) -> tuple[np.ndarray, np.ndarray]:
    """(features (T, h, w, K), residual (T, h, w)) of dequantised planes for a direction."""
    half = planes.shape[1] // 2
    pos, neg = planes[:, :half], planes[:, half:]
    x = {"pos": pos, "neg": neg, "abs": pos + neg}[direction]
    x = x.transpose(0, 2, 3, 1)
    return x[..., :-1], x[..., -1]


def render_planes(planes: np.ndarray, direction: rendering.Direction,
                  view: rendering.View) -> np.ndarray:
    """RGBA (T, h, w, 4) drawn from dequantised planes, as the viewer draws them."""
    features, residual = directed(planes, direction)
    return rendering.brightness_to_opacity(
        rendering.smooth(rendering.channel_view(features, residual, view)))


def premultiplied_uint8(rgba: np.ndarray) -> np.ndarray:
    """uint8 (..., 4) premultiplied RGBA: what a browser canvas stores for an RGBA image."""
    rgba = np.clip(np.asarray(rgba, np.float64), 0, 1)
    return rendering.to_uint8(np.concatenate([rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]],
                                             axis=-1))


def image_errors(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean absolute error in [0, 1] units, PSNR in dB) of two uint8 images."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mae = float(np.abs(diff).mean()) / 255
    mse = float((diff ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    return mae, psnr


# --- fidelity-driven choice of the step -------------------------------------------------


@dataclass(frozen=True)
class FidelityTarget:
    """What every checked image must satisfy (premultiplied RGBA, 8 bits)."""

    max_mae: float = 0.8 / 255
    """Mean absolute error at most this (the contract is 1/255; the margin absorbs
    frames that were not checked)."""
    min_psnr: float = 42.0
    """PSNR at least this many dB (the contract is 40)."""
    steps: tuple[float, ...] = tuple(round(0.024 * 0.87 ** i, 6) for i in range(22))
    """Candidate steps, coarsest first (0.024 down to about 0.0014, 13% apart); the
    first that meets the target is used."""
    check_cells: int = 32768
    """Positions checked per file (frames x h x w), at least 4 frames: half the busiest
    frames (largest total |attribution|), half evenly spaced (8 frames of 64 x 64)."""


def worst_errors(features: np.ndarray, residual: np.ndarray, scale: float, codes: np.ndarray,
                 table: LevelTable, single_features: bool = True) -> tuple[float, float]:
    """Worst (MAE, PSNR) over every direction and view of the given frames."""
    planes = table.values()[codes]
    worst_mae, worst_psnr = 0.0, float("inf")
    for direction in rendering.DIRECTIONS:
        for view in rendering.views(features.shape[-1], single_features):
            ref = rendering.render_attribution(features, residual, scale=scale,
                                               direction=direction, view=view)
            got = render_planes(planes, direction, view)
            for a, b in zip(premultiplied_uint8(ref), premultiplied_uint8(got), strict=True):
                mae, psnr = image_errors(a, b)
                worst_mae, worst_psnr = max(worst_mae, mae), min(worst_psnr, psnr)
    return worst_mae, worst_psnr


def check_frames(features: np.ndarray, residual: np.ndarray, cells: int) -> np.ndarray:
    """Frames to check, sorted: about `cells` positions' worth, at least 4 (or all).

    Half are the busiest frames (largest total |attribution|), half evenly spaced.
    """
    t, h, w = residual.shape
    count = min(t, max(4, cells // (h * w)))
    activity = np.abs(features).sum(axis=(1, 2, 3)) + np.abs(residual).sum(axis=(1, 2))
    busiest = np.argsort(-activity, kind="stable")[:(count + 1) // 2]
    spaced = np.linspace(0, t - 1, count).round().astype(int)
    chosen = list(dict.fromkeys([*busiest.tolist(), *spaced.tolist()]))
    return np.sort(np.array(chosen[:count]))


def choose_step(features: np.ndarray, residual: np.ndarray, scale: float,
                target: FidelityTarget = FidelityTarget()) -> tuple[LevelTable, float, float]:
    """The coarsest level table whose drawing of the busiest frames meets `target`.

    Returns (table, worst MAE, worst PSNR) on the checked frames.
    """
    frames = check_frames(features, residual, target.check_cells)
    f, r = features[frames], residual[frames]
    result = None
    for step in target.steps:
        table = LevelTable(step)
        mae, psnr = worst_errors(f, r, scale, quantise(f, r, scale, table), table)
        result = (table, mae, psnr)
        if mae <= target.max_mae and psnr >= target.min_psnr:
            break
    assert result is not None
    return result


# --- contexts and frequency tables ------------------------------------------------------


def contexts(codes: np.ndarray) -> np.ndarray:
    """Context (T, P, h, w) uint8 of every code: 3 min(left, 2) + min(up, 2) + 9 pair.

    `pair` is 1 in the second half of the planes (N) where the matching P code is
    non-zero. Neighbours outside the plane count as 0.
    """
    capped = np.minimum(codes, 2)
    left = np.zeros_like(capped)
    left[..., 1:] = capped[..., :-1]
    up = np.zeros_like(capped)
    up[..., 1:, :] = capped[..., :-1, :]
    half = codes.shape[1] // 2
    pair = np.zeros_like(capped)
    pair[:, half:] = codes[:, :half] != 0
    return (3 * left + up + 9 * pair).astype(np.uint8)


def frequency_tables(codes: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """(P, NUM_CONTEXTS, 256) int64 frequencies summing to PROB_SCALE per used context."""
    planes = codes.shape[1]
    table_index = (np.arange(planes)[None, :, None, None] * NUM_CONTEXTS + ctx).astype(np.int64)
    counts = np.bincount((table_index * NUM_LEVELS + codes).ravel(),
                         minlength=planes * NUM_CONTEXTS * NUM_LEVELS)
    counts = counts.reshape(planes * NUM_CONTEXTS, NUM_LEVELS)
    return np.stack([normalise_counts(c) for c in counts]).reshape(
        planes, NUM_CONTEXTS, NUM_LEVELS)


def normalise_counts(counts: np.ndarray) -> np.ndarray:
    """Frequencies summing to PROB_SCALE, every seen symbol >= 1 (zeros if none seen)."""
    total = counts.sum()
    if total == 0:
        return np.zeros_like(counts)
    seen = counts > 0
    if seen.sum() > PROB_SCALE:
        raise CodecError("too many distinct codes for the probability precision")
    freq = np.where(seen, np.maximum(1, np.floor(counts * PROB_SCALE / total)), 0).astype(np.int64)
    # Hand the rounding difference to (or take it from) the most frequent symbols.
    diff = PROB_SCALE - freq.sum()
    order = np.argsort(-counts, kind="stable")
    i = 0
    while diff != 0:
        s = order[i % int(seen.sum())]
        if diff > 0:
            freq[s] += 1
            diff -= 1
        elif freq[s] > 1:
            freq[s] -= 1
            diff += 1
        i += 1
    return freq


def pack_tables(freq: np.ndarray) -> bytes:
    """Sparse serialisation: per (plane, context) u16 n, then n x (u16 symbol, u16 freq)."""
    out = bytearray()
    for row in freq.reshape(-1, NUM_LEVELS):
        symbols = np.flatnonzero(row)
        out += struct.pack("<H", len(symbols))
        for s in symbols:
            out += struct.pack("<HH", int(s), int(row[s]))
    return bytes(out)


def unpack_tables(data: memoryview, planes: int) -> tuple[np.ndarray, int]:
    """Inverse of `pack_tables`; returns (freq (P, NUM_CONTEXTS, 256), bytes read)."""
    freq = np.zeros((planes * NUM_CONTEXTS, NUM_LEVELS), np.int64)
    pos = 0
    for row in freq:
        (n,) = struct.unpack_from("<H", data, pos)
        pos += 2
        for _ in range(n):
            s, f = struct.unpack_from("<HH", data, pos)
            if s >= NUM_LEVELS:
                raise CodecError(f"code {s} out of range")
            row[s] = f
            pos += 4
        if n and row.sum() != PROB_SCALE:
            raise CodecError("frequency table does not sum to the probability scale")
    return freq.reshape(planes, NUM_CONTEXTS, NUM_LEVELS), pos


# --- rANS -------------------------------------------------------------------------------


def rans_encode(symbols: np.ndarray, tables: np.ndarray, freq: np.ndarray) -> list[bytes]:
    """Encode S streams at once: symbols (S, n) uint16 with table ids (S, n).

    `freq` is (num_tables, 256). Returns one byte string per stream; each starts with the
    32-bit final state (big-endian) and is decoded front to back.
    """
    cum = np.concatenate([np.zeros((len(freq), 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]],
                         axis=1)
    streams, n = symbols.shape
    state = np.full(streams, RANS_LOW, dtype=np.int64)
    capacity = 2 * n + 8
    out = np.zeros((streams, capacity), dtype=np.uint8)
    length = np.zeros(streams, dtype=np.int64)
    rows = np.arange(streams)
    limit_scale = (RANS_LOW >> PROB_BITS) << 8
    for t in range(n - 1, -1, -1):
        f = freq[tables[:, t], symbols[:, t]]
        c = cum[tables[:, t], symbols[:, t]]
        limit = limit_scale * f
        for _ in range(2):  # x < 2^31 and limit >= 2^19: at most two bytes out
            emit = state >= limit
            if not emit.any():
                break
            out[rows[emit], length[emit]] = state[emit] & 0xFF
            length += emit
            state = np.where(emit, state >> 8, state)
        state = (state // f) * PROB_SCALE + state % f + c
    result = []
    for s in range(streams):
        tail = struct.pack("<I", int(state[s]))
        result.append((out[s, :length[s]].tobytes() + tail)[::-1])
    return result


def rans_decode(streams: list[bytes], tables: np.ndarray | None, freq: np.ndarray, n: int,
                context_of=None) -> np.ndarray:
    """Decode S streams of n symbols each; `tables` (S, n) gives each symbol's table, or
    `context_of(t, decoded)` computes the table ids (S,) of step t from what is decoded.

    The Python decoder is for validation and tests; the viewer has its own.
    """
    cum = np.concatenate([np.zeros((len(freq), 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]],
                         axis=1)
    # slot -> symbol lookup per table
    lookup = np.zeros((len(freq), PROB_SCALE), np.uint16)
    for k, row in enumerate(freq):
        if row.sum():
            lookup[k] = np.repeat(np.arange(NUM_LEVELS), row)
    count = len(streams)
    width = max(len(s) for s in streams) if streams else 0
    buf = np.zeros((count, width + 4), np.int64)
    lengths = np.array([len(s) for s in streams], np.int64)
    for i, s in enumerate(streams):
        buf[i, :len(s)] = np.frombuffer(s, np.uint8)
    state = (buf[:, 0] << 24) | (buf[:, 1] << 16) | (buf[:, 2] << 8) | buf[:, 3]
    pos = np.full(count, 4, np.int64)
    rows = np.arange(count)
    out = np.zeros((count, n), np.uint16)
    for t in range(n):
        table = tables[:, t] if tables is not None else context_of(t, out)
        slot = state & (PROB_SCALE - 1)
        sym = lookup[table, slot]
        out[:, t] = sym
        state = freq[table, sym] * (state >> PROB_BITS) + slot - cum[table, sym]
        for _ in range(2):
            low = state < RANS_LOW
            if not low.any():
                break
            state = np.where(low, (state << 8) | buf[rows, pos], state)
            pos += low
            if (pos > lengths).any():  # a valid stream is read exactly to its end
                raise CodecError("a frame's stream ends before its codes: the file is corrupt")
    return out


# --- the file -------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributionHeader:
    """What the JSON header of an attribution file says (docs/bundle.md)."""

    version: int
    frames: int
    height: int
    width: int
    features: int
    scale: float
    step: float
    linear: int
    worst_mae: float
    worst_psnr: float


def encode(features: np.ndarray, residual: np.ndarray, *, single_features: bool = True,
           target: FidelityTarget = FidelityTarget(), table: LevelTable | None = None
           ) -> bytes:
    """The attribution file of one (layer, trajectory, output).

    `features` (T, h, w, K) and `residual` (T, h, w) are the unscaled reduced attribution
    (`LayerNMF.reduce_attribution`); the scale m of method.md 6 is computed here. The
    level table is the coarsest meeting `target` unless `table` is given.
    """
    features = np.asarray(features, np.float32)
    residual = np.asarray(residual, np.float32)
    if features.ndim != 4 or residual.shape != features.shape[:3]:
        raise ValueError(f"features must be (T, h, w, K) and residual (T, h, w), got "
                         f"{features.shape} and {residual.shape}")
    scale = rendering.attribution_scale(features)
    if table is None:
        table, mae, psnr = choose_step(features, residual, scale, target)
    else:
        frames = check_frames(features, residual, target.check_cells)
        mae, psnr = worst_errors(features[frames], residual[frames], scale,
                                 quantise(features[frames], residual[frames], scale, table),
                                 table, single_features)
    codes = quantise(features, residual, scale, table)
    t, p, h, w = codes.shape
    ctx = contexts(codes)
    freq = frequency_tables(codes, ctx)
    table_ids = (np.arange(p)[None, :, None, None] * NUM_CONTEXTS + ctx).reshape(t, -1)
    streams = rans_encode(codes.reshape(t, -1), table_ids.astype(np.int64),
                          freq.reshape(-1, NUM_LEVELS))
    header = AttributionHeader(CODEC_VERSION, t, h, w, features.shape[-1], scale,
                               table.step, table.linear, mae,
                               psnr if np.isfinite(psnr) else 999.0)
    totals = np.concatenate([features.sum(axis=(1, 2)), residual.sum(axis=(1, 2))[:, None]],
                            axis=1)
    return _assemble(header, pack_tables(freq), totals, streams)


def _assemble(header: AttributionHeader, tables: bytes, totals: np.ndarray,
              streams: list[bytes]) -> bytes:
    meta = json.dumps(asdict(header), separators=(",", ":")).encode()
    meta += b" " * (-(len(MAGIC) + 4 + len(meta)) % 4)
    offsets = np.cumsum([0] + [len(s) for s in streams]).astype("<u4")
    body = tables + b"\0" * (-len(tables) % 4)
    return b"".join([MAGIC, struct.pack("<I", len(meta)), meta, struct.pack("<I", len(body)),
                     body, np.asarray(totals, "<f4").tobytes(), offsets.tobytes(), *streams])


@dataclass
class AttributionFile:
    """A parsed attribution file: header, frequency tables and one stream per frame."""

    header: AttributionHeader
    freq: np.ndarray
    totals: np.ndarray
    """(T, K + 1) float32: the unscaled features and residual summed over positions."""
    streams: list[bytes]

    @property
    def planes(self) -> int:
        return 2 * (self.header.features + 1)

    def codes(self, frames: np.ndarray | None = None) -> np.ndarray:
        """Decoded codes (F, P, h, w) uint16 of the given frames (all by default)."""
        h = self.header
        frames = np.arange(h.frames) if frames is None else np.asarray(frames)
        p, size = self.planes, h.height * h.width
        n = p * size
        plane_of = np.repeat(np.arange(p), size)
        half = p // 2

        def context_of(t: int, out: np.ndarray) -> np.ndarray:
            plane, cell = divmod(t, size)
            i, j = divmod(cell, h.width)
            left = np.minimum(out[:, t - 1], 2) if j > 0 else 0
            up = np.minimum(out[:, t - h.width], 2) if i > 0 else 0
            pair = (out[:, t - half * size] != 0) if plane >= half else 0
            return plane_of[t] * NUM_CONTEXTS + 3 * left + up + 9 * pair + np.zeros(
                len(out), np.int64)

        codes = rans_decode([self.streams[f] for f in frames], None,
                            self.freq.reshape(-1, NUM_LEVELS), n, context_of)
        return codes.reshape(len(frames), p, h.height, h.width)

    def planes_values(self, frames: np.ndarray | None = None) -> np.ndarray:
        """Dequantised planes (F, P, h, w) float64."""
        return level_values(self.header.step, self.header.linear)[self.codes(frames)]


def _check_header(header: AttributionHeader, size: int) -> None:
    """Types and sizes of a header, bounded by the file's size before anything is
    allocated from them."""
    for name in ("version", "frames", "height", "width", "features", "linear"):
        value = getattr(header, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CodecError(f"bad header: {name} is {value!r:.40}, not an integer")
    for name in ("scale", "step", "worst_mae", "worst_psnr"):
        value = getattr(header, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CodecError(f"bad header: {name} is {value!r:.40}, not a number")
    if header.version != CODEC_VERSION:
        raise CodecError(f"attribution file version {header.version}; this gallery reads "
                         f"version {CODEC_VERSION}: rebuild the interface")
    if min(header.frames, header.features) < 0 or min(header.height, header.width) < 1:
        raise CodecError("bad header: negative or empty sizes")
    if not (math.isfinite(header.step) and header.step > 0 and header.linear >= 1):
        raise CodecError("bad header: the level table's step must be positive")
    planes = 2 * (header.features + 1)
    # every table takes 2 bytes, every frame 4 bytes of offset and 4 (K + 1) of totals
    if planes * NUM_CONTEXTS * 2 > size or header.frames * 4 * (header.features + 2) > size:
        raise CodecError("bad header: it declares more tables or frames than the file holds")
    if planes * header.height * header.width > MAX_CODES_PER_FRAME:
        raise CodecError(f"bad header: {planes} x {header.height} x {header.width} codes per "
                         f"frame, more than the limit of {MAX_CODES_PER_FRAME}")


def decode(data: bytes) -> AttributionFile:
    """Parse an attribution file, checking its structure (not decoding the streams)."""
    try:
        return _decode(data)
    except struct.error:
        raise CodecError("the file ends inside its header or tables (truncated file?)") \
            from None


def _decode(data: bytes) -> AttributionFile:
    view = memoryview(data)
    if bytes(view[:4]) != MAGIC:
        raise CodecError("not a gallery attribution file (bad magic)")
    (meta_len,) = struct.unpack_from("<I", view, 4)
    try:
        meta = json.loads(bytes(view[8:8 + meta_len]))
        header = AttributionHeader(**meta)
    except (ValueError, TypeError, RecursionError) as err:
        raise CodecError(f"bad header: {err}") from None
    _check_header(header, len(data))
    pos = 8 + meta_len
    (body_len,) = struct.unpack_from("<I", view, pos)
    pos += 4
    freq, _ = unpack_tables(view[pos:pos + body_len], 2 * (header.features + 1))
    pos += body_len
    count = header.frames * (header.features + 1)
    if pos + 4 * count + 4 * (header.frames + 1) > len(data):
        raise CodecError("the file ends inside its totals or stream offsets (truncated file?)")
    totals = np.frombuffer(view[pos:pos + 4 * count], "<f4").reshape(
        header.frames, header.features + 1).copy()
    pos += 4 * count
    offsets = np.frombuffer(view[pos:pos + 4 * (header.frames + 1)], "<u4").astype(np.int64)
    pos += 4 * (header.frames + 1)
    if len(offsets) != header.frames + 1 or pos + offsets[-1] != len(data) or \
            offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise CodecError("stream offsets do not match the file length (truncated file?)")
    streams = [bytes(view[pos + offsets[i]:pos + offsets[i + 1]]) for i in range(header.frames)]
    return AttributionFile(header, freq, totals, streams)
