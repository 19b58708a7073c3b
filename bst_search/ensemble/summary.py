"""What the coordinator says: ``ensemble.json``, the MLflow metrics and the printed summary.

Everything here reads an :class:`~bst_search.ensemble.outcome.Outcome` and computes nothing new.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bst_search.ensemble.compare import COLUMNS, HONEST, headline, method_table
from bst_search.ensemble.methods import (
    METHODS,
    ExhaustiveSubsets,
    GreedySelection,
    SKFusionMethod,
)
from bst_search.ensemble.outputs import OUTPUT_FILES
from bst_search.tracking.schema import KIND, KIND_ENSEMBLE, SUBMISSION_FILE

if TYPE_CHECKING:
    from bst_search.ensemble.candidates import CandidateInfo
    from bst_search.ensemble.outcome import Outcome

MAX_LISTED = 30  # lines of left-out runs and members printed; ensemble.json has them all
PREFERRED_PARAMS = ("model.name", "backbones", "model.fusion", "model.head", "loss.alpha",
                    "data.strategy")
HONEST_NOTE = ("honest = the whole selection procedure re-run in a cross-validation over the "
               "OOF folds (selected on four folds, scored on the fifth): without a holdout, the "
               "number to believe, as a lower bound (one fold model per OOF row; the submission "
               "averages them all). selected = measured on the rows it was chosen on: "
               "optimistic. estimate = the number to believe (estimate_kind says which).")
SCOPE_NOTE = ("what the honest estimate covers: the selection (pre-selection, greedy steps, "
              "weights, choice of the best step) re-run inside each fold. What it does not: the "
              "search that produced the pool (its trials were chosen by their OOF score on all "
              "folds), and the recipe gap (each OOF row is predicted by one fold model, the "
              "submission averages all of them). `search --holdout-fraction F` sets rows aside "
              "that neither the search nor the selection sees, and scores both recipes on them.")
POOLED_NOTE = ("pooled = all held-out rows scored together; fold mean = the mean of the per-fold "
               "scores. hF is not additive over rows, so the two differ: compare pooled with "
               "pooled and fold mean with fold mean.")
SK_NOTE = ("sk = selective-kernel fusion of the top candidates' probabilities, cross-fitted over "
           "the OOF folds (candidates ranked, fuser trained and its epoch chosen on four folds, "
           "fifth predicted): "
           "its OOF score is out-of-fold, comparable with the honest greedy score. Evaluation "
           "predictions: mean of the cross-fit fusers.")


def _key_params(infos: list[CandidateInfo], members: np.ndarray) -> list[str]:
    """Parameters worth printing: the usual suspects, then those that vary among members."""
    present = [k for k in PREFERRED_PARAMS if any(k in infos[m].params for m in members)]
    varying = sorted(
        k for k in set().union(*(infos[m].params for m in members))
        if k not in present and len({infos[m].params.get(k) for m in members}) > 1
        and max(len(str(infos[m].params.get(k, ""))) for m in members) <= 24)
    return present + varying[:max(0, 6 - len(present))]


def _curve_json(curve: list[dict[str, object]], infos: list[CandidateInfo]) -> list[dict[str, object]]:
    out = []
    for e in curve:
        added = [int(i) for i in e["added"]]  # type: ignore[union-attr]
        out.append({"size": e["size"], "score": e["score"], "score_nm": e["score_nm"],
                    "score_best": e["score_best"],
                    "added_trial_ids": [infos[i].trial_id for i in added],
                    "added_run_ids": [infos[i].run_id for i in added]})
    return out


def _ens_summary(ens: dict[str, float], metric: str) -> dict[str, Any]:
    """The scores of one ensemble's OOF predictions that ensemble.json keeps."""
    return {"metric": metric, "score": float(ens["hF_strict"] if metric == "strict" else ens["hF"]),
            "hF_strict": ens["hF_strict"], "hF": ens["hF"], "acc": ens["acc"],
            "top_acc": ens["top_acc"], "n_never_predicted": int(ens["n_never_predicted"]),
            "strict_differs_from_official": bool(abs(ens["hF_strict"] - ens["hF"]) > 1e-12)}


