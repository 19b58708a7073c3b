"""Selective-kernel fusion: the fuser, its cross-fitting (no leak) and ``--method sk``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_ensemble_mlflow as mlflow_tests
import torch

import bst_search.ensemble.sk_fusion as sk_mod
from bst_search.ensemble import main, score_submission
from bst_search.ensemble.selection import candidate_stats, single_scores
from bst_search.ensemble.sk_fusion import (
    SKFusion,
    SKOptions,
    cross_fit,
    fuse,
    train_fuser,
)
from bst_search.metrics import evaluate, hf_score
from bst_search.taxonomy import N_CLASSES, PROBA_COLUMNS

store = mlflow_tests.store  # the MLflow store of the coordinator tests, reused as is
N = 600
FAST = SKOptions(top=4, epochs=15, batch_size=128, device="cpu")


def _labels(n: int = N) -> np.ndarray:
    return np.tile(np.arange(N_CLASSES), n // N_CLASSES + 1)[:n]


def _good_and_noise(fake_proba, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate 1 is good (80 % right); 0, 2, 3 are confident noise."""
    rng = np.random.default_rng(seed)
    y = _labels()
    folds = rng.permutation(np.arange(N) % 5)
    noise = rng.dirichlet(np.full(N_CLASSES, 0.3), size=(3, N))
    X = np.stack([noise[0], fake_proba(y, rng, 0.8), noise[1], noise[2]]).astype(np.float32)
    return X, y, folds


def test_fused_output_is_a_distribution_and_starts_as_the_mean():
    rng = np.random.default_rng(0)
    P = torch.as_tensor(rng.dirichlet(np.ones(N_CLASSES), size=(50, 4)), dtype=torch.float32)
    model = SKFusion(4, hidden=8, generator=torch.Generator().manual_seed(0))
    q, a = model(P)
    assert q.shape == (50, N_CLASSES) and a.shape == (50, 4, N_CLASSES)
    assert (q >= 0).all() and torch.allclose(q.sum(dim=1), torch.ones(50))
    assert torch.allclose(a.sum(dim=1), torch.ones(50, N_CLASSES))
    # zero-initialised selection layer: an untrained fuser is the plain probability mean
    assert torch.allclose(q, P.mean(dim=1), atol=1e-6)
    proba, mass = fuse(model, P.numpy())
    assert proba.shape == (50, N_CLASSES) and proba.dtype == np.float64
    assert np.allclose(proba.sum(axis=1), 1.0) and mass.sum() == pytest.approx(1.0)


def test_learns_to_trust_the_good_candidate(fake_proba):
    X, y, folds = _good_and_noise(fake_proba)
    singles = [hf_score(y, X[c].argmax(axis=1)) for c in range(4)]
    assert int(np.argmax(singles)) == 1
    assert hf_score(y, X.mean(axis=0).argmax(axis=1)) < singles[1] - 0.1, "noise must hurt"
    res = cross_fit(X, y, folds, FAST)
    assert res.hF_strict >= singles[1] - 0.02
    assert int(np.argmax(res.weight)) == 1 and res.weight[1] > 0.5
    assert res.weight.sum() == pytest.approx(1.0)
    assert np.allclose(res.oof.sum(axis=1), 1.0)
    assert res.per_fold_strict and len(res.per_fold_strict) == 5
    assert all(1 <= e <= FAST.epochs for e in res.chosen_epochs), "learning beat the plain mean"
    # a single fuser on all rows: the good candidate has the highest attention
    model = train_fuser(X.transpose(1, 0, 2), y, FAST)
    _, mass = fuse(model, X.transpose(1, 0, 2))
    assert int(np.argmax(mass)) == 1


