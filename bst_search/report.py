"""``bst-search report``: one self-contained HTML page per sweep, opened instead of logs.

Data come from the sweep's MLflow experiment (trial runs: tags, params, metrics; the latest
ensemble run: ``ensemble.json`` and its ``oof.parquet``) and from its Optuna study (the study
name is the sweep id, tag ``bst.sweep``). Figures are plotly, and Optuna's own
``optuna.visualization`` figures where one exists (history, importances, parallel
coordinates, slices). plotly's JavaScript is embedded once, so the page opens from disk with
no network. The page template and styles live in ``dashboards/``.

Missing pieces never stop the report: a sweep with no finished trial, no ensemble run or no
Optuna study renders every section it can and says in the others what is missing. What
cannot be reported at all (no such experiment, no store, an unreachable server) is a
:class:`ReportError` with a one-line message.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bst_search import config as config_mod
from bst_search import tracking
from bst_search.redact import mask_url
from bst_search.taxonomy import CODES, NAMES, TOP_LEVELS, TOP_NAMES, top_of

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"
TEMPLATE, STYLES = "report.html.j2", "report.css"
ARTIFACT = "report.html"  # its name in the ensemble run
TOP_N = 20  # leaderboard rows and heatmap columns
MAX_CATEGORIES = 24  # a parameter with more distinct values is treated as numeric / skipped
STATUS_ORDER = ("complete", "early_stopped", "failed", "interrupted", "running")
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
DEFAULT_UI = "http://127.0.0.1:5000"
BELIEVE = ("The number to believe is the <b>honest</b> estimate: the whole ensemble selection "
           "re-run inside a cross-validation over the OOF folds (selected on four folds, scored "
           "on the fifth). The <i>selected</i> score was measured on the rows it was chosen on, "
           "and the best single trial's score was picked as the maximum over many trials: both "
           "are optimistic.")


class ReportError(RuntimeError):
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


# --------------------------------------------------------------------------- loading


def check_store(uri: str) -> None:
    """Fail fast with one line on a missing SQLite file or an unreachable server (MLflow
    itself would create an empty store, or retry for minutes)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        if not path.exists():
            raise ReportError(f"no MLflow store at {path} ({uri}): run a sweep there first, or "
                              f"pass --workdir / --tracking-uri")
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as r:
                r.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ReportError(f"MLflow tracking server {uri} is unreachable: {reason}") from None


def read_only_sqlite(url: str) -> str:
    """A SQLite URL opened read-only, so a reader never takes the driver's write lock."""
    if url.startswith("sqlite:///") and "?" not in url:
        return f"sqlite:///file:{url[len('sqlite:///'):]}?mode=ro&uri=true"
    return url


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


def _snapshot_storage() -> Any:
    """In-memory storage for a study's trials read once from the database. The figures only
    read them, so they get the stored objects: Optuna's default deep copy of every trial on
    every query costs seconds per figure on a sweep of 1,000 trials."""
    import optuna

    class Snapshot(optuna.storages.InMemoryStorage):
        def get_all_trials(self, study_id: int, deepcopy: bool = True,
                           states: Any = None) -> list[Any]:
            return super().get_all_trials(study_id, deepcopy=False, states=states)

    return Snapshot()


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
                                storage=_snapshot_storage())
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


# --------------------------------------------------------------------------- figures


def _fig_html(fig: Any, height: int = 420) -> str:
    fig.update_layout(template="plotly_white", height=height, margin={"l": 60, "r": 30, "t": 50, "b": 50})
    return fig.to_html(full_html=False, include_plotlyjs=False, config=PLOT_CONFIG)


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _table(frame: pd.DataFrame, cls: str = "", raw: set[str] | None = None) -> str:
    """An HTML table; columns in ``raw`` hold HTML already."""
    raw = raw or set()
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = "".join(f"<td>{v if c in raw else html.escape(str(v))}</td>"
                        for c, v in row.items())
        body.append(f"<tr>{cells}</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _num(values: pd.Series) -> pd.Series | None:
    """The values as floats, or None when they are not all numbers."""
    conv = pd.to_numeric(values, errors="coerce")
    return conv if conv.notna().all() else None


def _best_so_far(values: np.ndarray, mode: str) -> np.ndarray:
    return np.minimum.accumulate(values) if mode == "min" else np.maximum.accumulate(values)


def _value(v: Any) -> str:
    """A param value for a table: numbers with 4 significant digits, the rest as logged."""
    try:
        return f"{float(v):.4g}" if isinstance(v, str) and "." in v else str(v)
    except ValueError:
        return str(v)


def _fmt(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float, np.floating)) and np.isfinite(v) else "-"


