"""The MLflow client side of bst-search: stores, runs, retried writes.

The names written (tags, metrics, artifacts) live in :mod:`bst_search.tracking.schema`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bst_search import config as config_mod
from bst_search.taxonomy import CODES
from bst_search.tracking.schema import (
    ARTIFACTS,
    ATTEMPT,
    BACKBONES,
    CPUS,
    DATA_FP,
    EVAL_FP,
    EXPERIMENT_KIND,
    FOLD_FP,
    GPUS,
    KIND,
    MODEL_TRAINING,
    NODE,
    NOTE,
    RUN_NAME,
    STATUS,
    SUMMARY_METRICS,
    SWEEP,
    TRIAL_ID,
    VIEW_KEY,
    VIEW_TAG,
)

if TYPE_CHECKING:
    from bst_search.search.space import SearchSpace

_WAL = False  # write_ahead_sqlite() has installed its listener in this process


def write_ahead_sqlite() -> None:
    """Open every SQLite store of this process (MLflow's, Optuna's) in write-ahead-log mode with
    ``synchronous=NORMAL``. Why: in SQLite's default mode a commit creates, syncs and deletes a
    journal file; in WAL mode it appends to the log, and a sweep commits about 20 times per
    trial.
    A killed process loses no commit (the log is in the OS's cache), a power cut can lose the
    last ones but never corrupts the file, and readers (the MLflow UI, ``bst-search report``)
    no longer block the writer. The log lives beside the file (``mlflow.db-wal``) until the
    last connection closes: copy the folder, not the file, while a sweep runs. Idempotent."""
    global _WAL
    if _WAL:
        return
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if not isinstance(dbapi_connection, sqlite3.Connection):
            return
        cur = dbapi_connection.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError:  # a read-only connection (mode=ro) keeps the file's mode
            pass
        finally:
            cur.close()

    event.listen(Engine, "connect", on_connect)
    _WAL = True


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
    """Experiment id of ``name``, created (with its artifact location) when missing, and
    marked a model-training experiment so that the MLflow UI opens on its runs."""
    exp = cl.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            cl.restore_experiment(exp.experiment_id)
        if exp.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
            with_retry(cl.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return exp.experiment_id
    try:
        return cl.create_experiment(name, artifact_location=artifact_location(workdir, uri),
                                    tags={EXPERIMENT_KIND: MODEL_TRAINING})
    except Exception:  # created concurrently by another process
        exp = cl.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def describe_experiment(cl: Any, experiment_id: str, *, sweep: str, space: SearchSpace,
                        fingerprints: dict[str, str]) -> None:
    """The experiment's description (MLflow's note): what the sweep searches, on which data,
    and how to read its runs in the UI."""
    lines = [f"**bst-search sweep `{sweep}`**: one run per trial (5-fold cross-validated), "
             f"objective {space.mode} `{space.metric}`.", "",
             f"Data fingerprint `{fingerprints.get('data_fp', '')}`, folds "
             f"`{fingerprints.get('fold_fp', '')}`, evaluation `{fingerprints.get('eval_fp', '') or '-'}`.",
             "", "Search space:", "", "```", space.describe(), "```", "",
             "How to read it: sort by `oof_hF_strict` (the objective: a class never predicted "
             "counts 0); filter `tags.bst.status = 'complete'`; params hold only the keys a "
             "trial uses (a `hatr` run has no `model.fusion`); `fold_hF` is plotted per fold "
             "(step = fold). The run tagged `bst.kind = ensemble` holds the ensemble, its "
             "honest (nested-CV) estimate, the submission and `report.html`."]
    with_retry(cl.set_experiment_tag, experiment_id, NOTE, "\n".join(lines))
    with_retry(cl.set_experiment_tag, experiment_id, VIEW_TAG, json.dumps(runs_view(
        space.metric, space.mode, list(space.params))))


def runs_view(metric: str, mode: str, params: list[str]) -> dict[str, Any]:
    """The runs table a sweep opens on, as an MLflow UI shared view (experiment tag
    ``mlflow.sharedViewState.<key>``, URL ``viewStateShareKey=<key>``): sorted by the
    objective, with score, fold spread and the searched options as columns."""
    metrics = [metric] + [m for m in ("oof_hF_strict", "oof_hF", "fold_hF_std", "oof_top_acc")
                          if m != metric]
    cols = ([f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params[:10]]
            + [f"tags.`{STATUS}`"])
    return {"searchFilter": "", "orderByKey": f"metrics.`{metric}`", "orderByAsc": mode == "min",
            "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs",
            "datasetsFilter": [], "selectedColumns": cols}


def run_name(trial_id: str, cfg: dict[str, Any], value: float | None = None) -> str:
    """A run name a person can scan: trial number, model, fusion/head, objective value."""
    m = cfg["model"]
    model = f"{m['name']} {m['fusion']}/{m['head']}" if m["name"] == "late_fusion" else m["name"]
    short = trial_id.rsplit("_", 1)[-1]
    return f"{short} {model}" + (f" {value:.4f}" if value is not None else "")


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs page in the MLflow UI at ``base`` (e.g. http://127.0.0.1:5000).
    ``workflowType``: MLflow 3.17's UI shows a global GenAI / Model training switch that
    overrides the experiment kind and starts on GenAI in a new browser; ``viewStateShareKey``
    opens the sweep's view (:func:`runs_view`)."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")


def ui_command(uri: str, workdir: str | Path, experiment_id: str | None = None) -> str:
    """The command that opens the MLflow UI on this store (and the experiment's runs page)."""
    if uri.startswith("sqlite:"):
        art = artifact_location(workdir, uri)
        cmd = f"mlflow ui --backend-store-uri {uri} --default-artifact-root {art} --port 5000"
        base = "http://127.0.0.1:5000"
    else:
        cmd, base = f"open {uri} in a browser", uri
    return cmd + (f"\n               then open {runs_url(base, experiment_id)}"
                  if experiment_id is not None else "")


def _params(cfg: dict[str, Any]) -> dict[str, str]:
    flat = config_mod.active_keys(cfg)  # only what this trial uses
    return {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in flat.items()}


RETRY_ENV = "BST_TRACKING_RETRY_S"  # how long a write waits for the store to come back
_TRANSIENT = ("database is locked", "max retries exceeded", "connection refused",
              "connection reset", "connection aborted", "remotedisconnected", "timed out",
              "temporarily unavailable", "bad gateway", "service unavailable", "gateway timeout")


def is_transient(e: BaseException) -> bool:
    """Errors that a write survives by waiting: SQLite's lock, a tracking server that is
    restarting (connection refused/reset, HTTP 5xx). Anything else (a bad request, a
    missing run) is raised at once."""
    import requests

    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                      ConnectionError, TimeoutError)):
        return True
    status = getattr(e, "get_http_status_code", lambda: None)()
    if isinstance(status, int) and status >= 500 and getattr(e, "error_code", "") != "INVALID_PARAMETER_VALUE":
        return True
    return any(t in str(e).lower() for t in _TRANSIENT)


