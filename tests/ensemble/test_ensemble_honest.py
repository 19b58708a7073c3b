"""The honest estimate never lets a scored fold's rows into the selection that it scores."""

from __future__ import annotations

import numpy as np
import pytest

import bst_search.ensemble.honest as honest_mod
from bst_search.ensemble.honest import honest_estimate
from bst_search.ensemble.selection import SelectionOptions, combine, select_ensemble
from bst_search.metrics import hf_score
from bst_search.taxonomy import N_CLASSES


def _onehotish(y: np.ndarray, pred: np.ndarray, conf: float = 0.7) -> np.ndarray:
    p = np.full((len(y), N_CLASSES), (1 - conf) / (N_CLASSES - 1))
    p[np.arange(len(y)), pred] = conf
    return p


def _data(seed: int = 0, n: int = 460) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.tile(np.arange(N_CLASSES), n // N_CLASSES)
    folds = rng.permutation(np.arange(n) % 5)
    X = []
    for _ in range(8):
        pred = np.where(rng.random(n) < rng.uniform(0.5, 0.8), y, rng.integers(0, N_CLASSES, n))
        X.append(_onehotish(y, pred, conf=rng.uniform(0.3, 0.8)))
    return np.stack(X).astype(np.float32), y, folds


def test_selection_never_sees_the_scored_fold(monkeypatch):
    X, y, folds = _data()
    seen: list[np.ndarray] = []

    def spy(X_, y_, *, rows=None, options=None, stats=None):
        seen.append(np.asarray(rows).copy())
        return select_ensemble(X_, y_, rows=rows, options=options, stats=stats)

    monkeypatch.setattr(honest_mod, "select_ensemble", spy)
    opts = SelectionOptions(max_size=6, weights="nelder-mead", top_k=5, init_size=2, nm_maxfev=30)
    res = honest_estimate(X, y, folds, opts)
    assert len(seen) == 5 and res.folds == [0, 1, 2, 3, 4]
    for k, rows in zip(res.folds, seen, strict=True):
        assert not np.isin(rows, np.flatnonzero(folds == k)).any(), f"fold {k} leaked"
        assert np.array_equal(np.sort(rows), np.flatnonzero(folds != k))
    assert res.fold_sizes == [int((folds == k).sum()) for k in range(5)]


def test_adversarial_fold_rows_do_not_steer_the_selection():
    """Candidate B is perfect on each fold's own rows only if it may look at them.

    For each fold k: B_k is perfect on fold k and wrong elsewhere, A is decent everywhere.
    Selection on the other folds must pick A (B_k is worse there), so fold k is scored
    with A's predictions, not with a perfect oracle.
    """
    rng = np.random.default_rng(1)
    n = 460
    y = np.tile(np.arange(N_CLASSES), n // N_CLASSES)
    folds = np.arange(n) % 5
    a_pred = np.where(rng.random(n) < 0.7, y, (y + 1) % N_CLASSES)
    cands = [_onehotish(y, a_pred)]
    for k in range(5):
        cands.append(_onehotish(y, np.where(folds == k, y, (y + 3) % N_CLASSES), conf=0.95))
    X = np.stack(cands).astype(np.float32)
    opts = SelectionOptions(max_size=4)
    res = honest_estimate(X, y, folds, opts)
    a_only = [hf_score(y[folds == k], a_pred[folds == k]) for k in range(5)]
    assert res.per_fold == pytest.approx(a_only)
    assert max(res.per_fold) < 0.9
    # the in-sample selection, by contrast, is not fooled either (B's are bad overall) ...
    full = select_ensemble(X, y, options=opts)
    assert full.counts[0] > 0
    # ... but an oracle that may look at fold k would be perfect there
    for k in range(5):
        w = np.zeros(6)
        w[1 + k] = 1
        assert hf_score(y[folds == k], combine(X, w, np.flatnonzero(folds == k)).argmax(1)) == 1.0


def test_honest_is_below_selected_on_noise():
    """Pure-noise candidates: selection overfits its rows, the honest estimate does not."""
    rng = np.random.default_rng(2)
    n = 460
    y = np.tile(np.arange(N_CLASSES), n // N_CLASSES)
    folds = rng.permutation(np.arange(n) % 5)
    X = rng.dirichlet(np.ones(N_CLASSES), size=(40, n)).astype(np.float32)
    opts = SelectionOptions(max_size=10)
    sel = select_ensemble(X, y, options=opts)
    hon = honest_estimate(X, y, folds, opts)
    assert hon.mean < sel.score - 0.02
    d = hon.to_dict()
    assert d["score"] == pytest.approx(np.mean(d["per_fold"]))
    assert len(d["per_fold_official"]) == 5


def test_needs_two_folds():
    X, y, _ = _data()
    with pytest.raises(ValueError, match="at least 2 folds"):
        honest_estimate(X, y, np.zeros(len(y), dtype=int))
