"""The on-disk candidate store, diverse pre-selection, and the working set of a large sweep."""

from __future__ import annotations

import numpy as np
import pytest

from bst_search.ensemble.honest import honest_estimate
from bst_search.ensemble.selection import (
    SelectionOptions,
    candidate_stats,
    preselect,
    select_ensemble,
    single_scores,
    working_set,
)
from bst_search.ensemble.store import PredictionStore
from bst_search.taxonomy import N_CLASSES


def _candidates(n_cand: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax outputs of noisy copies of the truth, in families that share errors."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, size=n)
    folds = rng.permutation(np.arange(n) % 5)
    onehot = np.eye(N_CLASSES, dtype=np.float32)[y]
    fam = [rng.standard_normal((n, N_CLASSES)).astype(np.float32) for _ in range(4)]
    X = np.empty((n_cand, n, N_CLASSES), dtype=np.float32)
    for c in range(n_cand):
        z = rng.uniform(1.0, 3.0) * onehot + fam[c % 4] + 0.5 * rng.standard_normal((n, N_CLASSES))
        z = np.exp(z - z.max(axis=1, keepdims=True))
        X[c] = z / z.sum(axis=1, keepdims=True)
    return X, y, folds


def test_store_round_trip_in_float16_and_float32(tmp_path):
    X, _, _ = _candidates(5, 40)
    for dtype, rtol in (("float16", 2.0**-11), ("float32", 0.0)):
        st = PredictionStore(5, 40, dtype=dtype, directory=tmp_path)
        for c in range(5):
            assert st.append(X[c]) == c
        assert st.shape == (5, 40, N_CLASSES)
        got = st.take([3, 0])
        assert got.dtype == np.float32
        assert np.allclose(got, X[[3, 0]], rtol=rtol, atol=0)
        assert np.array_equal(st.argmax(), st.take(range(5)).argmax(axis=2))
        assert list(tmp_path.iterdir()) == [], "the store's file is unnamed"
        st.close()
    st = PredictionStore(1, 40, directory=tmp_path)
    with pytest.raises(ValueError, match=r"shape \(40, 23\)"):
        st.append(X[0, :10])
    st.append(X[0])
    with pytest.raises(ValueError, match="full"):
        st.append(X[1])
    with pytest.raises(IndexError):
        st.take([1])


def test_preselect_skips_near_duplicates():
    X, y, _ = _candidates(12, 300)
    X[1] = X[0]  # an exact copy of candidate 0, and a copy of candidate 2 with one row changed
    X[3] = X[2]
    X[3, 0] = np.roll(X[3, 0], 1)
    pred = X.argmax(axis=2).astype(np.int8)
    rows = np.arange(300)
    stats = candidate_stats(X, "prob")
    singles = single_scores(stats, y, rows, "strict")
    plain = preselect(pred, y, rows, singles, 6)
    assert np.array_equal(plain, np.sort(np.argsort(-singles, kind="stable")[:6]))
    assert {0, 1} <= set(plain), "plain top-k keeps both copies"
    diverse = preselect(pred, y, rows, singles, 6, diversity=0.01)
    assert len(diverse) == 6 and not ({0, 1} <= set(diverse)) and not ({2, 3} <= set(diverse))
    assert np.argmax(singles) in diverse, "the best candidate is always kept"
    assert np.array_equal(preselect(pred, y, rows, singles, None, 0.5), np.arange(12))


def test_selection_on_the_working_set_equals_selection_on_all():
    """Only the working set is read into memory: it must not change any ensemble."""
    X, y, folds = _candidates(40, 400, seed=1)
    pred = X.argmax(axis=2).astype(np.int8)
    opts = SelectionOptions(max_size=8, top_k=6, diversity=0.02, weights="nelder-mead",
                            init_size=2, nm_maxfev=30)
    keep = working_set(pred, y, folds, opts, metric_top=3)
    assert 6 <= len(keep) < 40
    full = select_ensemble(X, y, options=opts)
    part = select_ensemble(np.ascontiguousarray(X[keep]), y, options=opts)
    assert np.array_equal(keep[part.pool], full.pool)
    assert np.array_equal(full.weights[keep], part.weights) and full.weights.sum() == pytest.approx(
        full.weights[keep].sum())
    h_full = honest_estimate(X, y, folds, opts)
    h_part = honest_estimate(np.ascontiguousarray(X[keep]), y, folds, opts)
    assert h_full.per_fold == h_part.per_fold and h_full.pooled_strict == h_part.pooled_strict
    # SK's pool on every training part (top-3 by single score) is in the working set
    stats = candidate_stats(X, "prob")
    for k in np.unique(folds):
        top = np.argsort(-single_scores(stats, y, np.flatnonzero(folds != k), "strict"),
                         kind="stable")[:3]
        assert set(top) <= set(keep)
    # no pre-selection: everything is read
    assert np.array_equal(working_set(pred, y, folds, SelectionOptions()), np.arange(40))