def with_retry(fn, *args, deadline_s: float | None = None, before_retry=None, **kwargs):
    """Run a tracking call, waiting out transient errors (see :func:`is_transient`) with
    exponential back-off for up to ``$BST_TRACKING_RETRY_S`` seconds (default 600), so a
    locked SQLite store or a restarting tracking server delays a result but never loses it.
    ``before_retry`` runs before each new attempt and may return a value that ends the
    retry: that is how a non-idempotent call (create_run) first looks for what a lost
    response had already created."""
    limit = deadline_s if deadline_s is not None else float(os.environ.get(RETRY_ENV, "600"))
    end, delay, first = time.monotonic() + limit, 0.05, True
    while True:
        try:
            if not first and before_retry is not None:
                found = before_retry()
                if found is not None:
                    return found
            first = False
            return fn(*args, **kwargs)
        except Exception as e:  # mlflow wraps sqlalchemy's and requests' errors
            if not is_transient(e) or time.monotonic() + delay > end:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


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
                    cfg: dict[str, Any], fingerprints: dict[str, str], node: str = "",
                    resources: dict[str, float] | None = None) -> str:
    """Create the RUNNING run of one trial attempt, with its tags and params (``resources``:
    the trial's CPUs and GPUs, tagged bst.cpus and bst.gpus for the report's hours).

    Exactly once even when the tracking server drops the response: each call tags its run
    with a fresh ``bst.attempt`` id, and every retry first looks that id up.
    """
    import uuid

    resources = {CPUS if k.lower() == "cpu" else GPUS: v for k, v in (resources or {}).items()
                 if k.lower() in ("cpu", "gpu")}
    from mlflow.entities import Param

    attempt = uuid.uuid4().hex
    params = [Param(k, v) for k, v in _params(cfg).items()]
    tags = {KIND: "trial", SWEEP: sweep, TRIAL_ID: trial_id, STATUS: "running", ATTEMPT: attempt,
            DATA_FP: fingerprints.get("data_fp", ""), FOLD_FP: fingerprints.get("fold_fp", ""),
            EVAL_FP: fingerprints.get("eval_fp", ""), BACKBONES: ",".join(cfg["backbones"]),
            RUN_NAME: run_name(trial_id, cfg), "bst.config_keys": str(len(params)),
            **{k: str(v) for k, v in resources.items()}}
    if node:
        tags[NODE] = node

    def created_before() -> Any:
        page = cl.search_runs([experiment_id], f"tags.`{ATTEMPT}` = '{attempt}'", max_results=1)
        return page[0] if page else None

    run = with_retry(cl.create_run, experiment_id, tags=tags, before_retry=created_before)
    with_retry(cl.log_batch, run.info.run_id, params=params)  # tags went with the run
    return run.info.run_id