@dataclass
class Section:
    """One part of the page: its anchor, title, blocks of HTML and how many figures it has."""

    id: str
    title: str
    blocks: list[str] = field(default_factory=list)
    figures: int = 0

    def fig(self, fig: Any, height: int = 420) -> None:
        self.blocks.append(f'<div class="figure">{_fig_html(fig, height)}</div>')
        self.figures += 1

    def add(self, text: str) -> None:
        self.blocks.append(text)


SECTIONS: dict[str, Callable[[Sweep], Section]] = {}


def section(name: str) -> Callable[[Callable[[Sweep], Section]], Callable[[Sweep], Section]]:
    """Register a section builder; the page shows them in registration order."""

    def deco(fn: Callable[[Sweep], Section]) -> Callable[[Sweep], Section]:
        SECTIONS[name] = fn
        return fn

    return deco


@section("summary")
def summary_section(s: Sweep) -> Section:
    import plotly.graph_objects as go

    sec = Section("summary", "Sweep summary")
    t = s.trials
    if not len(t):
        sec.add(_note("No trial run has been logged in this experiment yet."))
        return sec
    counts = t["bst_status"].value_counts()
    order = [k for k in STATUS_ORDER if k in counts] + [k for k in counts.index if k not in STATUS_ORDER]
    end = t["end"].fillna(time.time() * 1000)
    wall_h = (end.max() - t["start"].min()) / 3.6e6
    trial_h = (end - t["start"]) / 3.6e6
    stats = {"trial runs": len(t), **{f"{k}": int(counts[k]) for k in order},
             "wall time": _hours(wall_h),
             "CPU time": _hours(float((trial_h * t["cpus"]).sum())),
             "GPU time": _hours(float((trial_h * t["gpus"]).sum()))}
    if s.study is not None:
        states = pd.Series([tr.state.name for tr in s.study.get_trials(deepcopy=False)]).value_counts()
        stats["Optuna trials"] = ", ".join(f"{k.lower()} {v}" for k, v in states.items())
    sec.add('<dl class="stats">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>"
                                           for k, v in stats.items()) + "</dl>")
    fig = go.Figure(go.Bar(x=order, y=[int(counts[k]) for k in order], marker_color="#4c78a8"))
    fig.update_layout(title="Trials by status", yaxis_title="trials")
    sec.fig(fig, 320)
    done = s.complete.sort_values("number")
    if not len(done):
        sec.add(_note("No complete trial yet: the objective plots appear with the first one."))
        return sec
    if s.study is not None and any(tr.value is not None for tr in s.study.get_trials(deepcopy=False)):
        from optuna.visualization import plot_optimization_history

        fig = plot_optimization_history(s.study, target_name=s.metric)
        fig.update_layout(title=f"{s.metric} per Optuna trial number, best so far (Optuna)")
        sec.fig(fig)
    else:
        fig = go.Figure()
        fig.add_scatter(x=done["number"], y=done[s.metric], mode="markers", name=s.metric,
                        text=done["name"])
        fig.add_scatter(x=done["number"], y=_best_so_far(done[s.metric].to_numpy(), s.mode),
                        mode="lines", line_shape="hv", name="best so far")
        fig.update_layout(title=f"{s.metric} per trial number", xaxis_title="trial (start order)")
        sec.fig(fig)
    fin = done.sort_values("end")
    minutes = (fin["end"] - t["start"].min()) / 60000
    fig = go.Figure()
    fig.add_scatter(x=minutes, y=fin[s.metric], mode="markers", name=s.metric, text=fin["name"])
    fig.add_scatter(x=minutes, y=_best_so_far(fin[s.metric].to_numpy(), s.mode), mode="lines",
                    line_shape="hv", name="best so far")
    fig.update_layout(title=f"{s.metric} against wall time (trial end)",
                      xaxis_title="minutes since the sweep started", yaxis_title=s.metric)
    sec.fig(fig)
    return sec