def _fold_stats(per_fold_strict: list[float]) -> dict[str, Any]:
    return {"per_fold_strict": [float(v) for v in per_fold_strict],
            "fold_mean_hF_strict": float(np.mean(per_fold_strict)),
            "fold_std_hF_strict": float(np.std(per_fold_strict))}


def build_report(res: Outcome, experiment: str,
                 eval_report: dict[str, Any] | None) -> dict[str, Any]:
    """The content of ``ensemble.json``."""
    cs, opts, sel, hon, sk = res.cs, res.opts, res.sel, res.hon, res.sk
    infos, method, best = cs.infos, res.method, res.best
    keys = _key_params(infos, res.members)
    report = {
        "schema": "bst-search/ensemble/1",
        "experiment": experiment,
        "data_fp": cs.data_fp, "fold_fp": cs.fold_fp, "eval_fp": cs.eval_fp,
        "method": method,  # what submission.csv, oof.parquet, eval.parquet, members come from
        "options": opts.to_dict(),
        "n_candidates": cs.n_total or len(infos), "n_in_memory": len(infos),
        "n_samples": int(len(cs.labels)),
        "selected_score": res.selected,  # greedy, the chosen metric; details under "selected"
        "honest_score": hon.mean if hon else None,  # greedy, mean over folds; under "honest"
        "sk_score": sk.score if sk else None,  # cross-fitted OOF; details under "sk"
        "submitted": {"method": method, **_ens_summary(res.ens, opts.metric),
                      "estimate": METHODS[method].estimate},
        "members_meaning": METHODS[method].members_meaning,
        "members": [{
            "run_id": infos[m].run_id, "trial_id": infos[m].trial_id,
            "count": int(res.counts[m]), "weight": float(res.weights[m]),
            "oof_hF_strict": float(res.single_strict[m]), "oof_hF": float(res.single_official[m]),
            "params": {k: infos[m].params.get(k) for k in keys},
        } for m in res.members],
        "selected": {**_ens_summary(res.greedy_ens, opts.metric),
                     "searched_score": float(sel.score), "best_step": sel.best_step,
                     "weighted": bool(sel.weighted), **_fold_stats(res.selected_per_fold)},
        "honest": hon.to_dict() if hon else None,
        "sk": _sk_report(res),
        "exhaustive": _exhaustive_report(res),
        "best_single": {"run_id": infos[best].run_id, "trial_id": infos[best].trial_id,
                        "score": float(res.singles[best]),
                        "hF_strict": float(res.single_strict[best]),
                        "hF": float(res.single_official[best]),
                        **_fold_stats(res.best_per_fold)},
        "holdout": res.holdout,
        "curve": _curve_json(sel.curve, infos),
        "bag_curves": [_curve_json(c, infos) for c in sel.bag_curves] if opts.bags > 1 else [],
        "left_out": [x.to_dict() for x in cs.left_out],
        "eval": eval_report,
        "notes": cs.notes + [HONEST_NOTE, SCOPE_NOTE, POOLED_NOTE, SK_NOTE] + res.notes,
    }
    return _with_estimate(report)


def _with_estimate(report: dict[str, Any]) -> dict[str, Any]:
    """The report with the number to believe (:func:`~bst_search.ensemble.compare.headline`,
    read from the report itself, as the report page does) placed after the sizes."""
    head = headline(report)
    at = list(report).index("n_samples") + 1
    items = list(report.items())
    return dict(items[:at] + [("estimate", head.value), ("estimate_kind", head.kind),
                              ("estimate_label", head.label), ("estimate_why", head.why)]
                + items[at:])


def _ident(infos: list[CandidateInfo], c: int) -> dict[str, str]:
    return {"run_id": infos[c].run_id, "trial_id": infos[c].trial_id}


