"""What the report draws from, read once: the sweep's trial runs, its Optuna study and its
latest ensemble run.

Missing pieces never stop the report: a sweep with no finished trial, no ensemble run or no
Optuna study loads what it can and lists the rest in :attr:`Sweep.missing`. What cannot be
reported at all (no such experiment, no store, an unreachable server) is a
:class:`ReportError` with a one-line message.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bst_search import config as config_mod
from bst_search import tracking
from bst_search.tracking.redact import mask_url
from bst_search.tracking.stores import (
    StoreError,
    check_store,
    existing_optuna_storage,
    read_only_sqlite,
    snapshot_storage,
)

DEFAULT_UI = "http://127.0.0.1:5000"


class ReportError(StoreError):
    """The report cannot be built at all; the message says why in one line."""


@dataclass
class Sweep:
    """Everything the report draws from, loaded once."""

    experiment: str
    experiment_id: str
    tracking_uri: str
    ui_base: str
    trials: pd.DataFrame  # one row per trial run (all statuses), sorted by start time
    params: list[str]  # searched parameters (the study's, else those that vary)
    metric: str = "oof_hF_strict"
    mode: str = "max"
    sweep_id: str | None = None
    study: Any = None
    ensemble: dict[str, Any] | None = None
    ensemble_run: Any = None
    ensemble_oof: pd.DataFrame | None = None
    eval_score: dict[str, float] | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> pd.DataFrame:
        """Complete trials with an objective value, best first."""
        t = self.trials
        if not len(t) or self.metric not in t:
            return t.iloc[0:0]
        done = t[(t["bst_status"] == "complete") & t[self.metric].notna()]
        return done.sort_values(self.metric, ascending=self.mode == "min")

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_base.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"


def _active(params: dict[str, str]) -> dict[str, str]:
    """A run's params without keys its configuration does not use (runs logged before
    tracking dropped them carry the base preset's inactive keys)."""
    flat: dict[str, Any] = {k: s.default for k, s in config_mod.SCHEMA.items()}
    for k, v in params.items():
        if k in config_mod.SCHEMA:
            try:
                flat[k] = config_mod.check_value(k, v)
            except config_mod.ConfigError:
                flat[k] = v
    keep = {}
    for k, v in params.items():
        rule = config_mod.ACTIVE_WHEN.get(k)
        try:
            if rule is None or rule(flat):
                keep[k] = v
        except (TypeError, KeyError):
            keep[k] = v
    return keep


