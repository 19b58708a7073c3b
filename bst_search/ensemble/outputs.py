"""What the coordinator leaves behind: the output folder's files and its MLflow run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bst_search.ensemble.methods import DEFAULT_METHOD
from bst_search.taxonomy import CODES, PROBA_COLUMNS
from bst_search.tracking.schema import (
    DATA_FP,
    ENSEMBLE_FILE,
    EVAL_FILE,
    EVAL_FP,
    FOLD_FP,
    KIND,
    KIND_ENSEMBLE,
    MEMBERS,
    OOF_FILE,
    RUN_NAME,
    SUBMISSION,
    SUBMISSION_FILE,
)

if TYPE_CHECKING:
    from bst_search.ensemble.candidates import CandidateSet

OUTPUT_FILES = (ENSEMBLE_FILE, OOF_FILE, EVAL_FILE, SUBMISSION_FILE,
                "selection_curve.png", "confusion_fine.png", "confusion_top.png")


def clear_outputs(out: Path) -> None:
    """Create ``out`` and remove a previous run's files, so none is mistaken for this one's.

    The previous ``submission.csv`` stays: only a new one that passed every self-check
    replaces it (``write_submission``), so a refused ensemble never costs the one there was.
    """
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        if name != SUBMISSION_FILE:
            (out / name).unlink(missing_ok=True)


def _log_outputs(client: Any, run_id: str, out: Path, status: str) -> None:
    """Every file of ``out`` as the run's artifacts; a submission this run did not write (a
    previous one, kept) is not this run's and is left out."""
    for path in sorted(out.iterdir()):
        if path.name == SUBMISSION_FILE and status != "written":
            continue
        if path.is_dir():
            client.log_artifacts(run_id, str(path), path.name)
        else:
            client.log_artifact(run_id, str(path))


def write_parquets(out: Path, cs: CandidateSet, proba: np.ndarray,
                   eval_proba: np.ndarray | None) -> None:
    """The ensemble's OOF (and evaluation) probabilities in the trials' own layout."""
    oof = pd.DataFrame({"sound_id": cs.sound_ids, "fold": cs.folds,
                        "label": np.asarray(CODES, dtype=object)[cs.labels]})
    oof = pd.concat([oof, pd.DataFrame(proba.astype(np.float32), columns=list(PROBA_COLUMNS))],
                    axis=1)
    oof.to_parquet(out / OOF_FILE, index=False)
    if eval_proba is not None:
        ev = pd.concat([pd.DataFrame({"id": cs.eval_ids}),
                        pd.DataFrame(eval_proba.astype(np.float32), columns=list(PROBA_COLUMNS))],
                       axis=1)
        ev.to_parquet(out / EVAL_FILE, index=False)


def _members_tag(members: list[dict[str, Any]]) -> str:
    """Member run ids for the tag, or a pointer to ensemble.json when too long for a tag."""
    tag = ",".join(m["run_id"] for m in members)
    return tag if len(tag) <= 5000 else f"{len(members)} members: see ensemble.json"


def log_run(tracking_uri: str, experiment: str, out: Path, report: dict[str, Any], *,
            status: str, method_params: dict[str, str], metrics: dict[str, float | None]) -> str:
    """One MLflow run tagged bst.kind=ensemble with options, scores and every output file.

    ``method_params``: what each method adds to the ``ensemble.*`` options (its own options).
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    # the default method's run keeps the name every ensemble run had before there were two
    method = "" if report["method"] == DEFAULT_METHOD else f"{report['method']}-"
    tags = {KIND: KIND_ENSEMBLE, DATA_FP: report["data_fp"], FOLD_FP: report["fold_fp"],
            EVAL_FP: report["eval_fp"], MEMBERS: _members_tag(report["members"]),
            SUBMISSION: status, RUN_NAME: f"{KIND_ENSEMBLE}-{method}{report['options']['metric']}"}
    run = client.create_run(exp.experiment_id, tags=tags)
    rid = run.info.run_id
    try:
        params = {f"ensemble.{k}": str(v) for k, v in report["options"].items()}
        params["ensemble.method"] = report["method"]
        params.update(method_params)
        params["ensemble.n_candidates"] = str(report["n_candidates"])
        params["ensemble.n_left_out"] = str(len(report["left_out"]))
        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, 0) for k, v in metrics.items()
              if v is not None and np.isfinite(v)]
        client.log_batch(rid, params=[Param(k, v) for k, v in params.items()], metrics=ms)
        _log_outputs(client, rid, out, status)
        client.set_terminated(rid, "FINISHED")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return rid
