"""Dimensionality reduction of a layer's channels by NMF (method.md section 5).

Per layer, K features (8) are fitted on the value attribution of the extra observations:
scikit-learn's NMF on the rows of `concat([max(attr, 0), max(-attr, 0)], batch axis)`
flattened to (N*h*w, C). `components_` (K, C) are the feature directions.

Fitting follows the reference tool, whose lucid `ChannelReducer` wrapped
`sklearn.decomposition.NMF(n_components)` with default arguments -- in the scikit-learn of
its time (0.2x): init 'nndsvd' (NNDSVD, because K <= min(rows, C)), solver 'cd'
(coordinate descent), Frobenius loss, tol 1e-4, max_iter 200, no regularisation, no
shuffling. We pass those explicitly (today's default init is 'nndsvda', which would fit
something else). Three things make it fast on millions of rows without changing what is
fitted:

- All-zero rows are dropped: with NNDSVD and coordinate descent such rows keep zero
  coefficients and add nothing to any update.
- NNDSVD needs the top-K singular triplets of the (rows, C) matrix; scikit-learn finds them
  with a randomized SVD (seeded by `random_state`), which took 60% of the fit. With
  C <= 64 columns the exact SVD comes from the C x C Gram matrix (float64) in one pass;
  NNDSVD is then built from it as scikit-learn does and handed over as init='custom'.
  Nothing is random any more (`random_state` matters only for other inits).
- The coordinate descent itself is scikit-learn's algorithm and compiled sweep, organised
  for many rows (`coordinate_descent`): cache-sized chunks of rows on torch's threads, the
  products X H^T, X^T W and W^T W fused into the same pass. BLAS runs single-threaded:
  OpenBLAS splits the tall-and-thin product X @ H.T across threads so badly that it was
  25 times slower with 2 threads.

`transform` is scikit-learn's `NMF.transform` (non-negative least squares against the
fixed components, by coordinate descent from zero; the same iterates, X H^T computed once).
A zero row's coefficients start at zero, have zero gradient and add nothing to the
stopping criterion, so they stay zero: whether zero rows are in a block changes nothing
(gathering the non-zero rows cost more than sweeping the zero ones).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from .attribution import AnalysisError

#: Rows per call of scikit-learn's transform (bounds its working memory).
TRANSFORM_BLOCK_ROWS = 1 << 21
#: Rows per chunk of the fit's coordinate descent (X, W and X H^T of a chunk in L2 cache).
FIT_CHUNK_ROWS = 1 << 13

try:  # scikit-learn's compiled coordinate-descent sweep (private; the fit falls back to
    # scikit-learn's own NMF.fit if a future version moves it)
    from sklearn.decomposition._cdnmf_fast import _update_cdnmf_fast
except ImportError:  # pragma: no cover
    _update_cdnmf_fast = None


@dataclass(frozen=True)
class NMFSettings:
    """How a layer's features are fitted."""

    n_features: int = 8
    """K, the number of features."""
    random_state: int = 0
    """Seed for scikit-learn's random initialisations (NNDSVD, the default, has none)."""
    init: str = "nndsvd"
    """'nndsvd' (the default when the reference tool was written; computed from an exact
    SVD here) or any other scikit-learn init, which scikit-learn then computes."""
    max_iter: int = 200
    """Coordinate-descent iterations at most (scikit-learn's default)."""
    tol: float = 1e-4
    """Stopping tolerance of the fit (scikit-learn's default)."""


