"""What the coordinator leaves behind: the output folder's files and its MLflow run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bst_search.taxonomy import CODES, PROBA_COLUMNS

if TYPE_CHECKING:
    from bst_search.ensemble.candidates import CandidateSet

OUTPUT_FILES = ("ensemble.json", "oof.parquet", "eval.parquet", "submission.csv",
                "selection_curve.png", "confusion_fine.png", "confusion_top.png")


def clear_outputs(out: Path) -> None:
    """Create ``out`` and remove a previous run's files, so none is mistaken for this one's."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)


def write_parquets(out: Path, cs: CandidateSet, proba: np.ndarray,
                   eval_proba: np.ndarray | None) -> None:
    """The ensemble's OOF (and evaluation) probabilities in the trials' own layout."""
    oof = pd.DataFrame({"sound_id": cs.sound_ids, "fold": cs.folds,
                        "label": np.asarray(CODES, dtype=object)[cs.labels]})
    oof = pd.concat([oof, pd.DataFrame(proba.astype(np.float32), columns=list(PROBA_COLUMNS))],
                    axis=1)
    oof.to_parquet(out / "oof.parquet", index=False)
    if eval_proba is not None:
        ev = pd.concat([pd.DataFrame({"id": cs.eval_ids}),
                        pd.DataFrame(eval_proba.astype(np.float32), columns=list(PROBA_COLUMNS))],
                       axis=1)
        ev.to_parquet(out / "eval.parquet", index=False)


def _members_tag(members: list[dict[str, Any]]) -> str:
    """Member run ids for the tag, or a pointer to ensemble.json when too long for a tag."""
    tag = ",".join(m["run_id"] for m in members)
    return tag if len(tag) <= 5000 else f"{len(members)} members: see ensemble.json"


def log_run(tracking_uri: str, experiment: str, out: Path, report: dict[str, Any], *,
            status: str, sk_options: dict[str, Any], metrics: dict[str, float | None]) -> str:
    """One MLflow run tagged bst.kind=ensemble with options, scores and every output file."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    method = "" if report["method"] == "greedy" else f"{report['method']}-"
    tags = {"bst.kind": "ensemble", "bst.data_fp": report["data_fp"],
            "bst.fold_fp": report["fold_fp"], "bst.eval_fp": report["eval_fp"],
            "bst.members": _members_tag(report["members"]), "bst.submission": status,
            "mlflow.runName": f"ensemble-{method}{report['options']['metric']}"}
    run = client.create_run(exp.experiment_id, tags=tags)
    rid = run.info.run_id
    try:
        params = {f"ensemble.{k}": str(v) for k, v in report["options"].items()}
        params["ensemble.method"] = report["method"]
        params.update({f"ensemble.sk_{k}": str(v) for k, v in sk_options.items()
                       if k not in ("metric", "seed")})  # both already under ensemble.*
        params["ensemble.n_candidates"] = str(report["n_candidates"])
        params["ensemble.n_left_out"] = str(len(report["left_out"]))
        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, 0) for k, v in metrics.items()
              if v is not None and np.isfinite(v)]
        client.log_batch(rid, params=[Param(k, v) for k, v in params.items()], metrics=ms)
        client.log_artifacts(rid, str(out))
        client.set_terminated(rid, "FINISHED")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return rid