def _sk_report(res: Outcome) -> dict[str, Any] | None:
    """ensemble.json's "sk": the cross-fit record, its scores and its members; None when SK
    fusion did not run."""
    fit, ens, infos = res.sk_fit, res.sk_ens, res.cs.infos
    if fit is None or ens is None:
        return None
    sk = fit.sk
    record = sk.to_dict([_ident(infos, c) for c in range(len(infos))],
                        eval_fused=fit.eval_proba is not None)
    return {**record, **_ens_summary(ens, res.opts.metric),
            "members": [{**_ident(infos, int(m)), "fusers": int(sk.uses[m]),
                         "attention": float(sk.weight[m])} for m in sk.members]}


def _exhaustive_report(res: Outcome) -> dict[str, Any] | None:
    """ensemble.json's "exhaustive": the best subset, what it was chosen from, its scores
    and its honest estimate; None when it did not run."""
    fit, ens, infos = res.exhaustive, res.exhaustive_ens, res.cs.infos
    if fit is None or ens is None:
        return None
    sel = fit.sel
    return {**_ens_summary(ens, res.opts.metric), "top": len(sel.pool),
            "max_size": len(sel.best_by_size), "n_subsets": sel.n_subsets, "size": sel.size,
            "best_by_size": sel.best_by_size,
            "pool": [{**_ident(infos, int(c)), "score": float(s)}
                     for c, s in zip(sel.pool, sel.pool_singles, strict=True)],
            "members": [_ident(infos, int(m)) for m in sel.members],
            **_fold_stats(res.per_fold[ExhaustiveSubsets.name]),
            "honest": fit.hon.to_dict() if fit.hon else None}


def mlflow_metrics(res: Outcome, report: dict[str, Any]) -> dict[str, float | None]:
    """The ensemble run's MLflow metrics (None and non-finite values are not logged)."""
    hon, sk, g, ens, best = res.hon, res.sk, res.greedy_ens, res.ens, res.best
    ev = report["eval"]
    return {
        "selected_score": res.selected, "selected_hF_strict": g["hF_strict"],
        "selected_hF": g["hF"], "best_single_hF_strict": float(res.single_strict[best]),
        "best_single_hF": float(res.single_official[best]),
        "honest_score": hon.mean if hon else None,
        "honest_hF_strict": float(np.mean(hon.per_fold_strict)) if hon else None,
        "honest_hF": float(np.mean(hon.per_fold_official)) if hon else None,
        "honest_std": hon.std if hon else None,
        "honest_pooled_hF_strict": hon.pooled_strict if hon else None,
        "honest_pooled_hF": hon.pooled_official if hon else None,
        "sk_score": sk.score if sk else None,
        "sk_hF_strict": sk.hF_strict if sk else None,
        "sk_hF": sk.hF if sk else None,
        "sk_std": float(np.std(sk.per_fold)) if sk else None,
        "submitted_score": report["submitted"]["score"], "estimate": report["estimate"],
        **_exhaustive_metrics(report["exhaustive"]),
        "n_members": float(len(res.members)), "ensemble_size": float(res.sel.counts.sum()),
        "eval_oof_tvd": ev["tv_distance"] if ev else None,
        **_holdout_metrics(res.holdout),
        **{f"oof_{k}": v for k, v in ens.items() if not k.startswith("hF_") or k == "hF_strict"},
        **{k: v for k, v in ens.items() if k.startswith("hF_") and k != "hF_strict"},
    }


def _exhaustive_metrics(ex: dict[str, Any] | None) -> dict[str, float | None]:
    if ex is None:
        return {}
    hon = ex["honest"] or {}
    return {"exhaustive_selected_hF_strict": ex["hF_strict"], "exhaustive_selected_hF": ex["hF"],
            "exhaustive_size": float(ex["size"]), "exhaustive_honest_score": hon.get("mean"),
            "exhaustive_honest_std": hon.get("std"),
            "exhaustive_honest_pooled_hF_strict": hon.get("pooled_hF_strict"),
            "exhaustive_honest_pooled_hF": hon.get("pooled_hF")}


