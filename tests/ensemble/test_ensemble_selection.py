"""Greedy forward selection on crafted OOF tensors where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from bst_search.ensemble.selection import (
    SelectionOptions,
    candidate_stats,
    combine,
    select_ensemble,
    single_scores,
    to_combine_space,
)
from bst_search.metrics import hf_score
from bst_search.taxonomy import N_CLASSES

N_PER_CLASS = 9
N = N_PER_CLASS * N_CLASSES


def _truth() -> np.ndarray:
    return np.tile(np.arange(N_CLASSES), N_PER_CLASS)


def _model(y: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """Right rows: 0.6 on the truth. Wrong rows: 0.5 on a confuser, 0.3 on the truth."""
    n = len(y)
    confuser = (y + 1) % N_CLASSES
    p = np.full((n, N_CLASSES), 0.4 / (N_CLASSES - 1))
    p[np.arange(n), y] = 0.6
    w = np.flatnonzero(wrong)
    p[w] = 0.2 / (N_CLASSES - 2)
    p[w, y[w]] = 0.3
    p[w, confuser[w]] = 0.5
    return p


def crafted() -> tuple[np.ndarray, np.ndarray]:
    """A, B, C wrong on disjoint thirds; D a copy of A; E confidently wrong everywhere.

    Any two of A, B, C are right everywhere (0.45 on the truth against 0.26), so the
    best ensemble is perfect while every single model is wrong on a third of the rows.
    """
    y = _truth()
    third = np.arange(N) % 3
    a, b, c = (_model(y, third == k) for k in range(3))
    bad = np.full((N, N_CLASSES), 0.1 / (N_CLASSES - 1))
    bad[np.arange(N), (y + 5) % N_CLASSES] = 0.9
    X = np.stack([a, b, c, a.copy(), bad]).astype(np.float32)
    return X, y


def by_hand(X: np.ndarray, y: np.ndarray, max_size: int, metric: str = "strict") -> list[float]:
    """The algorithm's definition: add the candidate whose mean with the members scores best."""
    members: list[int] = []
    curve = []
    for _ in range(max_size):
        scores = []
        for c in range(X.shape[0]):
            mean = X[members + [c]].astype(np.float64).mean(axis=0)
            scores.append(hf_score(y, mean.argmax(axis=1), variant=metric))
        best = int(np.argmax(scores))
        members.append(best)
        curve.append(scores[best])
    return curve