class LayerNMF:
    """Fitted features of one layer: directions (K, C) and the maps to and from them."""

    def __init__(self, components: np.ndarray, *, settings: NMFSettings = NMFSettings(),
                 n_iter: int = 0, converged: bool = True):
        components = np.asarray(components, dtype=np.float32)
        if components.ndim != 2 or np.any(components < 0) or not np.all(np.isfinite(components)):
            raise AnalysisError("NMF components must be a finite non-negative (K, C) array")
        self.components = components
        self.settings = settings
        self.n_iter = n_iter
        self.converged = converged
        self._model = _fitted_model(components, settings)

    @property
    def n_features(self) -> int:
        return int(self.components.shape[0])

    @property
    def feature_directions(self) -> np.ndarray:
        """(K, C): the features as directions in channel space (`components_`)."""
        return self.components

    @property
    def feature_norms(self) -> np.ndarray:
        """(K,) `components_.sum(axis=1)`, the scale given to reduced attribution."""
        return self.components.sum(axis=1)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Feature amounts (..., K) >= 0 of non-negative (..., C): NNLS row by row."""
        x = np.asarray(x)
        if x.shape[-1] != self.components.shape[1]:
            raise AnalysisError(f"expected {self.components.shape[1]} channels, got "
                                f"shape {x.shape}")
        if x.size and (np.any(x < 0) or not np.all(np.isfinite(x))):
            raise AnalysisError("NMF transforms finite non-negative values only; split signed "
                                "attribution with max(x, 0) and max(-x, 0)")
        flat = x.reshape(-1, x.shape[-1]).astype(np.float32, copy=False)
        out = np.zeros((len(flat), self.n_features), dtype=np.float32)
        if not self.components.any():
            return out.reshape(x.shape[:-1] + (self.n_features,))
        with threadpool_limits(1, user_api="blas"):
            if _update_cdnmf_fast is None:  # pragma: no cover
                rows = np.flatnonzero(flat.max(axis=1, initial=0) > 0)
                for start in range(0, len(rows), TRANSFORM_BLOCK_ROWS):
                    block = rows[start:start + TRANSFORM_BLOCK_ROWS]
                    out[block] = self._model.transform(flat[block])
            else:  # zero rows stay zero and add nothing to the stopping sum: no gathering
                for start in range(0, len(flat), TRANSFORM_BLOCK_ROWS):
                    out[start:start + TRANSFORM_BLOCK_ROWS] = self._transform_block(
                        flat[start:start + TRANSFORM_BLOCK_ROWS])
        return out.reshape(x.shape[:-1] + (self.n_features,))

    def _transform_block(self, x: np.ndarray) -> np.ndarray:
        """scikit-learn's `NMF.transform` of (n, C) float32: coordinate descent on W from
        zero with H fixed, stopping when the summed projected gradient falls below tol
        times the first one. The same iterates, without what its general form repeats:
        X H^T is computed once (scikit-learn recomputes the same product every
        iteration), the input is not re-validated, and each sweep runs on chunks of rows
        that stay in cache (rows are independent; only the float32 order of the stopping
        sum differs)."""
        ht = np.ascontiguousarray(self.components.T)
        hht = ht.T @ ht
        xht = x @ ht
        w = np.zeros((len(x), self.n_features), dtype=np.float32)
        order = np.arange(self.n_features, dtype=np.intp)
        violation_init = None
        for _ in range(self.settings.max_iter):
            violation = 0.0
            for start in range(0, len(x), FIT_CHUNK_ROWS):
                end = start + FIT_CHUNK_ROWS
                violation += _update_cdnmf_fast(w[start:end], hht, xht[start:end], order)
            if violation_init is None:
                violation_init = violation
            if violation_init == 0 or violation / violation_init <= self.settings.tol:
                break
        return w

    def inverse_transform(self, y: np.ndarray) -> np.ndarray:
        """Channels (..., C) of feature amounts (..., K): y @ components."""
        return np.asarray(y, dtype=np.float32) @ self.components

    def reduce_attribution(self, attr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Attribution (..., C) -> (features (..., K), residual (...)), method.md 5.4.

        attr_r = T(max(attr, 0)) - T(max(-attr, 0));
        res = sum_C(attr - (T^-1(max(attr_r, 0)) - T^-1(max(-attr_r, 0))))
            = sum_C(attr) - attr_r @ sum_C(components);
        then attr_r *= components.sum(axis=1).
        """
        attr = np.asarray(attr, dtype=np.float32)
        # The two non-negative least-squares problems are independent: one thread each
        # (scikit-learn's coordinate descent and single-threaded BLAS release the GIL),
        # so both cores work; each call is the same as alone, so are the results.
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(2) as pool:
            positive, negative = pool.map(self.transform,
                                          (np.maximum(attr, 0), np.maximum(-attr, 0)))
        reduced = positive - negative
        # T^-1(max(r, 0)) - T^-1(max(-r, 0)) = r @ components (T^-1 is linear), so the
        # residual's channel sum is sum_C(attr) - r @ components.sum(axis=1): no (..., C)
        # reconstruction is built (float64 sums: the difference of near-equal totals)
        norms = self.feature_norms
        residual = (attr.sum(axis=-1, dtype=np.float64)
                    - reduced.astype(np.float64) @ norms.astype(np.float64))
        return reduced * norms, residual.astype(np.float32)


