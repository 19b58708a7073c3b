"""The coordinator's steps, from a sweep to a submission, on parsed arguments.

Candidates -> the working set (the candidates any method can pick, in memory) -> every
registered method (:mod:`~bst_search.ensemble.methods`: greedy selection and exhaustive
subset selection, each with its honest nested-CV estimate, cross-fitted SK fusion) fitted and scored on the OOF rows, and its
evaluation (and holdout) rows predicted -> the chosen method's (``--method``) self-checked
``submission.csv`` -> ``ensemble.json``, parquets and plots -> an MLflow run tagged
``bst.kind=ensemble`` -> the printed summary. Every method is scored, so the summary
compares them whichever one is submitted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bst_search import tracking
from bst_search.ensemble import summary
from bst_search.ensemble.candidates import CandidateSet, load_candidates
from bst_search.ensemble.holdout import rows_to_predict, score_holdout, split_predictions
from bst_search.ensemble.methods import (
    DEFAULT_METHOD,
    METHODS,
    EnsembleMethod,
    MethodFit,
    MethodInput,
)
from bst_search.ensemble.outcome import Outcome
from bst_search.ensemble.outputs import clear_outputs, log_run, write_parquets
from bst_search.ensemble.scoring import (
    candidate_stats,
    score_pred,
    single_scores,
    to_combine_space,
)
from bst_search.ensemble.selection import SelectionOptions, working_set
from bst_search.ensemble.store import PredictionStore
from bst_search.ensemble.submission import (
    MemberEval,
    SubmissionCheckError,
    build_submission,
    class_distribution,
    tv_distance,
    write_submission,
)
from bst_search.ensemble.tables import read_eval_ids
from bst_search.metrics import evaluate
from bst_search.taxonomy import CODES
from bst_search.tracking.schema import ENSEMBLE_FILE, SUBMISSION_FILE


def run(args: argparse.Namespace) -> int:
    """The coordinator proper: 0 on success, 1 when the submission was refused."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    workdir = Path(args.workdir)
    tracking_uri = tracking.tracking_uri(workdir, args.tracking_uri)
    out = Path(args.out) if args.out else workdir / "ensembles" / args.experiment
    opts, methods, method = _options(args)  # bad options fail before the candidates are loaded
    eval_ids = read_eval_ids(args.eval_data) if args.eval_data else None

    cs = load_candidates(args.experiment, tracking_uri=tracking_uri,
                         cache_dir=workdir / "ensemble-cache", data_fp=args.data_fp,
                         fold_fp=args.fold_fp, eval_ids=eval_ids,
                         store_dtype=getattr(args, "store_dtype", "auto"),
                         float32_up_to=opts.top_k or 2**62, progress=True)
    cs, X, E = load_working_set(cs, opts, sk_top=getattr(args, "sk_top", 10),
                                honest=not args.no_honest,
                                exhaustive_top=getattr(args, "exhaustive_top", 0))
    res = score_candidates(cs, X, E, opts, methods, method)

    clear_outputs(out)  # never leave a stale submission beside a new ensemble
    eval_proba, eval_report, status = _submission(res, out, args.max_shift)
    report = summary.build_report(res, args.experiment, eval_report)
    (out / ENSEMBLE_FILE).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    write_parquets(out, cs, res.proba, eval_proba)
    _plots(out, res)

    run_id = None
    if not args.no_log:
        metrics = summary.mlflow_metrics(res, report)
        params = {k: v for m in methods.values() for k, v in m.params().items()}
        run_id = log_run(tracking_uri, args.experiment, out, report, status=status,
                         method_params=params, metrics=metrics)
    summary.print_summary(res, report, experiment=args.experiment,
                             tracking_uri=tracking_uri, out=out, run_id=run_id)
    return 1 if status == "refused" else 0


