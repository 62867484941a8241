"""The NMF fit's coordinate descent, compiled (Numba) and blocked over rows.

scikit-learn's `_update_cdnmf_fast` updates coordinate t of every row, then coordinate
t + 1 of every row, and so on: K sweeps over W (rows x K) and X H^T, which at clear's 1a
(tens of millions of rows) come from memory each time. Rows are independent within an
update, so `update` does the same arithmetic a block of rows at a time, every coordinate
of the block while it is in cache: the same float32 operations in the same order, so the
same W. Its projected gradients are kept and summed afterwards in scikit-learn's order
(coordinate by coordinate, row by row, in float32), so the violation that stops the fit
is the same number too. `fit_coordinate_descent` is scikit-learn's `_fit_coordinate_
descent` around it (tests/test_nmf.py checks the components bit for bit against
scikit-learn's NMF).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Rows updated together: W's and X H^T's blocks (32 KB each at K = 8) stay in cache.
BLOCK = 1024


@njit(cache=True, nogil=True)
def update(w: np.ndarray, hht: np.ndarray, xht: np.ndarray, gradients: np.ndarray) -> float:
    """One coordinate-descent update of W (n, K) for fixed H: scikit-learn's
    `_update_cdnmf_fast` without shuffling. `gradients` (K, n) float32 is scratch space."""
    n, k = w.shape
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        for t in range(k):
            hess = hht[t, t]
            for i in range(start, stop):
                grad = -xht[i, t]
                for r in range(k):
                    grad += hht[t, r] * w[i, r]
                # projected gradient: at the bound W = 0 only a negative gradient counts
                gradients[t, i] = abs(min(grad, 0) if w[i, t] == 0 else grad)
                if hess != 0:
                    w[i, t] = max(w[i, t] - grad / hess, 0)
    violation = gradients.dtype.type(0)  # float32, as scikit-learn accumulates it
    for t in range(k):
        for i in range(n):
            violation += gradients[t, i]
    return violation


def fit_coordinate_descent(x: np.ndarray, w: np.ndarray, h: np.ndarray, tol: float,
                           max_iter: int) -> tuple[np.ndarray, int]:
    """(H, iterations) of scikit-learn's `_fit_coordinate_descent` without regularisation
    or shuffling, from W (n, K) and H (K, C) (both updated; all float32, X (n, C))."""
    w = np.ascontiguousarray(w)
    ht = np.ascontiguousarray(h.T)
    scratch = np.empty((w.shape[1], max(len(x), len(ht))), x.dtype)
    first = None
    for iteration in range(1, max_iter + 1):
        violation = _update(x, w, ht, scratch)  # W
        violation += _update(x.T, ht, w, scratch)  # H
        if iteration == 1:
            first = violation
        if first == 0 or violation / first <= tol:
            break
    return ht.T, iteration


def _update(x: np.ndarray, w: np.ndarray, ht: np.ndarray, scratch: np.ndarray) -> float:
    # the products as scikit-learn's `_update_coordinate_descent` forms them
    hht = np.dot(ht.T, ht)
    xht = x @ ht
    return update(w, hht, xht, scratch[:, :len(w)])
