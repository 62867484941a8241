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
1024 levels in all (so values up to about 10^6 q are represented). Every frame has its
own step, the coarsest of a ladder whose drawing of that frame meets `FidelityTarget` in
every direction and view (checked on every frame, see `choose_steps`).

Rounding is error diffusion (Floyd-Steinberg weights, serpentine scan) inside each plane,
so rounding errors are pushed to high spatial frequencies -- which the smoothing kernel of
method.md 6 attenuates -- and the sum over any region is kept, instead of small values
being lost. The rounding is *joint* across the planes of a position (`joint_diffuse`):
each plane's value may go to its nearer or its other neighbouring level, chosen so that
the colour error the views sum (prin, all, the single features, each direction) is small;
views that add many planes (all, abs) then no longer add up the planes' independent
rounding errors. Each plane's chosen error is still diffused within that plane.

Entropy coding
--------------
Codes are coded with rANS (range asymmetric numeral systems: 32-bit state, byte-wise
renormalisation, 12-bit probabilities) against static frequency tables, one per
(plane, context); the context of a code is its left and upper neighbours in the plane
(each 0, 1 or 2+) and, in N planes, whether the P plane has a code at that position. One
stream per frame, so the viewer decodes any frame on its own. Encoding runs all frames of
a file in lock step (NumPy over frames); the viewer's decoder is viewer/src/lib/codec.ts.

File layout (little-endian): b"GATR", u32 n, n bytes of JSON header (`AttributionHeader`,
space-padded to a multiple of 4), u32 m, m bytes of frequency tables (`pack_tables`:
varints, zero-padded), float32 totals (T, K + 1), u8 step index per frame (T, zero-padded to a
multiple of 4), u32 stream offsets (T + 1), the streams.

Everything here is pure: arrays in, bytes out.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft

from gallery.errors import GalleryError
from gallery.method import rendering

MAGIC = b"GATR"
#: Version of the attribution file layout; the reader refuses others.
CODEC_VERSION = 3
PROB_BITS = 12
PROB_SCALE = 1 << PROB_BITS
RANS_LOW = 1 << 23
NUM_LEVELS = 1024
#: Whether the error diffusion (`joint_diffuse`) and the drawing that checks each frame's
#: step (`frame_errors`, `reference_views`) run compiled (Numba, gallery.bundle.compiled);
#: the same files either way, the encoder several times faster (benchmarks/bench_encoder.py).
COMPILED_DIFFUSION = True
COMPILED_VIEWS = True
#: Whether the rANS coder (`rans_encode`) runs compiled: the same bytes, about 10x faster.
COMPILED_RANS = True
#: Uniform levels below the knee at most (the relative precision above it is 1/this).
MAX_LINEAR = 64
#: Distinct steps one file may use (a frame's step index is one byte).
MAX_STEPS = 256
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


def split_planes(features: np.ndarray, residual: np.ndarray, scale: float) -> np.ndarray:
    """(T, 2(K+1), h, w) non-negative planes of x = features / scale and residual / scale."""
    x = np.concatenate([np.asarray(features, np.float64),
                        np.asarray(residual, np.float64)[..., None]], axis=-1) / scale
    x = x.transpose(0, 3, 1, 2)
    return np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=1)


def level_tables(steps: list[float] | np.ndarray) -> np.ndarray:
    """(S, NUM_LEVELS) level tables of the given steps (their L from `linear_steps`)."""
    return np.stack([level_values(float(q), linear_steps(float(q))) for q in steps]) \
        if len(steps) else np.zeros((0, NUM_LEVELS))


