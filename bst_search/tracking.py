"""MLflow schema of bst-search: one experiment per sweep, one run per trial.

Who writes: only the search driver (from a Ray Tune callback) and the ensemble coordinator
write to the tracking store. Trial workers never do, so a SQLite store on one machine has a
single writer during a sweep; on a cluster the driver talks to an MLflow tracking server.

Run schema (DESIGN.md, "Tracking"):
  tags     bst.kind=trial, bst.sweep, bst.trial_id, bst.data_fp, bst.fold_fp, bst.eval_fp,
           bst.backbones, bst.status (complete | early_stopped | failed | interrupted)
  params   the flattened resolved configuration (``model.name``, ``train.lr``, ...)
  metrics  oof_hF, oof_hF_strict, oof_hP, oof_hR, oof_acc, oof_top_acc, fold_hF_mean,
           fold_hF_std, hF_<code>, timings; fold_hF and fold_hF_strict with step = fold
  artifacts oof.parquet, eval.parquet, holdout.parquet (--holdout-fraction), config.yaml,
           metrics.json
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bst_search import config as config_mod
from bst_search.taxonomy import CODES

KIND, SWEEP, TRIAL_ID, STATUS = "bst.kind", "bst.sweep", "bst.trial_id", "bst.status"
DATA_FP, FOLD_FP, EVAL_FP, BACKBONES = "bst.data_fp", "bst.fold_fp", "bst.eval_fp", "bst.backbones"
ARTIFACTS = ("oof.parquet", "eval.parquet", "holdout.parquet", "config.yaml", "metrics.json")
SUMMARY_METRICS = ("oof_hF", "oof_hF_strict", "oof_hP", "oof_hR", "oof_hP_strict", "oof_hR_strict",
                   "oof_acc", "oof_top_acc", "oof_macro_acc", "oof_macro_top_acc", "oof_top2_acc",
                   "oof_top_top2_acc", "oof_n_never_predicted", "fold_hF_mean", "fold_hF_std",
                   "fold_hF_strict_mean", "fold_hF_strict_std", "train_seconds",
                   "model_seconds", "wall_seconds", "epochs_mean")


def default_workdir() -> Path:
    return Path(os.environ.get("BST_WORKDIR", "bst-runs"))


def tracking_uri(workdir: str | Path | None = None, override: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a SQLite file in the work dir."""
    if override:
        return override
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    wd = Path(workdir) if workdir is not None else default_workdir()
    wd.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(wd / 'mlflow.db').resolve()}"


def artifact_location(workdir: str | Path, uri: str) -> str | None:
    """Artifacts next to a local SQLite store; a server decides its own location."""
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        return (Path(workdir).resolve() / "mlartifacts").as_uri()
    return None


