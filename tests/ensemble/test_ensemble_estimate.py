"""One estimate to believe: ensemble.json's ``estimate``, the printed summary and the report's
header name the same number, by the same rule, with and without a holdout."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from bst_search import report as report_pkg
from bst_search.ensemble import run as run_mod
from bst_search.ensemble import summary
from bst_search.ensemble.candidates import CandidateInfo, CandidateSet
from bst_search.ensemble.cli import add_arguments
from bst_search.ensemble.scoring import to_combine_space
from bst_search.ensemble.store import PredictionStore
from bst_search.metrics import hf_score
from bst_search.report.render import _header
from bst_search.taxonomy import N_CLASSES

N, H, F, C = 230, 115, 5, 5  # OOF rows, holdout sounds, fold models, candidates
# what ensemble.json held before the headline: every key is still there
KEYS = {"schema", "experiment", "data_fp", "fold_fp", "eval_fp", "method", "options",
        "n_candidates", "n_in_memory", "n_samples", "selected_score", "honest_score", "sk_score",
        "submitted", "members_meaning", "members", "selected", "honest", "sk", "best_single",
        "holdout", "curve", "bag_curves", "left_out", "eval", "notes"}


def _candidates(fake_proba, tmp_path, *, holdout: bool) -> CandidateSet:
    """Five fake trials in memory, with (or without) each fold model's holdout predictions."""
    rng = np.random.default_rng(0)
    y, hy = np.arange(N) % N_CLASSES, (np.arange(H) * 5) % N_CLASSES
    oof = PredictionStore(C, N, dtype="float32", directory=tmp_path)
    hold = PredictionStore(C, F * H, dtype="float32", directory=tmp_path) if holdout else None
    infos = []
    for c in range(C):
        acc = 0.45 + 0.06 * c
        oof.append(fake_proba(y, rng, acc, truth_bump=0.8).astype(np.float32))
        if hold is not None:  # fold-major, as the coordinator stores them
            hold.append(np.concatenate([fake_proba(hy, rng, acc, truth_bump=0.8)
                                        for _ in range(F)]).astype(np.float32))
        infos.append(CandidateInfo(run_id=f"run{c}", trial_id=f"t{c}", start_time=c, params={},
                                   tags={}, metrics={}, backbones_tag=[], backbones_config=None,
                                   eval_fp=""))
    return CandidateSet(
        infos=infos, store=oof, labels=y, folds=np.random.default_rng(1).permutation(np.arange(N) % F),
        sound_ids=np.array([f"s{i}" for i in range(N)], dtype=object), left_out=[],
        data_fp="D", fold_fp="F", holdout_store=hold,
        holdout_ids=np.array([f"h{i}" for i in range(H)], dtype=object) if holdout else None,
        holdout_labels=hy if holdout else None, holdout_folds=list(range(F)) if holdout else [])


def _coordinate(cs: CandidateSet, tmp_path, capsys, *argv: str) -> tuple[dict, str]:
    """The coordinator's steps after loading: fit, score, ensemble.json (read back), summary."""
    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--experiment", "x", "--sk-device", "cpu", "--sk-epochs", "2", "--max-size", "6",
         "--exhaustive-top", "4", "--exhaustive-max-size", "3", *argv])
    opts, methods, method = run_mod._options(args)
    X = to_combine_space(cs.store.take(range(cs.store.n)), opts.combine)
    res = run_mod.score_candidates(cs, X, None, opts, methods, method)
    rep = json.loads(json.dumps(summary.build_report(res, "x", None), allow_nan=False))
    capsys.readouterr()
    summary.print_summary(res, rep, experiment="x", tracking_uri="sqlite://", out=tmp_path,
                          run_id=None)
    return rep, capsys.readouterr().out


def _page_header(rep: dict) -> dict:
    sweep = report_pkg.Sweep("x", "1", "sqlite:///x.db", "http://127.0.0.1:5000", pd.DataFrame(),
                             [], ensemble=rep)
    return _header(sweep)