def signed_rows(attr: np.ndarray) -> np.ndarray:
    """concat([max(attr, 0), max(-attr, 0)], batch axis) flattened to (rows, C)."""
    attr = np.asarray(attr, dtype=np.float32)
    c = attr.shape[-1]
    return np.concatenate([np.maximum(attr, 0).reshape(-1, c),
                           np.maximum(-attr, 0).reshape(-1, c)])


def _nonzero_signed_rows(attr: np.ndarray) -> np.ndarray:
    """`signed_rows(attr)` without its all-zero rows, one part at a time (at 1a the full
    signed rows are 2 GB; this never holds them)."""
    attr = np.asarray(attr, dtype=np.float32)
    parts = []
    for sign in (1, -1):
        part = np.negative(attr) if sign < 0 else attr.copy()
        np.maximum(part, 0, out=part)
        flat = part.reshape(-1, attr.shape[-1])
        parts.append(flat[flat.max(axis=1) > 0])
        del part, flat
    return np.concatenate(parts)


def fit_nmf(attr: np.ndarray, settings: NMFSettings = NMFSettings()) -> LayerNMF:
    """Fit K features to attribution (N, h, w, C) (or any (..., C)).

    All-zero attribution has no features to find: the result has zero components, so
    every transform is zero and all attribution is residual (well defined, never a crash
    inside scikit-learn).
    """
    attr = np.asarray(attr)
    if attr.ndim < 2:
        raise AnalysisError(f"attribution must be (..., C), got shape {attr.shape}")
    channels = attr.shape[-1]
    k = settings.n_features
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise AnalysisError(f"the number of NMF features must be an integer >= 1, not {k!r}")
    if k > channels:
        raise AnalysisError(f"{k} NMF features cannot be fitted to a layer with {channels} "
                            f"channels: choose at most {channels} features")
    if not np.all(np.isfinite(attr)):
        raise AnalysisError("attribution contains NaN or infinite values; NMF cannot be fitted")
    rows = _nonzero_signed_rows(attr)
    if len(rows) == 0:
        return LayerNMF(np.zeros((k, channels)), settings=settings)
    if len(rows) < k:  # NNDSVD needs K <= rows; zero rows change nothing else
        rows = np.concatenate([rows, np.zeros((k - len(rows), channels), rows.dtype)])
    model = _model(settings)
    with threadpool_limits(1, user_api="blas"):
        if settings.init == "nndsvd" and _update_cdnmf_fast is not None:
            w, h = nndsvd(rows, k)
            h, n_iter = coordinate_descent(rows, w, h, tol=settings.tol,
                                           max_iter=settings.max_iter)
            return LayerNMF(h, settings=settings, n_iter=n_iter,
                            converged=n_iter < settings.max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            if settings.init == "nndsvd":
                w, h = nndsvd(rows, k)
                model.set_params(init="custom")
                model.fit(rows, W=w, H=h)
            else:
                model.fit(rows)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return LayerNMF(model.components_, settings=settings, n_iter=int(model.n_iter_),
                    converged=converged)


def coordinate_descent(x: np.ndarray, w: np.ndarray, h: np.ndarray, *, tol: float = 1e-4,
                       max_iter: int = 200, threads: int | None = None
                       ) -> tuple[np.ndarray, int]:
    """scikit-learn's NMF coordinate descent (`_fit_coordinate_descent`, Frobenius loss,
    no regularisation, no shuffling), from W (n, K) and H (K, C); returns (H, iterations).

    The same algorithm, organised for many rows: an iteration updates W with H fixed, one
    sweep over the K coordinates of every row, then H with the new W fixed. A row's W
    update depends only on that row, X H^T and H H^T, so rows are updated in chunks that
    stay in cache, on `threads` threads, each chunk by scikit-learn's own compiled sweep
    (`_update_cdnmf_fast`); the chunk's X and new W are used at once for the H update's
    X^T W and W^T W, accumulated in float64. scikit-learn instead makes separate passes
    over all rows for X H^T, the sweep (one pass per coordinate), X^T W and W^T W, in
    float32. The iterates are the same up to that rounding (the float64 sums are closer to
    the exact ones; tests/test_nmf.py compares both with a float64 fit); the stopping rule is
    scikit-learn's: the summed projected gradient falls below `tol` times the first one.
    `w` is updated in place. `threads` defaults to torch's thread count.
    """
    threads = threads or max(1, torch.get_num_threads())
    w = np.ascontiguousarray(w)
    ht = np.ascontiguousarray(h.T)
    n, k = w.shape
    order = np.arange(k, dtype=np.intp)
    chunks = [(s, min(s + FIT_CHUNK_ROWS, n)) for s in range(0, n, FIT_CHUNK_ROWS)]
    shares = [chunks[i::threads] for i in range(threads)]

    def update_rows(share: list[tuple[int, int]], hht: np.ndarray
                    ) -> tuple[float, np.ndarray, np.ndarray]:
        violation = 0.0
        xtw = np.zeros((x.shape[1], k))
        wtw = np.zeros((k, k))
        for start, end in share:
            w_rows, x_rows = w[start:end], x[start:end]
            violation += _update_cdnmf_fast(w_rows, hht, x_rows @ ht, order)
            xtw += x_rows.T @ w_rows
            wtw += w_rows.T @ w_rows
        return violation, xtw, wtw

    violation_init = None
    n_iter = 0
    with ThreadPoolExecutor(threads) as pool:
        for n_iter in range(1, max_iter + 1):
            parts = list(pool.map(update_rows, shares, [ht.T @ ht] * threads))
            violation = sum(p[0] for p in parts)
            xtw = sum(p[1] for p in parts).astype(x.dtype)
            wtw = sum(p[2] for p in parts).astype(x.dtype)
            violation += _update_cdnmf_fast(ht, wtw, xtw, order)
            if violation_init is None:
                violation_init = violation
            if violation_init == 0 or violation / violation_init <= tol:
                break
    return ht.T.copy(), n_iter


def _model(settings: NMFSettings) -> NMF:
    return NMF(n_components=settings.n_features, init=settings.init, solver="cd",
               beta_loss="frobenius", tol=settings.tol, max_iter=settings.max_iter,
               random_state=settings.random_state)


def _fitted_model(components: np.ndarray, settings: NMFSettings) -> NMF:
    """A scikit-learn NMF whose fitted state is `components` (for transform)."""
    model = _model(settings)
    model.set_params(n_components=components.shape[0])
    model.components_ = components
    model.n_components_ = components.shape[0]
    model.n_features_in_ = components.shape[1]
    return model


def nndsvd(rows: np.ndarray, k: int, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """NNDSVD initial factors (W (rows, k), H (k, C)) of non-negative `rows`.

    Boutsidis & Gallopoulos (2008), as scikit-learn builds it: the first singular pair in
    absolute value; for each further pair (u, v) the larger of its positive and negative
    parts; entries below `eps` set to zero. The SVD is exact: V and S from the
    eigendecomposition of the C x C Gram matrix, U = X V / S.
    """
    gram = np.zeros((rows.shape[1], rows.shape[1]))
    for start in range(0, len(rows), TRANSFORM_BLOCK_ROWS):
        block = rows[start:start + TRANSFORM_BLOCK_ROWS].astype(np.float64)
        gram += block.T @ block
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    order = np.argsort(eigenvalues)[::-1][:k]
    s = np.sqrt(np.maximum(eigenvalues[order], 0.0))
    v = eigenvectors[:, order]
    u = rows @ (v / np.where(s > 0, s, 1.0)).astype(rows.dtype)
    w = np.zeros((len(rows), k), dtype=rows.dtype)
    h = np.zeros((k, rows.shape[1]), dtype=rows.dtype)
    w[:, 0] = np.sqrt(s[0]) * np.abs(u[:, 0])
    h[0] = np.sqrt(s[0]) * np.abs(v[:, 0])
    for j in range(1, k):
        x, y = u[:, j], v[:, j]
        parts = [(np.maximum(x, 0), np.maximum(y, 0)), (np.maximum(-x, 0), np.maximum(-y, 0))]
        norms = [(np.linalg.norm(a), np.linalg.norm(b)) for a, b in parts]
        side = 0 if norms[0][0] * norms[0][1] > norms[1][0] * norms[1][1] else 1
        (a, b), (na, nb) = parts[side], norms[side]
        if na * nb == 0:
            continue  # a null direction: the component starts (and stays) at zero
        scale = np.sqrt(s[j] * na * nb)
        w[:, j] = scale * a / na
        h[j] = scale * b / nb
    w[w < eps] = 0
    h[h < eps] = 0
    return w, h
