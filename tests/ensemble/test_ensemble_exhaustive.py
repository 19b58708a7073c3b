"""Exhaustive subset selection: a brute force agrees, the honest estimate never sees the scored
fold, the working set keeps its pool, and ``--method exhaustive`` end to end."""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import pytest
import test_ensemble_mlflow as mlflow_tests

import bst_search.ensemble.exhaustive as exhaustive_mod
from bst_search.ensemble import main
from bst_search.ensemble.exhaustive import (
    ExhaustiveOptions,
    exhaustive_honest,
    exhaustive_select,
    n_subsets,
)
from bst_search.ensemble.methods import ExhaustiveSubsets, MethodInput
from bst_search.ensemble.run import read_working_set
from bst_search.ensemble.scoring import candidate_stats, combine, to_combine_space
from bst_search.ensemble.selection import SelectionOptions
from bst_search.ensemble.store import PredictionStore
from bst_search.metrics import confusion_matrix, hf_score, prf_from_confusion
from bst_search.taxonomy import N_CLASSES

store = mlflow_tests.store  # the MLflow store of the coordinator tests, reused as is


def _pool(n_cand: int = 8, n: int = 460, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """Softmax candidates of varied quality sharing a per-row hard component, so that
    subsets differ and pairs can beat their members."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, size=n)
    folds = rng.permutation(np.arange(n) % 5)
    hard = rng.standard_normal((n, N_CLASSES))
    X = np.empty((n_cand, n, N_CLASSES), dtype=np.float32)
    for c in range(n_cand):
        z = rng.uniform(1.0, 2.5) * np.eye(N_CLASSES)[y] + hard + rng.standard_normal((n, N_CLASSES))
        z = np.exp(z - z.max(axis=1, keepdims=True))
        X[c] = z / z.sum(axis=1, keepdims=True)
    return X, y, folds


def _brute_force(X: np.ndarray, y: np.ndarray, rows: np.ndarray, top: int, max_size: int,
                 metric: str, mode: str) -> tuple[tuple[int, ...], float, int]:
    """The definition, one subset at a time: rank the singles on ``rows``, score every
    equal-weight subset of the top ones with the project's metric, keep the first best."""
    singles = [hf_score(y[rows], X[c, rows].argmax(axis=1), variant=metric)
               for c in range(len(X))]
    pool = sorted(range(len(X)), key=lambda c: -singles[c])[:top]  # stable: ties by index
    best, best_score, n = (), -1.0, 0
    for size in range(1, max_size + 1):
        for subset in itertools.combinations(pool, size):
            w = np.zeros(len(X))
            w[list(subset)] = 1.0 / size
            pred = combine(X, w, rows, mode).argmax(axis=1)
            score = prf_from_confusion(confusion_matrix(y[rows], pred), variant=metric)[2]
            n += 1
            if score > best_score:
                best, best_score = tuple(sorted(subset)), score
    return best, best_score, n


@pytest.mark.parametrize(("metric", "mode", "seed"), [("strict", "prob", 0),
                                                      ("strict", "logit", 1),
                                                      ("official", "prob", 2)])
def test_selection_equals_the_brute_force(metric, mode, seed):
    X, y, folds = _pool(seed=seed)
    Z = to_combine_space(X.copy(), mode)
    opts = ExhaustiveOptions(top=6, max_size=3, metric=metric, combine=mode)
    for rows in (np.arange(len(y)), np.flatnonzero(folds != 2)):
        res = exhaustive_select(Z, y, rows=rows, options=opts)
        members, score, n = _brute_force(Z, y, rows, 6, 3, metric, mode)
        assert tuple(res.members.tolist()) == members
        assert res.score == score
        assert res.n_subsets == n == 6 + 15 + 20
        assert res.best_by_size[-1] <= res.score == max(res.best_by_size)
        assert len(res.pool) == 6 and res.pool_singles[0] == res.pool_singles.max()


def test_defaults_score_793_subsets_and_bad_sizes_name_the_flags():
    assert n_subsets(12, 4) == 793 and n_subsets(3, 4) == 7
    with pytest.raises(ValueError, match=r"--exhaustive-max-size \(5\) is larger than "
                                         r"--exhaustive-top \(3\)"):
        ExhaustiveOptions(top=3, max_size=5)
    with pytest.raises(ValueError, match="--exhaustive-top must be >= 1"):
        ExhaustiveOptions(top=0, max_size=0)
    # fewer candidates than --exhaustive-top: all of them, every size that exists
    X, y, _ = _pool(n_cand=3)
    res = exhaustive_select(X, y, options=ExhaustiveOptions(top=12, max_size=4))
    assert res.n_subsets == 7 and len(res.best_by_size) == 3


def test_the_fit_scores_what_the_search_scored():
    """The method's OOF probabilities (equal weights through combine) give the searched score."""
    X, y, folds = _pool(seed=3)
    method = ExhaustiveSubsets(ExhaustiveOptions(top=5, max_size=3), honest=False)
    data = MethodInput(X=X, y=y, folds=folds, stats=candidate_stats(X, "prob"), combine="prob")
    fit = method.fit(data)
    assert hf_score(y, fit.oof.argmax(axis=1)) == fit.sel.score
    assert np.allclose(fit.weights[fit.members], 1 / len(fit.members)) and fit.weights.sum() == 1
    assert np.array_equal(method.predict(fit, X), fit.oof)


def test_honest_estimate_never_sees_the_scored_fold(monkeypatch):
    X, y, folds = _pool(seed=4)
    seen: list[np.ndarray] = []
    real = exhaustive_mod.exhaustive_select

    def spy(X_, y_, *, rows=None, options=None, stats=None):
        seen.append(np.asarray(rows).copy())
        return real(X_, y_, rows=rows, options=options, stats=stats)

    monkeypatch.setattr(exhaustive_mod, "exhaustive_select", spy)
    opts = ExhaustiveOptions(top=5, max_size=3)
    res = exhaustive_honest(X, y, folds, opts)
    assert len(seen) == 5 and res.folds == [0, 1, 2, 3, 4]
    for k, rows in zip(res.folds, seen, strict=True):
        assert not np.isin(rows, np.flatnonzero(folds == k)).any(), f"fold {k} leaked"
        assert np.array_equal(np.sort(rows), np.flatnonzero(folds != k))
    assert res.fold_sizes == [int((folds == k).sum()) for k in range(5)]
    # what the scored fold holds cannot change the choice made without it (ranking included)
    rng = np.random.default_rng(5)
    for k in range(5):
        held, train = folds == k, np.flatnonzero(folds != k)
        X2, y2 = X.copy(), y.copy()
        X2[:, held] = rng.dirichlet(np.ones(N_CLASSES), size=(len(X), int(held.sum())))
        y2[held] = rng.integers(0, N_CLASSES, int(held.sum()))
        a = real(X, y, rows=train, options=opts)
        b = real(X2, y2, rows=train, options=opts)
        assert np.array_equal(a.members, b.members) and a.score == b.score
        assert np.array_equal(a.pool, b.pool)


def test_adversarial_fold_rows_do_not_steer_the_subset():
    """B_k is perfect on fold k and wrong elsewhere: chosen without fold k, no subset wants it,
    so each fold is scored with the decent candidate A alone."""
    rng = np.random.default_rng(1)
    n = 460
    y = np.tile(np.arange(N_CLASSES), n // N_CLASSES)
    folds = np.arange(n) % 5

    def onehotish(pred: np.ndarray, conf: float) -> np.ndarray:
        p = np.full((n, N_CLASSES), (1 - conf) / (N_CLASSES - 1))
        p[np.arange(n), pred] = conf
        return p

    a_pred = np.where(rng.random(n) < 0.7, y, (y + 1) % N_CLASSES)
    cands = [onehotish(a_pred, 0.7)]
    cands += [onehotish(np.where(folds == k, y, (y + 3) % N_CLASSES), 0.95) for k in range(5)]
    X = np.stack(cands).astype(np.float32)
    res = exhaustive_honest(X, y, folds, ExhaustiveOptions(top=6, max_size=3))
    a_only = [hf_score(y[folds == k], a_pred[folds == k]) for k in range(5)]
    assert res.per_fold == pytest.approx(a_only) and max(res.per_fold) < 0.9
    assert res.members_per_fold == [1] * 5


def test_the_working_set_keeps_every_exhaustive_pool(tmp_path):
    """With a small --top-k, the exhaustive top-N of every row set is still read."""
    X, y, folds = _pool(n_cand=30, n=300, seed=6)
    st = PredictionStore(30, 300, dtype="float32", directory=tmp_path)
    for c in range(30):
        st.append(X[c])
    opts = SelectionOptions(top_k=3, diversity=0.0)
    keep, Xw, _ = read_working_set(st, None, y, folds, opts, sk_top=8, honest=True)
    assert len(keep) < 30
    eo = ExhaustiveOptions(top=8, max_size=2)
    full = exhaustive_select(X, y, options=eo)
    part = exhaustive_select(Xw, y, options=eo)
    assert np.array_equal(keep[part.members], full.members) and part.score == full.score
    assert exhaustive_honest(X, y, folds, eo).per_fold == exhaustive_honest(Xw, y, folds, eo).per_fold


def _run(store, out, capsys, *extra: str) -> tuple[dict, str]:
    assert main(mlflow_tests._args(store, out, "--no-log", "--sk-epochs", "2", *extra)) == 0
    return json.loads((out / "ensemble.json").read_text()), capsys.readouterr().out


def test_cli_submits_the_exhaustive_subset(store, tmp_path, capsys):
    rep, printed = _run(store, tmp_path / "ex", capsys, "--method", "exhaustive",
                        "--exhaustive-top", "4", "--exhaustive-max-size", "2")
    ex = rep["exhaustive"]
    assert rep["method"] == rep["submitted"]["method"] == rep["eval"]["method"] == "exhaustive"
    assert ex["top"] == 4 and ex["max_size"] == 2 and ex["n_subsets"] == 4 + 6
    good = {store["runs"][g] for g in mlflow_tests.GOOD}
    assert [m["run_id"] for m in rep["members"]] == [m["run_id"] for m in ex["members"]]
    assert {m["run_id"] for m in rep["members"]} <= good and len(rep["members"]) == ex["size"]
    assert all(m["weight"] == pytest.approx(1 / ex["size"]) and m["count"] == 1
               for m in rep["members"])
    assert rep["submitted"]["hF_strict"] == ex["hF_strict"] >= rep["best_single"]["hF_strict"]
    assert len(ex["honest"]["per_fold"]) == 5 and ex["honest"]["pooled_hF_strict"] > 0
    assert rep["estimate"] == ex["honest"]["mean"]
    assert rep["estimate_kind"] == "honest_lower_bound"
    assert rep["eval"]["submission_written"] and (tmp_path / "ex" / "submission.csv").is_file()
    lines = printed.splitlines()
    assert "[submitted]" in next(ln for ln in lines if "exhaustive selected (OOF" in ln)
    assert "the number to believe" in next(ln for ln in lines if "exhaustive honest" in ln)
    assert "exhaustive subsets: the top 4 candidates, every subset of 1..2" in printed
    table = printed[printed.index("methods side by side"):].splitlines()
    for label in ("greedy", "exhaustive subset [submitted]", "SK fusion"):
        assert any(ln.strip().startswith(label) for ln in table[1:6]), label
    # the other methods are fitted and scored exactly as when greedy is submitted
    base, _ = _run(store, tmp_path / "gr", capsys, "--exhaustive-top", "4",
                   "--exhaustive-max-size", "2")
    for key in ("selected", "honest", "sk", "curve", "best_single", "exhaustive"):
        assert rep[key] == base[key], key


def test_cli_refuses_a_subset_larger_than_the_pool(store, tmp_path, capsys):
    args = mlflow_tests._args(store, tmp_path / "x", "--method", "exhaustive",
                              "--exhaustive-top", "3", "--exhaustive-max-size", "5")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--exhaustive-max-size (5) is larger than --exhaustive-top (3)" in err


def test_method_options_from_the_command_line():
    from bst_search.ensemble.cli import add_arguments

    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--experiment", "e", "--combine", "logit", "--metric", "official"])
    method = ExhaustiveSubsets.from_args(args, SelectionOptions(metric="official",
                                                                combine="logit"))
    assert method.options == ExhaustiveOptions(top=12, max_size=4, metric="official",
                                               combine="logit")
    assert method.params() == {"ensemble.exhaustive_top": "12",
                               "ensemble.exhaustive_max_size": "4"}