@section("leaderboard")
def leaderboard_section(s: Sweep) -> Section:
    sec = Section("leaderboard", f"Leaderboard: top {TOP_N} trials by {s.metric}")
    top = s.complete.head(TOP_N)
    if not len(top):
        sec.add(_note("No complete trial yet."))
        return sec
    fold = "fold_hF_strict" if "fold_hF_strict_mean" in top else "fold_hF"
    rows = []
    for rank, (_, r) in enumerate(top.iterrows(), 1):
        opts = "; ".join(f"{k}={_value(r.get(f'param:{k}'))}" for k in s.params
                         if isinstance(r.get(f"param:{k}"), str))
        rows.append({
            "#": rank,
            "trial": f'<a href="{html.escape(s.run_url(r["run_id"]))}" data-run-id="{r["run_id"]}">'
                     f'{html.escape(str(r["name"]))}</a>',
            "key options": html.escape(opts),
            f"{fold} mean ± std": f"{_fmt(r.get(f'{fold}_mean'))} ± {_fmt(r.get(f'{fold}_std'))}",
            "official hF": f'<span data-metric="oof_hF">{_fmt(r.get("oof_hF"))}</span>',
            "strict hF": f'<span data-metric="oof_hF_strict">{_fmt(r.get("oof_hF_strict"))}</span>',
            "top-level acc": f'<span data-metric="oof_top_acc">{_fmt(r.get("oof_top_acc"))}</span>',
        })
    frame = pd.DataFrame(rows)
    sec.add(_table(frame, "leaderboard", raw=set(frame.columns)))
    sec.add(_note(f"{len(s.complete)} complete trials. Links open the run in the MLflow UI at "
                  f"{s.ui_base} (start it with `bst-search dashboard`). Each trial's score is "
                  f"out-of-fold, but the best of many trials is an optimistic pick."))
    return sec


@section("matters")
def matters_section(s: Sweep) -> Section:
    import plotly.express as px

    sec = Section("matters", "What matters")
    done = s.complete
    if len(done) < 2:
        sec.add(_note("Fewer than two complete trials: nothing to compare yet."))
        return sec
    study_ok = s.study is not None and sum(t.value is not None for t in s.study.get_trials(
        deepcopy=False)) >= 2
    if study_ok:
        import optuna
        from optuna.visualization import plot_param_importances

        try:
            evaluator = (optuna.importance.PedAnovaImportanceEvaluator() if len(done) > 300
                         else None)  # fANOVA's forest grows slow beyond a few hundred trials
            fig = plot_param_importances(s.study, evaluator=evaluator, target_name=s.metric)
            fig.update_layout(title="Parameter importances (optuna.importance)")
            sec.fig(fig, 360)
        except (RuntimeError, ValueError) as exc:
            sec.add(_note(f"importances not computed: {exc}"))
    else:
        sec.add(_note("Parameter importances need the sweep's Optuna study: "
                      + "; ".join(m for m in s.missing if m.startswith("Optuna")) or "not found"))
    categorical, numeric = [], []
    kinds = _param_kinds(s.study)
    for p in s.params:
        col = f"param:{p}"
        if col not in done or done[col].nunique(dropna=True) < 2:
            continue
        is_num = kinds[p] == "numeric" if p in kinds else _num(done[col].dropna()) is not None
        (numeric if is_num else categorical).append(p)
    for p in categorical:
        col = f"param:{p}"
        use = done[done[col].notna()]
        if use[col].nunique() > MAX_CATEGORIES:
            continue
        fig = px.box(use, x=col, y=s.metric, points="all", hover_name="name",
                     labels={col: p}, title=f"{s.metric} per value of {p}")
        fig.update_traces(pointpos=0, jitter=0.4, boxmean=True)
        sec.fig(fig, 360)
        left = len(done) - len(use)
        if left:
            sec.add(_note(f"{left} complete trials do not use {p} (another option is active) "
                          f"and are left out of this plot."))
    if numeric and study_ok:
        from optuna.visualization import plot_parallel_coordinate, plot_slice

        fig = plot_parallel_coordinate(s.study, params=numeric + categorical, target_name=s.metric)
        fig.update_layout(title="Parallel coordinates (Optuna)")
        sec.fig(fig, 460)
        fig = plot_slice(s.study, params=numeric, target_name=s.metric)
        fig.update_layout(title="Slices of the numeric parameters (Optuna)")
        sec.fig(fig, 400)
    elif numeric:
        long = pd.concat([pd.DataFrame({"param": p, "value": pd.to_numeric(done[f"param:{p}"]),
                                        s.metric: done[s.metric]}) for p in numeric])
        fig = px.scatter(long, x="value", y=s.metric, facet_col="param", facet_col_wrap=4,
                         title="Objective against each numeric parameter")
        fig.update_xaxes(matches=None)
        sec.fig(fig, 400)
    if not categorical and not numeric:
        sec.add(_note("No searched parameter varies among the complete trials."))
    return sec


