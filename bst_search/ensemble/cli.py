"""``python -m bst_search.ensemble`` / ``bst-search ensemble``: from a sweep to a submission.

Candidates -> greedy selection -> honest nested-CV estimate -> cross-fitted SK fusion (seed
003) -> the chosen method's (``--method``) OOF and evaluation predictions -> self-checked
``submission.csv`` -> an MLflow run tagged ``bst.kind=ensemble``. Both methods are always
scored, so the summary compares them whichever one is submitted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bst_search import tracking
from bst_search.ensemble.candidates import (
    CandidateError,
    CandidateSet,
    load_candidates,
    read_eval_ids,
)
from bst_search.ensemble.honest import HonestResult, honest_estimate
from bst_search.ensemble.selection import (
    SelectionOptions,
    SelectionResult,
    candidate_stats,
    combine,
    select_ensemble,
    single_scores,
    to_combine_space,
)
from bst_search.ensemble.submission import (
    DEFAULT_MAX_SHIFT,
    MemberEval,
    SubmissionCheckError,
    build_submission,
    class_distribution,
    tv_distance,
    write_submission,
)
from bst_search.metrics import evaluate
from bst_search.taxonomy import CODES, PROBA_COLUMNS

if TYPE_CHECKING:  # torch is imported only when the coordinator runs
    from bst_search.ensemble.sk_fusion import SKResult

OUTPUT_FILES = ("ensemble.json", "oof.parquet", "eval.parquet", "submission.csv",
                "selection_curve.png", "confusion_fine.png", "confusion_top.png")
MAX_LISTED = 30  # lines of left-out runs and members printed; ensemble.json has them all
PREFERRED_PARAMS = ("model.name", "backbones", "model.fusion", "model.head", "loss.alpha",
                    "data.strategy")
HONEST_NOTE = ("honest = the whole selection procedure re-run in a cross-validation over the "
               "OOF folds (selected on four folds, scored on the fifth): the number to believe. "
               "selected = measured on the rows it was chosen on: optimistic.")
SK_NOTE = ("sk = selective-kernel fusion of the top candidates' probabilities, cross-fitted over "
           "the OOF folds (candidates ranked, fuser trained and its epoch chosen on four folds, "
           "fifth predicted): "
           "its OOF score is out-of-fold, comparable with the honest greedy score. Evaluation "
           "predictions: mean of the cross-fit fusers.")
METHODS: tuple[str, ...] = ("greedy", "sk")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of the ensemble coordinator (reused by ``bst-search ensemble``)."""
    parser.add_argument("--experiment", required=True, help="MLflow experiment (= sweep) name")
    parser.add_argument("--workdir", default="bst-runs",
                        help="work dir holding mlflow.db and the artifact cache (default bst-runs)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///<workdir>/mlflow.db)")
    parser.add_argument("--out", default=None,
                        help="output dir (default <workdir>/ensembles/<experiment>)")
    parser.add_argument("--eval-data", default=None,
                        help="evaluation dataset root; its metadata fixes the submission id order")
    parser.add_argument("--metric", choices=["strict", "official"], default="strict",
                        help="hF variant to maximise (default strict: cannot be gamed by never "
                             "predicting a class)")
    parser.add_argument("--init-size", type=int, default=0,
                        help="start from the N best single candidates (default 0)")
    parser.add_argument("--max-size", type=int, default=50, help="ensemble size limit (default 50)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="pre-select the K best single candidates")
    parser.add_argument("--bags", type=int, default=1,
                        help="bagged selection over random candidate subsets (default 1: off)")
    parser.add_argument("--bag-fraction", type=float, default=0.5,
                        help="fraction of the candidates in each bag (default 0.5)")
    parser.add_argument("--weights", choices=["none", "nelder-mead"], default="none",
                        help="optimise the members' weights with Nelder-Mead after each step")
    parser.add_argument("--nm-maxfev", type=int, default=100,
                        help="Nelder-Mead evaluations per step (default 100)")
    parser.add_argument("--combine", choices=["prob", "logit"], default="prob",
                        help="average probabilities (default) or log-probabilities")
    parser.add_argument("--max-shift", type=float, default=DEFAULT_MAX_SHIFT,
                        help="largest eval-vs-OOF total variation distance of predicted classes "
                             f"allowed in a submission (default {DEFAULT_MAX_SHIFT})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the bagging and of the SK fusers (default 0)")
    parser.add_argument("--method", choices=list(METHODS), default="greedy",
                        help="what the submission, oof/eval parquets and ensemble.json members "
                             "come from: greedy selection (default) or cross-fitted "
                             "selective-kernel fusion (seed 003); both are scored either way")
    parser.add_argument("--sk-top", type=int, default=10,
                        help="SK fuses the N best single candidates, ranked on the training "
                             "folds of each cross-fit fold (default 10); bounds its cost")
    parser.add_argument("--sk-epochs", type=int, default=30,
                        help="SK fuser training epochs (default 30)")
    parser.add_argument("--sk-device", default="auto",
                        help="SK fuser device: auto (CUDA when present), cpu, cuda[:N] "
                             "(default auto; CPU runs are bit-for-bit repeatable)")
    parser.add_argument("--no-honest", action="store_true",
                        help="skip the nested-CV honest estimate (not recommended)")
    parser.add_argument("--data-fp", default=None,
                        help="use this data fingerprint (default: the majority's)")
    parser.add_argument("--fold-fp", default=None,
                        help="use this fold fingerprint (default: the majority's)")
    parser.add_argument("--no-log", action="store_true", help="do not log an MLflow run")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; 0 on success, 1 when the submission was refused, 2 on errors."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m bst_search.ensemble",
        description="Greedy forward ensemble selection over the trials of one experiment."))
    return execute(parser.parse_args(argv))