def client(uri: str):
    """An MlflowClient for ``uri`` (import deferred: mlflow is slow to import)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(cl: Any, name: str, workdir: str | Path, uri: str) -> str:
    """Experiment id of ``name``, created (with its artifact location) when missing."""
    exp = cl.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            cl.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return cl.create_experiment(name, artifact_location=artifact_location(workdir, uri))
    except Exception:  # created concurrently by another process
        exp = cl.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def ui_command(uri: str, workdir: str | Path) -> str:
    """The command that opens the MLflow UI on this store."""
    if uri.startswith("sqlite:"):
        art = artifact_location(workdir, uri)
        return f"mlflow ui --backend-store-uri {uri} --default-artifact-root {art} --port 5000"
    return f"open {uri} in a browser"


def _params(cfg: dict[str, Any]) -> dict[str, str]:
    flat = config_mod.flatten(cfg)
    return {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in flat.items()}


def _with_retry(fn, *args, tries: int = 8, **kwargs):
    """SQLite answers 'database is locked' when another process holds the write lock;
    such a write is retried after a short back-off instead of losing the result."""
    for i in range(tries):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # mlflow wraps sqlalchemy's OperationalError
            if "locked" not in str(e).lower() or i == tries - 1:
                raise
            time.sleep(0.05 * 2**i)
    return None


def find_runs(cl: Any, experiment_id: str, *, kind: str = "trial", sweep: str | None = None,
              trial_id: str | None = None, status: str | None = None) -> list[Any]:
    """Runs of an experiment filtered by bst tags and MLflow status."""
    filt = [f"tags.`{KIND}` = '{kind}'"]
    if sweep:
        filt.append(f"tags.`{SWEEP}` = '{sweep}'")
    if trial_id:
        filt.append(f"tags.`{TRIAL_ID}` = '{trial_id}'")
    if status:
        filt.append(f"attributes.status = '{status}'")
    out, token = [], None
    while True:
        page = cl.search_runs([experiment_id], " and ".join(filt), max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def start_trial_run(cl: Any, experiment_id: str, *, sweep: str, trial_id: str,
                    cfg: dict[str, Any], fingerprints: dict[str, str]) -> str:
    """Create the RUNNING run of one trial attempt, with its tags and params."""
    from mlflow.entities import Param, RunTag

    tags = {KIND: "trial", SWEEP: sweep, TRIAL_ID: trial_id, STATUS: "running",
            DATA_FP: fingerprints.get("data_fp", ""), FOLD_FP: fingerprints.get("fold_fp", ""),
            EVAL_FP: fingerprints.get("eval_fp", ""), BACKBONES: ",".join(cfg["backbones"]),
            "mlflow.runName": f"{trial_id} {cfg['model']['name']}"}
    run = _with_retry(cl.create_run, experiment_id, tags=tags)
    params = [Param(k, v) for k, v in _params(cfg).items()]
    _with_retry(cl.log_batch, run.info.run_id, params=params,
                tags=[RunTag("bst.config_keys", str(len(params)))])
    return run.info.run_id


def log_fold(cl: Any, run_id: str, info: dict[str, Any]) -> None:
    """Per-fold values as steps, so the MLflow UI plots them against the fold."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    step = int(info["fold"])
    ms = [Metric(k, float(info[k]), now, step) for k in ("fold_hF", "fold_hF_strict",
                                                         "running_hF_strict") if k in info]
    _with_retry(cl.log_batch, run_id, metrics=ms)


def finish_trial_run(cl: Any, run_id: str, *, metrics: dict[str, Any] | None,
                     artifacts_dir: str | Path | None, status: str, bst_status: str,
                     note: str = "") -> None:
    """Log a trial's final metrics and artifacts, then close the run with ``status``."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    ms: list[Metric] = []
    if metrics:
        for k in SUMMARY_METRICS:
            if isinstance(metrics.get(k), (int, float)):
                ms.append(Metric(k, float(metrics[k]), now, 0))
        for c in CODES:
            v = metrics.get(f"oof_hF_{c}")
            if isinstance(v, float) and v == v:  # NaN for a class absent from the truth
                ms.append(Metric(f"hF_{c}", v, now, 0))
    tags = [RunTag(STATUS, bst_status)] + ([RunTag("bst.note", note[:4000])] if note else [])
    _with_retry(cl.log_batch, run_id, metrics=ms, tags=tags)
    if artifacts_dir is not None:
        for name in ARTIFACTS:
            p = Path(artifacts_dir) / name
            if p.exists():
                _with_retry(cl.log_artifact, run_id, str(p))
    _with_retry(cl.set_terminated, run_id, status=status)


def close_interrupted(cl: Any, experiment_id: str, sweep: str,
                      keep: Iterable[str] = ()) -> list[str]:
    """Mark RUNNING trial runs of a sweep KILLED (the driver that owned them is gone)."""
    keep = set(keep)
    closed = []
    for r in find_runs(cl, experiment_id, sweep=sweep, status="RUNNING"):
        if r.info.run_id in keep:
            continue
        _with_retry(cl.set_tag, r.info.run_id, STATUS, "interrupted")
        _with_retry(cl.set_terminated, r.info.run_id, status="KILLED")
        closed.append(r.info.run_id)
    return closed