def log_folds(cl: Any, run_id: str, infos: list[dict[str, Any]],
              tags: dict[str, str] | None = None) -> None:
    """Per-fold values as steps, so the MLflow UI plots them against the fold; several folds
    and ``tags`` (the node that ran them) in one call, one transaction."""
    from mlflow.entities import RunTag

    with_retry(cl.log_batch, run_id, metrics=_fold_metrics(infos),
                tags=[RunTag(k, v) for k, v in (tags or {}).items()])


def _fold_metrics(infos: list[dict[str, Any]]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(info[k]), now, int(info["fold"])) for info in infos
            for k in ("fold_hF", "fold_hF_strict", "running_hF_strict") if k in info]


def finish_trial_run(cl: Any, run_id: str, *, metrics: dict[str, Any] | None,
                     artifacts_dir: str | Path | None, status: str, bst_status: str,
                     note: str = "", objective: str = "oof_hF_strict",
                     name: str | None = None, tags: dict[str, str] | None = None,
                     folds: list[dict[str, Any]] | None = None) -> None:
    """Log a trial's final metrics, ``tags``, fold values not written yet (:func:`log_folds`)
    and artifacts, then close the run with ``status``. ``name``: the run's name, when the
    caller knows it (saves reading the run back)."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    ms: list[Metric] = _fold_metrics(folds or [])
    if metrics:
        for k in SUMMARY_METRICS:
            if isinstance(metrics.get(k), (int, float)):
                ms.append(Metric(k, float(metrics[k]), now, 0))
        for c in CODES:
            v = metrics.get(f"oof_hF_{c}")
            if isinstance(v, float) and v == v:  # NaN for a class absent from the truth
                ms.append(Metric(f"hF_{c}", v, now, 0))
    run_tags = {**(tags or {}), STATUS: bst_status, **({"bst.note": note[:4000]} if note else {})}
    value = (metrics or {}).get(objective)
    if isinstance(value, (int, float)):  # the objective joins the run's name
        if name is None:
            name = with_retry(cl.get_run, run_id).data.tags.get(RUN_NAME, "")
        run_tags[RUN_NAME] = f"{name} {float(value):.4f}".strip()
    with_retry(cl.log_batch, run_id, metrics=ms, tags=[RunTag(k, v) for k, v in run_tags.items()])
    if artifacts_dir is not None:
        log_artifacts(cl, run_id, Path(artifacts_dir))
    with_retry(cl.set_terminated, run_id, status=status)


def log_artifacts(cl: Any, run_id: str, directory: Path) -> None:
    """The trial's :data:`ARTIFACTS` found in ``directory``, in one upload (the directory
    also holds fold files that stay out of MLflow)."""
    import shutil
    import tempfile

    present = [directory / n for n in ARTIFACTS if (directory / n).exists()]
    if not present:
        return
    with tempfile.TemporaryDirectory(prefix="bst-artifacts-") as stage:
        for p in present:
            try:
                os.link(p, Path(stage) / p.name)  # no copy when on the same file system
            except OSError:
                shutil.copy2(p, Path(stage) / p.name)
        with_retry(cl.log_artifacts, run_id, stage)


def close_interrupted(cl: Any, experiment_id: str, sweep: str,
                      keep: Iterable[str] = ()) -> list[str]:
    """Mark RUNNING trial runs of a sweep KILLED (the driver that owned them is gone)."""
    keep = set(keep)
    closed = []
    for r in find_runs(cl, experiment_id, sweep=sweep, status="RUNNING"):
        if r.info.run_id in keep:
            continue
        with_retry(cl.set_tag, r.info.run_id, STATUS, "interrupted")
        with_retry(cl.set_terminated, r.info.run_id, status="KILLED")
        closed.append(r.info.run_id)
    return closed
