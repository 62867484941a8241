"""NMF features (method.md 5): fit, transform and the reduction of attribution."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.decomposition import NMF

from gallery.attribution import AnalysisError
from gallery.nmf import LayerNMF, NMFSettings, fit_nmf, nndsvd, signed_rows


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
    reference = NMF(n_components=3, init="nndsvd", solver="cd", beta_loss="frobenius",
                    tol=1e-4, max_iter=200, random_state=0).fit(signed_rows(attr))
    # all-zero rows are dropped before fitting: the same components, to float rounding
    assert_allclose(ours.components, reference.components_, rtol=1e-4, atol=1e-5)
    assert ours.converged


@pytest.mark.parametrize("threads", [1, 2])
def test_coordinate_descent_is_scikit_learns_algorithm(threads, monkeypatch):
    from sklearn.decomposition._nmf import _fit_coordinate_descent  # the reference loop

    import gallery.nmf as nmf_module

    monkeypatch.setattr(nmf_module, "FIT_CHUNK_ROWS", 64)  # many chunks on both threads
    rows = signed_rows(_low_rank_attribution(seed=5, k=4, c=10)).astype(np.float64)
    rows = rows[rows.max(axis=1) > 0]
    rows += 0.05 * np.random.default_rng(0).random(rows.shape)  # not exactly low rank
    w, h = nndsvd(rows, 4)
    _, h_ref, n_ref = _fit_coordinate_descent(rows, w.copy(), h.copy(), tol=1e-4,
                                                  max_iter=200, shuffle=False)
    h_ours, n_ours = nmf_module.coordinate_descent(rows, w.copy(), h.copy(), threads=threads)
    # float64 on both sides: only the order of the sums differs
    assert n_ours == n_ref > 5
    assert_allclose(h_ours, h_ref, rtol=1e-9, atol=1e-12)


def test_exact_nndsvd_equals_scikit_learns_randomized_one():
    from sklearn.decomposition._nmf import _initialize_nmf  # the reference construction

    rows = signed_rows(_low_rank_attribution(seed=3, k=4, c=10))
    rows = rows[rows.max(axis=1) > 0]
    w, h = nndsvd(rows, 4)
    w_ref, h_ref = _initialize_nmf(rows, 4, init="nndsvd", random_state=0)
    assert_allclose(h, h_ref, rtol=1e-3, atol=1e-5)
    assert_allclose(w, w_ref, rtol=1e-3, atol=1e-5)


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
    reference = NMF(n_components=3, init="nndsvd", random_state=0)
    reference.components_ = nmf.components
    reference.n_features_in_ = rows.shape[1]
    assert_allclose(nmf.transform(rows), reference.transform(rows), rtol=1e-5, atol=1e-7)
    # N-D in, N-D out; zero rows give zero amounts
    amounts = nmf.transform(np.maximum(attr, 0))
    assert amounts.shape == attr.shape[:-1] + (3,)
    assert_allclose(amounts[np.maximum(attr, 0).max(-1) == 0], 0)


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
