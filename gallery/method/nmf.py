"""Dimensionality reduction of a layer's channels by NMF (method.md section 5).

Per layer, K features (8) are fitted on the value attribution of the extra observations:
scikit-learn's NMF on the rows of `concat([max(attr, 0), max(-attr, 0)], batch axis)`
flattened to (N*h*w, C), less the rows that are all zero. `components_` (K, C) are the
feature directions.

The fit is scikit-learn's public `NMF` with the settings of the reference tool, whose lucid
`ChannelReducer` wrapped `NMF(n_components)` with the defaults of scikit-learn 0.2x: init
'nndsvd', solver 'cd' (coordinate descent), Frobenius loss, tol 1e-4, max_iter 200. They
are passed explicitly: today's default init, 'nndsvda', fits something else. NNDSVD's
initial factors come from an exact SVD (`nndsvd`, one pass over the rows): the factors
its randomized SVD approximates (exactly for C <= 18 columns; at 2a's 32, up to 2e-4 of
the largest entry off), in a fraction of the time. From them, the coordinate descent is
scikit-learn's (`_fit_coordinate_descent`) with its row updates compiled and blocked
(gallery.method.compiled): the same components and iterations, bit for bit, as `NMF.fit`
with init='custom' (tests/test_nmf.py), and 1.77x faster at coinrun.jd's 1a, where the
rows (tens of millions) no longer come from memory once per feature (docs/engine.md).
Other inits are left to scikit-learn's `NMF`. BLAS runs on one thread during the fit:
OpenBLAS splits the tall-and-thin products of the coordinate descent across threads so
badly that two threads made the fit 3 to 8 times slower on a 2-core machine
(benchmarks/bench_nmf.py).

Transforms -- feature amounts of activations, the reduction of attribution -- solve each
row's non-negative least squares against the fixed components as `NMF.transform` does
(`_coordinate_descent`), written in torch so that they run on any torch device. On the
CPU they are faster than `NMF.transform` at the large layers and as fast at the small ones
(benchmarks/bench_nmf.py). They are thousands of small operations, each a fork and join of
torch's threads: on a CPU that other processes keep busy, set OMP_WAIT_POLICY=passive (or
fewer torch threads), else each join can wait for a descheduled thread.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from gallery.method.attribution import AnalysisError


@dataclass(frozen=True)
class NMFSettings:
    """How a layer's features are fitted."""

    n_features: int = 8
    """K, the number of features."""
    random_state: int = 0
    """Seed of scikit-learn's random inits (NNDSVD is computed exactly, without one)."""
    init: str = "nndsvd"
    """scikit-learn's init ('nndsvd': the default when the reference tool was written)."""
    max_iter: int = 200
    """Coordinate-descent iterations at most (scikit-learn's default)."""
    tol: float = 1e-4
    """Stopping tolerance of the fit and the transforms (scikit-learn's default)."""