def _holdout_metrics(ho: dict[str, Any] | None) -> dict[str, float]:
    if ho is None:
        return {}
    out = {}
    for who in ("greedy", "sk", "exhaustive", "best_single"):
        if who not in ho:
            continue
        for m in ("hF_strict", "hF"):
            out[f"holdout_{who}_{m}"] = ho[who]["fold_models_averaged"][m]
            out[f"holdout_{who}_one_model_{m}"] = ho[who]["one_fold_model_mean"][m]
    return out


def print_summary(res: Outcome, report: dict[str, Any], *, experiment: str, tracking_uri: str,
                  out: Path, run_id: str | None) -> None:
    """The coordinator's console output: candidates, members, the score table, the files."""
    _print_candidates(res, report, experiment, tracking_uri)
    _print_members(report)
    _print_scores(res, report)
    _print_files(report, out, run_id, experiment)


def _print_candidates(res: Outcome, report: dict[str, Any], experiment: str,
                      tracking_uri: str) -> None:
    p, cs, sel, sk = print, res.cs, res.sel, res.sk
    opts = report["options"]
    p(f"ensemble of experiment {experiment!r} ({tracking_uri})")
    n_mem = (f" ({len(cs.infos)} in memory)" if cs.n_total > len(cs.infos) else "")
    p(f"candidates: {cs.n_total or len(cs.infos)} used{n_mem}, {len(cs.left_out)} left out "
      f"(data fp {cs.data_fp}, fold fp {cs.fold_fp})")
    for x in cs.left_out[:MAX_LISTED]:
        p(f"  left out: run {x.run_id}  trial {x.trial_id or '?'}: {x.reason}")
    if len(cs.left_out) > MAX_LISTED:
        p(f"  ... and {len(cs.left_out) - MAX_LISTED} more, listed in ensemble.json")
    for note in cs.notes:
        p(f"  note: {note}")
    p(f"greedy selection: {opts['metric']} hF, combine {opts['combine']}, weights "
      f"{opts['weights']}, max size {opts['max_size']}, init {opts['init_size']}, top-k "
      f"{opts['top_k']} (diversity {opts['diversity']}), bags {opts['bags']}: {int((sel.counts > 0).sum())} distinct members, "
      f"ensemble size {int(sel.counts.sum())}"
      + (f", best step {sel.best_step}" if sel.best_step else "")
      + (" (Nelder-Mead weights)" if sel.weighted and opts["weights"] != "none" else ""))
    if sk is not None:
        o = sk.options
        p(f"SK fusion: top {o.top} candidates ranked per cross-fit fold, {len(sk.folds)} fusers "
          f"on {sk.device} in {sk.seconds:.1f} s, {len(sk.members)} distinct candidates used; "
          f"epoch kept of {o.epochs} per fold (0 = plain mean): "
          + ", ".join(map(str, sk.chosen_epochs)))
    ex = report["exhaustive"]
    if ex is not None:
        p(f"exhaustive subsets: the top {ex['top']} candidates, every subset of 1..{ex['max_size']}"
          f" with equal weights ({ex['n_subsets']} scored): best size {ex['size']} (trials "
          + ", ".join(m["trial_id"] or m["run_id"][:8] for m in ex["members"]) + "); best by "
          "size " + ", ".join(f"{v:.4f}" for v in ex["best_by_size"]))
    p(f"submitted method: {res.method}" + METHODS[res.method].member_note)


