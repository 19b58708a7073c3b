"""Candidates from a real MLflow store, the artifact cache, and the coordinator end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bst_search.ensemble import main, score_submission
from bst_search.ensemble.candidates import (
    load_candidates,
    read_eval_ids,
)
from bst_search.taxonomy import CODES, N_CLASSES, PROBA_COLUMNS

N_DEV = 230
N_EVAL = 230
DEV_IDS = np.array([f"s{i:03d}" for i in range(N_DEV)], dtype=object)
DEV_Y = np.arange(N_DEV) % N_CLASSES
FOLDS = np.random.default_rng(0).permutation(np.arange(N_DEV) % 5)
EVAL_IDS = np.array([f"a{i:03d}" for i in range(N_EVAL)], dtype=object)
EVAL_Y = (np.arange(N_EVAL) * 7) % N_CLASSES
GOOD = ("good0", "good1", "good2", "good3")
REFUSED = {
    "other_data": "data fingerprint D2 differs from D1",
    "other_fold": "fold fingerprint F2 differs from F1",
    "incomplete": "covers 227 of 230 development ids; 3 missing, e.g. s000, s001, s002",
    "extra_ids": "1 not in the development set, e.g. zz",
    "nan": "NaN/Inf probabilities",
    "badsum": "rows do not sum to 1",
    "wrongcols": "wrong probability columns (missing p_ss-s)",
    "dup": "duplicated sound_id, e.g. s000",
    "failed": "status FAILED, not FINISHED",
    "noeval": "no eval.parquet (--eval-data given)",
    "evalfp": "eval fingerprint E2 differs from E1",
    "nooof": "no oof.parquet artifact",
    "early": "no oof.parquet artifact (bst.status early_stopped: stopped by the scheduler",
    "labels": "labels differ from trial good0 on 5 ids",
    "badeval": "eval.parquet ids differ from the evaluation metadata: 1 missing, 0 extra",
}


def _oof(fake_proba, seed: int, acc: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"sound_id": DEV_IDS, "fold": FOLDS,
                          "label": np.asarray(CODES, dtype=object)[DEV_Y]})
    return pd.concat([frame, pd.DataFrame(fake_proba(DEV_Y, rng, acc, truth_bump=0.8).astype(np.float32),
                                          columns=list(PROBA_COLUMNS))], axis=1)


def _eval(fake_proba, seed: int, acc: float) -> pd.DataFrame:
    rng = np.random.default_rng(1000 + seed)
    return pd.concat([pd.DataFrame({"id": EVAL_IDS}),
                      pd.DataFrame(fake_proba(EVAL_Y, rng, acc, truth_bump=0.8).astype(np.float32),
                                   columns=list(PROBA_COLUMNS))], axis=1)


def _log_trial(client, exp_id: str, tmp: Path, name: str, *, oof: pd.DataFrame | None,
               ev: pd.DataFrame | None, data_fp="D1", fold_fp="F1", eval_fp="E1",
               status="FINISHED", backbones=("clap_audio", "clap_text"), kind="trial",
               model="hatr", extra_tags: dict[str, str] | None = None) -> str:
    from mlflow.entities import Param

    tags = {"bst.kind": kind, "bst.sweep": "sw", "bst.trial_id": name, "bst.data_fp": data_fp,
            "bst.fold_fp": fold_fp, "bst.eval_fp": eval_fp if ev is not None else "",
            "bst.backbones": ",".join(backbones), **(extra_tags or {})}
    run = client.create_run(exp_id, tags=tags)
    rid = run.info.run_id
    d = tmp / name
    d.mkdir()
    if oof is not None:
        oof.to_parquet(d / "oof.parquet", index=False)
    if ev is not None:
        ev.to_parquet(d / "eval.parquet", index=False)
    (d / "config.yaml").write_text(yaml.safe_dump({"backbones": list(backbones),
                                                   "model": {"name": model}}))
    client.log_artifacts(rid, str(d))
    alpha = {"good0": "0.1", "good1": "0.3"}.get(name, "0.5")
    client.log_batch(rid, params=[Param("model.name", model),
                                  Param("backbones", ",".join(backbones)),
                                  Param("loss.alpha", alpha)])
    client.set_terminated(rid, status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory, fake_proba):
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("store")
    workdir = root / "bst-runs"
    workdir.mkdir()
    uri = f"sqlite:///{workdir.resolve() / 'mlflow.db'}"  # the search driver's default store
    client = MlflowClient(uri)
    exp_id = client.create_experiment("exp", artifact_location=(workdir / "mlartifacts").as_uri())
    art = root / "src"
    art.mkdir()
    runs: dict[str, str] = {}
    for i, name in enumerate(GOOD):
        runs[name] = _log_trial(client, exp_id, art, name, oof=_oof(fake_proba, i, 0.55 + 0.05 * i),
                                ev=_eval(fake_proba, i, 0.55 + 0.05 * i), model=f"m{i % 2}")
    base, ev = _oof(fake_proba, 9, 0.7), _eval(fake_proba, 9, 0.7)
    runs["other_data"] = _log_trial(client, exp_id, art, "other_data", oof=base, ev=ev, data_fp="D2")
    runs["other_fold"] = _log_trial(client, exp_id, art, "other_fold", oof=base, ev=ev, fold_fp="F2")
    runs["incomplete"] = _log_trial(client, exp_id, art, "incomplete", oof=base.iloc[3:], ev=ev)
    extra = base.copy()
    extra.loc[0, "sound_id"] = "zz"
    runs["extra_ids"] = _log_trial(client, exp_id, art, "extra_ids", oof=extra, ev=ev)
    nan = base.copy()
    nan.loc[4, "p_fx-a"] = np.nan
    runs["nan"] = _log_trial(client, exp_id, art, "nan", oof=nan, ev=ev)
    badsum = base.copy()
    badsum.loc[:9, list(PROBA_COLUMNS)] *= 2
    runs["badsum"] = _log_trial(client, exp_id, art, "badsum", oof=badsum, ev=ev)
    runs["wrongcols"] = _log_trial(client, exp_id, art, "wrongcols",
                                   oof=base.drop(columns=["p_ss-s"]), ev=ev)
    dup = base.copy()
    dup.loc[5, "sound_id"] = "s000"
    runs["dup"] = _log_trial(client, exp_id, art, "dup", oof=dup, ev=ev)
    runs["failed"] = _log_trial(client, exp_id, art, "failed", oof=base, ev=ev, status="FAILED")
    runs["noeval"] = _log_trial(client, exp_id, art, "noeval", oof=base, ev=None)
    runs["evalfp"] = _log_trial(client, exp_id, art, "evalfp", oof=base, ev=ev, eval_fp="E2")
    runs["nooof"] = _log_trial(client, exp_id, art, "nooof", oof=None, ev=ev)
    runs["early"] = _log_trial(client, exp_id, art, "early", oof=None, ev=None, extra_tags={
        "bst.status": "early_stopped", "bst.note": "stopped by the scheduler after 2/5 folds"})
    lab = base.copy()
    lab.loc[:4, "label"] = "fx-a"  # rows 0..4 are m-sp .. is-e: 5 labels differ
    runs["labels"] = _log_trial(client, exp_id, art, "labels", oof=lab, ev=ev)
    runs["badeval"] = _log_trial(client, exp_id, art, "badeval", oof=base, ev=ev.iloc[1:])
    # neither an ensemble run nor another experiment's trial is a candidate
    _log_trial(client, exp_id, art, "an_ensemble", oof=base, ev=ev, kind="ensemble")
    other = client.create_experiment("other", artifact_location=(root / "oart").as_uri())
    _log_trial(client, other, art, "elsewhere", oof=base, ev=ev)

    eval_root = root / "eval"
    (eval_root / "metadata").mkdir(parents=True)
    order = np.random.default_rng(5).permutation(N_EVAL)  # metadata order != parquet order
    pd.DataFrame({"anonymous_id": EVAL_IDS[order], "title": "t", "tags": "", "description": ""}
                 ).to_csv(eval_root / "metadata" / "eval_metadata.csv", index=False)
    pd.DataFrame({"id": EVAL_IDS, "class": np.asarray(CODES)[EVAL_Y]}).to_csv(
        root / "eval_labels.csv", index=False)
    return {"uri": uri, "workdir": workdir, "runs": runs, "eval_root": eval_root,
            "order": order, "labels": root / "eval_labels.csv", "root": root}


def test_candidates_refused_and_listed_with_reasons(fake_proba, store, tmp_path):
    cs = load_candidates("exp", tracking_uri=store["uri"], cache_dir=tmp_path / "cache",
                         eval_ids=read_eval_ids(store["eval_root"]))
    assert [i.trial_id for i in cs.infos] == list(GOOD)
    assert cs.data_fp == "D1" and cs.fold_fp == "F1" and cs.eval_fp == "E1"
    reasons = {x.trial_id: x.reason for x in cs.left_out}
    assert set(reasons) == set(REFUSED), "every other trial run is listed, nothing else"
    for name, expected in REFUSED.items():
        assert expected in reasons[name], (name, reasons[name])
        assert any(x.run_id == store["runs"][name] for x in cs.left_out)
    # tensors aligned to the reference order
    assert cs.proba.shape == (4, N_DEV, N_CLASSES) and cs.proba.dtype == np.float32
    assert np.array_equal(cs.labels, DEV_Y) and np.array_equal(cs.folds, FOLDS)
    assert cs.eval_proba.shape == (4, N_EVAL, N_CLASSES)
    assert cs.eval_ids.tolist() == EVAL_IDS[store["order"]].tolist()
    ev0 = _eval(fake_proba, 0, 0.55)[list(PROBA_COLUMNS)].to_numpy(np.float32)
    # stored in float16 by default: equal to the source rounded once, off by < 2^-11 of it
    assert np.array_equal(cs.eval_proba[0], ev0[store["order"]].astype(np.float16).astype(np.float32))
    assert np.allclose(cs.eval_proba[0], ev0[store["order"]], rtol=2.0**-11, atol=0)
    assert cs.infos[0].backbones_config == ["clap_audio", "clap_text"]


def test_rows_aligned_to_the_first_candidate_order(fake_proba, store, tmp_path):
    cs = load_candidates("exp", tracking_uri=store["uri"], cache_dir=tmp_path / "cache",
                         store_dtype="float32")
    assert cs.sound_ids.tolist() == DEV_IDS.tolist()
    good2 = _oof(fake_proba, 2, 0.65)[list(PROBA_COLUMNS)].to_numpy(np.float32)
    assert np.array_equal(cs.proba[2], good2)
    assert cs.eval_order.startswith("eval.parquet of trial good0")
    assert cs.eval_ids.tolist() == EVAL_IDS.tolist()
    reasons = {x.trial_id: x.reason for x in cs.left_out}
    assert "eval.parquet ids differ" in reasons["badeval"]
    assert reasons["noeval"] == "no eval.parquet (most candidates have one)"


def test_explicit_fingerprint_and_unknown_experiment(store, tmp_path):
    from bst_search.ensemble.candidates import CandidateError

    cs = load_candidates("exp", tracking_uri=store["uri"], cache_dir=tmp_path / "c",
                         data_fp="D2")
    assert [i.trial_id for i in cs.infos] == ["other_data"]
    with pytest.raises(CandidateError, match="no experiment 'nope'.*exp"):
        load_candidates("nope", tracking_uri=store["uri"], cache_dir=tmp_path / "c")


def test_second_invocation_does_not_download(store, tmp_path, monkeypatch):
    import mlflow.artifacts

    calls: list[str] = []
    real = mlflow.artifacts.download_artifacts

    def counting(*args, **kwargs):
        calls.append(kwargs.get("run_id"))
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", counting)
    cache = tmp_path / "cache"
    first = load_candidates("exp", tracking_uri=store["uri"], cache_dir=cache)
    n_first = len(calls)
    assert n_first >= 3 * len(GOOD)
    assert (cache / store["runs"]["good0"] / "oof.parquet").is_file()
    second = load_candidates("exp", tracking_uri=store["uri"], cache_dir=cache)
    assert len(calls) == n_first, "the second invocation downloaded again"
    assert np.array_equal(first.proba, second.proba)


def _args(store, out: Path, *extra: str) -> list[str]:
    return ["--experiment", "exp", "--workdir", str(store["workdir"]),
            "--tracking-uri", store["uri"], "--out", str(out),
            "--eval-data", str(store["eval_root"]), "--max-size", "8",
            "--sk-device", "cpu", *extra]  # SK fusion on CPU: ensemble.json is repeatable


def test_coordinator_end_to_end(store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    out1, out2 = tmp_path / "e1", tmp_path / "e2"
    opts = ("--weights", "nelder-mead", "--nm-maxfev", "40")
    assert main(_args(store, out1, *opts)) == 0
    printed = capsys.readouterr().out
    assert main(_args(store, out2, *opts)) == 0
    capsys.readouterr()
    j1 = (out1 / "ensemble.json").read_text()
    assert j1 == (out2 / "ensemble.json").read_text(), "not deterministic"
    rep = json.loads(j1)
    for name in ("oof.parquet", "eval.parquet", "submission.csv", "selection_curve.png",
                 "confusion_fine.png", "confusion_top.png"):
        assert (out1 / name).is_file(), name
    # contents
    good_runs = {store["runs"][g] for g in GOOD}
    assert {m["run_id"] for m in rep["members"]} <= good_runs
    assert sum(m["weight"] for m in rep["members"]) == pytest.approx(1.0)
    assert rep["selected"]["hF_strict"] >= rep["best_single"]["hF_strict"]
    assert rep["honest"]["score"] == pytest.approx(np.mean(rep["honest"]["per_fold"]))
    assert len(rep["honest"]["per_fold"]) == 5
    assert len(rep["curve"]) == 8 and rep["curve"][0]["added_trial_ids"][0] in GOOD
    assert {x["trial_id"] for x in rep["left_out"]} == set(REFUSED)
    assert rep["eval"]["submission_written"] and rep["eval"]["tv_distance"] <= 0.15
    oof = pd.read_parquet(out1 / "oof.parquet")
    assert list(oof.columns) == ["sound_id", "fold", "label", *PROBA_COLUMNS]
    assert oof["sound_id"].tolist() == DEV_IDS.tolist()
    sub = pd.read_csv(out1 / "submission.csv", dtype=str)
    assert list(sub.columns) == ["id", "predicted_bst_second_level_class", "prediction_score"]
    assert sub["id"].tolist() == EVAL_IDS[store["order"]].tolist(), "not in metadata order"
    ev = pd.read_parquet(out1 / "eval.parquet")
    assert ev["id"].tolist() == sub["id"].tolist()
    scored = score_submission(out1 / "submission.csv", store["labels"])
    assert 0.5 < scored["hF"] <= 1.0
    # the printed summary
    assert "the number to believe" in printed and "left out" in printed
    assert "best single" in printed and "honest" in printed and "submission.csv written" in printed
    assert "loss.alpha" in printed and "model.name" in printed
    # pooled beside fold mean for every row, and what the honest estimate does not cover
    assert "fold mean ± std" in printed and "not the search that produced the pool" in printed
    for key in ("best_single", "selected"):
        assert rep[key]["fold_mean_hF_strict"] == pytest.approx(
            np.mean(rep[key]["per_fold_strict"]))
    assert rep["honest"]["pooled_hF_strict"] > 0 and rep["holdout"] is None
    assert "holdout: none" in printed
    # the MLflow run
    client = MlflowClient(store["uri"])
    exp = client.get_experiment_by_name("exp")
    runs = client.search_runs([exp.experiment_id], "tags.`bst.kind` = 'ensemble'")
    mine = [r for r in runs if r.data.tags.get("bst.members")]
    assert len(mine) >= 2
    r = mine[0]
    assert r.info.status == "FINISHED"
    assert r.data.params["ensemble.metric"] == "strict"
    assert r.data.metrics["selected_hF_strict"] == pytest.approx(rep["selected"]["hF_strict"])
    assert "honest_score" in r.data.metrics and "best_single_hF_strict" in r.data.metrics
    names = {f.path for f in client.list_artifacts(r.info.run_id)}
    assert {"ensemble.json", "submission.csv", "oof.parquet", "selection_curve.png"} <= names


def test_refused_submission_is_not_written(store, tmp_path, capsys):
    out = tmp_path / "e"
    out.mkdir()
    (out / "submission.csv").write_text("previous\n")
    rc = main(_args(store, out, "--max-shift", "1e-9", "--no-log", "--no-honest"))
    assert rc == 1
    assert (out / "submission.csv").read_text() == "previous\n", "the previous one was lost"
    assert sorted(p.name for p in out.glob(".*")) == [], "a refused submission was left"
    rep = json.loads((out / "ensemble.json").read_text())
    assert rep["honest"] is None
    assert not rep["eval"]["submission_written"]
    assert any("above --max-shift" in f for f in rep["eval"]["failures"])
    printed = capsys.readouterr().out
    assert "SUBMISSION REFUSED" in printed and "skipped (--no-honest)" in printed
    assert "submission.csv is a previous ensemble's, left as it was" in printed


def test_cli_errors(store, tmp_path, capsys):
    assert main(["--experiment", "nope", "--tracking-uri", store["uri"],
                 "--workdir", str(tmp_path), "--no-log"]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    assert main(_args(store, tmp_path / "x", "--init-size", "9")) == 2
    assert "init_size" in capsys.readouterr().err