def nearest_codes(values: np.ndarray, steps: np.ndarray, linears: np.ndarray,
                  tables: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Nearest level of each value, each row with its own level table.

    `values` (N, ...) >= 0; `steps`, `linears` (N, 1, ...) broadcastable; `tables` (S,
    NUM_LEVELS) and `rows` (N, 1, ...) the table index of each row (for the exact values).
    """
    v = np.maximum(values, 0.0)
    top = linears * steps
    linear = np.minimum(np.floor(v / steps + 0.5), linears)
    ratio = np.log1p(1.0 / linears)
    geometric = linears + np.log(np.maximum(v, top) / top) / ratio
    low = np.clip(np.floor(geometric), linears, NUM_LEVELS - 1).astype(np.int64)
    high = np.minimum(low + 1, NUM_LEVELS - 1)
    pick = (tables[rows, high] - v) < (v - tables[rows, low])
    return np.where(v <= top, linear.astype(np.int64), np.where(pick, high, low))


def joint_weights(num_features: int, single: float = 1.0) -> np.ndarray:
    """(P, P) quadratic form of the rounding errors e of one position's planes.

    e^T W e sums the squared colour error of the views that add planes (prin and all, in
    each direction: P planes, N planes, both) plus `single` times that of every single
    plane view (each feature and the residual, in each direction).
    """
    k1 = num_features + 1
    colours = np.concatenate([rendering.feature_hues(num_features), np.ones((1, 3))])
    planes = 2 * k1
    weights = np.zeros((planes, planes))

    def add(members: list[int], factor: float = 1.0) -> None:
        v = np.zeros((planes, 3))
        for p in members:
            v[p] = colours[p % k1]
        weights[...] += factor * (v @ v.T)

    pos_f, neg_f = list(range(num_features)), [k1 + k for k in range(num_features)]
    pos_a, neg_a = list(range(k1)), list(range(k1, planes))
    for members in (pos_f, neg_f, pos_f + neg_f, pos_a, neg_a, pos_a + neg_a):
        add(members)
    for c in range(k1):
        for members in ([c], [k1 + c], [c, k1 + c]):
            add(members, single)
    return weights


def joint_diffuse(planes: np.ndarray, steps: np.ndarray, weights: np.ndarray | None = None,
                  compiled: bool | None = None) -> np.ndarray:
    """Codes (T, P, h, w) uint16 of non-negative planes (T, P, h, w); frame t uses the
    level table of steps[t] (or plane p of frame t that of steps[t, p]).

    Serpentine Floyd-Steinberg error diffusion within each plane (weights (7, 3, 5, 1)/16,
    renormalised at the borders so that no error leaves a plane before its last position),
    with a joint rounding at each position: every plane starts at its nearest level, then
    (two passes over the planes) moves to its other neighbouring level where that lowers
    e^T W e, W the `joint_weights`. The chosen errors are diffused as usual.

    `compiled` (default: COMPILED_DIFFUSION): the same loops compiled with Numba
    (gallery.bundle.compiled); False runs them in NumPy, one position at a time over all
    frames (the reference the compiled version is checked against).
    """
    planes = np.asarray(planes, np.float64)
    t, p, h, w = planes.shape
    q = np.broadcast_to(np.asarray(steps, np.float64).reshape(t, -1), (t, p))
    distinct, rows = np.unique(q, return_inverse=True)
    tables = level_tables(distinct)
    rows = rows.reshape(t, p)
    linears = np.array([linear_steps(float(x)) for x in distinct], np.float64)[rows]
    weights = joint_weights((p - 2) // 2) if weights is None else weights
    if COMPILED_DIFFUSION if compiled is None else compiled:
        from gallery.bundle.compiled import diffuse

        return diffuse(np.ascontiguousarray(planes), tables, np.ascontiguousarray(rows, np.int64),
                       np.ascontiguousarray(q), np.ascontiguousarray(linears),
                       np.ascontiguousarray(weights, np.float64))
    work = planes.copy()
    diag = np.diag(weights)
    codes = np.zeros((t, p, h, w), np.uint16)
    for i in range(h):
        step = 1 if i % 2 == 0 else -1
        for j in (range(w) if step == 1 else range(w - 1, -1, -1)):
            value = work[:, :, i, j]
            near = np.where(value > 0, nearest_codes(value, q, linears, tables, rows), 0)
            near_value = tables[rows, near]
            other = np.where(value > near_value, np.minimum(near + 1, NUM_LEVELS - 1),
                             np.maximum(near - 1, 0))
            other = np.where(value > 0, other, near)
            e_near = value - near_value
            e_other = value - tables[rows, other]
            at_near = np.ones((t, p), bool)
            error = e_near.copy()
            grad = error @ weights
            for _ in range(2):
                for k in range(p):
                    alt = np.where(at_near[:, k], e_other[:, k], e_near[:, k])
                    d = alt - error[:, k]
                    better = d * d * diag[k] + 2 * d * grad[:, k] < 0
                    if better.any():
                        d = np.where(better, d, 0.0)
                        error[:, k] += d
                        at_near[:, k] ^= better
                        grad += d[:, None] * weights[k][None, :]
            codes[:, :, i, j] = np.where(at_near, near, other)
            targets = [(i, j + step, 7), (i + 1, j - step, 3), (i + 1, j, 5),
                       (i + 1, j + step, 1)]
            targets = [(a, b, wt) for a, b, wt in targets if a < h and 0 <= b < w]
            total = sum(wt for _, _, wt in targets)
            for a, b, wt in targets:
                work[:, :, a, b] += error * (wt / total)
    return codes


def quantise(features: np.ndarray, residual: np.ndarray, scale: float,
             steps: LevelTable | np.ndarray | float) -> np.ndarray:
    """Codes (T, 2(K+1), h, w) uint16 of one (layer, trajectory, output); `steps` is one
    level table for all planes, a step per frame (T,) or a step per plane (T, P)."""
    planes = split_planes(features, residual, scale)
    return joint_diffuse(planes, _frame_steps(steps, planes.shape[0]))


def _frame_steps(steps: LevelTable | np.ndarray | float, frames: int) -> np.ndarray:
    """(T,) or (T, P) steps from one table, a step per frame or a step per plane."""
    if isinstance(steps, LevelTable):
        steps = steps.step
    steps = np.asarray(steps, np.float64)
    return steps.copy() if steps.ndim == 2 else np.broadcast_to(steps, (frames,)).copy()


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


# --- fidelity-driven choice of the steps ------------------------------------------------


@dataclass(frozen=True)
class FidelityTarget:
    """What the drawing of every frame must satisfy, in every direction and view
    (premultiplied RGBA, 8 bits, against `gallery.method.rendering`)."""

    max_mae: float = 0.985 / 255
    """Mean absolute error at most this (the contract is 1/255; every frame is checked as
    the viewer draws it, 8-bit rounding included, so the margin only covers
    floating-point differences: the browser measured 0.969/255 where this check allowed
    0.97)."""
    min_psnr: float = 40.2
    """PSNR at least this many dB (the contract is 40)."""
    steps: tuple[float, ...] = tuple(round(0.06 * 0.965 ** i, 6) for i in range(112))
    """Candidate steps, coarsest first (0.06 down to about 0.0011, 3.5% apart); each
    frame gets the coarsest that meets the target (or the finest)."""
    residual_ratio: float = 0.6
    """The residual planes' step is this times the features' step. The residual view
    (one grey plane) is the binding view once the joint rounding has lowered the error of
    the views that add planes; a finer step for it lets the whole frame take a coarser
    one (about 7% smaller files than 1.0)."""
    chunk: int = 64
    """Frames checked at once (bounds the memory of the check)."""
    diffuse_chunk: int = 512
    """Frames rounded at once. The error diffusion loops over positions in Python with
    NumPy over frames, so its cost is mostly per position, not per frame: rounding a
    whole file's frames in one pass is several times faster than in chunks of `chunk`."""


def worst_errors(features: np.ndarray, residual: np.ndarray, scale: float, codes: np.ndarray,
                 steps: LevelTable | np.ndarray | float, single_features: bool = True
                 ) -> tuple[float, float]:
    """Worst (MAE, PSNR) over every direction and view of the given frames, drawn with
    the reference renderer (`gallery.method.rendering`): slow, for tests."""
    planes = dequantise(codes, _frame_steps(steps, len(codes)))
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


def dequantise(codes: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Plane values (T, P, h, w) float64 of codes (T, P, h, w), frame t at steps[t] (or
    plane p of frame t at steps[t, p])."""
    t, p = codes.shape[:2]
    q = np.broadcast_to(np.asarray(steps, np.float64).reshape(t, -1), (t, p))
    distinct, rows = np.unique(q, return_inverse=True)
    tables = level_tables(distinct)
    return tables[rows.reshape(t, p, 1, 1), codes]


def smooth_planes(planes: np.ndarray) -> np.ndarray:
    """Every plane (..., h, w) convolved with the disk kernel ("same", zeros outside), by
    FFT: equal to `rendering.smooth` up to floating-point rounding (smoothing is linear,
    so the views can be mixed after it)."""
    planes = np.asarray(planes, np.float64)
    h, w = planes.shape[-2:]
    kernel = rendering.disk_kernel()
    r = kernel.shape[0] // 2
    # a period of at least h + r keeps wrapped-around contributions out of the frame; the
    # next length with small prime factors is several times faster than h + r itself
    n, m = (scipy.fft.next_fast_len(max(size + r, kernel.shape[0]), real=True)
            for size in (h, w))
    padded = np.zeros((n, m))
    for a, b in zip(*np.nonzero(kernel)):
        padded[(a - r) % n, (b - r) % m] = kernel[a, b]
    spectrum = scipy.fft.rfft2(planes, s=(n, m)) * scipy.fft.rfft2(padded)
    return scipy.fft.irfft2(spectrum, s=(n, m))[..., :h, :w]


def _premultiplied_views(smoothed: np.ndarray, single_features: bool, as_drawn: bool = False):
    """(direction, view, uint8 (T, h, w, 4)) of smoothed planes (T, P, h, w): the drawing
    of method.md 6 after the smoothing, premultiplied as a canvas stores it.

    `as_drawn`: as the viewer makes it -- straight colour rgb / b and alpha b each rounded
    to 8 bits (what it puts on the canvas), then premultiplied and rounded again (what a
    canvas holds and the browser test compares); otherwise premultiplied in floating point
    and rounded once (`premultiplied_uint8`, the reference's side)."""
    k1 = smoothed.shape[1] // 2
    hues = rendering.feature_hues(k1 - 1)
    for direction in rendering.DIRECTIONS:
        pos, neg = smoothed[:, :k1], smoothed[:, k1:]
        x = {"pos": pos, "neg": neg, "abs": pos + neg}[direction].transpose(0, 2, 3, 1)
        features, residual = x[..., :-1], x[..., -1:]
        prin = features @ hues
        for view in rendering.views(k1 - 1, single_features):
            if view == "prin":
                rgb = prin
            elif view == "all":
                rgb = prin + residual
            elif view == "res":
                rgb = np.repeat(residual, 3, axis=-1)
            else:
                rgb = features[..., view:view + 1] * hues[view]
            norm = np.linalg.norm(rgb, axis=-1, keepdims=True)
            alpha = np.minimum(norm, 1.0)
            if as_drawn:
                straight = np.divide(rgb, alpha, out=np.zeros_like(rgb), where=alpha > 0)
                straight = np.round(np.clip(straight, 0, 1) * 255)
                alpha = np.round(alpha * 255)
                yield direction, view, np.concatenate(
                    [np.round(straight * alpha / 255), alpha], axis=-1).astype(np.uint8)
            else:
                # colour rgb / b at alpha b, clipped, premultiplied: rgb itself, clipped
                # to [0, 1] (planes are non-negative)
                yield direction, view, rendering.to_uint8(
                    np.concatenate([np.clip(rgb, 0, 1), alpha], axis=-1))


def _compiled_views(smoothed: np.ndarray, single_features: bool, as_drawn: bool,
                    reference: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_premultiplied_views` in one compiled pass (gallery.bundle.compiled.views): the
    views (T, V, h, w, 4) uint8 when `reference` is None, otherwise the sums over each view
    of |error| and error^2 against `reference`, (T, V) int64 each."""
    from gallery.bundle.compiled import views as draw

    t, p, h, w = smoothed.shape
    k1 = p // 2
    hues = rendering.feature_hues(k1 - 1)
    pos, neg = smoothed[:, :k1], smoothed[:, k1:]
    prin = np.stack([(x.transpose(0, 2, 3, 1)[..., :-1] @ hues)  # as `_premultiplied_views`
                     for x in (pos + neg, pos, neg)])
    count = 3 * (2 + (k1 if single_features else 0))
    out = np.zeros((t, count, h, w, 4) if reference is None else (0, 0, 0, 0, 0), np.uint8)
    abs_sums, square_sums = np.zeros((2, t, count), np.int64)
    draw(np.ascontiguousarray(smoothed), np.ascontiguousarray(prin), hues, single_features,
         as_drawn, np.zeros((0, 0, 0, 0, 0), np.uint8) if reference is None else reference,
         out, abs_sums, square_sums)
    return out, abs_sums, square_sums


def reference_views(reference: np.ndarray, single_features: bool = True) -> np.ndarray:
    """(T, V, h, w, 4) uint8: every direction and view of exact planes (T, P, h, w) as the
    reference renderer rounds them (`premultiplied_uint8`), in `_premultiplied_views`'
    order. The search for a frame's step compares many trials with the same reference,
    so it draws the reference once."""
    smoothed = smooth_planes(reference)
    if COMPILED_VIEWS:
        return _compiled_views(smoothed, single_features, False, None)[0]
    return np.stack([v for _, _, v in _premultiplied_views(smoothed, single_features)],
                    axis=1)


def frame_errors(reference: np.ndarray | None, planes: np.ndarray, single_features: bool = True,
                 as_drawn: bool = True, views: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the worst MAE (in [0, 1] units) and PSNR over every direction and view
    of dequantised `planes` against exact `reference` planes (both (T, P, h, w)), or
    against their drawing `views` (`reference_views`) when given; the former drawn as the
    viewer draws them (`as_drawn`, see `_premultiplied_views`)."""
    if views is None:
        views = reference_views(reference, single_features)
    smoothed = smooth_planes(planes)
    if COMPILED_VIEWS:
        _, abs_sums, square_sums = _compiled_views(smoothed, single_features, as_drawn,
                                                   np.ascontiguousarray(views))
    else:
        sums = []
        for v, (_, _, got) in enumerate(_premultiplied_views(smoothed, single_features,
                                                             as_drawn)):
            diff = views[:, v].astype(np.int64) - got
            sums.append((np.abs(diff).sum(axis=(1, 2, 3)), (diff * diff).sum(axis=(1, 2, 3))))
        abs_sums, square_sums = (np.stack(part, axis=1) for part in zip(*sums))
    # integer sums: exact, so these equal the means of the errors in any order
    size = np.prod(views.shape[2:])
    mae = (abs_sums / size / 255).max(axis=1, initial=0.0)
    mse = square_sums / size
    with np.errstate(divide="ignore"):
        psnr = np.where(mse == 0, np.inf, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-300)))
    return mae, psnr.min(axis=1, initial=np.inf)


def plane_steps(steps: np.ndarray, residual_steps: np.ndarray, planes: int) -> np.ndarray:
    """(T, P) step of every plane: the features' steps, the residual planes' steps."""
    out = np.repeat(np.asarray(steps, np.float64).reshape(-1, 1), planes, axis=1)
    k1 = planes // 2
    out[:, k1 - 1] = out[:, planes - 1] = residual_steps
    return out


def residual_step(step: float, ratio: float) -> float:
    """The residual planes' step for a features' step (rounded to 9 digits)."""
    return round(float(step) * ratio, 9)


def _check(planes: np.ndarray, steps: np.ndarray, single_features: bool,
           target: FidelityTarget, views: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantise the frames at their steps (the features'; the residual's follow) and
    check them: (codes, MAE, PSNR) per frame (against `views`, the frames'
    `reference_views`, when given)."""
    codes = np.zeros(planes.shape, np.uint16)
    mae, psnr = np.zeros(len(planes)), np.zeros(len(planes))
    residual = np.array([residual_step(q, target.residual_ratio) for q in steps])
    per_plane = plane_steps(steps, residual, planes.shape[1])
    for start in range(0, len(planes), target.diffuse_chunk):
        part = slice(start, start + target.diffuse_chunk)
        codes[part] = joint_diffuse(planes[part], per_plane[part])
    for start in range(0, len(planes), target.chunk):
        part = slice(start, start + target.chunk)
        got = dequantise(codes[part], per_plane[part])
        mae[part], psnr[part] = frame_errors(
            planes[part], got, single_features,
            views=None if views is None else views[part])
    return codes, mae, psnr


def choose_steps(planes: np.ndarray, target: FidelityTarget = FidelityTarget(),
                 single_features: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per frame, the coarsest step of `target.steps` whose drawing meets `target`: a
    step that passes while the next coarser one fails (or the coarsest step; the finest
    where none passes).

    `planes` (T, P, h, w) are the exact planes (`split_planes`). Each frame keeps the
    finest step known to fail and the coarsest known to pass, and its next check is the
    step its last error predicts (the error grows about in proportion to the step),
    inside that bracket, until the two are neighbours. Every eighth frame starts from a
    trial step; the others start from the answer of the nearest such frame (neighbouring
    frames need about the same step), which saves about a quarter of the checks. Every
    frame's final codes are checked, in every direction and view. Returns (steps (T,),
    codes (T, P, h, w), MAE (T,), PSNR (T,)).
    """
    ladder = np.array(sorted(target.steps, reverse=True), np.float64)
    t, n = len(planes), len(ladder)
    views = np.concatenate([reference_views(planes[s:s + target.chunk], single_features)
                            for s in range(0, t, target.chunk)]) if t else None
    fails = np.full(t, -1)  # per frame, the finest index known to fail
    passes = np.full(t, n)  # the coarsest index known to pass (n: none yet)
    codes = np.zeros(planes.shape, np.uint16)
    mae, psnr = np.zeros(t), np.zeros(t)
    index = np.full(t, int(np.argmin(np.abs(ladder - 0.012))))

    def search(frames: np.ndarray) -> None:
        while len(frames):
            i = index[frames]
            c, m, p = _check(planes[frames], ladder[i], single_features, target,
                             views[frames])
            ok = (m <= target.max_mae) & (p >= target.min_psnr)
            keep = ok | (i == n - 1)  # the finest step is kept even where it fails
            kept = frames[keep]
            passes[kept], codes[kept], mae[kept], psnr[kept] = i[keep], c[keep], m[keep], p[keep]
            fails[frames[~ok]] = i[~ok]
            allowed = ladder[i] * np.minimum(target.max_mae / np.maximum(m, 1e-12),
                                             10 ** ((p - target.min_psnr) / 20))
            guess = np.searchsorted(-ladder, -allowed, side="left")
            index[frames] = np.clip(guess, fails[frames] + 1, passes[frames] - 1)
            frames = frames[passes[frames] > fails[frames] + 1]

    every = 8  # one frame in `every` searched from the trial step
    seeds = np.arange(0, t, every)
    search(seeds)
    rest = np.setdiff1d(np.arange(t), seeds)
    if len(rest):
        nearest = np.minimum(np.round(rest / every).astype(int), len(seeds) - 1)
        index[rest] = passes[seeds[nearest]]
        search(rest)
    return ladder[passes], codes, mae, psnr


# --- contexts and frequency tables ------------------------------------------------------


@dataclass(frozen=True)
class ContextModel:
    """Which neighbourhood a code's probability depends on (docs/bundle.md).

    A code below ESCAPE is coded as itself, any other as ESCAPE followed by its excess.
    The context of that first symbol is always `local` (left and upper neighbours, each 0,
    1 or 2+, and in N planes whether the matching P code is non-zero: 18 values), and,
    in the tables of each plane (`per_plane`) or of each plane class (P or N, feature or
    residual), the number of non-zero codes among the 12 causal neighbours within two
    cells (`density` buckets, the last one open-ended) and among the earlier planes at the
    same position (`activity` buckets). The excess has one table per plane class.
    The encoder picks, per file, the model of `CONTEXT_MODELS` that makes it smallest
    (tables included): large layers pay for more contexts, small ones do not.
    """

    per_plane: bool
    density: int
    activity: int

    def groups(self, planes: int) -> int:
        return planes if self.per_plane else PLANE_CLASSES

    def tables(self, planes: int) -> int:
        """Tables of the first symbol (the excess tables follow them)."""
        return self.groups(planes) * LOCAL_CONTEXTS * self.density * self.activity

    def as_list(self) -> list[int]:
        return [int(self.per_plane), self.density, self.activity]

    @classmethod
    def from_list(cls, value: object) -> ContextModel:
        """One of `CONTEXT_MODELS` (a reader accepts no other: that bounds the tables a
        file can make it allocate)."""
        for model in CONTEXT_MODELS:
            if isinstance(value, list) and value == model.as_list() and \
                    all(type(v) is int for v in value):
                return model
        raise CodecError(f"bad header: context_model {value!r:.60} is not one of "
                         f"{[m.as_list() for m in CONTEXT_MODELS]}")


#: Codes 0, 1, 2 are coded as themselves; ESCAPE stands for the rest, whose excess
#: (code - ESCAPE) follows.
ESCAPE = 3
#: Values of the local context: 3 (left) x 3 (up) x 2 (the matching P code is non-zero).
LOCAL_CONTEXTS = 18
#: Plane classes: feature P, residual P, feature N, residual N.
PLANE_CLASSES = 4
#: The causal neighbours (dy, dx) of the density count: the cell (i - dy, j - dx).
NEIGHBOURS = ((0, 1), (0, 2), (1, -2), (1, -1), (1, 0), (1, 1), (1, 2),
              (2, -2), (2, -1), (2, 0), (2, 1), (2, 2))
CONTEXT_MODELS = (ContextModel(False, 5, 3), ContextModel(True, 1, 3),
                  ContextModel(False, 1, 3), ContextModel(True, 3, 1),
                  ContextModel(True, 1, 1))


def plane_classes(planes: int) -> np.ndarray:
    """(P,) class of every plane: 0 feature P, 1 residual P, 2 feature N, 3 residual N."""
    half = planes // 2
    out = np.zeros(planes, np.int64)
    out[half - 1], out[half:], out[planes - 1] = 1, 2, 3
    return out


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """a[..., i - dy, j - dx] at (i, j), zero outside."""
    h, w = a.shape[-2:]
    out = np.zeros_like(a)
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        a[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def local_contexts(codes: np.ndarray) -> np.ndarray:
    """(T, P, h, w) uint8: 3 min(left, 2) + min(up, 2) + 9 pair of every code.

    `pair` is 1 in the second half of the planes (N) where the matching P code is
    non-zero. Neighbours outside the plane count as 0.
    """
    capped = np.minimum(codes, 2).astype(np.uint8)
    half = codes.shape[1] // 2
    pair = np.zeros_like(capped)
    pair[:, half:] = codes[:, :half] != 0
    return 3 * _shifted(capped, 0, 1) + _shifted(capped, 1, 0) + 9 * pair


def context_parts(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(local context, density count, activity count), each (T, P, h, w) uint8: what
    every `ContextModel` combines."""
    codes = np.asarray(codes)
    nonzero = (codes != 0).astype(np.uint8)
    count = np.zeros_like(nonzero)
    for dy, dx in NEIGHBOURS:
        count += _shifted(nonzero, dy, dx)
    earlier = np.cumsum(nonzero, axis=1, dtype=np.uint8) - nonzero
    return local_contexts(codes), count, earlier


def contexts(codes: np.ndarray, model: ContextModel,
             parts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(T, P, h, w) int32: the table of every code's first symbol under `model`."""
    codes = np.asarray(codes)
    p = codes.shape[1]
    local, count, earlier = context_parts(codes) if parts is None else parts
    group = (np.arange(p) if model.per_plane else plane_classes(p)).astype(np.int32)
    ctx = group[None, :, None, None] * LOCAL_CONTEXTS + local
    if model.density > 1:
        ctx = ctx * model.density + np.minimum(count, model.density - 1)
    if model.activity > 1:
        ctx = ctx * model.activity + np.minimum(earlier, model.activity - 1)
    return ctx


def _symbols(codes: np.ndarray, model: ContextModel,
             parts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first symbols (T, n), their tables (T, n), excess (T, m) padded, excess tables
    (T, m) padded) of codes (T, P, h, w); padding uses table `tables + PLANE_CLASSES`
    (one certain symbol: it costs nothing and leaves the rANS state as it is). `parts`:
    the codes' `context_parts`, if already computed."""
    codes = np.asarray(codes, np.uint16)
    t, p, h, w = codes.shape
    n = p * h * w
    flat = codes.reshape(t, n)
    first = np.minimum(flat, ESCAPE)
    small = model.tables(p)
    ctx = contexts(codes, model, parts).reshape(t, n)
    escaped = flat >= ESCAPE
    counts = escaped.sum(axis=1)
    m = int(counts.max()) if t else 0
    excess = np.zeros((t, m), np.uint16)
    tables = np.full((t, m), small + PLANE_CLASSES, np.int32)
    cls = np.repeat(plane_classes(p), h * w)
    for f in range(t):
        where = np.flatnonzero(escaped[f])
        excess[f, :len(where)] = flat[f, where] - ESCAPE
        tables[f, :len(where)] = small + cls[where]
    return first, ctx, excess, tables


def frequency_tables(codes: np.ndarray, model: ContextModel,
                     symbols: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """(tables + PLANE_CLASSES, NUM_LEVELS) int64 frequencies summing to PROB_SCALE per
    used table: the first symbol's tables, then the excess tables of the plane classes.
    `symbols`: the codes' `_symbols`, if already computed."""
    first, ctx, excess, tables = _symbols(codes, model) if symbols is None else symbols
    rows = model.tables(np.asarray(codes).shape[1]) + PLANE_CLASSES
    counts = np.bincount((ctx * NUM_LEVELS + first).ravel(), minlength=rows * NUM_LEVELS)
    used = tables < rows
    counts += np.bincount((tables[used] * NUM_LEVELS + excess[used]).ravel(),
                          minlength=rows * NUM_LEVELS)
    return np.stack([normalise_counts(c) for c in counts.reshape(rows, NUM_LEVELS)])


def ideal_bytes(codes: np.ndarray, model: ContextModel,
                parts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                counts: np.ndarray | None = None) -> float:
    """Size estimate of the first symbols and their tables under `model` (ideal code
    lengths of the counts; the excess costs the same under every model). `counts`: the
    codes' `joint_counts`, if already computed."""
    codes = np.asarray(codes)
    if counts is None:
        counts = joint_counts(codes, parts)
    counts = model_counts(counts, model).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    bits = -(counts * np.log2(np.where(counts > 0, counts / np.maximum(totals, 1), 1))).sum()
    table_bytes = len(counts) + 2.7 * np.count_nonzero(counts)
    return bits / 8 + table_bytes


#: The buckets `joint_counts` keeps: enough for every model of `CONTEXT_MODELS`.
_DENSITY = max(m.density for m in CONTEXT_MODELS)
_ACTIVITY = max(m.activity for m in CONTEXT_MODELS)


def joint_counts(codes: np.ndarray,
                 parts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(P, LOCAL_CONTEXTS, density, activity, ESCAPE + 1) int64: how often each first
    symbol occurs in each plane and context, with the density and activity counts capped
    at the largest buckets of any model; `model_counts` sums it into any model's tables
    (one pass over the codes for all of them)."""
    codes = np.asarray(codes)
    p = codes.shape[1]
    local, count, earlier = context_parts(codes) if parts is None else parts
    plane = np.arange(p, dtype=np.int32)[None, :, None, None]
    key = (plane * LOCAL_CONTEXTS + local) * _DENSITY + np.minimum(count, _DENSITY - 1)
    key = (key * _ACTIVITY + np.minimum(earlier, _ACTIVITY - 1)) * (ESCAPE + 1) + \
        np.minimum(codes, ESCAPE)
    shape = (p, LOCAL_CONTEXTS, _DENSITY, _ACTIVITY, ESCAPE + 1)
    return np.bincount(key.ravel(), minlength=math.prod(shape)).reshape(shape)


def model_counts(joint: np.ndarray, model: ContextModel) -> np.ndarray:
    """(tables, ESCAPE + 1) int64: the counts of the first symbols in the tables of
    `model` (`contexts`), from `joint_counts`: the same integers as counting them there."""
    if not model.per_plane:
        joint = np.stack([joint[plane_classes(len(joint)) == c].sum(axis=0)
                          for c in range(PLANE_CLASSES)])
    joint = _merge_buckets(joint, 2, model.density)
    joint = _merge_buckets(joint, 3, model.activity)
    return joint.reshape(-1, ESCAPE + 1)


def _merge_buckets(counts: np.ndarray, axis: int, buckets: int) -> np.ndarray:
    """Counts with the buckets along `axis` from `buckets - 1` on summed into the last one
    (min(count, buckets - 1), as `contexts` caps them)."""
    kept = np.take(counts, range(buckets - 1), axis=axis)
    rest = np.take(counts, range(buckets - 1, counts.shape[axis]), axis=axis).sum(
        axis=axis, keepdims=True)
    return np.concatenate([kept, rest], axis=axis)


def choose_context_model(codes: np.ndarray,
                         parts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                         ) -> ContextModel:
    """The model of `CONTEXT_MODELS` that codes `codes` in the fewest bytes (`parts`:
    their `context_parts`, if already computed)."""
    if not np.asarray(codes).size:
        return CONTEXT_MODELS[-1]
    counts = joint_counts(codes, parts)
    return min(CONTEXT_MODELS, key=lambda m: ideal_bytes(codes, m, counts=counts))


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


def _varint(value: int) -> bytes:
    """1 or 2 bytes, 7 bits each, low first (values below 2^14)."""
    return bytes([value]) if value < 128 else bytes([(value & 0x7F) | 0x80, value >> 7])


def pack_tables(freq: np.ndarray) -> bytes:
    """Sparse serialisation, per (plane, context): varint n, then n x (varint gap to the
    previous code (-1 before the first) minus one, varint frequency)."""
    out = bytearray()
    for row in freq.reshape(-1, NUM_LEVELS):
        symbols = np.flatnonzero(row)
        out += _varint(len(symbols))
        previous = -1
        for s in symbols.tolist():
            out += _varint(s - previous - 1) + _varint(int(row[s]))
            previous = s
    return bytes(out)


def unpack_tables(data: memoryview, rows: int) -> tuple[np.ndarray, int]:
    """Inverse of `pack_tables`; returns (freq (rows, NUM_LEVELS), bytes read)."""
    freq = np.zeros((rows, NUM_LEVELS), np.int64)
    buf = bytes(data)
    pos = 0

    def read() -> int:
        nonlocal pos
        if pos + 1 > len(buf) or (buf[pos] >= 128 and pos + 2 > len(buf)):
            raise CodecError("the file ends inside its frequency tables (truncated file?)")
        first = buf[pos]
        pos += 1
        if first < 128:
            return first
        second = buf[pos]
        pos += 1
        if second >= 128:
            raise CodecError("bad frequency table: a number longer than two bytes")
        return (first & 0x7F) | (second << 7)

    for row in freq:
        n = read()
        if n > NUM_LEVELS:
            raise CodecError(f"bad frequency table: {n} codes")
        s = -1
        for _ in range(n):
            s += read() + 1
            if s >= NUM_LEVELS:
                raise CodecError(f"code {s} out of range")
            row[s] = read()
        if n and row.sum() != PROB_SCALE:
            raise CodecError("frequency table does not sum to the probability scale")
    return freq, pos


# --- rANS -------------------------------------------------------------------------------


def rans_encode(symbols: np.ndarray, tables: np.ndarray, freq: np.ndarray,
                compiled: bool | None = None) -> list[bytes]:
    """Encode S streams at once: symbols (S, n) uint16 with table ids (S, n).

    `freq` is (num_tables, 256). Returns one byte string per stream; each starts with the
    32-bit final state (big-endian) and is decoded front to back.

    `compiled` (default: COMPILED_RANS): the same loop compiled with Numba
    (gallery.bundle.compiled.rans), one stream at a time; False runs it in NumPy, one
    symbol position at a time over all streams (the reference it is checked against).
    """
    cum = np.concatenate([np.zeros((len(freq), 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]],
                         axis=1)
    streams, n = symbols.shape
    state = np.full(streams, RANS_LOW, dtype=np.int64)
    capacity = 2 * n + 8
    out = np.zeros((streams, capacity), dtype=np.uint8)
    length = np.zeros(streams, dtype=np.int64)
    if COMPILED_RANS if compiled is None else compiled:
        from gallery.bundle.compiled import rans

        rans(np.ascontiguousarray(symbols), np.ascontiguousarray(tables),
             np.ascontiguousarray(freq, np.int64), cum, RANS_LOW, PROB_BITS, out, length, state)
    else:
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


def certain_table() -> np.ndarray:
    """(1, NUM_LEVELS) the table of padding: symbol 0 with probability 1 (costs nothing
    and leaves the state as it is, so a decoder may skip it)."""
    row = np.zeros((1, NUM_LEVELS), np.int64)
    row[0, 0] = PROB_SCALE
    return row


class RansDecoder:
    """S rANS streams decoded in lock step, one symbol of each per `take`.

    The Python decoder is for validation and tests; the viewer has its own.
    """

    def __init__(self, streams: list[bytes], freq: np.ndarray):
        self.freq = freq
        self.cum = np.concatenate([np.zeros((len(freq), 1), np.int64),
                                   np.cumsum(freq, axis=1)[:, :-1]], axis=1)
        self.lookup = np.zeros((len(freq), PROB_SCALE), np.uint16)  # slot -> symbol
        for k, row in enumerate(freq):
            if row.sum():
                self.lookup[k] = np.repeat(np.arange(NUM_LEVELS), row)
        count = len(streams)
        width = max(len(s) for s in streams) if streams else 0
        self.buf = np.zeros((count, width + 4), np.int64)
        self.lengths = np.array([len(s) for s in streams], np.int64)
        for i, s in enumerate(streams):
            self.buf[i, :len(s)] = np.frombuffer(s, np.uint8)
        if np.any(self.lengths < 4):
            raise CodecError("a frame's stream is shorter than the rANS state: corrupt file")
        b = self.buf
        self.state = (b[:, 0] << 24) | (b[:, 1] << 16) | (b[:, 2] << 8) | b[:, 3]
        self.pos = np.full(count, 4, np.int64)
        self.rows = np.arange(count)

    def take(self, table: np.ndarray | int) -> np.ndarray:
        """The next symbol (S,) of every stream, each from its table (S,) (or one)."""
        slot = self.state & (PROB_SCALE - 1)
        sym = self.lookup[table, slot]
        f = self.freq[table, sym]
        if np.any(f == 0):
            raise CodecError("a code with no probability in its table: the file is corrupt")
        self.state = f * (self.state >> PROB_BITS) + slot - self.cum[table, sym]
        for _ in range(2):
            low = self.state < RANS_LOW
            if not low.any():
                break
            self.state = np.where(low, (self.state << 8) | self.buf[self.rows, self.pos],
                                  self.state)
            self.pos += low
            if (self.pos > self.lengths).any():  # a valid stream is read exactly to its end
                raise CodecError("a frame's stream ends before its codes: the file is corrupt")
        return sym


def rans_decode(streams: list[bytes], tables: np.ndarray, freq: np.ndarray, n: int
                ) -> np.ndarray:
    """Decode S streams of n symbols each, symbol t of stream s from table tables[s, t]."""
    decoder = RansDecoder(streams, freq)
    out = np.zeros((len(streams), n), np.uint16)
    for t in range(n):
        out[:, t] = decoder.take(tables[:, t])
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
    steps: list[float]
    """The distinct steps of the file's frames; a frame's byte indexes this list."""
    linears: list[int]
    """L of each step (uniform levels below the knee)."""
    residual_steps: list[float]
    """The residual planes' step for each of `steps` (same index)."""
    residual_linears: list[int]
    worst_mae: float
    """Worst MAE of any frame in any direction and view (checked on every frame)."""
    worst_psnr: float
    context_model: list[int]
    """`ContextModel.as_list()`: [per_plane, density, activity]."""
    totals_unit: float
    """The totals are stored as float16 multiples of this."""


def encode(features: np.ndarray, residual: np.ndarray, *, single_features: bool = True,
           target: FidelityTarget = FidelityTarget(), table: LevelTable | None = None,
           model: ContextModel | None = None, scale: float | None = None) -> bytes:
    """The attribution file of one (layer, trajectory, output).

    `features` (T, h, w, K) and `residual` (T, h, w) are the unscaled reduced attribution
    (`LayerNMF.reduce_attribution`); the scale m of method.md 6 is computed here unless
    `scale` is given (the fidelity target is relative to the scale). Each
    frame's step is the coarsest meeting `target` (`choose_steps`) unless `table` is
    given (then every frame uses it). The context model is the one that makes the file
    smallest (`choose_context_model`) unless `model` is given. The header records the
    worst frame's errors.
    """
    features = np.asarray(features, np.float32)
    residual = np.asarray(residual, np.float32)
    if features.ndim != 4 or residual.shape != features.shape[:3]:
        raise ValueError(f"features must be (T, h, w, K) and residual (T, h, w), got "
                         f"{features.shape} and {residual.shape}")
    if scale is None:
        scale = rendering.attribution_scale(features)
    elif not (math.isfinite(scale) and scale != 0):
        raise ValueError(f"scale must be a finite non-zero number, not {scale}")
    planes = split_planes(features, residual, scale)
    if table is None:
        steps, codes, mae, psnr = choose_steps(planes, target, single_features)
    else:
        steps = _frame_steps(table, len(planes))
        codes, mae, psnr = _check(planes, steps, single_features, target)
    t, _, h, w = codes.shape
    distinct, index = np.unique(steps, return_inverse=True)
    if not len(distinct):
        distinct = np.array([target.steps[0] if table is None else table.step])
    parts = context_parts(codes)  # shared by the model's choice and the symbols
    model = choose_context_model(codes, parts) if model is None else model
    symbols = _symbols(codes, model, parts)
    freq = frequency_tables(codes, model, symbols)
    first, ctx, excess, excess_tables = symbols
    streams = rans_encode(np.concatenate([first, excess], axis=1),
                          np.concatenate([ctx, excess_tables], axis=1),
                          np.concatenate([freq, certain_table()]))
    worst_psnr = float(psnr.min()) if t else float("inf")
    totals = np.concatenate([features.sum(axis=(1, 2), dtype=np.float64),
                             residual.sum(axis=(1, 2), dtype=np.float64)[:, None]], axis=1)
    largest = float(np.abs(totals).max()) if totals.size else 0.0
    unit = largest / TOTALS_RANGE if largest > 0 and math.isfinite(largest) else 1.0
    header = AttributionHeader(CODEC_VERSION, t, h, w, features.shape[-1], float(scale),
                               [float(q) for q in distinct],
                               [linear_steps(float(q)) for q in distinct],
                               [residual_step(q, target.residual_ratio) for q in distinct],
                               [linear_steps(residual_step(q, target.residual_ratio))
                                for q in distinct],
                               float(mae.max()) if t else 0.0,
                               worst_psnr if np.isfinite(worst_psnr) else 999.0,
                               model.as_list(), unit)
    return _assemble(header, pack_tables(freq), (totals / unit).astype("<f2"),
                     index.astype(np.uint8), streams)


#: The largest total is stored as this many units (float16 holds up to 65504).
TOTALS_RANGE = 60000.0


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _assemble(header: AttributionHeader, tables: bytes, totals: np.ndarray,
              step_index: np.ndarray, streams: list[bytes]) -> bytes:
    meta = json.dumps(asdict(header), separators=(",", ":")).encode()
    meta += b" " * (-(len(MAGIC) + 4 + len(meta)) % 4)
    lengths = b"".join(_leb128(len(s)) for s in streams)
    body = _padded(tables)
    return b"".join([MAGIC, struct.pack("<I", len(meta)), meta, struct.pack("<I", len(body)),
                     body, _padded(np.asarray(totals, "<f2").tobytes()),
                     _padded(step_index.astype(np.uint8).tobytes()), _padded(lengths),
                     *streams])


def _leb128(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, low first, high bit set on all but the last."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_leb128(view: memoryview, pos: int, count: int) -> tuple[np.ndarray, int]:
    """`count` LEB128 numbers (at most 4 bytes each) from `pos`; (values, new pos)."""
    values = np.zeros(count, np.int64)
    for i in range(count):
        value, shift = 0, 0
        while True:
            if pos >= len(view) or shift > 21:
                raise CodecError("bad stream lengths (truncated or corrupt file?)")
            byte = view[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        values[i] = value
    return values, pos


@dataclass
class AttributionFile:
    """A parsed attribution file: header, frequency tables and one stream per frame."""

    header: AttributionHeader
    freq: np.ndarray
    """(tables of the first symbol + PLANE_CLASSES, NUM_LEVELS)."""
    totals: np.ndarray
    """(T, K + 1) float64: the unscaled features and residual summed over positions
    (float16 precision)."""
    step_index: np.ndarray
    """(T,) the index in `header.steps` of each frame's step."""
    streams: list[bytes]

    @property
    def planes(self) -> int:
        return 2 * (self.header.features + 1)

    @property
    def model(self) -> ContextModel:
        return ContextModel.from_list(self.header.context_model)

    def frame_steps(self) -> np.ndarray:
        """(T,) the features' step of every frame."""
        return np.asarray(self.header.steps, np.float64)[self.step_index]

    def plane_steps(self) -> np.ndarray:
        """(T, P) the step of every plane of every frame."""
        residual = np.asarray(self.header.residual_steps, np.float64)[self.step_index]
        return plane_steps(self.frame_steps(), residual, self.planes)

    def codes(self, frames: np.ndarray | None = None) -> np.ndarray:
        """Decoded codes (F, P, h, w) uint16 of the given frames (all by default): every
        first symbol in plane order, its context from what is decoded, then the excess
        of the escaped codes in the same order."""
        hd, model = self.header, self.model
        frames = np.arange(hd.frames) if frames is None else np.asarray(frames)
        p, h, w = self.planes, hd.height, hd.width
        f = len(frames)
        decoder = RansDecoder([self.streams[i] for i in frames],
                              np.concatenate([self.freq, certain_table()]))
        # codes with a border of 2 on top and on both sides, for the neighbourhoods
        out = np.zeros((f, p, h + 2, w + 4), np.int64)
        nonzero_before = np.zeros((f, h, w), np.int64)
        group = np.arange(p) if model.per_plane else plane_classes(p)
        half = p // 2
        for plane in range(p):
            for i in range(h):
                for j in range(w):
                    y, x = i + 2, j + 2
                    ctx = (group[plane] * LOCAL_CONTEXTS + 3 * np.minimum(out[:, plane, y, x - 1], 2)
                           + np.minimum(out[:, plane, y - 1, x], 2))
                    if plane >= half:
                        ctx = ctx + 9 * (out[:, plane - half, y, x] != 0)
                    if model.density > 1:
                        count = sum(out[:, plane, y - dy, x - dx] != 0 for dy, dx in NEIGHBOURS)
                        ctx = ctx * model.density + np.minimum(count, model.density - 1)
                    if model.activity > 1:
                        ctx = ctx * model.activity + np.minimum(nonzero_before[:, i, j],
                                                                model.activity - 1)
                    out[:, plane, y, x] = decoder.take(ctx)
                nonzero_before[:, i] += out[:, plane, i + 2, 2:w + 2] != 0
        codes = out[:, :, 2:, 2:w + 2]
        escaped = codes.reshape(f, p * h * w) >= ESCAPE
        cls = np.repeat(plane_classes(p), h * w)
        small = model.tables(p)
        order = [np.flatnonzero(e) for e in escaped]
        flat = codes.reshape(f, p * h * w).copy()
        for k in range(max((len(o) for o in order), default=0)):
            has = np.array([k < len(o) for o in order])
            where = np.array([o[k] if k < len(o) else 0 for o in order])
            table = np.where(has, small + cls[where], small + PLANE_CLASSES)
            excess = decoder.take(table)
            flat[has, where[has]] = ESCAPE + excess[has]
        if np.any(flat >= NUM_LEVELS):
            raise CodecError("a code beyond the level table: the file is corrupt")
        return flat.reshape(f, p, h, w).astype(np.uint16)

    def planes_values(self, frames: np.ndarray | None = None) -> np.ndarray:
        """Dequantised planes (F, P, h, w) float64."""
        h = self.header
        frames = np.arange(h.frames) if frames is None else np.asarray(frames)
        tables = np.stack([level_values(q, L) for q, L in zip(
            h.steps + h.residual_steps, h.linears + h.residual_linears, strict=True)])
        rows = np.repeat(self.step_index[frames].reshape(-1, 1), self.planes, axis=1)
        k1 = self.planes // 2
        rows[:, [k1 - 1, self.planes - 1]] += len(h.steps)
        return tables[rows[:, :, None, None], self.codes(frames)]


def _check_header(header: AttributionHeader, size: int) -> None:
    """Types and sizes of a header, bounded by the file's size before anything is
    allocated from them."""
    for name in ("version", "frames", "height", "width", "features"):
        value = getattr(header, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CodecError(f"bad header: {name} is {value!r:.40}, not an integer")
    for name in ("scale", "worst_mae", "worst_psnr", "totals_unit"):
        value = getattr(header, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CodecError(f"bad header: {name} is {value!r:.40}, not a number")
    if header.version != CODEC_VERSION:
        raise CodecError(f"attribution file version {header.version}; this gallery reads "
                         f"version {CODEC_VERSION}: rebuild the interface")
    model = ContextModel.from_list(header.context_model)
    lists = (header.steps, header.linears, header.residual_steps, header.residual_linears)
    if not (all(isinstance(x, list) for x in lists)
            and 1 <= len(lists[0]) <= MAX_STEPS and len({len(x) for x in lists}) == 1):
        raise CodecError(f"bad header: steps, linears, residual_steps and residual_linears "
                         f"must be lists of the same length, 1 to {MAX_STEPS}")
    for step, linear in zip(lists[0] + lists[2], lists[1] + lists[3], strict=True):
        if not (isinstance(step, (int, float)) and not isinstance(step, bool)
                and math.isfinite(step) and step > 0):
            raise CodecError(f"bad header: a step of {step!r:.40} is not a positive number")
        if not (isinstance(linear, int) and not isinstance(linear, bool)
                and 1 <= linear < NUM_LEVELS):
            raise CodecError(f"bad header: linear {linear!r:.40} is not in 1..{NUM_LEVELS - 1}")
    if min(header.frames, header.features) < 0 or min(header.height, header.width) < 1:
        raise CodecError("bad header: negative or empty sizes")
    planes = 2 * (header.features + 1)
    # every table takes at least a byte, every frame at least 1 byte of length, 1 of
    # step, 2 (K + 1) of totals and 4 of stream
    if model.tables(planes) + PLANE_CLASSES > size or \
            header.frames * (2 * (header.features + 1) + 6) > size:
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
    planes = 2 * (header.features + 1)
    rows = ContextModel.from_list(header.context_model).tables(planes) + PLANE_CLASSES
    freq, _ = unpack_tables(view[pos:pos + body_len], rows)
    pos += body_len
    count = header.frames * (header.features + 1)
    totals_len = 2 * count + (-2 * count % 4)
    index_len = header.frames + (-header.frames % 4)
    if pos + totals_len + index_len > len(data):
        raise CodecError("the file ends inside its totals or steps (truncated file?)")
    totals = np.frombuffer(view[pos:pos + 2 * count], "<f2").astype(np.float64).reshape(
        header.frames, header.features + 1) * header.totals_unit
    pos += totals_len
    step_index = np.frombuffer(view[pos:pos + header.frames], np.uint8).astype(np.int64)
    if np.any(step_index >= len(header.steps)):
        raise CodecError("a frame's step index is out of range (corrupt file?)")
    pos += index_len
    start = pos
    lengths, pos = _read_leb128(view, pos, header.frames)
    pos += -(pos - start) % 4
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if pos + offsets[-1] != len(data):
        raise CodecError("stream lengths do not match the file length (truncated file?)")
    streams = [bytes(view[pos + offsets[i]:pos + offsets[i + 1]]) for i in range(header.frames)]
    return AttributionFile(header, freq, totals, step_index, streams)
