"""``search --holdout-fraction`` through the CLI: rows no trial and no selection ever sees.

One small sweep with a holdout, then the ensemble coordinator on it, both as a user runs them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_search import _check_complete_runs, _env, _search_cmd

from bst_search import tracking
from bst_search.data import load_dataset
from bst_search.folds import development_fold_fp, holdout_mask
from bst_search.metrics import hierarchical_prf
from bst_search.taxonomy import CODES, PROBA_COLUMNS


@pytest.mark.slow
def test_holdout_rows_stay_out_of_every_trial_and_are_scored_once(tiny_data, tmp_path):
    r = subprocess.run(_search_cmd(tiny_data, tmp_path, "ho", 2, "--holdout-fraction", "0.25"),
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    dev = load_dataset(tiny_data["dev"])
    hold = holdout_mask(dev.y, 0.25)
    held = set(dev.ids[hold])
    uri = tracking.tracking_uri(tmp_path)
    runs = _check_complete_runs(uri, "ho", 2, list(dev.ids[~hold]))  # OOF: the other rows
    cl = tracking.client(uri)
    for run in runs:
        assert run.data.tags["bst.fold_fp"] == development_fold_fp(dev.ids, dev.y, 5, 0.25)
        oof = pd.read_parquet(cl.download_artifacts(run.info.run_id, "oof.parquet"))
        assert not held & set(oof["sound_id"]), "a holdout row in a trial's OOF"
        ho = pd.read_parquet(cl.download_artifacts(run.info.run_id, "holdout.parquet"))
        assert set(ho["sound_id"]) == held and sorted(ho["fold"].unique()) == [0, 1, 2, 3, 4]
        m = json.loads(open(cl.download_artifacts(run.info.run_id, "metrics.json")).read())
        assert m["n_holdout"] == len(held) and m["n_dev"] == len(dev.ids) - len(held)
        for f in m["folds"]:  # every fold's training, validation and scored rows: the rest
            assert f["n_train"] + f["n_val"] + f["n_test"] == m["n_dev"]

    out = tmp_path / "ens"
    r = subprocess.run([sys.executable, "-m", "bst_search.ensemble", "--experiment", "ho",
                        "--workdir", str(tmp_path), "--out", str(out), "--eval-data",
                        str(tiny_data["eval"]), "--sk-epochs", "2"],
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((out / "ensemble.json").read_text())
    ens_oof = pd.read_parquet(out / "oof.parquet")
    assert not held & set(ens_oof["sound_id"]), "a holdout row reached the selection"
    ho = rep["holdout"]
    assert ho["n"] == len(held) and ho["fold_models"] == [0, 1, 2, 3, 4]
    assert ho["submitted"] == "greedy"
    for who in ("greedy", "sk", "best_single"):
        scores = [ho[who]["fold_models_averaged"]["hF_strict"],
                  *(o["hF_strict"] for o in ho[who]["one_fold_model"])]
        assert len(scores) == 6 and all(0 < s <= 1 for s in scores)
        assert ho[who]["one_fold_model_mean"]["hF_strict"] == pytest.approx(np.mean(scores[1:]))
    # the best single trial's averaged-fold-model score, recomputed from its artifact
    best = next(x for x in runs if x.info.run_id == ho["best_single"]["run_id"])
    frame = pd.read_parquet(cl.download_artifacts(best.info.run_id, "holdout.parquet"))
    avg = frame.groupby("sound_id", sort=False)[list(PROBA_COLUMNS)].mean()
    labels = frame.groupby("sound_id", sort=False)["label"].first()
    pred = np.asarray(CODES)[avg.to_numpy().argmax(axis=1)]
    assert ho["best_single"]["fold_models_averaged"]["hF_strict"] == pytest.approx(
        hierarchical_prf(labels.to_numpy(), pred, variant="strict")[2], abs=1e-6)
    assert "holdout: " in r.stdout and "fold models averaged" in r.stdout
    assert "one fold model (mean)" in r.stdout
