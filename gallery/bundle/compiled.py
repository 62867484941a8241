"""The loops of gallery.bundle.codec that run compiled (Numba): the error diffusion
(`diffuse`), the drawing of every view that checks a frame's step (`views`) and the rANS
coder (`rans`).

`codec.joint_diffuse` visits the positions of a plane one after the other (each position's
rounding moves the error to the next ones), with some 200 small NumPy operations per
position; `diffuse` is the same arithmetic as plain loops. `codec.frame_errors` draws 33
views of every frame it checks, each some dozen NumPy passes over the frame; `views` draws
each pixel of every view in one pass and sums its errors on the way. Both are compiled once
per process; `benchmarks/bench_encoder.py` times the encoder with and without them. Their
results equal the NumPy versions' (tests/test_bundle.py, on real attribution planes): the
arithmetic is the same IEEE operations in the same order, and error sums are of integers.
`codec.rans_encode` steps all streams together, one symbol position at a time; `rans`
codes one stream after the other with the same integer arithmetic, so the same bytes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _nearest(v: float, step: float, linear: float, table: np.ndarray) -> int:
    # codec.nearest_codes for one value
    levels = table.shape[0]
    v = max(v, 0.0)
    top = linear * step
    if v <= top:
        return int(min(math.floor(v / step + 0.5), linear))
    ratio = math.log1p(1.0 / linear)
    geometric = linear + math.log(max(v, top) / top) / ratio
    low = int(min(max(math.floor(geometric), linear), levels - 1))
    high = min(low + 1, levels - 1)
    if (table[high] - v) < (v - table[low]):
        return high
    return low


@njit(cache=True, nogil=True)
def diffuse(planes: np.ndarray, tables: np.ndarray, rows: np.ndarray, steps: np.ndarray,
            linears: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Codes (T, P, h, w) of the planes (T, P, h, w) float64 (left as they are); `rows`,
    `steps`, `linears` (T, P): each plane's level table, step and linear part.

    Each frame is diffused in a copy laid out (h, w, P): the planes of a position are
    next to each other, as the joint rounding and the diffusion read them (twice as fast
    as in the planes' own layout, the same operations in the same order)."""
    t, p, h, w = planes.shape
    levels = tables.shape[1]
    codes = np.zeros((t, h, w, p), np.uint16)
    work = np.empty((h, w, p))
    near = np.zeros(p, np.int64)
    other = np.zeros(p, np.int64)
    e_near = np.zeros(p)
    e_other = np.zeros(p)
    error = np.zeros(p)
    grad = np.zeros(p)
    at_near = np.zeros(p, np.bool_)
    di = np.array([0, 1, 1, 1])
    dj = np.array([1, -1, 0, 1])
    dw = np.array([7.0, 3.0, 5.0, 1.0])
    for f in range(t):
        for k in range(p):
            for i in range(h):
                for j in range(w):
                    work[i, j, k] = planes[f, k, i, j]
        for i in range(h):
            forward = i % 2 == 0
            for jj in range(w):
                j = jj if forward else w - 1 - jj
                sign = 1 if forward else -1
                for k in range(p):
                    table = tables[rows[f, k]]
                    value = work[i, j, k]
                    n = _nearest(value, steps[f, k], linears[f, k], table) if value > 0 else 0
                    near_value = table[n]
                    if value > 0:
                        o = min(n + 1, levels - 1) if value > near_value else max(n - 1, 0)
                    else:
                        o = n
                    near[k], other[k] = n, o
                    e_near[k] = value - near_value
                    e_other[k] = value - table[o]
                    at_near[k] = True
                    error[k] = e_near[k]
                # grad = error @ weights, each grad[m] summed over k in order; k outside
                # so that the loop over m is one vector operation
                grad[:] = 0.0
                for k in range(p):
                    e = error[k]
                    for m in range(p):
                        grad[m] += e * weights[k, m]
                for _ in range(2):
                    for k in range(p):
                        alt = e_other[k] if at_near[k] else e_near[k]
                        d = alt - error[k]
                        if d * d * weights[k, k] + 2 * d * grad[k] < 0:
                            error[k] += d
                            at_near[k] = not at_near[k]
                            for m in range(p):
                                grad[m] += d * weights[k, m]
                for k in range(p):
                    codes[f, i, j, k] = near[k] if at_near[k] else other[k]
                total = 0.0
                for x in range(4):
                    a, b = i + di[x], j + sign * dj[x]
                    if a < h and 0 <= b < w:
                        total += dw[x]
                for x in range(4):
                    a, b = i + di[x], j + sign * dj[x]
                    if a < h and 0 <= b < w:
                        share = dw[x] / total
                        for k in range(p):
                            work[a, b, k] += error[k] * share
    return np.ascontiguousarray(codes.transpose(0, 3, 1, 2))


