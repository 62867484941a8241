"""NMF features (method.md 5): fit, transform and the reduction of attribution."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from gallery.method.attribution import AnalysisError, integrated_gradients, prepare_observations
from gallery.method.compiled import BLOCK, fit_coordinate_descent
from gallery.method.nmf import LayerNMF, NMFSettings, fit_nmf, nndsvd, signed_rows
from gallery.models.policy import load_policy
from tests.reference.checkpoints import make_checkpoint, write_checkpoint

TESTS = Path(__file__).resolve().parent
DEMO = TESTS.parent / "gallery" / "demo" / "coinrun-clear.jd"
COINRUN_FRAMES = TESTS / "fixtures" / "parity" / "coinrun_real.npz"


def _reference_model(components: np.ndarray | None = None, k: int = 8) -> NMF:
    """scikit-learn's NMF with the reference settings, fitted to `components` if given."""
    k = k if components is None else components.shape[0]
    model = NMF(n_components=k, init="nndsvd", solver="cd", beta_loss="frobenius", tol=1e-4,
                max_iter=200, random_state=0)
    if components is not None:
        model.components_ = components
        model.n_components_, model.n_features_in_ = components.shape
    return model


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU is visible to torch")
    return request.param


@pytest.fixture(scope="module")
def coinrun_layer() -> tuple[np.ndarray, np.ndarray, NMF]:
    """Value attribution and activations of 16 recorded CoinRun frames at layer 2a of the
    demo checkpoint, and scikit-learn's NMF fitted to the attribution as an interface
    fits it."""
    policy = load_policy(DEMO)
    frames = np.load(COINRUN_FRAMES)["obs"]
    attr = integrated_gradients(policy, frames, "2a", "value", 10)
    with torch.inference_mode():
        acts = policy.activations(prepare_observations(policy, frames), "2a").numpy()
    return attr, acts, _reference_model().fit(signed_rows(attr))


def _low_rank_attribution(seed: int = 0, k: int = 3, c: int = 6) -> np.ndarray:
    """Signed attribution (N, h, w, C) whose positive and negative parts are sparse
    non-negative combinations of k directions."""
    rng = np.random.default_rng(seed)
    directions = rng.random((k, c)) * (rng.random((k, c)) < 0.6)
    amounts = rng.random((2, 40, 4, 5, k)) * (rng.random((2, 40, 4, 5, k)) < 0.4)
    pos, neg = amounts @ directions
    return (pos * (rng.random(pos.shape[:-1]) < 0.5)[..., None]
            - neg * (rng.random(neg.shape[:-1]) < 0.5)[..., None]).astype(np.float32)


def test_signed_rows_stack_positive_then_negative_parts():
    attr = np.array([[[[1.0, -2.0]]], [[[-3.0, 0.0]]]])
    assert_allclose(signed_rows(attr), [[1, 0], [0, 0], [0, 2], [3, 0]])


def test_fit_matches_scikit_learn_with_the_reference_settings():
    attr = _low_rank_attribution()
    ours = fit_nmf(attr, NMFSettings(n_features=3))
    rows = signed_rows(attr)
    nonzero = rows[rows.any(axis=1)]
    assert len(nonzero) < 0.9 * len(rows)  # the case has zero rows to drop
    # what the fit computes, its NNDSVD found by an exact SVD instead of a randomized one
    fitted = _reference_model(k=3).fit(nonzero)
    assert_allclose(ours.components, fitted.components_, rtol=1e-5, atol=1e-6)
    assert ours.n_iter == fitted.n_iter_
    # and the reference tool's fit on every row, zero rows included, up to float32 rounding
    reference = _reference_model(k=3).fit(rows)
    assert_allclose(ours.components, reference.components_, rtol=2e-5, atol=1e-6)
    assert ours.converged


