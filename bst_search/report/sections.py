"""The report's sections, each a function of the loaded :class:`~bst_search.report.load.Sweep`
registered by name with :func:`section`, in page order: what a reader came for first (best
trials, ensemble, what matters, per class), the sweep's bookkeeping last. Figures are plotly,
and Optuna's own ``optuna.visualization`` figures where one exists (history, importances,
parallel coordinates, slices)."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bst_search.report.load import Sweep
from bst_search.taxonomy import CODES, NAMES, TOP_LEVELS, TOP_NAMES, top_of

TOP_N = 20  # leaderboard rows and heatmap columns
MAX_CATEGORIES = 24  # a parameter with more distinct values is treated as numeric / skipped
STATUS_ORDER = ("complete", "early_stopped", "failed", "interrupted", "running")
PLOT_CONFIG = {"displaylogo": False, "responsive": True}

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
    """One part of the page: its anchor, title, blocks of HTML, how many figures it has and
    its short name in the page's nav (the title where none is given)."""

    id: str
    title: str
    blocks: list[str] = field(default_factory=list)
    figures: int = 0
    nav: str = ""

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


@section("leaderboard")
def leaderboard_section(s: Sweep) -> Section:
    sec = Section("leaderboard", f"Leaderboard: top {TOP_N} trials by {s.metric}", nav="Leaderboard")
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


@section("ensemble")
def ensemble_section(s: Sweep) -> Section:
    sec = Section("ensemble", "Ensemble")
    e = s.ensemble
    if e is None:
        sec.add(_note("No ensemble run yet: run `bst-search ensemble --experiment "
                      f"{s.experiment}` and build the report again."))
        return sec
    metric = e["options"]["metric"]
    sec.fig(_selection_curve_fig(e, metric))
    sec.fig(_methods_fig(s, e, metric), 380)
    sec.add(_methods_table(e))
    members = pd.DataFrame([{
        "trial": f'<a href="{html.escape(s.run_url(m["run_id"]))}">{html.escape(m["trial_id"] or m["run_id"][:8])}</a>',
        "weight": f"{m['weight']:.3f}", "count": m["count"],
        "single hF": _fmt(m["oof_hF_strict" if metric == "strict" else "oof_hF"]),
        **{k: html.escape(_value(v)) for k, v in m["params"].items() if v is not None}}
        for m in e["members"]])
    sec.add(f"<h3>Members ({e['method']}; {html.escape(e['members_meaning'])})</h3>")
    sec.add(_table(members.fillna(""), "small", raw=set(members.columns)))
    _submission_checks(sec, e.get("eval"))
    if s.eval_score:
        sc = s.eval_score
        gap = (f'; {sc["hF"] - e["estimate"]:+.4f} against the estimate to believe'
               if e.get("estimate") is not None else "")
        sec.add(f'<p class="eval">Evaluation labels: official hF <b>{sc["hF"]:.4f}</b> (strict '
                f'{sc["hF_strict"]:.4f}){gap}.</p>')
    else:
        sec.add(_note("Evaluation score: no labels given (bst-search report --eval-labels FILE)."))
    if e.get("left_out"):
        sec.add(_note(f"{len(e['left_out'])} runs were left out of the candidates; see "
                      f"ensemble.json of run {s.ensemble_run.info.run_id}."))
    return sec


def _selection_curve_fig(e: dict[str, Any], metric: str) -> Any:
    """The greedy selection curve against the best single trial and the honest band."""
    import plotly.graph_objects as go

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
    return fig


def _methods_fig(s: Sweep, e: dict[str, Any], metric: str) -> Any:
    """Greedy, exhaustive and SK fusion side by side, like with like: a group of bars per
    method (selected, honest pooled and fold mean ± std, holdout), the best single trial and
    the evaluation score as lines; the same numbers as the printed summary's table."""
    import plotly.graph_objects as go

    from bst_search.ensemble.compare import COLUMNS, method_rows

    rows, fig = method_rows(e), go.Figure()
    for key, label in COLUMNS:
        ys = [getattr(r, key) for r in rows]
        err = [r.honest_std or 0 for r in rows] if key == "honest_fold_mean" else None
        fig.add_bar(x=[r.label + " [submitted]" * r.submitted for r in rows], y=ys, name=label,
                    text=[_fmt(v) if v is not None else "" for v in ys], textposition="outside",
                    error_y={"array": err, "visible": err is not None})
    lines = [("best single", e["best_single"]["score"], "gray")]
    lines += [("evaluation (official)", s.eval_score["hF"], "#b279a2")] if s.eval_score else []
    for name, y, color in lines:
        fig.add_hline(y=y, line_dash="dot", line_color=color, annotation_text=f"{name} {y:.4f}")
    vals = [v for r in rows for k, _ in COLUMNS if (v := getattr(r, k)) is not None]
    vals += [y for _, y, _ in lines]
    fig.update_layout(title=f"Greedy vs exhaustive vs SK fusion ({metric} hF; submitted: "
                      f"{e['method']})", barmode="group",
                      yaxis_range=[max(0.0, min(vals) - 0.05), min(1.0, max(vals) + 0.03)])
    return fig