@njit(cache=True, nogil=True, inline="always")
def _pixel(r: float, g: float, b: float, as_drawn: bool
           ) -> tuple[float, float, float, float]:
    # codec._premultiplied_views for one pixel: premultiplied 8-bit RGBA of colour rgb
    # (np.rint rounds halves to even, as np.round)
    alpha = min(math.sqrt((r * r + g * g) + b * b), 1.0)
    a = np.rint(alpha * 255.0)
    if a == 0.0:  # every channel is at most alpha, so it rounds to 0 too
        return 0.0, 0.0, 0.0, 0.0
    if not as_drawn:
        return (np.rint(min(max(r, 0.0), 1.0) * 255.0), np.rint(min(max(g, 0.0), 1.0) * 255.0),
                np.rint(min(max(b, 0.0), 1.0) * 255.0), a)
    return (np.rint(np.rint(min(max(r / alpha, 0.0), 1.0) * 255.0) * a / 255.0),
            np.rint(np.rint(min(max(g / alpha, 0.0), 1.0) * 255.0) * a / 255.0),
            np.rint(np.rint(min(max(b / alpha, 0.0), 1.0) * 255.0) * a / 255.0), a)


@njit(cache=True, nogil=True, inline="always")
def _directed(smoothed: np.ndarray, f: int, c: int, k1: int, i: int, j: int, d: int) -> float:
    # plane c's amount in direction d (abs, pos, neg) at frame f, position (i, j)
    pos, neg = smoothed[f, c, i, j], smoothed[f, k1 + c, i, j]
    return pos + neg if d == 0 else (pos if d == 1 else neg)


@njit(cache=True, nogil=True)
def views(smoothed: np.ndarray, prin: np.ndarray, hues: np.ndarray, single: bool,
          as_drawn: bool, reference: np.ndarray, out: np.ndarray,
          abs_sums: np.ndarray, square_sums: np.ndarray) -> None:
    """Every direction and view of smoothed planes (T, P, h, w), in
    `codec._premultiplied_views`' order, given each direction's principal colour `prin`
    (3, T, h, w, 3) and the feature hues (K, 3). With an empty `reference` the views are
    written to `out` (T, V, h, w, 4) uint8; otherwise the sums over each view of |error|
    and error^2 against `reference` (T, V, h, w, 4) are added to `abs_sums` and
    `square_sums` (T, V) int64."""
    t, p, h, w = smoothed.shape
    k1 = p // 2
    k = k1 - 1
    per_direction = 2 + (k + 1 if single else 0)
    store = reference.shape[0] == 0
    colour = np.zeros((per_direction, 3))
    for f in range(t):
        for i in range(h):
            for j in range(w):
                for d in range(3):  # abs, pos, neg
                    residual = _directed(smoothed, f, k, k1, i, j, d)
                    for c in range(3):
                        colour[0, c] = prin[d, f, i, j, c]
                        colour[1, c] = prin[d, f, i, j, c] + residual
                    if single:
                        for m in range(k):
                            x = _directed(smoothed, f, m, k1, i, j, d)
                            for c in range(3):
                                colour[2 + m, c] = x * hues[m, c]
                        for c in range(3):
                            colour[2 + k, c] = residual
                    for v in range(per_direction):
                        rgba = _pixel(colour[v, 0], colour[v, 1], colour[v, 2], as_drawn)
                        column = d * per_direction + v
                        for c in range(4):
                            if store:
                                out[f, column, i, j, c] = np.uint8(rgba[c])
                            else:
                                e = np.int64(reference[f, column, i, j, c]) - np.int64(rgba[c])
                                abs_sums[f, column] += abs(e)
                                square_sums[f, column] += e * e


@njit(cache=True, nogil=True)
def rans(symbols: np.ndarray, tables: np.ndarray, freq: np.ndarray, cum: np.ndarray,
         low: int, prob_bits: int, out: np.ndarray, length: np.ndarray,
         states: np.ndarray) -> None:
    # codec.rans_encode's loop, one stream after the other: bytes out[s, :length[s]] in
    # the order they are emitted, final state states[s]
    limit_scale = (low >> prob_bits) << 8
    scale = 1 << prob_bits
    for s in range(symbols.shape[0]):
        state = low
        k = 0
        for t in range(symbols.shape[1] - 1, -1, -1):
            f = freq[tables[s, t], symbols[s, t]]
            c = cum[tables[s, t], symbols[s, t]]
            limit = limit_scale * f
            for _ in range(2):  # x < 2^31 and limit >= 2^19: at most two bytes out
                if state < limit:
                    break
                out[s, k] = state & 0xFF
                k += 1
                state >>= 8
            state = (state // f) * scale + state % f + c
        length[s] = k
        states[s] = state
