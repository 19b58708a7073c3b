"""``bst-search pseudo-label`` and stage 2 through the CLI: stage-1 sweep with --crowd-data
(the session's small sweep), its ensemble, pseudo-labels, a stage-2 sweep on them, its
ensemble; and the refusals, each naming the file or run and the problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bst_search import tracking
from bst_search.cli import main
from bst_search.ensemble import main as ensemble_main
from bst_search.taxonomy import PROBA_COLUMNS

STAGE2 = """
description: tiny stage 2, for tests
objective: {metric: oof_hF_strict, mode: max}
resources: {cpu: 1, gpu: 0}
scheduler: none
base: late_fusion
fixed:
  model.hidden: 32
  model.heads: 2
  train.max_epochs: 4
  train.patience: 2
  train.batch_size: 64
  train.drop_last: false
  train.warmup_epochs: 1
  data.crowd: pseudo
  data.pretrain_epochs: 2
params:
  data.pseudo_lambda: {type: categorical, choices: [0.5, 1.0]}
  data.two_stage: {type: categorical, choices: [true, false]}
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("MLFLOW_TRACKING_URI", "BST_OPTUNA_STORAGE")}


@pytest.fixture(scope="module")
def labels(small_sweep: dict, tiny_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pseudo") / "labels"
    rc = main(["pseudo-label", "--experiment", "rep", "--workdir", str(small_sweep["workdir"]),
               "--crowd-data", str(tiny_data["crowd"]), "--out", str(out), "--temperature", "0.8"])
    assert rc == 0
    return out


def _search(tiny_data, workdir: Path, space: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bst_search.cli", "search", "--data", str(tiny_data["dev"]),
           "--eval-data", str(tiny_data["eval"]), "--crowd-data", str(tiny_data["crowd"]),
           "--space", str(space), "--trials", "2", "--workdir", str(workdir), *extra]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def test_pseudo_labels_are_the_stage_1_ensemble_per_fold(small_sweep: dict, labels: Path) -> None:
    manifest = json.loads((labels / "manifest.json").read_text())
    ensemble = json.loads((small_sweep["workdir"] / "ensembles" / "rep" / "ensemble.json").read_text())
    assert [m["run_id"] for m in manifest["members"]] == [m["run_id"] for m in ensemble["members"]]
    assert manifest["experiment"] == "rep" and manifest["n_folds"] == 5
    assert manifest["data_fp"] == ensemble["data_fp"]
    # fold 3's labels by hand: the members' fold-3 crowd predictions, weighted, tempered
    cl = tracking.client(small_sweep["uri"])
    acc, ids = 0.0, None
    for m in ensemble["members"]:
        path = Path(cl.download_artifacts(m["run_id"], "crowd.parquet", str(labels.parent)))
        block = pd.read_parquet(path).query("fold == 3").set_index("sound_id")
        ids = block.index if ids is None else ids
        acc = acc + m["weight"] * block.loc[ids, list(PROBA_COLUMNS)].to_numpy(np.float64)
    p = (acc / acc.sum(axis=1, keepdims=True)) ** (1 / 0.8)
    p /= p.sum(axis=1, keepdims=True)
    got = pd.read_parquet(labels / "fold_3.parquet").set_index("sound_id").loc[ids]
    assert np.allclose(got[list(PROBA_COLUMNS)].to_numpy(), p, atol=1e-5)
    assert sum(manifest["class_counts"]["fold_3"].values()) == manifest["n_labelled"] == len(ids)


def test_stage_2_sweep_trains_on_the_pseudo_labels_and_ensembles(labels: Path, tiny_data,
                                                                  tmp_path: Path) -> None:
    space = tmp_path / "stage2.yaml"
    space.write_text(STAGE2)
    wd = tmp_path / "wd"
    r = _search(tiny_data, wd, space, "--experiment", "stage2", "--pseudo-labels", str(labels))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cl = tracking.client(f"sqlite:///{wd / 'mlflow.db'}")
    exp = cl.get_experiment_by_name("stage2")
    runs = tracking.find_runs(cl, exp.experiment_id, status="FINISHED")
    assert len(runs) == 2
    assert {r.data.params["data.crowd"] for r in runs} == {"pseudo"}
    assert {r.data.params["data.pseudo_dir"] for r in runs} == {str(labels.resolve())}
    rc = ensemble_main(["--experiment", "stage2", "--workdir", str(wd), "--no-honest",
                        "--eval-data", str(tiny_data["eval"]), "--max-shift", "1"])
    assert rc == 0 and (wd / "ensembles" / "stage2" / "submission.csv").is_file()

    # the same labels with other folds (a holdout set aside) are refused before any trial
    r = _search(tiny_data, wd, space, "--experiment", "stage2b", "--pseudo-labels", str(labels),
                "--holdout-fraction", "0.2")
    assert r.returncode == 2
    assert f"{labels}: these pseudo-labels were made by experiment 'rep' for other data" in r.stderr
    assert "fold assignment" in r.stderr and "trial " not in r.stdout
    r = _search(tiny_data, wd, space, "--experiment", "stage2c")  # no --pseudo-labels
    assert r.returncode != 0 and "give --pseudo-labels DIR" in r.stderr


def test_an_ensemble_of_trials_without_crowd_predictions_is_named(tiny_data, tmp_path: Path) -> None:
    """A member whose sweep had no --crowd-data has no crowd.parquet: the error names its run."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cl = tracking.client(uri)
    exp_id = cl.create_experiment("nocrowd", artifact_location=(tmp_path / "art").as_uri())
    trial = cl.create_run(exp_id, tags={"bst.kind": "trial"}).info.run_id
    cl.set_terminated(trial, "FINISHED")
    ens = cl.create_run(exp_id, tags={"bst.kind": "ensemble"}).info.run_id
    (tmp_path / "ensemble.json").write_text(json.dumps({
        "method": "greedy", "options": {"combine": "prob"}, "data_fp": "x",
        "members": [{"run_id": trial, "trial_id": "t1", "weight": 1.0}]}))
    mlflow.tracking.MlflowClient(uri).log_artifact(ens, str(tmp_path / "ensemble.json"))
    cl.set_terminated(ens, "FINISHED")
    r = subprocess.run([sys.executable, "-m", "bst_search.cli", "pseudo-label", "--experiment",
                        "nocrowd", "--tracking-uri", uri, "--crowd-data", str(tiny_data["crowd"]),
                        "--out", str(tmp_path / "out")], env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert f"run {trial} (trial t1, member 1/1) has no crowd.parquet" in r.stderr
    assert "without --crowd-data" in r.stderr and not (tmp_path / "out").exists()