def _methods_table(e: dict[str, Any]) -> str:
    from bst_search.ensemble.compare import method_table

    return _table(pd.DataFrame(method_table(e)), "small")


def _submission_checks(sec: Section, ev: dict[str, Any] | None) -> None:
    """The submission's self-checks and its predicted-class shift, eval vs OOF."""
    import plotly.graph_objects as go

    if ev is None:
        sec.add(_note("No evaluation predictions: no submission was written."))
        return
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
        _importances(sec, s, len(done))
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


def _importances(sec: Section, s: Sweep, n_done: int) -> None:
    """Optuna's importances; a line instead of a chart of one bar (one parameter takes it all)."""
    import optuna
    from optuna.visualization import plot_param_importances

    try:
        evaluator = (optuna.importance.PedAnovaImportanceEvaluator() if n_done > 300
                     else None)  # fANOVA's forest grows slow beyond a few hundred trials
        fig = plot_param_importances(s.study, evaluator=evaluator, target_name=s.metric)
    except (RuntimeError, ValueError) as exc:
        sec.add(_note(f"importances not computed: {exc}"))
        return
    names = list(dict.fromkeys(n for tr in fig.data for n in (tr.y if tr.y is not None else ())))
    if len(names) >= 2:
        fig.update_layout(title="Parameter importances (optuna.importance)")
        sec.fig(fig, 360)
    else:
        sec.add(_note("Parameter importances: " + (
            f"{names[0]} is the only parameter every complete trial has, so it takes all of "
            "the importance" if names else "no parameter is shared by every complete trial")))


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


@section("sweep")
def sweep_section(s: Sweep) -> Section:
    """The sweep's bookkeeping, last: progress over time, trials by status, timings."""
    sec = Section("sweep", "Sweep: progress, trial statuses and timings", nav="Sweep")
    t = s.trials
    if not len(t):
        sec.add(_note("No trial run has been logged in this experiment yet."))
        return sec
    counts = t["bst_status"].value_counts()
    order = [k for k in STATUS_ORDER if k in counts] + [k for k in counts.index if k not in STATUS_ORDER]
    sec.add(_sweep_stats(s, counts, order))
    if len(order) < 2:  # one bar says no more than a line
        sec.add(_note(f"{'all ' if len(t) > 1 else ''}{len(t)} trial run{'s' * (len(t) > 1)}: "
                      f"{order[0]}"))
    done = s.complete.sort_values("number")
    if len(done) >= 2:
        _progress_figs(sec, s, done)
    elif len(done):
        sec.add(_note(f"One complete trial so far ({done['name'].iloc[0]}, {s.metric} "
                      f"{done[s.metric].iloc[0]:.4f}): the progress plots appear with the second."))
    else:
        sec.add(_note("No complete trial yet: the objective plots appear with the first one."))
    if len(order) >= 2:
        import plotly.graph_objects as go

        fig = go.Figure(go.Bar(x=order, y=[int(counts[k]) for k in order], marker_color="#4c78a8"))
        fig.update_layout(title="Trials by status", yaxis_title="trials")
        sec.fig(fig, 320)
    return sec


def _sweep_stats(s: Sweep, counts: pd.Series, order: list[str]) -> str:
    """Trial counts per status, wall, CPU and GPU time, Optuna's trial states."""
    t = s.trials
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
    return '<dl class="stats">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>"
                                          for k, v in stats.items()) + "</dl>"


def _progress_figs(sec: Section, s: Sweep, done: pd.DataFrame) -> None:
    """The objective per trial number (Optuna's history) and against wall time."""
    import plotly.graph_objects as go

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
    minutes = (fin["end"] - s.trials["start"].min()) / 60000
    fig = go.Figure()
    fig.add_scatter(x=minutes, y=fin[s.metric], mode="markers", name=s.metric, text=fin["name"])
    fig.add_scatter(x=minutes, y=_best_so_far(fin[s.metric].to_numpy(), s.mode), mode="lines",
                    line_shape="hv", name="best so far")
    fig.update_layout(title=f"{s.metric} against wall time (trial end)",
                      xaxis_title="minutes since the sweep started", yaxis_title=s.metric)
    sec.fig(fig)


def _hours(h: float) -> str:
    return f"{h:.2f} h" if h >= 1 else f"{h * 60:.1f} min"