def structured(n_cand: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random candidates of varying quality with shared errors: non-trivial choices."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, size=n)
    shared = rng.standard_normal((n, N_CLASSES))
    X = np.empty((n_cand, n, N_CLASSES), dtype=np.float32)
    for c in range(n_cand):
        z = rng.uniform(1.0, 3.0) * np.eye(N_CLASSES)[y] + shared
        z += rng.uniform(0.5, 1.5) * rng.standard_normal((n, N_CLASSES))
        z = np.exp(z - z.max(axis=1, keepdims=True))
        X[c] = z / z.sum(axis=1, keepdims=True)
    return X, y


def test_finds_the_perfect_ensemble_and_skips_duplicate_and_bad():
    X, y = crafted()
    singles = [hf_score(y, X[c].argmax(axis=1)) for c in range(5)]
    assert max(singles) < 0.9
    res = select_ensemble(X, y, options=SelectionOptions(max_size=6))
    assert res.score == pytest.approx(1.0)
    assert res.best_step == 2  # the earliest step reaching the best score wins
    assert res.counts[3] == 0, "the duplicate of A is never needed: A has the lower index"
    assert res.counts[4] == 0, "the confidently wrong candidate is never selected"
    assert set(np.flatnonzero(res.counts)) <= {0, 1, 2}
    proba = combine(X, res.weights)
    assert hf_score(y, proba.argmax(axis=1)) == pytest.approx(1.0)


def test_sorted_initialisation_starts_from_all_three():
    X, y = crafted()
    res = select_ensemble(X, y, options=SelectionOptions(max_size=3, init_size=3))
    assert res.curve[0]["size"] == 3
    assert sorted(res.curve[0]["added"]) == [0, 1, 2]  # the 3 best singles, lowest index on ties
    assert res.score == pytest.approx(1.0) and res.best_step == 3
    assert res.counts.tolist() == [1, 1, 1, 0, 0]


@pytest.mark.parametrize("metric", ["strict", "official"])
def test_curve_is_the_algorithm_definition(metric):
    X, y = structured(12, 300, seed=1)
    res = select_ensemble(X, y, options=SelectionOptions(max_size=8, metric=metric))
    got = [e["score"] for e in res.curve]
    assert [e["size"] for e in res.curve] == list(range(1, 9))
    assert got == pytest.approx(by_hand(X, y, 8, metric), abs=1e-12)
    assert res.score == max(got)
    assert res.best_step == 1 + int(np.argmax(got))


def test_pruned_scoring_matches_brute_force_with_many_near_ties():
    # coarse probabilities (multiples of 1/8) make exact ties and zero margins common
    rng = np.random.default_rng(3)
    y = rng.integers(0, N_CLASSES, size=200)
    X = rng.integers(0, 3, size=(10, 200, N_CLASSES)).astype(np.float32)
    X[:, np.arange(200), y] += rng.integers(0, 4, size=(10, 200))
    X /= X.sum(axis=2, keepdims=True)
    res = select_ensemble(X, y, options=SelectionOptions(max_size=10))
    assert [e["score"] for e in res.curve] == pytest.approx(by_hand(X, y, 10), abs=1e-12)


def test_selected_at_least_best_single_and_deterministic():
    X, y = structured(20, 400, seed=2)
    opts = SelectionOptions(max_size=15, weights="nelder-mead", nm_maxfev=60)
    r1 = select_ensemble(X, y, options=opts)
    r2 = select_ensemble(X, y, options=opts)
    singles = [hf_score(y, X[c].argmax(axis=1)) for c in range(20)]
    assert r1.score >= max(singles)
    final = hf_score(y, combine(X, r1.weights).argmax(axis=1))
    assert final == pytest.approx(r1.score)
    assert final >= max(singles)
    assert np.array_equal(r1.weights, r2.weights) and r1.curve == r2.curve


def test_nelder_mead_kept_only_when_it_improves():
    X, y = structured(15, 300, seed=4)
    res = select_ensemble(X, y, options=SelectionOptions(max_size=10, weights="nelder-mead",
                                                         nm_maxfev=80))
    for e in res.curve:
        if e["score_nm"] is None:
            assert e["score_best"] == e["score"]
        else:
            assert e["score_best"] == max(e["score"], e["score_nm"])
    assert res.curve[0]["score_nm"] is None  # one member: nothing to weight
    assert res.score == max(e["score_best"] for e in res.curve)
    assert res.weights.sum() == pytest.approx(1.0)
    if res.weighted:  # the weights reproduce the recorded score exactly
        assert hf_score(y, combine(X, res.weights).argmax(axis=1)) == pytest.approx(res.score)


def test_top_k_restricts_the_pool():
    X, y = structured(12, 300, seed=5)
    res = select_ensemble(X, y, options=SelectionOptions(max_size=6, top_k=3))
    singles = np.array([hf_score(y, X[c].argmax(axis=1)) for c in range(12)])
    top3 = set(np.argsort(-singles, kind="stable")[:3])
    assert set(res.pool.tolist()) == top3
    assert set(np.flatnonzero(res.counts)) <= top3


def test_bagging_sums_member_counts_deterministically():
    X, y = structured(12, 300, seed=6)
    opts = SelectionOptions(max_size=5, bags=4, bag_fraction=0.5, seed=7)
    r1 = select_ensemble(X, y, options=opts)
    r2 = select_ensemble(X, y, options=opts)
    assert len(r1.bag_curves) == 4 and r1.best_step is None
    assert np.array_equal(r1.counts, r2.counts) and np.array_equal(r1.weights, r2.weights)
    per_bag = sum(min(5, int(np.argmax([e["score_best"] for e in c])) + 1)
                  for c in r1.bag_curves)  # best step of each bag (sizes start at 1)
    assert r1.counts.sum() == per_bag
    assert r1.score == pytest.approx(hf_score(y, combine(X, r1.weights).argmax(axis=1)))


def test_logit_combination_is_geometric_mean():
    X, y = structured(6, 200, seed=8)
    L = to_combine_space(X.copy(), "logit")
    w = np.array([0.5, 0.5, 0, 0, 0, 0])
    proba = combine(L, w, mode="logit")
    geo = np.sqrt(np.maximum(X[0], 1e-7).astype(np.float64) * np.maximum(X[1], 1e-7))
    assert np.allclose(proba, geo / geo.sum(axis=1, keepdims=True), atol=1e-6)
    res = select_ensemble(L, y, options=SelectionOptions(max_size=4, combine="logit"))
    assert [e["score"] for e in res.curve] == pytest.approx(by_hand(L, y, 4), abs=1e-12)


def test_selection_uses_only_the_given_rows():
    X, y = structured(8, 300, seed=9)
    rows = np.arange(0, 300, 2)
    sub = np.ascontiguousarray(X[:, rows])
    a = select_ensemble(X, y, rows=rows, options=SelectionOptions(max_size=5))
    b = select_ensemble(sub, y[rows], options=SelectionOptions(max_size=5))
    assert a.curve == b.curve and np.array_equal(a.weights, b.weights)
    stats = candidate_stats(X, "prob")
    assert np.allclose(single_scores(stats, y, rows, "strict"), a.singles)


def test_boundary_validation():
    X, y = crafted()
    with pytest.raises(ValueError, match="float32"):
        select_ensemble(X.astype(np.float64), y)
    with pytest.raises(ValueError, match="shape"):
        select_ensemble(X[:, :, :5].copy(), y)
    with pytest.raises(ValueError, match="labels"):
        select_ensemble(X, y[:-1])
    with pytest.raises(ValueError, match="init_size"):
        SelectionOptions(init_size=5, max_size=3)
    with pytest.raises(ValueError, match="metric"):
        SelectionOptions(metric="macro")