def _options(args: argparse.Namespace
             ) -> tuple[SelectionOptions, dict[str, EnsembleMethod], str]:
    """Selection options, every registered method built from the arguments, and the name of
    the one to submit; all checked."""
    opts = SelectionOptions(metric=args.metric, init_size=args.init_size, max_size=args.max_size,
                            top_k=args.top_k or None, diversity=getattr(args, "diversity", 0.0),
                            bags=args.bags, bag_fraction=args.bag_fraction,
                            weights=args.weights, combine=args.combine, seed=args.seed,
                            nm_maxfev=args.nm_maxfev)
    if not args.max_shift > 0:
        raise ValueError(f"--max-shift must be > 0, got {args.max_shift}")
    method = getattr(args, "method", DEFAULT_METHOD)
    if method not in METHODS:
        raise ValueError(f"--method must be one of {tuple(METHODS)}, got {method!r}")
    return opts, {name: cls.from_args(args, opts) for name, cls in METHODS.items()}, method


def load_working_set(cs: CandidateSet, opts: SelectionOptions, *, sk_top: int,
                     honest: bool, exhaustive_top: int = 0
                     ) -> tuple[CandidateSet, np.ndarray, np.ndarray | None]:
    """The candidates any selection can pick, in memory; ``cs`` narrowed to them.

    See :func:`read_working_set`; ``n_total`` and a note keep how many there were. SK and
    exhaustive selection both start from the best single candidates of their rows, so the
    larger of their two tops is kept on every row set.
    """
    n_total = len(cs.infos)
    keep, X, E = read_working_set(cs.store, cs.eval_store if cs.eval_ids is not None else None,
                                  cs.labels, cs.folds, opts, sk_top=max(sk_top, exhaustive_top),
                                  honest=honest)
    if len(keep) < n_total:
        tops = f"SK's top {sk_top}" + (f" and exhaustive's top {exhaustive_top}"
                                       if exhaustive_top else "")
        note = (f"{len(keep)} of {n_total} candidates read into memory: the union of the "
                f"top-{opts.top_k} pools (diversity {opts.diversity}) of every selection and "
                f"{tops}; the others cannot be picked")
        cs = dataclasses.replace(cs, infos=[cs.infos[i] for i in keep], notes=[*cs.notes, note],
                                 index=keep)
    return dataclasses.replace(cs, n_total=n_total), X, E