def _print_members(report: dict[str, Any]) -> None:
    p, opts = print, report["options"]
    keys = list(report["members"][0]["params"]) if report["members"] else []
    header = ["weight", "count", "trial", "run", "hF single"] + keys
    rows = [[f"{m['weight']:.3f}", str(m["count"]), m["trial_id"] or "?", m["run_id"][:8],
             f"{m['oof_hF_strict' if opts['metric'] == 'strict' else 'oof_hF']:.4f}"]
            + [str(m["params"].get(k, "")) for k in keys] for m in report["members"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows[:MAX_LISTED]]:
        p(("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))).rstrip())
    if len(rows) > MAX_LISTED:
        p(f"  ... and {len(rows) - MAX_LISTED} more members, listed in ensemble.json")


def _print_scores(res: Outcome, report: dict[str, Any]) -> None:
    """One table, pooled and fold-mean side by side for every row; then the holdout, the
    methods side by side and the number to believe."""
    p, hon, sk, method = print, res.hon, res.sk, res.method
    opts = report["options"]
    bs, se = report["best_single"], report["selected"]
    mark = {m: "  [submitted]" if m == method else "" for m in METHODS}
    believed = {m: report["estimate_kind"] == HONEST and m == method for m in METHODS}
    detailed = (GreedySelection.name, SKFusionMethod.name, ExhaustiveSubsets.name)
    w = 46

    def row(label: str, pooled: float, per_fold: list[float], official: float, note: str) -> None:
        p(f"  {label:{w}s} {pooled:9.4f} {np.mean(per_fold):9.4f} ± {np.std(per_fold):.4f} "
          f"{official:9.4f}   {note}".rstrip())

    def oof_note(name: str, what: str, submitted: str = "") -> str:
        return ("<- the number to believe: a lower bound (no holdout)" if believed[name]
                else what) + submitted

    p("")
    p(f"  {'':{w}s} {'strict hF':>9s} {'strict hF':>18s} {'official':>9s}")
    p(f"  {'':{w}s} {'pooled':>9s} {'fold mean ± std':>18s} {'pooled':>9s}")
    row(f"best single (trial {bs['trial_id'] or '?'})", bs["hF_strict"], res.best_per_fold,
        bs["hF"], "")
    row("greedy selected (OOF, chosen on it)", se["hF_strict"], res.selected_per_fold, se["hF"],
        f"optimistic{mark['greedy']}")
    if hon:
        h = report["honest"]
        row("greedy honest (selection in nested CV)", h["pooled_hF_strict"], hon.per_fold_strict,
            h["pooled_hF"], oof_note("greedy", "out-of-fold: the selection's honest score"))
    else:
        p("  greedy honest estimate skipped (--no-honest): the selected score is optimistic")
    ex = report["exhaustive"]
    if ex is not None:
        row("exhaustive selected (OOF, chosen on it)", ex["hF_strict"], ex["per_fold_strict"],
            ex["hF"], f"optimistic{mark['exhaustive']}")
        if ex["honest"]:
            h = ex["honest"]
            row("exhaustive honest (subset choice in nested CV)", h["pooled_hF_strict"],
                h["per_fold_strict"], h["pooled_hF"], oof_note("exhaustive", "out-of-fold"))
    if sk is not None:
        s = report["sk"]
        row(f"SK fusion (cross-fitted OOF, top {sk.options.top})", s["hF_strict"],
            sk.per_fold_strict, s["hF"], oof_note("sk", "out-of-fold, like honest", mark["sk"]))
    else:
        for note in report["notes"]:
            if note.startswith("SK fusion not scored"):
                p(f"  {note}")
    for name in (n for n in res.fits if n not in detailed):
        ens = res.scores[name]
        row(f"{name} (OOF)", ens["hF_strict"], res.per_fold[name], ens["hF"], mark[name])
    if opts["metric"] != "strict":
        if hon:
            p("  greedy honest per fold (official): " + ", ".join(f"{v:.4f}" for v in hon.per_fold))
        if sk is not None:
            p("  SK per fold (official): " + ", ".join(f"{v:.4f}" for v in sk.per_fold))
    p("  pooled = all held-out rows scored together, fold mean = mean of the per-fold scores: "
      "compare like with like")
    p("  honest covers the selection only, not the search that produced the pool (its trials "
      "were chosen on all folds)")
    p("  nor the recipe: each OOF row comes from one fold model, the submission averages them all")
    _print_holdout(res)
    _print_comparison(report)
    _print_estimate(report)
    _print_flags(res, report)


def _print_flags(res: Outcome, report: dict[str, Any]) -> None:
    p, sub, se, bs, sk = print, report["submitted"], report["selected"], report["best_single"], res.sk
    if sub["strict_differs_from_official"]:
        p(f"  flag: strict and official hF of the submitted {res.method} ensemble differ: "
          f"{sub['n_never_predicted']} class(es) never predicted")
    if se["score"] < bs["score"]:
        p("  flag: the greedy ensemble scores below the best single trial on the OOF rows")
    if sk is not None and sk.score < bs["score"]:
        p("  flag: SK fusion scores below the best single trial on the OOF rows")


def _print_holdout(res: Outcome) -> None:
    p, ho = print, res.holdout
    if ho is None:
        p("  holdout: none (run the search with --holdout-fraction F for an estimate that covers "
          "the search and the recipe too)")
        return
    w = 66
    p(f"\nholdout: {ho['n']} development sounds set aside before the folds: no trial's objective "
      f"and no selection saw them; scored once")
    p(f"  {'':{w}s} {'strict hF':>9s} {'official':>9s}")
    rows = (("greedy", "greedy ensemble"), ("exhaustive", "exhaustive subset"),
            ("sk", "SK fusion (mean of the cross-fit fusers)"),
            ("best_single", f"best single trial ({ho['best_single']['trial_id'] or '?'})"))
    for who, label in rows:
        if who not in ho:
            continue
        r = ho[who]
        avg, one = r["fold_models_averaged"], r["one_fold_model_mean"]
        n = len(r["one_fold_model"])
        note = ("   [submitted] the submission's recipe: the number to believe"
                if who == ho["submitted"] else "")
        p(f"  {label + f', {n} fold models averaged':{w}s} {avg['hF_strict']:9.4f} {avg['hF']:9.4f}"
          + note)
        p(f"  {label + ', one fold model (mean)':{w}s} {one['hF_strict']:9.4f} {one['hF']:9.4f}   "
          + "per fold model " + ", ".join(f"{o['hF_strict']:.4f}" for o in r["one_fold_model"]))


def _print_comparison(report: dict[str, Any]) -> None:
    """Greedy, exhaustive and SK fusion side by side, in the chosen metric; the columns no
    method has (the holdout's, without one) are left out."""
    table = method_table(report)
    labels = [label for _, label in COLUMNS if any(r[label] != "-" for r in table)]
    heads = [("", "method")] + [tuple(label.split(", ", 1)) for label in labels]
    cells = [[r["method"]] + [r[label] for label in labels] for r in table]
    widths = [max(len(heads[i][0]), len(heads[i][1]), *(len(c[i]) for c in cells))
              for i in range(len(heads))]
    p = print
    p(f"\nmethods side by side ({report['options']['metric']} hF; pooled beside pooled, fold "
      f"mean beside fold mean):")
    for line in ([h[0] for h in heads], [h[1] for h in heads], *cells):
        p(("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))).rstrip())


def _print_estimate(report: dict[str, Any]) -> None:
    """The number to believe, which one it is and why, in a sentence."""
    import textwrap

    print(f"\nthe number to believe: {report['estimate']:.4f}, the {report['estimate_label']}")
    print(textwrap.fill(f"why: {report['estimate_why']}", width=100, initial_indent="  ",
                        subsequent_indent="    ", break_on_hyphens=False))


def _print_files(report: dict[str, Any], out: Path, run_id: str | None, experiment: str) -> None:
    p, method, ev = print, report["method"], report["eval"]
    if ev is None:
        p("evaluation: no evaluation predictions, no submission")
    else:
        p(f"evaluation ({method}): {ev['n']} ids (order: {ev['order']}); predicted-class "
          f"distance to OOF (total variation) {ev['tv_distance']:.4f}, max {ev['max_shift']}")
        if ev["submission_written"]:
            p(f"  {SUBMISSION_FILE} written: {out / SUBMISSION_FILE}")
        else:
            p("  SUBMISSION REFUSED:")
            for f in ev["failures"]:
                p(f"    - {f}")
    if not (ev and ev["submission_written"]) and (out / SUBMISSION_FILE).exists():
        p(f"  {out / SUBMISSION_FILE} is a previous ensemble's, left as it was")
    p(f"files in {out}: " + ", ".join(n for n in OUTPUT_FILES if (out / n).exists()))
    if run_id:
        p(f"mlflow run {run_id} ({KIND}={KIND_ENSEMBLE}) in experiment {experiment!r}")