def _scikit_learn_fit(rows: np.ndarray, w: np.ndarray, h: np.ndarray, max_iter: int = 200
                      ) -> NMF:
    """scikit-learn's NMF fitted from the initial factors (W, H), as the reference tool's."""
    model = NMF(n_components=h.shape[0], init="custom", solver="cd", beta_loss="frobenius",
                tol=1e-4, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(rows, W=w.copy(), H=h.copy())


def _fit_cases(tmp_path: Path) -> dict[str, tuple[np.ndarray, int]]:
    """Non-zero signed rows and K: the real CoinRun attribution of the demo and of two
    random clear networks at three layers each, and random non-negative rows."""
    frames = np.load(COINRUN_FRAMES)["obs"]
    cases = {}
    for name, policy in [("demo", load_policy(DEMO))] + [
            (f"random network {seed}", load_policy(write_checkpoint(
                tmp_path / f"clear-{seed}.jd", make_checkpoint("clear", seed=seed))))
            for seed in (1, 2)]:
        for layer in ("1a", "2b", "3a"):
            rows = signed_rows(integrated_gradients(policy, frames, layer, "value", 10))
            cases[f"{name} {layer}"] = rows[rows.any(axis=1)], 8
    rng = np.random.default_rng(3)
    rows = np.abs(rng.standard_normal((3000, 12), np.float32)) * (rng.random((3000, 1)) < 0.7)
    cases["random rows"] = rows[rows.any(axis=1)], 5
    return cases


def test_compiled_fit_is_scikit_learns_bit_for_bit(tmp_path):
    """The blocked, compiled coordinate descent against scikit-learn's NMF from the same
    initial factors: the same components to the bit and the same number of iterations, on
    real attribution and on random rows, converging or stopped at max_iter."""
    for name, (rows, k) in _fit_cases(tmp_path).items():
        w, h = nndsvd(rows, k)
        for max_iter in (200, 3):
            want = _scikit_learn_fit(rows, w, h, max_iter)
            got, n_iter = fit_coordinate_descent(rows, w.copy(), h.copy(), 1e-4, max_iter)
            assert n_iter == want.n_iter_, name
            assert np.array_equal(np.ascontiguousarray(got).view(np.uint32),
                                  want.components_.view(np.uint32)), f"{name}, {max_iter}"
        # more rows than one block, so blocks follow each other
        assert len(rows) > BLOCK, name


def _nndsvd_reference(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """NNDSVD as Boutsidis & Gallopoulos define it (and scikit-learn builds it), from
    LAPACK's SVD of the rows in float64."""
    u, s, vt = np.linalg.svd(rows.astype(np.float64), full_matrices=False)
    w, h = np.zeros((len(rows), k)), np.zeros((k, rows.shape[1]))
    w[:, 0], h[0] = np.sqrt(s[0]) * np.abs(u[:, 0]), np.sqrt(s[0]) * np.abs(vt[0])
    for j in range(1, k):
        pos = np.maximum(u[:, j], 0), np.maximum(vt[j], 0)
        neg = np.maximum(-u[:, j], 0), np.maximum(-vt[j], 0)
        norms = [np.linalg.norm(x) * np.linalg.norm(y) for x, y in (pos, neg)]
        x, y = pos if norms[0] > norms[1] else neg
        w[:, j] = np.sqrt(s[j] * max(norms)) * x / np.linalg.norm(x)
        h[j] = np.sqrt(s[j] * max(norms)) * y / np.linalg.norm(y)
    return np.where(w < 1e-6, 0, w), np.where(h < 1e-6, 0, h)


@pytest.mark.parametrize("case", ["low-rank", "coinrun"])
def test_nndsvd_is_the_definitions_init(case, coinrun_layer):
    """The one-pass NNDSVD against the definition on LAPACK's SVD in float64: the same
    factors up to float32 rounding (scikit-learn's randomized SVD agrees where it is exact,
    with at most 18 columns)."""
    attr, k = (_low_rank_attribution(), 3) if case == "low-rank" else (coinrun_layer[0], 8)
    rows = signed_rows(attr)
    rows = rows[rows.any(axis=1)]
    w, h = nndsvd(rows, k)
    want_w, want_h = _nndsvd_reference(rows, k)
    assert_allclose(h, want_h, rtol=0, atol=2e-5 * np.abs(want_h).max())
    assert_allclose(w, want_w, rtol=0, atol=2e-5 * np.abs(want_w).max())
    assert (h > 0).sum() >= k
    if rows.shape[1] <= 18:
        from sklearn.decomposition._nmf import _initialize_nmf

        _, sk_h = _initialize_nmf(rows.astype(np.float64), k, init="nndsvd", random_state=0)
        assert_allclose(h, sk_h, rtol=0, atol=2e-5 * np.abs(sk_h).max())


def test_other_inits_are_left_to_scikit_learn():
    attr = _low_rank_attribution(seed=4)
    a = fit_nmf(attr, NMFSettings(3, init="random", random_state=1))
    b = fit_nmf(attr, NMFSettings(3, init="random", random_state=1))
    assert_allclose(a.components, b.components)
    assert not np.allclose(a.components, fit_nmf(attr, NMFSettings(3)).components)


def test_fit_is_reproducible_and_finds_separable_directions():
    rng = np.random.default_rng(1)
    directions = np.kron(np.eye(3), np.ones((1, 2))) * rng.uniform(0.5, 2, (3, 6))
    amounts = rng.random((2, 30, 4, 4, 3)) * (rng.random((2, 30, 4, 4, 3)) < 0.5)
    pos, neg = amounts @ directions
    attr = (pos - neg).astype(np.float32)  # disjoint supports: each part stays in the cone
    a, b = fit_nmf(attr, NMFSettings(3)), fit_nmf(attr, NMFSettings(3))
    assert_allclose(a.components, b.components)
    rows = signed_rows(attr)
    rebuilt = a.inverse_transform(a.transform(rows))
    assert np.linalg.norm(rebuilt - rows) < 1e-3 * np.linalg.norm(rows)
    # the true directions, up to order and scale
    found = a.components / np.linalg.norm(a.components, axis=1, keepdims=True)
    true = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    assert_allclose(np.sort((found @ true.T).max(axis=1)), 1, atol=1e-3)


def test_transform_is_scikit_learns_transform():
    attr = _low_rank_attribution(seed=2)
    nmf = fit_nmf(attr, NMFSettings(3))
    rows = signed_rows(attr)
    reference = _reference_model(nmf.components)
    assert_allclose(nmf.transform(rows), reference.transform(rows), rtol=1e-5, atol=1e-7)
    # N-D in, N-D out; zero rows give zero amounts
    amounts = nmf.transform(np.maximum(attr, 0))
    assert amounts.shape == attr.shape[:-1] + (3,)
    assert_allclose(amounts[np.maximum(attr, 0).max(-1) == 0], 0)


def test_transform_of_real_activations_is_scikit_learns(coinrun_layer, device):
    _, acts, model = coinrun_layer
    reference = model.transform(acts.reshape(-1, acts.shape[-1])).reshape(acts.shape[:-1] + (8,))
    nmf = LayerNMF(model.components_, device=device)
    amounts = nmf.transform(acts)
    assert isinstance(amounts, np.ndarray) and amounts.shape == reference.shape
    assert_allclose(amounts, reference, rtol=1e-4, atol=1e-6 * reference.max())
    # a tensor on the device in, the same numpy out; an argument overrides the attribute
    assert_allclose(nmf.transform(torch.from_numpy(acts).to(device)), amounts)
    assert_allclose(LayerNMF(model.components_).transform(acts, device=device), amounts)
    read_only = acts.copy()
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_allclose(nmf.transform(read_only), amounts)


def test_reduction_of_real_attribution_is_scikit_learns(coinrun_layer, device):
    attr, _, model = coinrun_layer
    flat = attr.reshape(-1, attr.shape[-1])
    reduced = model.transform(np.maximum(flat, 0)) - model.transform(np.maximum(-flat, 0))
    norms = model.components_.sum(axis=1)
    features, residual = LayerNMF(model.components_, device=device).reduce_attribution(attr)
    assert features.shape == attr.shape[:-1] + (8,) and residual.shape == attr.shape[:-1]
    scale = np.abs(reduced * norms).max()
    assert_allclose(features.reshape(-1, 8), reduced * norms, rtol=1e-4, atol=1e-6 * scale)
    assert_allclose(residual.ravel(), flat.sum(-1, dtype=np.float64) - reduced @ norms,
                    rtol=1e-4, atol=1e-6 * scale)


def test_bad_devices():
    with pytest.raises(AnalysisError, match="unknown torch device"):
        LayerNMF(np.eye(3), device="gpu0")
    with pytest.raises(AnalysisError, match="unknown torch device"):
        LayerNMF(np.eye(3)).transform(np.ones((2, 3)), device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(AnalysisError, match="no CUDA GPU"):
            LayerNMF(np.eye(3), device="cuda")


def test_transform_recovers_exact_amounts():
    h = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    nmf = LayerNMF(h)
    w = np.array([[2.0, 0.0], [0.5, 3.0], [0.0, 0.0]])
    assert_allclose(nmf.transform(w @ h), w, atol=1e-4)


def test_reduce_attribution_by_hand():
    # identity-like directions scaled by 2 and 1: the reduction is exact, no residual,
    # and the scaling by the norms undoes the division by the directions' lengths
    nmf = LayerNMF(np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    attr = np.array([[4.0, -3.0, 0.5], [-2.0, 1.0, -1.5]])
    features, residual = nmf.reduce_attribution(attr)
    assert_allclose(features, [[4.0, -3.0], [-2.0, 1.0]], atol=1e-4)
    assert_allclose(residual, [0.5, -1.5], atol=1e-4)  # the third channel is not covered
    # one direction (1, 1): x = (1, 0) -> w = 1/2, rebuilt (1/2, 1/2), residual 0, norm 2
    one = LayerNMF(np.array([[1.0, 1.0]]))
    features, residual = one.reduce_attribution(np.array([[1.0, 0.0], [0.0, -3.0]]))
    assert_allclose(features, [[1.0], [-3.0]], atol=1e-4)
    assert_allclose(residual, [0.0, 0.0], atol=1e-4)


def test_residual_is_method_5_4s_formula():
    attr = _low_rank_attribution(seed=8, k=3, c=6)
    attr += 0.1 * np.random.default_rng(2).normal(size=attr.shape).astype(np.float32)
    nmf = fit_nmf(attr, NMFSettings(3))
    features, residual = nmf.reduce_attribution(attr)
    reduced = features / nmf.feature_norms
    rebuilt = (np.maximum(reduced, 0) @ nmf.components - np.maximum(-reduced, 0) @ nmf.components)
    assert_allclose(residual, (attr - rebuilt).sum(axis=-1), rtol=1e-5,
                    atol=1e-5 * np.abs(attr).max())
    assert np.abs(residual).max() > 0.01  # noise is not covered by the features


def test_feature_norms_and_directions():
    nmf = LayerNMF(np.array([[1.0, 2.0], [0.0, 0.5]]))
    assert_allclose(nmf.feature_norms, [3.0, 0.5])
    assert nmf.feature_directions.shape == (2, 2)
    assert nmf.n_features == 2


def test_all_zero_attribution_is_well_defined():
    nmf = fit_nmf(np.zeros((5, 2, 2, 8), np.float32), NMFSettings(4))
    assert nmf.components.shape == (4, 8)
    assert_allclose(nmf.components, 0)
    assert_allclose(nmf.transform(np.ones((3, 8))), 0)
    attr = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    features, residual = nmf.reduce_attribution(attr)
    assert_allclose(features, 0)
    assert_allclose(residual, attr.sum(-1), rtol=1e-6)  # everything is residual


def test_fewer_non_zero_rows_than_features():
    attr = np.zeros((3, 2, 2, 8), np.float32)
    attr[0, 0, 0, :3] = [1.0, 2.0, 0.0]
    nmf = fit_nmf(attr, NMFSettings(4))
    assert nmf.components.shape == (4, 8)
    assert np.all(np.isfinite(nmf.components))


def test_bad_inputs():
    with pytest.raises(AnalysisError, match="at most 4"):
        fit_nmf(np.ones((2, 2, 2, 4)), NMFSettings(8))
    with pytest.raises(AnalysisError, match="NaN"):
        fit_nmf(np.full((2, 1, 1, 8), np.nan), NMFSettings(2))
    with pytest.raises(AnalysisError):
        fit_nmf(np.ones((2, 1, 1, 8)), NMFSettings(0))
    nmf = LayerNMF(np.eye(3))
    with pytest.raises(AnalysisError, match="non-negative"):
        nmf.transform(-np.ones((2, 3)))
    with pytest.raises(AnalysisError, match="channels"):
        nmf.transform(np.ones((2, 4)))
    with pytest.raises(AnalysisError):
        LayerNMF(-np.eye(2))