def execute(args: argparse.Namespace) -> int:
    """Run on arguments parsed with :func:`add_arguments` (e.g. by a ``bst-search`` subparser)."""
    try:
        return run(args)
    except (CandidateError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------


def _key_params(infos: list[Any], members: np.ndarray) -> list[str]:
    """Parameters worth printing: the usual suspects, then those that vary among members."""
    present = [k for k in PREFERRED_PARAMS if any(k in infos[m].params for m in members)]
    varying = sorted(
        k for k in set().union(*(infos[m].params for m in members))
        if k not in present and len({infos[m].params.get(k) for m in members}) > 1
        and max(len(str(infos[m].params.get(k, ""))) for m in members) <= 24)
    return present + varying[:max(0, 6 - len(present))]


def _curve_json(curve: list[dict[str, object]], infos: list[Any]) -> list[dict[str, object]]:
    out = []
    for e in curve:
        added = [int(i) for i in e["added"]]  # type: ignore[union-attr]
        out.append({"size": e["size"], "score": e["score"], "score_nm": e["score_nm"],
                    "score_best": e["score_best"],
                    "added_trial_ids": [infos[i].trial_id for i in added],
                    "added_run_ids": [infos[i].run_id for i in added]})
    return out


def _write_parquets(out: Path, cs: CandidateSet, proba: np.ndarray,
                    eval_proba: np.ndarray | None) -> None:
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


def _log_run(tracking_uri: str, experiment: str, out: Path, report: dict[str, Any]) -> str:
    """One MLflow run tagged bst.kind=ensemble with options, scores and every output file."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    method = "" if report["method"] == "greedy" else f"{report['method']}-"
    tags = {"bst.kind": "ensemble", "bst.data_fp": report["data_fp"],
            "bst.fold_fp": report["fold_fp"], "bst.eval_fp": report["eval_fp"],
            "bst.members": _members_tag(report["members"]),
            "bst.submission": report["submission_status"],
            "mlflow.runName": f"ensemble-{method}{report['options']['metric']}"}
    run = client.create_run(exp.experiment_id, tags=tags)
    rid = run.info.run_id
    try:
        params = {f"ensemble.{k}": str(v) for k, v in report["options"].items()}
        params["ensemble.method"] = report["method"]
        params.update({f"ensemble.sk_{k}": str(v) for k, v in report["sk_options"].items()
                       if k not in ("metric", "seed")})  # both already under ensemble.*
        params["ensemble.n_candidates"] = str(report["n_candidates"])
        params["ensemble.n_left_out"] = str(len(report["left_out"]))
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in report["mlflow_metrics"].items()
                   if v is not None and np.isfinite(v)]
        client.log_batch(rid, params=[Param(k, v) for k, v in params.items()], metrics=metrics)
        client.log_artifacts(rid, str(out))
        client.set_terminated(rid, "FINISHED")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return rid


def _ens_summary(ens: dict[str, float], metric: str) -> dict[str, Any]:
    """The scores of one ensemble's OOF predictions that ensemble.json keeps."""
    return {"metric": metric, "score": float(ens["hF_strict"] if metric == "strict" else ens["hF"]),
            "hF_strict": ens["hF_strict"], "hF": ens["hF"], "acc": ens["acc"],
            "top_acc": ens["top_acc"], "n_never_predicted": int(ens["n_never_predicted"]),
            "strict_differs_from_official": bool(abs(ens["hF_strict"] - ens["hF"]) > 1e-12)}


def run(args: argparse.Namespace) -> int:
    """The coordinator proper, on parsed arguments."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    workdir = Path(args.workdir)
    tracking_uri = tracking.tracking_uri(workdir, args.tracking_uri)
    out = Path(args.out) if args.out else workdir / "ensembles" / args.experiment
    opts = SelectionOptions(metric=args.metric, init_size=args.init_size, max_size=args.max_size,
                            top_k=args.top_k, bags=args.bags, bag_fraction=args.bag_fraction,
                            weights=args.weights, combine=args.combine, seed=args.seed,
                            nm_maxfev=args.nm_maxfev)
    if not args.max_shift > 0:
        raise ValueError(f"--max-shift must be > 0, got {args.max_shift}")
    method = getattr(args, "method", "greedy")
    if method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
    # torch is imported only here: the greedy path and `import bst_search.ensemble` need none
    from bst_search.ensemble.sk_fusion import SKOptions, cross_fit, pick_device

    sk_opts = SKOptions(top=getattr(args, "sk_top", 10), epochs=getattr(args, "sk_epochs", 30),
                        seed=args.seed, metric=args.metric,
                        device=getattr(args, "sk_device", "auto"))
    pick_device(sk_opts.device)  # a bad --sk-device fails before the candidates are loaded
    eval_ids = read_eval_ids(args.eval_data) if args.eval_data else None

    cs = load_candidates(args.experiment, tracking_uri=tracking_uri,
                         cache_dir=workdir / "ensemble-cache", data_fp=args.data_fp,
                         fold_fp=args.fold_fp, eval_ids=eval_ids)
    y, infos = cs.labels, cs.infos
    X = to_combine_space(cs.proba, opts.combine)
    has_eval = cs.eval_proba is not None and cs.eval_ids is not None
    E = to_combine_space(cs.eval_proba, opts.combine) if has_eval else None
    stats = candidate_stats(X, opts.combine)
    sel: SelectionResult = select_ensemble(X, y, options=opts, stats=stats)
    hon: HonestResult | None = None
    if not args.no_honest:
        hon = honest_estimate(X, y, cs.folds, opts, stats=stats)
    sk: SKResult | None = None
    sk_notes: list[str] = []
    n_folds = int(np.unique(cs.folds).size)
    if method == "sk" or n_folds >= 2:  # with --method sk, one fold is an error (exit 2)
        sk = cross_fit(X, y, cs.folds, sk_opts, log_input=opts.combine == "logit", eval_X=E,
                       stats=stats)
    else:
        sk_notes.append(f"SK fusion not scored: cross-fitting needs 2 or more OOF folds, "
                        f"got {n_folds}")

    all_rows = np.arange(len(y))
    single_strict = single_scores(stats, y, all_rows, "strict")
    single_official = single_scores(stats, y, all_rows, "official")
    singles = single_strict if opts.metric == "strict" else single_official
    best = int(np.argmax(singles))
    greedy_proba = combine(X, sel.weights, None, opts.combine)
    greedy_ens = evaluate(y, greedy_proba)
    selected = greedy_ens["hF_strict"] if opts.metric == "strict" else greedy_ens["hF"]
    sk_ens = evaluate(y, sk.oof) if sk is not None else None
    if method == "sk":
        assert sk is not None and sk_ens is not None
        proba, ens = sk.oof, sk_ens
        members, counts, weights = sk.members, sk.uses, sk.weight
    else:
        proba, ens = greedy_proba, greedy_ens
        members = np.flatnonzero(sel.weights > 0)
        members = members[np.lexsort((members, -sel.weights[members]))]
        counts, weights = sel.counts, sel.weights
    submitted = _ens_summary(ens, opts.metric)
    oof_pred = proba.argmax(axis=1)
    keys = _key_params(infos, members)

    # evaluation predictions and the submission
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:  # never leave a stale submission beside a new ensemble
        (out / name).unlink(missing_ok=True)
    eval_proba = None
    eval_report: dict[str, Any] | None = None
    status = "no evaluation predictions"
    if E is not None and cs.eval_ids is not None:
        if method == "sk":
            assert sk is not None
            eval_proba = sk.eval_proba
        else:
            eval_proba = combine(E, sel.weights, None, opts.combine)
        assert eval_proba is not None
        sub = build_submission(cs.eval_ids, eval_proba)
        member_evals = [MemberEval(infos[m].run_id, infos[m].trial_id, infos[m].has_eval,
                                   infos[m].eval_fp, infos[m].backbones_tag,
                                   infos[m].backbones_config) for m in members]
        eval_pred = eval_proba.argmax(axis=1)
        eval_report = {"n": int(len(cs.eval_ids)), "order": cs.eval_order,
                       "method": method, "max_shift": args.max_shift,
                       "tv_distance": tv_distance(eval_pred, oof_pred),
                       "eval_distribution": dict(zip(CODES, class_distribution(eval_pred).round(6).tolist(), strict=True)),
                       "oof_distribution": dict(zip(CODES, class_distribution(oof_pred).round(6).tolist(), strict=True)),
                       "submission_written": False, "failures": []}
        try:
            write_submission(sub, out / "submission.csv", cs.eval_ids, members=member_evals,
                             oof_pred=oof_pred, max_shift=args.max_shift)
            eval_report["submission_written"] = True
            status = "written"
        except SubmissionCheckError as exc:
            eval_report["failures"] = exc.failures
            status = "refused"

    def ident(c: int) -> dict[str, str]:
        return {"run_id": infos[c].run_id, "trial_id": infos[c].trial_id}

    sk_report: dict[str, Any] | None = None
    if sk is not None and sk_ens is not None:
        sk_report = {**sk.to_dict([ident(c) for c in range(len(infos))]),
                     **_ens_summary(sk_ens, opts.metric),
                     "members": [{**ident(int(m)), "fusers": int(sk.uses[m]),
                                  "attention": float(sk.weight[m])} for m in sk.members]}
    report: dict[str, Any] = {
        "schema": "bst-search/ensemble/1",
        "experiment": args.experiment,
        "data_fp": cs.data_fp, "fold_fp": cs.fold_fp, "eval_fp": cs.eval_fp,
        "method": method,  # what submission.csv, oof.parquet, eval.parquet, members come from
        "options": opts.to_dict(),
        "n_candidates": len(infos), "n_samples": int(len(y)),
        "selected_score": float(selected),  # greedy, the chosen metric; details under "selected"
        "honest_score": hon.mean if hon else None,  # greedy, mean over folds; under "honest"
        "sk_score": sk.score if sk else None,  # cross-fitted OOF; details under "sk"
        "submitted": {"method": method, **submitted,
                      "estimate": ("out-of-fold (cross-fitted)" if method == "sk"
                                   else "optimistic (chosen on these rows); see honest")},
        "members_meaning": ("count = cross-fit fusers using the candidate, weight = its mean "
                            "attention on the OOF rows" if method == "sk"
                            else "count = greedy picks, weight = ensemble weight"),
        "members": [{
            "run_id": infos[m].run_id, "trial_id": infos[m].trial_id,
            "count": int(counts[m]), "weight": float(weights[m]),
            "oof_hF_strict": float(single_strict[m]), "oof_hF": float(single_official[m]),
            "params": {k: infos[m].params.get(k) for k in keys},
        } for m in members],
        "selected": {**_ens_summary(greedy_ens, opts.metric),
                     "searched_score": float(sel.score), "best_step": sel.best_step,
                     "weighted": bool(sel.weighted)},
        "honest": hon.to_dict() if hon else None,
        "sk": sk_report,
        "best_single": {"run_id": infos[best].run_id, "trial_id": infos[best].trial_id,
                        "score": float(singles[best]), "hF_strict": float(single_strict[best]),
                        "hF": float(single_official[best])},
        "curve": _curve_json(sel.curve, infos),
        "bag_curves": [_curve_json(c, infos) for c in sel.bag_curves] if opts.bags > 1 else [],
        "left_out": [x.to_dict() for x in cs.left_out],
        "eval": eval_report,
        "notes": cs.notes + [HONEST_NOTE, SK_NOTE] + sk_notes,
    }
    text = json.dumps(report, indent=2, allow_nan=False)
    (out / "ensemble.json").write_text(text + "\n")
    _write_parquets(out, cs, proba, eval_proba)

    from bst_search.ensemble.plots import plot_confusions, plot_curve

    plot_curve(out / "selection_curve.png", sel.bag_curves or [sel.curve], metric=opts.metric,
               best_single=float(singles[best]), selected=float(selected),
               best_step=sel.best_step, honest=hon.mean if hon else None,
               sk=sk.score if sk else None)
    plot_confusions(out, y, oof_pred)

    run_id = None
    if not args.no_log:
        report["submission_status"] = status
        report["sk_options"] = sk_opts.to_dict()
        report["mlflow_metrics"] = {
            "selected_score": selected, "selected_hF_strict": greedy_ens["hF_strict"],
            "selected_hF": greedy_ens["hF"], "best_single_hF_strict": float(single_strict[best]),
            "best_single_hF": float(single_official[best]),
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
            "submitted_score": submitted["score"],
            "n_members": float(len(members)), "ensemble_size": float(sel.counts.sum()),
            "eval_oof_tvd": eval_report["tv_distance"] if eval_report else None,
            **{f"oof_{k}": v for k, v in ens.items() if not k.startswith("hF_") or k == "hF_strict"},
            **{k: v for k, v in ens.items() if k.startswith("hF_") and k != "hF_strict"},
        }
        run_id = _log_run(tracking_uri, args.experiment, out, report)

    _print_summary(args, tracking_uri, out, cs, sel, hon, sk, report, keys, run_id)
    return 1 if status == "refused" else 0


def _print_summary(args: argparse.Namespace, tracking_uri: str, out: Path, cs: CandidateSet,
                   sel: SelectionResult, hon: HonestResult | None, sk: SKResult | None,
                   report: dict[str, Any], keys: list[str], run_id: str | None) -> None:
    p = print
    opts = report["options"]
    method = report["method"]
    p(f"ensemble of experiment {args.experiment!r} ({tracking_uri})")
    p(f"candidates: {len(cs.infos)} used, {len(cs.left_out)} left out "
      f"(data fp {cs.data_fp}, fold fp {cs.fold_fp})")
    for x in cs.left_out[:MAX_LISTED]:
        p(f"  left out: run {x.run_id}  trial {x.trial_id or '?'}: {x.reason}")
    if len(cs.left_out) > MAX_LISTED:
        p(f"  ... and {len(cs.left_out) - MAX_LISTED} more, listed in ensemble.json")
    for note in cs.notes:
        p(f"  note: {note}")
    p(f"greedy selection: {opts['metric']} hF, combine {opts['combine']}, weights "
      f"{opts['weights']}, max size {opts['max_size']}, init {opts['init_size']}, top-k "
      f"{opts['top_k']}, bags {opts['bags']}: {int((sel.counts > 0).sum())} distinct members, "
      f"ensemble size {int(sel.counts.sum())}"
      + (f", best step {sel.best_step}" if sel.best_step else "")
      + (" (Nelder-Mead weights)" if sel.weighted and opts["weights"] != "none" else ""))
    if sk is not None:
        o = sk.options
        p(f"SK fusion: top {o.top} candidates ranked per cross-fit fold, {len(sk.folds)} fusers "
          f"on {sk.device} in {sk.seconds:.1f} s, {len(sk.members)} distinct candidates used; "
          f"epoch kept of {o.epochs} per fold (0 = plain mean): "
          + ", ".join(map(str, sk.chosen_epochs)))
    p(f"submitted method: {method}"
      + (" (weight = mean SK attention on the OOF rows, count = fusers using it)"
         if method == "sk" else ""))
    header = ["weight", "count", "trial", "run", "hF single"] + keys
    rows = [[f"{m['weight']:.3f}", str(m["count"]), m["trial_id"] or "?", m["run_id"][:8],
             f"{m['oof_hF_strict' if opts['metric'] == 'strict' else 'oof_hF']:.4f}"]
            + [str(m["params"].get(k, "")) for k in keys] for m in report["members"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows[:MAX_LISTED]]:
        p(("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))).rstrip())
    if len(rows) > MAX_LISTED:
        p(f"  ... and {len(rows) - MAX_LISTED} more members, listed in ensemble.json")
    bs, se, sub = report["best_single"], report["selected"], report["submitted"]
    mark = {m: "  [submitted]" if m == method else "" for m in METHODS}
    w = 40
    p("")
    p(f"  {'':{w}s} {'strict hF':>10s} {'official hF':>12s}")
    p(f"  {'best single (trial ' + (bs['trial_id'] or '?') + ')':{w}s} {bs['hF_strict']:10.4f} "
      f"{bs['hF']:12.4f}")
    p(f"  {'greedy selected (OOF, chosen on it)':{w}s} {se['hF_strict']:10.4f} {se['hF']:12.4f}"
      f"   optimistic{mark['greedy']}")
    if hon:
        h = report["honest"]
        p(f"  {'greedy honest (nested CV over the folds)':{w}s} {h['hF_strict_mean']:10.4f} "
          f"{h['hF_mean']:12.4f}   <- the number to believe (± {hon.std:.4f} over "
          f"{len(hon.per_fold)} folds)")
        p(f"  {'greedy honest (nested CV, folds pooled)':{w}s} {h['pooled_hF_strict']:10.4f} "
          f"{h['pooled_hF']:12.4f}")
    else:
        p("  greedy honest estimate skipped (--no-honest): the selected score is optimistic")
    if sk is not None:
        s = report["sk"]
        label = f"SK fusion (cross-fitted OOF, top {sk.options.top})"
        p(f"  {label:{w}s} {s['hF_strict']:10.4f} {s['hF']:12.4f}   out-of-fold, comparable "
          f"with honest (± {s['std']:.4f} over {len(sk.folds)} folds){mark['sk']}")
    else:
        for note in report["notes"]:
            if note.startswith("SK fusion not scored"):
                p(f"  {note}")
    if hon:
        p(f"  greedy honest per fold ({opts['metric']}): "
          + ", ".join(f"{v:.4f}" for v in hon.per_fold))
    if sk is not None:
        p(f"  SK per fold ({opts['metric']}): " + ", ".join(f"{v:.4f}" for v in sk.per_fold))
    if sub["strict_differs_from_official"]:
        p(f"  flag: strict and official hF of the submitted {method} ensemble differ: "
          f"{sub['n_never_predicted']} class(es) never predicted")
    if se["score"] < bs["score"]:
        p("  flag: the greedy ensemble scores below the best single trial on the OOF rows")
    if sk is not None and sk.score < bs["score"]:
        p("  flag: SK fusion scores below the best single trial on the OOF rows")
    ev = report["eval"]
    if ev is None:
        p("evaluation: no evaluation predictions, no submission")
    else:
        p(f"evaluation ({method}): {ev['n']} ids (order: {ev['order']}); predicted-class "
          f"distance to OOF (total variation) {ev['tv_distance']:.4f}, max {ev['max_shift']}")
        if ev["submission_written"]:
            p(f"  submission.csv written: {out / 'submission.csv'}")
        else:
            p("  SUBMISSION REFUSED:")
            for f in ev["failures"]:
                p(f"    - {f}")
    p(f"files in {out}: " + ", ".join(n for n in OUTPUT_FILES if (out / n).exists()))
    if run_id:
        p(f"mlflow run {run_id} (bst.kind=ensemble) in experiment {args.experiment!r}")