def _trial_frame(runs: list[Any]) -> pd.DataFrame:
    rows = []
    for r in runs:
        tags, info = r.data.tags, r.info
        row: dict[str, Any] = {
            "run_id": info.run_id, "trial_id": tags.get(tracking.TRIAL_ID, ""),
            "name": tags.get(tracking.RUN_NAME, info.run_id[:8]), "mlflow_status": info.status,
            "bst_status": tags.get(tracking.STATUS, "running" if info.status == "RUNNING" else "?"),
            "sweep": tags.get(tracking.SWEEP, ""), "start": info.start_time,
            "end": info.end_time, "cpus": float(tags.get(tracking.CPUS, 1) or 1),
            "gpus": float(tags.get(tracking.GPUS, 0) or 0)}
        row.update(r.data.metrics)
        row.update({f"param:{k}": v for k, v in _active(r.data.params).items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values("start", kind="stable").reset_index(drop=True)
        frame["number"] = np.arange(len(frame))
    return frame


def _load_study(storage: str | None, names: list[str], missing: list[str]) -> Any:
    """The sweep's Optuna study: named after the experiment (sweeps since the shared-state
    driver), else after the sweep id (older sweeps)."""
    import optuna

    if not names:
        missing.append("Optuna study: the trial runs carry no bst.sweep tag")
        return None
    if storage is None:
        missing.append("Optuna study: no storage found (pass --optuna-storage)")
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    errors = []
    for name in names:
        try:
            stored = optuna.load_study(study_name=name, storage=read_only_sqlite(storage))
            trials = stored.get_trials(deepcopy=False)
            break
        except Exception as exc:  # KeyError for an unknown study, sqlalchemy errors for the URL
            errors.append(f"{name!r}: {str(exc).splitlines()[0][:200]}")
    else:
        missing.append(f"Optuna study not readable in {mask_url(storage)}: {'; '.join(errors)}")
        return None
    # one read of the database: the figures query the trials many times (in memory)
    study = optuna.create_study(study_name=name, directions=stored.directions,
                                storage=snapshot_storage())
    study.add_trials(trials)
    return study


def _load_ensemble(cl: Any, exp_id: str, workdir: Path, missing: list[str]
                   ) -> tuple[Any, dict[str, Any] | None, pd.DataFrame | None]:
    runs = tracking.find_runs(cl, exp_id, kind="ensemble", status="FINISHED")
    if not runs:
        missing.append("ensemble: no FINISHED run tagged bst.kind=ensemble yet (run "
                       "`bst-search ensemble --experiment NAME`)")
        return None, None, None
    run = max(runs, key=lambda r: r.info.start_time)
    dest = workdir / "report-cache" / run.info.run_id
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for name in ("ensemble.json", "oof.parquet"):
        local = dest / name
        if not local.exists():
            try:
                cl.download_artifacts(run.info.run_id, name, str(dest))
            except Exception as exc:
                missing.append(f"ensemble run {run.info.run_id}: no {name} artifact ({exc})")
                continue
        out[name] = local
    ens = json.loads(out["ensemble.json"].read_text()) if "ensemble.json" in out else None
    oof = pd.read_parquet(out["oof.parquet"]) if "oof.parquet" in out else None
    return run, ens, oof


def load_sweep(experiment: str, *, tracking_uri: str | None = None, workdir: str | Path = "bst-runs",
               optuna_storage: str | None = None, ui_base: str | None = None,
               eval_labels: str | Path | None = None) -> Sweep:
    """Read the sweep's runs, study and latest ensemble; ReportError when there is none."""
    workdir = Path(workdir).resolve()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{workdir / 'mlflow.db'}"
    check_store(uri)
    cl = tracking.client(read_only_sqlite(uri))  # safe beside a running sweep's driver
    try:
        exp = cl.get_experiment_by_name(experiment)
        names = [] if exp else [e.name for e in cl.search_experiments(max_results=50)]
    except Exception as exc:
        raise ReportError(f"cannot read MLflow store {uri}: {str(exc).splitlines()[0]}") from None
    if exp is None:
        raise ReportError(f"experiment {experiment!r} does not exist in {uri} (experiments "
                          f"there: {', '.join(names) or 'none'})")
    missing: list[str] = []
    trials = _trial_frame(tracking.find_runs(cl, exp.experiment_id))
    if not len(trials) or not (trials["bst_status"] == "complete").any():
        missing.append(f"no finished trial in experiment {experiment!r} yet: the leaderboard, "
                       f"per-option and per-class sections need complete trials")
    sweeps = trials["sweep"].value_counts() if len(trials) else pd.Series(dtype=int)
    sweep_id = str(sweeps.index[0]) if len(sweeps) else None
    storage = existing_optuna_storage(optuna_storage, workdir)
    study = _load_study(storage, [experiment] + ([sweep_id] if sweep_id else []), missing)
    metric, mode = "oof_hF_strict", "max"
    if study is not None:
        mode = "min" if study.direction.name == "MINIMIZE" else "max"
    params = _searched_params(study, trials)
    run, ens, oof = _load_ensemble(cl, exp.experiment_id, workdir, missing)
    if ens is not None and ens.get("options", {}).get("metric") == "official":
        metric = "oof_hF" if "oof_hF" in trials else metric
    eval_score = None
    if eval_labels is not None and run is not None:
        eval_score = _score_eval(cl, run.info.run_id, Path(eval_labels), workdir, missing)
    elif eval_labels is None and run is not None:
        missing.append("evaluation score: no labels given (pass --eval-labels labels.csv)")
    base = ui_base or (uri if uri.startswith(("http://", "https://")) else DEFAULT_UI)
    return Sweep(experiment, exp.experiment_id, uri, base, trials, params, metric, mode, sweep_id,
                 study, ens, run, oof, eval_score, missing)


def _score_eval(cl: Any, run_id: str, labels: Path, workdir: Path,
                missing: list[str]) -> dict[str, float] | None:
    from bst_search.ensemble.submission import score_submission

    if not labels.exists():
        raise ReportError(f"--eval-labels {labels}: no such file")
    dest = workdir / "report-cache" / run_id
    sub = dest / "submission.csv"
    if not sub.exists():
        try:
            cl.download_artifacts(run_id, "submission.csv", str(dest))
        except Exception:
            missing.append(f"evaluation score: ensemble run {run_id} has no submission.csv")
            return None
    return score_submission(sub, labels)


def _searched_params(study: Any, trials: pd.DataFrame) -> list[str]:
    """The study's parameter names, else the params that vary among the trial runs."""
    if study is not None:
        names: dict[str, None] = {}
        for t in study.get_trials(deepcopy=False):
            names.update(dict.fromkeys(t.params))
        if names:
            return list(names)
    cols = [c for c in trials.columns if c.startswith("param:")]
    return [c[6:] for c in cols if trials[c].nunique(dropna=True) > 1]