def _param_kinds(study: Any) -> dict[str, str]:
    """numeric or categorical per parameter, from the study's distributions."""
    if study is None:
        return {}
    from optuna.distributions import CategoricalDistribution

    out: dict[str, str] = {}
    for t in study.get_trials(deepcopy=False):
        for k, d in t.distributions.items():
            out[k] = "categorical" if isinstance(d, CategoricalDistribution) else "numeric"
    return out


def _hours(h: float) -> str:
    return f"{h:.2f} h" if h >= 1 else f"{h * 60:.1f} min"


def _confusions(oof: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    from bst_search.metrics import confusion_matrix
    from bst_search.taxonomy import PROBA_COLUMNS, encode

    y = encode(oof["label"].astype(str))
    pred = oof[list(PROBA_COLUMNS)].to_numpy().argmax(axis=1)
    fine = confusion_matrix(y, pred)
    parent = np.array([TOP_LEVELS.index(top_of(c)) for c in CODES])
    top = np.zeros((len(TOP_LEVELS), len(TOP_LEVELS)), dtype=np.int64)
    np.add.at(top, (parent[:, None].repeat(len(CODES), 1), parent[None, :].repeat(len(CODES), 0)), fine)
    return fine, top


def _confusion_fig(cm: np.ndarray, labels: list[str], title: str, text: bool = False) -> Any:
    """A row-normalised confusion heatmap; hovering shows the counts."""
    import plotly.graph_objects as go

    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = go.Figure(go.Heatmap(z=norm, x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1,
                               customdata=cm, texttemplate="%{z:.1%}" if text else None,
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata} rows "
                                             "(%{z:.1%} of the true class)<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="predicted", yaxis_title="true")
    fig.update_yaxes(autorange="reversed")
    return fig


@section("per_class")
def per_class_section(s: Sweep) -> Section:
    import plotly.graph_objects as go

    sec = Section("per_class", "Per class")
    top = s.complete.head(TOP_N)
    cols = [f"hF_{c}" for c in CODES]
    if len(top) and any(c in top for c in cols):
        z = np.array([[r.get(c, np.nan) for c in cols] for _, r in top.iterrows()], dtype=float)
        names = [f"#{i} {str(n).split(' ', 1)[0]}" for i, n in enumerate(top["name"], 1)]
        if s.ensemble_run is not None:
            m = s.ensemble_run.data.metrics
            z = np.vstack([z, [m.get(c, np.nan) for c in cols]])
            names.append("ensemble")
        fig = go.Figure(go.Heatmap(z=z.T, x=names, y=[f"{c} {NAMES[c]}" for c in CODES],
                                   colorscale="Viridis", zmin=0, zmax=1, colorbar={"title": "hF"},
                                   hovertemplate="%{y}<br>%{x}<br>hF %{z:.3f}<extra></extra>"))
        fig.update_layout(title="Per-class hF (strict): top trials and the ensemble")
        fig.update_yaxes(autorange="reversed")
        sec.fig(fig, 640)
        worst = pd.Series(np.nanmean(z, axis=0), index=CODES).sort_values()
        sec.add(_note("Hardest classes (mean hF over these columns): " + ", ".join(
            f"{c} {NAMES[c]} {v:.3f}" for c, v in worst.head(4).items())))
    else:
        sec.add(_note("No complete trial with per-class metrics yet."))
    if s.ensemble_oof is None:
        sec.add(_note("Confusion matrices need an ensemble run (its oof.parquet): none yet."))
        return sec
    fine, topm = _confusions(s.ensemble_oof)
    sec.fig(_confusion_fig(fine, list(CODES), "Ensemble confusion, 23 x 23 (OOF, row-normalised)"),
            640)
    labels = [f"{t} {TOP_NAMES[t]}" for t in TOP_LEVELS]
    sec.fig(_confusion_fig(topm, labels, "Ensemble confusion, 5 top levels (OOF, row-normalised)",
                           text=True), 420)
    off = [(fine[i, j], i, j) for i in range(len(CODES)) for j in range(len(CODES))
           if top_of(CODES[i]) != top_of(CODES[j]) and fine[i, j] > 0]
    off.sort(reverse=True)
    if off:
        rows = pd.DataFrame([{"true": f"{CODES[i]} {NAMES[CODES[i]]}",
                              "predicted": f"{CODES[j]} {NAMES[CODES[j]]}", "rows": int(n),
                              "share of the true class": f"{n / max(fine[i].sum(), 1):.1%}"}
                             for n, i, j in off[:8]])
        sec.add("<h3>Top-level confusions (wrong top level: scored 0)</h3>" + _table(rows, "small"))
    else:
        sec.add(_note("No prediction leaves its true top level."))
    return sec


@section("ensemble")
def ensemble_section(s: Sweep) -> Section:
    import plotly.graph_objects as go

    sec = Section("ensemble", "Ensemble")
    e = s.ensemble
    if e is None:
        sec.add(_note("No ensemble run yet: run `bst-search ensemble --experiment "
                      f"{s.experiment}` and build the report again."))
        return sec
    metric = e["options"]["metric"]
    curve = pd.DataFrame(e["curve"])
    hon = e.get("honest")
    best = e["best_single"]["score"]
    fig = go.Figure()
    fig.add_scatter(x=curve["size"], y=curve["score"], mode="lines+markers", name="selected (greedy)")
    if curve["score_nm"].notna().any():
        fig.add_scatter(x=curve["size"], y=curve["score_nm"], mode="markers",
                        name="selected + Nelder-Mead weights")
    fig.add_hline(y=best, line_dash="dot", line_color="gray",
                  annotation_text=f"best single {best:.4f}")
    if hon:
        fig.add_hrect(y0=hon["mean"] - hon["std"], y1=hon["mean"] + hon["std"],
                      fillcolor="green", opacity=0.12, line_width=0)
        fig.add_hline(y=hon["mean"], line_color="green",
                      annotation_text=f"honest {hon['mean']:.4f} ± {hon['std']:.4f}")
    fig.update_layout(title=f"Selection curve ({metric} hF): selected vs honest vs best single",
                      xaxis_title="ensemble size (greedy step)", yaxis_title=f"OOF {metric} hF")
    sec.fig(fig)
    bars = [("best single trial", best, None), ("greedy selected (optimistic)", e["selected_score"], None)]
    # like with like: fold mean ± std of both out-of-fold methods, then their pooled scores
    sk = e.get("sk")
    if hon:
        bars.append(("greedy honest, fold mean (nested CV)", hon["mean"], hon["std"]))
    if sk:
        bars.append(("SK fusion, fold mean (cross-fitted)", float(np.mean(sk["per_fold"])), sk["std"]))
    pooled_key = "pooled_hF_strict" if metric == "strict" else "pooled_hF"
    if hon and hon.get(pooled_key) is not None:
        bars.append(("greedy honest, pooled", hon[pooled_key], None))
    if sk:
        bars.append(("SK fusion, pooled", sk["score"], None))
    if s.eval_score:
        bars.append(("submission on evaluation labels (official)", s.eval_score["hF"], None))
    fig = go.Figure(go.Bar(x=[b[0] for b in bars], y=[b[1] for b in bars],
                           error_y={"array": [b[2] or 0 for b in bars], "visible": True},
                           text=[f"{b[1]:.4f}" for b in bars], textposition="outside",
                           marker_color=["#999", "#f58518", "#54a24b", "#4c78a8", "#54a24b", "#4c78a8",
                                         "#b279a2"][:len(bars)]))
    lo = min(b[1] for b in bars)
    fig.update_layout(title=f"Greedy vs SK fusion ({metric} hF; submitted: {e['method']})",
                      yaxis_range=[max(0.0, lo - 0.05), min(1.0, max(b[1] for b in bars) + 0.03)])
    sec.fig(fig, 380)
    members = pd.DataFrame([{
        "trial": f'<a href="{html.escape(s.run_url(m["run_id"]))}">{html.escape(m["trial_id"] or m["run_id"][:8])}</a>',
        "weight": f"{m['weight']:.3f}", "count": m["count"],
        "single hF": _fmt(m["oof_hF_strict" if metric == "strict" else "oof_hF"]),
        **{k: html.escape(_value(v)) for k, v in m["params"].items() if v is not None}}
        for m in e["members"]])
    sec.add(f"<h3>Members ({e['method']}; {html.escape(e['members_meaning'])})</h3>")
    sec.add(_table(members.fillna(""), "small", raw=set(members.columns)))
    ev = e.get("eval")
    if ev is None:
        sec.add(_note("No evaluation predictions: no submission was written."))
    else:
        ok = ev["submission_written"]
        checks = [("every evaluation id once, valid codes, members with evaluation predictions",
                   "passed" if ok else "see failures"),
                  (f"predicted-class shift eval vs OOF (total variation) <= {ev['max_shift']}",
                   f"{ev['tv_distance']:.4f}"),
                  ("submission.csv", "written" if ok else "REFUSED")]
        checks += [("failure", f) for f in ev["failures"]]
        sec.add(f"<h3>Submission self-checks ({ev['n']} ids, order {html.escape(str(ev['order']))})</h3>"
                + _table(pd.DataFrame(checks, columns=["check", "result"]), "small"))
        fig = go.Figure()
        fig.add_bar(x=list(CODES), y=[ev["oof_distribution"][c] for c in CODES], name="OOF")
        fig.add_bar(x=list(CODES), y=[ev["eval_distribution"][c] for c in CODES], name="evaluation")
        fig.update_layout(title="Predicted class distribution: OOF vs evaluation", barmode="group",
                          yaxis_tickformat=".0%")
        sec.fig(fig, 360)
    if s.eval_score:
        sc = s.eval_score
        sec.add(f'<p class="eval">Evaluation labels: official hF <b>{sc["hF"]:.4f}</b> (strict '
                f'{sc["hF_strict"]:.4f}); gap to the honest estimate '
                f'{abs(sc["hF"] - (hon["mean"] if hon else e["selected_score"])):.4f}.</p>')
    else:
        sec.add(_note("Evaluation score: no labels given (bst-search report --eval-labels FILE)."))
    if e.get("left_out"):
        sec.add(_note(f"{len(e['left_out'])} runs were left out of the candidates; see "
                      f"ensemble.json of run {s.ensemble_run.info.run_id}."))
    return sec


def _header(s: Sweep) -> dict[str, Any]:
    """The numbers at the top of the page, with which one to believe."""
    e = s.ensemble
    best = s.complete.head(1)
    out: dict[str, Any] = {"believe": BELIEVE, "cards": []}
    if e and e.get("honest"):
        h = e["honest"]
        out["cards"].append(("honest estimate (believe this)", f"{h['mean']:.4f} ± {h['std']:.4f}",
                             "main"))
        out["cards"].append(("selected ensemble (optimistic)", f"{e['selected_score']:.4f}", ""))
    elif e:
        out["cards"].append(("selected ensemble (optimistic; no honest estimate)",
                             f"{e['selected_score']:.4f}", "main"))
    if len(best):
        out["cards"].append((f"best single trial ({best['name'].iloc[0]})",
                             f"{best[s.metric].iloc[0]:.4f}", "" if e else "main"))
    if s.eval_score:
        out["cards"].append(("evaluation labels, official hF", f"{s.eval_score['hF']:.4f}", ""))
    if not e:
        out["believe"] = ("No ensemble yet. A single trial's OOF score is out-of-fold, but the "
                          "best of many trials is optimistic: expect the next sweep's best to score "
                          "a little lower. " + BELIEVE)
    return out


def render(s: Sweep) -> str:
    """The whole page as one HTML string (plotly's JavaScript embedded once)."""
    import jinja2
    import plotly.offline

    sections = [build(s) for build in SECTIONS.values()]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(DASHBOARDS)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    page = env.get_template(TEMPLATE).render(
        title=f"bst-search report: {s.experiment}", s=s, header=_header(s), sections=sections,
        missing=s.missing, styles=(DASHBOARDS / STYLES).read_text(),
        plotlyjs=plotly.offline.get_plotlyjs(),
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        n_trials=len(s.trials), n_complete=len(s.complete))
    return page


def write_report(s: Sweep, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(s), encoding="utf-8")
    return out


def log_to_ensemble_run(s: Sweep, path: Path) -> str | None:
    """Attach the report to the latest ensemble run (DESIGN: logged with the ensemble run)."""
    if s.ensemble_run is None:
        return None
    import shutil
    import tempfile

    cl = tracking.client(s.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:  # one name in every ensemble run
        named = Path(tmp) / ARTIFACT
        shutil.copyfile(path, named)
        tracking._with_retry(cl.log_artifact, s.ensemble_run.info.run_id, str(named))
    return s.ensemble_run.info.run_id


def existing_optuna_storage(given: str | None, workdir: Path) -> str | None:
    """The sweep's Optuna storage for a reader: --optuna-storage, $BST_OPTUNA_STORAGE, else the
    work dir's SQLite file when it exists (a reader never creates one)."""
    storage = given or os.environ.get("BST_OPTUNA_STORAGE")
    if storage is None and (workdir / "optuna.db").exists():
        storage = f"sqlite:///{workdir / 'optuna.db'}"
    return storage


def add_store_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Where a sweep lives (shared with ``bst-search dashboard``)."""
    p.add_argument("--experiment", required=True, help="MLflow experiment (= sweep) name")
    p.add_argument("--workdir", default=os.environ.get("BST_WORKDIR", "bst-runs"),
                   help="the sweep's work dir (mlflow.db, optuna.db; default bst-runs)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                          "else sqlite:///<workdir>/mlflow.db)")
    p.add_argument("--optuna-storage", help="Optuna RDB URL (default: $BST_OPTUNA_STORAGE, else "
                                            "sqlite:///<workdir>/optuna.db)")
    return p


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_store_arguments(p)
    p.add_argument("--out", help="output HTML file (default <workdir>/reports/<experiment>.html)")
    p.add_argument("--eval-labels", help="id,class CSV of the evaluation set: scores the "
                                         "ensemble's submission")
    p.add_argument("--ui-url", help=f"MLflow UI address the run links point to (default "
                                    f"{DEFAULT_UI}, or the tracking server)")
    p.add_argument("--no-log", action="store_true",
                   help="do not attach the report to the ensemble's MLflow run")
    return p


def run(args: argparse.Namespace) -> int:
    """Build, write and log the report; 2 with a one-line error when it cannot be built."""
    t0 = time.perf_counter()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        s = load_sweep(args.experiment, tracking_uri=args.tracking_uri, workdir=args.workdir,
                       optuna_storage=args.optuna_storage, ui_base=args.ui_url,
                       eval_labels=args.eval_labels)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.workdir) / "reports" / f"{args.experiment}.html"
    path = write_report(s, out)
    run_id = None if args.no_log else log_to_ensemble_run(s, path)
    for m in s.missing:
        print(f"note: {m}")
    print(f"report of {len(s.trials)} trial runs ({len(s.complete)} complete) written in "
          f"{time.perf_counter() - t0:.1f} s, {path.stat().st_size / 1e6:.1f} MB"
          + (f"; logged to ensemble run {run_id}" if run_id else ""))
    print(f"report: {path.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(add_arguments(argparse.ArgumentParser(prog="bst-search report",
                                                     description=__doc__)).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