def test_cross_fitting_never_trains_on_the_scored_fold(fake_proba, monkeypatch):
    X, y, folds = _good_and_noise(fake_proba, 1)
    fits: list[np.ndarray] = []
    ranks: list[np.ndarray] = []
    real_fit, real_rank = sk_mod.fit_rows, sk_mod.single_scores

    def spy_fit(X_, y_, rows, pool, options, **kw):
        fits.append(np.asarray(rows).copy())
        return real_fit(X_, y_, rows, pool, options, **kw)

    def spy_rank(stats, y_, rows, metric, candidates=None):
        ranks.append(np.asarray(rows).copy())
        return real_rank(stats, y_, rows, metric, candidates)

    monkeypatch.setattr(sk_mod, "fit_rows", spy_fit)
    monkeypatch.setattr(sk_mod, "single_scores", spy_rank)
    res = cross_fit(X, y, folds, SKOptions(top=3, epochs=2, device="cpu"))
    assert res.folds == [0, 1, 2, 3, 4] and len(fits) == len(ranks) == 5
    for k, fit, rank in zip(res.folds, fits, ranks, strict=True):
        held = np.flatnonzero(folds == k)
        for rows in (fit, rank):
            assert not np.isin(rows, held).any(), f"fold {k} leaked into training"
            assert np.array_equal(np.sort(rows), np.flatnonzero(folds != k))
    assert res.fold_sizes == [int((folds == k).sum()) for k in range(5)]


def test_top_k_is_ranked_on_the_training_folds_only():
    """B is perfect on fold 0 and a little worse than A elsewhere.

    On all rows B beats A, so a top-1 ranked on all rows (a leak) would fuse B for fold 0 and
    score it perfectly there; ranked on folds 1-4, A wins and fold 0 gets A's predictions.
    """
    rng = np.random.default_rng(3)
    y = _labels()
    folds = np.arange(N) % 5
    a_right = rng.random(N) < 0.7
    b_right = np.where(folds == 0, True, a_right & (rng.random(N) < 0.95))
    wrong = (y + 1) % N_CLASSES

    def onehotish(right: np.ndarray) -> np.ndarray:
        p = np.full((N, N_CLASSES), 0.3 / (N_CLASSES - 1))
        p[np.arange(N), np.where(right, y, wrong)] = 0.7
        return p

    X = np.stack([onehotish(a_right), onehotish(b_right)]).astype(np.float32)
    stats = candidate_stats(X, "prob")
    on_all = single_scores(stats, y, np.arange(N), "strict")
    assert on_all[1] > on_all[0], "the test needs B to win on all rows"
    res = cross_fit(X, y, folds, SKOptions(top=1, epochs=2, device="cpu"), stats=stats)
    assert res.pools[0].tolist() == [0], "fold 0's candidates were ranked on fold 0"
    held = folds == 0
    assert res.per_fold_strict[0] == pytest.approx(hf_score(y[held], X[0, held].argmax(axis=1)))
    assert res.per_fold_strict[0] < 0.9
    assert all(p.tolist() == [1] for p in res.pools[1:]), "B wins where fold 0 is training"


def test_deterministic_with_a_seed_and_log_input_equivalent(fake_proba):
    X, y, folds = _good_and_noise(fake_proba, 2)
    E = X[:, :100].copy()
    a = cross_fit(X, y, folds, FAST, eval_X=E)
    b = cross_fit(X, y, folds, FAST, eval_X=E)
    assert np.array_equal(a.oof, b.oof) and np.array_equal(a.eval_proba, b.eval_proba)
    assert np.array_equal(a.weight, b.weight)
    assert a.eval_proba.shape == (100, N_CLASSES) and np.allclose(a.eval_proba.sum(axis=1), 1.0)
    # the greedy path's logit space: same fusion from log-probabilities
    c = cross_fit(np.log(X), y, folds, FAST, eval_X=np.log(E), log_input=True)
    assert np.allclose(c.oof, a.oof, atol=1e-4) and np.allclose(c.eval_proba, a.eval_proba, atol=1e-4)
    other = cross_fit(X, y, folds, SKOptions(top=4, epochs=15, batch_size=128, seed=1, device="cpu"))
    assert not np.array_equal(other.oof, a.oof)


def test_options_and_inputs_are_checked(fake_proba):
    X, y, folds = _good_and_noise(fake_proba)
    with pytest.raises(ValueError, match="top"):
        SKOptions(top=0)
    with pytest.raises(ValueError, match="at least 2 folds"):
        cross_fit(X, y, np.zeros(N, dtype=int), FAST)
    with pytest.raises(ValueError, match="val_fraction"):
        SKOptions(val_fraction=1.0)
    with pytest.raises(ValueError, match="device"):
        sk_mod.pick_device("no-such-device")
    # without an inner validation split every row trains and the last epoch is kept
    P = X[:, :100].transpose(1, 0, 2)
    assert train_fuser(P, y[:100], SKOptions(epochs=2, val_fraction=0, device="cpu")).chosen_epoch == 2
    mask = sk_mod.val_split(y, 0.2, 0)
    assert mask.sum() == pytest.approx(0.2 * N, abs=N_CLASSES)
    assert set(y[mask]) == set(y), "every class has validation rows"