class LayerNMF:
    """Fitted features of one layer: directions (K, C) and the maps to and from them.

    `transform` and `reduce_attribution` compute on `device` (a torch device, 'cpu' by
    default) unless given another; they accept numpy arrays or torch tensors and return
    numpy arrays.
    """

    def __init__(self, components: np.ndarray, *, settings: NMFSettings = NMFSettings(),
                 n_iter: int = 0, converged: bool = True, device: Any = "cpu"):
        components = np.asarray(components, dtype=np.float32)
        if components.ndim != 2 or np.any(components < 0) or not np.all(np.isfinite(components)):
            raise AnalysisError("NMF components must be a finite non-negative (K, C) array")
        self.components = components
        self.settings = settings
        self.n_iter = n_iter
        self.converged = converged
        self.device = _device(device)

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

    def transform(self, x: np.ndarray | torch.Tensor, device: Any = None) -> np.ndarray:
        """Feature amounts (..., K) >= 0 of non-negative (..., C): NNLS row by row."""
        x = self._tensor(x, device)
        # one pass: NaN propagates to both ends, -inf shows as the least, +inf as the most
        low, high = torch.aminmax(x) if x.numel() else (torch.zeros(()), torch.zeros(()))
        if not (bool(low >= 0) and bool(torch.isfinite(high))):
            raise AnalysisError("NMF transforms finite non-negative values only; split signed "
                                "attribution with max(x, 0) and max(-x, 0)")
        return self._amounts(x).cpu().numpy()

    def inverse_transform(self, y: np.ndarray) -> np.ndarray:
        """Channels (..., C) of feature amounts (..., K): y @ components."""
        return np.asarray(y, dtype=np.float32) @ self.components

    def reduce_attribution(self, attr: np.ndarray | torch.Tensor, device: Any = None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Attribution (..., C) -> (features (..., K), residual (...)), method.md 5.4.

        attr_r = T(max(attr, 0)) - T(max(-attr, 0));
        res = sum_C(attr - (T^-1(max(attr_r, 0)) - T^-1(max(-attr_r, 0))))
            = sum_C(attr) - attr_r @ sum_C(components);
        then attr_r *= components.sum(axis=1).
        """
        attr = self._tensor(attr, device)
        if not bool(torch.isfinite(attr).all()):
            raise AnalysisError("attribution contains NaN or infinite values")
        reduced = self._amounts(attr.clamp(min=0)) - self._amounts((-attr).clamp(min=0))
        # T^-1 is linear, so the residual's channel sum needs no (..., C) reconstruction;
        # float64: it is the difference of near-equal totals
        norms = torch.from_numpy(self.feature_norms).to(attr.device)
        residual = attr.sum(dim=-1, dtype=torch.float64) - reduced.double() @ norms.double()
        return ((reduced * norms).cpu().numpy(),
                residual.to(torch.float32).cpu().numpy())

    def _tensor(self, x: np.ndarray | torch.Tensor, device: Any) -> torch.Tensor:
        with warnings.catch_warnings():  # read-only arrays (unit stores): only read here
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            x = torch.as_tensor(x).detach()
        x = x.to(_device(device) if device is not None else self.device, torch.float32)
        if x.ndim < 1 or x.shape[-1] != self.components.shape[1]:
            raise AnalysisError(f"expected {self.components.shape[1]} channels, got "
                                f"shape {tuple(x.shape)}")
        return x

    def _amounts(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.from_numpy(self.components).to(x.device)
        w = _coordinate_descent(x.reshape(-1, x.shape[-1]), h, self.settings.tol,
                                self.settings.max_iter)
        return w.reshape(x.shape[:-1] + (self.n_features,))


def _coordinate_descent(x: torch.Tensor, h: torch.Tensor, tol: float, max_iter: int
                        ) -> torch.Tensor:
    """W (n, K) >= 0 minimising ||x - W h|| for fixed h (K, C): scikit-learn's
    `NMF.transform` (solver 'cd'). From W = 0, each iteration updates coordinate k of
    every row in turn, W[:, k] = max(W[:, k] - grad_k / (h h^T)[k, k], 0), and stops
    when the summed absolute projected gradient falls below tol times the first
    iteration's. Rows are independent: a coordinate's update is one vector operation over
    all rows (the same iterates as scikit-learn's row loop, up to float32 rounding)."""
    hht = h @ h.T
    xht = h @ x.T  # (K, n): a coordinate of every row is contiguous
    w = torch.zeros_like(xht)
    hessians = hht.diagonal().tolist()
    first = None
    for _ in range(max_iter):
        violation = torch.zeros((), dtype=torch.float64, device=x.device)
        for k, hessian in enumerate(hessians):
            grad = hht[k] @ w - xht[k]
            # projected gradient: at the bound W = 0 only a negative gradient counts
            violation += torch.where(w[k] > 0, grad, grad.clamp(max=0)).abs().sum(
                dtype=torch.float64)
            if hessian > 0:  # else the component is zero and so is the coordinate
                w[k] = (w[k] - grad / hessian).clamp_(min=0)
        violation = violation.item()
        if first is None:
            first = violation
        if first == 0 or violation / first <= tol:
            break
    return w.T


def _device(device: Any) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise AnalysisError(f"unknown torch device {device!r}: use 'cpu', 'cuda' or "
                            "'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AnalysisError(f"device {str(device)!r}: no CUDA GPU is visible to torch; "
                            "use 'cpu'")
    return device


def signed_rows(attr: np.ndarray) -> np.ndarray:
    """concat([max(attr, 0), max(-attr, 0)], batch axis) flattened to (rows, C)."""
    attr = np.asarray(attr, dtype=np.float32)
    c = attr.shape[-1]
    return np.concatenate([np.maximum(attr, 0).reshape(-1, c),
                           np.maximum(-attr, 0).reshape(-1, c)])


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
    rows = signed_rows(attr)
    # an all-zero row (no attribution of that sign at a position) adds nothing to the
    # objective or to NNDSVD's factors: dropped, the fit at clear's 2b is 3.9x faster
    rows = rows[rows.any(axis=1)]
    if not len(rows):
        return LayerNMF(np.zeros((k, channels)), settings=settings)
    if len(rows) < k:  # NNDSVD needs K <= rows; zero rows change nothing else
        rows = np.concatenate([rows, np.zeros((k - len(rows), channels), rows.dtype)])
    with threadpool_limits(1, user_api="blas"):
        if settings.init == "nndsvd":
            from gallery.method.compiled import fit_coordinate_descent  # Numba: on first use

            components, n_iter = fit_coordinate_descent(rows, *nndsvd(rows, k), settings.tol,
                                                        settings.max_iter)
            # scikit-learn's ConvergenceWarning condition
            converged = not (n_iter == settings.max_iter and settings.tol > 0)
        else:
            model = NMF(n_components=k, init=settings.init, solver="cd",
                        beta_loss="frobenius", tol=settings.tol, max_iter=settings.max_iter,
                        random_state=settings.random_state)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                model.fit(rows)
            components, n_iter = model.components_, model.n_iter_
            converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return LayerNMF(components, settings=settings, n_iter=int(n_iter), converged=converged)


def nndsvd(rows: np.ndarray, k: int, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """NNDSVD initial factors (W (rows, k), H (k, C)) of non-negative `rows`, as
    scikit-learn's init='nndsvd' builds them (Boutsidis & Gallopoulos 2008): the first
    singular pair in absolute value; for each further pair (u, v) the larger of its
    positive and negative parts; entries below `eps` set to zero.

    The SVD is exact and takes one pass over the rows: V and S from the eigendecomposition
    of the C x C Gram matrix (float64), U = X V / S. scikit-learn's randomized SVD makes
    some ten passes over the rows (most of the fit at 1a, benchmarks/bench_nmf.py)."""
    gram = np.zeros((rows.shape[1], rows.shape[1]))
    for start in range(0, len(rows), 1 << 20):
        block = rows[start:start + (1 << 20)].astype(np.float64)
        gram += block.T @ block
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    order = np.argsort(eigenvalues)[::-1][:k]
    s = np.sqrt(np.maximum(eigenvalues[order], 0.0))
    v = eigenvectors[:, order]
    u = rows @ (v / np.where(s > 0, s, 1.0)).astype(rows.dtype)
    w = np.zeros((len(rows), k), rows.dtype)
    h = np.zeros((k, rows.shape[1]), rows.dtype)
    w[:, 0], h[0] = np.sqrt(s[0]) * np.abs(u[:, 0]), np.sqrt(s[0]) * np.abs(v[:, 0])
    for j in range(1, k):
        x, y = u[:, j], v[:, j]
        parts = [(np.maximum(x, 0), np.maximum(y, 0)), (np.maximum(-x, 0), np.maximum(-y, 0))]
        norms = [(np.linalg.norm(a), np.linalg.norm(b)) for a, b in parts]
        side = 0 if norms[0][0] * norms[0][1] > norms[1][0] * norms[1][1] else 1
        (a, b), (na, nb) = parts[side], norms[side]
        if na * nb > 0:  # else a null direction: the component starts (and stays) at zero
            scale = np.sqrt(s[j] * na * nb)
            w[:, j], h[j] = scale * a / na, scale * b / nb
    w[w < eps] = 0
    h[h < eps] = 0
    return w, h