def read_working_set(store: PredictionStore, eval_store: PredictionStore | None,
                     y: np.ndarray, folds: np.ndarray, opts: SelectionOptions, *, sk_top: int,
                     honest: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Indices, OOF and evaluation tensors (float32, combine space) of the working set.

    From the store's argmaxes (kept as it was written) come the pools of the final and the
    nested selections and SK's top candidates (:func:`working_set`); only their union is
    read whole. With no more candidates than ``top_k`` every one is in the pool.
    """
    if opts.top_k is None or opts.top_k >= store.n:
        keep = np.arange(store.n)
    else:
        keep = working_set(store.argmax(), y, folds, opts, metric_top=sk_top, honest=honest)
    X = to_combine_space(store.take(keep), opts.combine)
    E = to_combine_space(eval_store.take(keep), opts.combine) if eval_store is not None else None
    return keep, X, E


def score_candidates(cs: CandidateSet, X: np.ndarray, E: np.ndarray | None,
                     opts: SelectionOptions, methods: dict[str, EnsembleMethod],
                     method: str) -> Outcome:
    """Every method fitted on the OOF tensor and scored; each predicts the evaluation (and
    holdout) rows; ``method`` names the one submitted."""
    y = cs.labels
    stats = candidate_stats(X, opts.combine)
    data = MethodInput(X=X, y=y, folds=cs.folds, stats=stats, combine=opts.combine)
    fits, notes = fit_methods(methods, data, method)
    rows = rows_to_predict(cs, E, opts.combine)
    if rows is not None:
        for name, fit in fits.items():
            fit.eval_proba, fit.holdout = split_predictions(rows, methods[name].predict(fit, rows))

    all_rows = np.arange(len(y))
    single_strict = single_scores(stats, y, all_rows, "strict")
    single_official = single_scores(stats, y, all_rows, "official")
    best = int(np.argmax(single_strict if opts.metric == "strict" else single_official))
    res = Outcome(cs=cs, opts=opts, method=method, fits=fits,
                  scores={name: evaluate(y, fit.oof) for name, fit in fits.items()},
                  per_fold={name: fold_scores(y, fit.oof.argmax(axis=1), cs.folds, "strict")
                            for name, fit in fits.items()},
                  single_strict=single_strict, single_official=single_official,
                  best_per_fold=fold_scores(y, stats.pred[best], cs.folds, "strict"),
                  notes=notes)
    res.holdout = score_holdout(res)
    return res


def fit_methods(methods: dict[str, EnsembleMethod], data: MethodInput,
                submitted: str) -> tuple[dict[str, MethodFit], list[str]]:
    """Each method's fit, and a note for each method that cannot run on ``data``; the
    submitted one always runs, so that its error stops the coordinator."""
    fits: dict[str, MethodFit] = {}
    notes: list[str] = []
    for name, method in methods.items():
        reason = method.skip_reason(data)
        if reason is not None and name != submitted:
            notes.append(reason)
            continue
        fits[name] = method.fit(data)
    return fits, notes


def fold_scores(y: np.ndarray, pred: np.ndarray, folds: np.ndarray, metric: str) -> list[float]:
    """hF of index predictions on each OOF fold: the statistic beside the pooled one."""
    return [score_pred(y[folds == k], pred[folds == k], metric) for k in np.unique(folds)]


def _submission(res: Outcome, out: Path,
                max_shift: float) -> tuple[np.ndarray | None, dict[str, Any] | None, str]:
    """Evaluation predictions of the submitted method and the self-checked submission.csv."""
    cs = res.cs
    eval_proba = res.submitted.eval_proba
    if eval_proba is None or cs.eval_ids is None:
        return None, None, "no evaluation predictions"
    infos = cs.infos
    sub = build_submission(cs.eval_ids, eval_proba)
    member_evals = [MemberEval(infos[m].run_id, infos[m].trial_id, infos[m].has_eval,
                               infos[m].eval_fp, infos[m].backbones_tag,
                               infos[m].backbones_config) for m in res.members]
    oof_pred = res.proba.argmax(axis=1)
    eval_pred = eval_proba.argmax(axis=1)
    dist = {"eval_distribution": class_distribution(eval_pred),
            "oof_distribution": class_distribution(oof_pred)}
    eval_report: dict[str, Any] = {
        "n": int(len(cs.eval_ids)), "order": cs.eval_order, "method": res.method,
        "max_shift": max_shift, "tv_distance": tv_distance(eval_pred, oof_pred),
        **{k: dict(zip(CODES, v.round(6).tolist(), strict=True)) for k, v in dist.items()},
        "submission_written": False, "failures": []}
    try:
        write_submission(sub, out / SUBMISSION_FILE, cs.eval_ids, members=member_evals,
                         oof_pred=oof_pred, max_shift=max_shift)
    except SubmissionCheckError as exc:
        eval_report["failures"] = exc.failures
        return eval_proba, eval_report, "refused"
    eval_report["submission_written"] = True
    return eval_proba, eval_report, "written"


def _plots(out: Path, res: Outcome) -> None:
    from bst_search.ensemble.plots import plot_confusions, plot_curve

    sel, hon, sk = res.sel, res.hon, res.sk
    plot_curve(out / "selection_curve.png", sel.bag_curves or [sel.curve], metric=res.opts.metric,
               best_single=float(res.singles[res.best]), selected=res.selected,
               best_step=sel.best_step, honest=hon.mean if hon else None,
               sk=sk.score if sk else None)
    plot_confusions(out, res.cs.labels, res.proba.argmax(axis=1))