def _main_card(header: dict) -> tuple[str, str]:
    (main,) = [(label, value) for label, value, cls in header["cards"] if cls == "main"]
    return main


@pytest.fixture(scope="module")
def with_holdout(fake_proba, tmp_path_factory) -> CandidateSet:
    return _candidates(fake_proba, tmp_path_factory.mktemp("ho"), holdout=True)


@pytest.fixture(scope="module")
def without_holdout(fake_proba, tmp_path_factory) -> CandidateSet:
    return _candidates(fake_proba, tmp_path_factory.mktemp("noho"), holdout=False)


@pytest.mark.parametrize("method", ["greedy", "exhaustive", "sk"])
def test_with_a_holdout_the_headline_is_the_submissions_holdout_score(with_holdout, tmp_path,
                                                                      capsys, method):
    rep, printed = _coordinate(with_holdout, tmp_path, capsys, "--method", method)
    assert KEYS <= set(rep)
    ho = rep["holdout"][method]["fold_models_averaged"]["hF_strict"]
    assert rep["estimate"] == ho and rep["estimate_kind"] == "holdout"
    assert rep["estimate_label"].startswith("holdout score of the submission")
    assert f"the number to believe: {ho:.4f}, the holdout score of the submission" in printed
    assert "[submitted] the submission's recipe: the number to believe" in printed
    assert "lower bound" not in printed.split("the number to believe:")[1]
    header = _page_header(rep)
    label, value = _main_card(header)
    assert value == f"{rep['estimate']:.4f}" and label.startswith("holdout score of the submission")
    assert header["kind"] == "holdout" and "115 development sounds" in header["believe"]
    if method == "exhaustive":  # recomputed: the members' fold models averaged, equal weights
        H_all = with_holdout.holdout_store.take(range(C)).reshape(C, F, H, N_CLASSES)
        members = [int(m["run_id"][3:]) for m in rep["members"]]
        proba = H_all[members].mean(axis=1).mean(axis=0)
        assert hf_score(with_holdout.holdout_labels, proba.argmax(axis=1)) == pytest.approx(ho)


def test_the_headline_follows_the_chosen_metric(with_holdout, tmp_path, capsys):
    rep, _ = _coordinate(with_holdout, tmp_path, capsys, "--metric", "official")
    assert rep["estimate"] == rep["holdout"]["greedy"]["fold_models_averaged"]["hF"]


@pytest.mark.parametrize("method", ["greedy", "exhaustive", "sk"])
def test_without_a_holdout_the_headline_is_the_honest_lower_bound(without_holdout, tmp_path,
                                                                  capsys, method):
    rep, printed = _coordinate(without_holdout, tmp_path, capsys, "--method", method)
    assert KEYS <= set(rep) and rep["holdout"] is None
    honest = {"greedy": rep["honest"]["mean"], "exhaustive": rep["exhaustive"]["honest"]["mean"],
              "sk": float(np.mean(rep["sk"]["per_fold"]))}[method]
    assert rep["estimate"] == honest and rep["estimate_kind"] == "honest_lower_bound"
    assert rep["honest_score"] == rep["honest"]["mean"]  # the old keys keep their values
    tail = printed.split("the number to believe:")[-1]
    assert tail.startswith(f" {honest:.4f}, the ") and "a lower bound" in tail
    assert "fold model" in tail and "--holdout-fraction" in tail
    header = _page_header(rep)
    label, value = _main_card(header)
    assert value.startswith(f"{rep['estimate']:.4f} ± ")
    assert label.endswith("a lower bound (believe this)")
    assert header["kind"] == "honest_lower_bound" and "lower bound" in header["believe"]


def test_without_holdout_or_honest_estimate_the_headline_says_optimistic(without_holdout,
                                                                         tmp_path, capsys):
    rep, printed = _coordinate(without_holdout, tmp_path, capsys, "--no-honest")
    assert rep["estimate"] == rep["submitted"]["score"] and rep["estimate_kind"] == "optimistic"
    assert "optimistic" in printed.split("the number to believe:")[-1]
    assert _page_header(rep)["kind"] == "optimistic"
