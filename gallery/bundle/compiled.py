"""The error diffusion of gallery.bundle.codec (`joint_diffuse`), compiled with Numba.

`codec.joint_diffuse` visits the positions of a plane one after the other (each position's
rounding moves the error to the next ones), with some 200 small NumPy operations per
position; this is the same arithmetic as plain loops, compiled once per process, and
about ten times faster on 64 frames (`benchmarks/bench_encoder.py`). Its codes equal
`joint_diffuse`'s, checked on real attribution planes in tests/test_bundle.py.
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
def diffuse(work: np.ndarray, tables: np.ndarray, rows: np.ndarray, steps: np.ndarray,
            linears: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Codes (T, P, h, w) of the planes `work` (T, P, h, w) float64, diffused in place;
    `rows`, `steps`, `linears` (T, P): each plane's level table, step and linear part."""
    t, p, h, w = work.shape
    levels = tables.shape[1]
    codes = np.zeros((t, p, h, w), np.uint16)
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
        for i in range(h):
            forward = i % 2 == 0
            for jj in range(w):
                j = jj if forward else w - 1 - jj
                sign = 1 if forward else -1
                for k in range(p):
                    table = tables[rows[f, k]]
                    value = work[f, k, i, j]
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
                for m in range(p):
                    s = 0.0
                    for k in range(p):
                        s += error[k] * weights[k, m]
                    grad[m] = s
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
                    codes[f, k, i, j] = near[k] if at_near[k] else other[k]
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
                            work[f, k, a, b] += error[k] * share
    return codes