# ---------------------------------------------------------------------------------------
# the coordinator


def test_cli_method_sk_end_to_end(store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "sk"
    args = mlflow_tests._args(store, out, "--method", "sk", "--sk-top", "3", "--sk-epochs", "5")
    assert main(args) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "ensemble.json").read_text())
    assert rep["method"] == "sk" and rep["submitted"]["method"] == "sk"
    for key in ("selected_score", "honest_score", "sk_score"):
        assert isinstance(rep[key], float), key
    sk = rep["sk"]
    assert sk["score"] == rep["sk_score"] == rep["submitted"]["score"] == sk["hF_strict"]
    assert len(sk["per_fold"]) == 5 and all(len(p) == 3 for p in sk["pools"])
    assert rep["sk_score"] >= rep["best_single"]["score"] - 0.05
    good = {store["runs"][g] for g in mlflow_tests.GOOD}
    assert {m["run_id"] for m in rep["members"]} <= good
    assert sum(m["weight"] for m in rep["members"]) == pytest.approx(1.0)
    # the parquets and the submission are SK's
    oof = pd.read_parquet(out / "oof.parquet")
    assert evaluate(mlflow_tests.DEV_Y, oof[list(PROBA_COLUMNS)].to_numpy())["hF_strict"] == \
        pytest.approx(sk["hF_strict"])
    sub = pd.read_csv(out / "submission.csv", dtype=str)
    assert sub["id"].tolist() == mlflow_tests.EVAL_IDS[store["order"]].tolist()
    ev = pd.read_parquet(out / "eval.parquet")
    assert ev["id"].tolist() == sub["id"].tolist()
    assert rep["eval"]["method"] == "sk" and rep["eval"]["submission_written"]
    assert 0.5 < score_submission(out / "submission.csv", store["labels"])["hF"] <= 1.0
    # the summary compares both methods
    assert "greedy selected" in printed and "greedy honest" in printed
    assert "SK fusion (cross-fitted OOF, top 3)" in printed
    sk_line = next(line for line in printed.splitlines() if "SK fusion (cross-fitted" in line)
    assert "[submitted]" in sk_line and "submission.csv written" in printed
    # the MLflow run
    client = MlflowClient(store["uri"])
    exp = client.get_experiment_by_name("exp")
    runs = client.search_runs([exp.experiment_id], "params.`ensemble.method` = 'sk'")
    assert len(runs) == 1
    r = runs[0]
    assert r.data.tags["mlflow.runName"] == "ensemble-sk-strict"
    assert r.data.params["ensemble.sk_top"] == "3"
    assert r.data.metrics["sk_hF_strict"] == pytest.approx(sk["hF_strict"])
    assert r.data.metrics["selected_hF_strict"] == pytest.approx(rep["selected"]["hF_strict"])
    assert "honest_score" in r.data.metrics and "submitted_score" in r.data.metrics


def test_cli_greedy_reports_sk_and_sk_submission_is_checked(store, tmp_path, capsys):
    out = tmp_path / "g"
    assert main(mlflow_tests._args(store, out, "--no-log", "--no-honest", "--sk-top", "2",
                                   "--sk-epochs", "3")) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "ensemble.json").read_text())
    assert rep["method"] == "greedy" and rep["submitted"]["method"] == "greedy"
    assert rep["sk_score"] is not None and rep["sk"]["options"]["top"] == 2
    sk_line = next(line for line in printed.splitlines() if "SK fusion (cross-fitted" in line)
    assert "[submitted]" not in sk_line
    assert "[submitted]" in next(line for line in printed.splitlines() if "greedy selected" in line)
    # the SK submission goes through the same self-checks
    out2 = tmp_path / "refused"
    rc = main(mlflow_tests._args(store, out2, "--no-log", "--no-honest", "--method", "sk",
                                 "--sk-epochs", "3", "--max-shift", "1e-9"))
    assert rc == 1 and not (out2 / "submission.csv").exists()
    rep2 = json.loads(Path(out2 / "ensemble.json").read_text())
    assert any("above --max-shift" in f for f in rep2["eval"]["failures"])
    assert "SUBMISSION REFUSED" in capsys.readouterr().out
