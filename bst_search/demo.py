"""``make demo``: the whole loop on synthetic data, on one machine, with no server.

synthetic dataset in the official layout -> a small Ray Tune + Optuna sweep logged to a local
MLflow, with 20 % of the development sounds held out from it -> greedy ensemble with its
honest estimate and its holdout scores -> challenge submission -> its score on the held-out
synthetic evaluation labels, printed next to both estimates -> the HTML report
(``bst-search report``), whose path is the last line printed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

DEMO_N, DEMO_EVAL_N = 4000, 2000
DEMO_AUDIO_N = 24  # data/audio_demo: generated clips for `bst-search extract` (README, Extraction)
DEMO_HOLDOUT = 0.2  # development rows no trial and no selection sees: the end-to-end check


def run_demo(workdir: Path, trials: int = 8, experiment: str = "demo") -> int:
    from bst_search.ensemble import main as ensemble_main
    from bst_search.ensemble.submission import score_submission
    from bst_search.search import build_parser, print_summary
    from bst_search.search.driver import run_search
    from bst_search.synth import make_synthetic

    workdir = workdir.resolve()
    data = workdir / "data"
    if not (data / "dev").exists():
        print(f"== 1/4 synthetic BST data ({DEMO_N} development, {DEMO_EVAL_N} evaluation sounds) -> {data}")
        make_synthetic(data, n=DEMO_N, eval_n=DEMO_EVAL_N, seed=0, progress=True,
                       audio_n=DEMO_AUDIO_N)
    else:
        print(f"== 1/4 synthetic data already in {data}")
    for old in ("tune", "sweeps", "mlflow.db", "mlartifacts", "optuna.db", "ensembles", "ensemble-cache",
                "report-cache", "reports"):
        p = workdir / old  # the demo owns its work dir: every `make demo` starts a fresh sweep
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    print(f"== 2/4 sweep: {trials} trials of the packaged demo space with Ray Tune + Optuna "
          f"({DEMO_HOLDOUT:.0%} of the development sounds held out from the search)")
    args = build_parser().parse_args([
        "--data", str(data / "dev"), "--eval-data", str(data / "eval"),
        "--space", "demo", "--experiment", experiment, "--trials", str(trials),
        "--workdir", str(workdir), "--holdout-fraction", str(DEMO_HOLDOUT)])
    summary = run_search(args)
    print_summary(summary, experiment)

    print("\n== 3/4 ensemble: greedy forward selection over the logged trials")
    out = workdir / "ensembles" / experiment
    rc = ensemble_main(["--experiment", experiment, "--workdir", str(workdir), "--out", str(out),
                        "--eval-data", str(data / "eval"), "--weights", "nelder-mead"])
    if rc != 0:
        return rc

    print("\n== 4/4 the submission against the held-out synthetic evaluation labels")
    ens = json.loads((out / "ensemble.json").read_text())
    score = score_submission(out / "submission.csv", data / "eval_labels.csv")
    best, sel, hon = ens["best_single"]["score"], ens["selected_score"], ens["honest"]
    ho = ens["holdout"]["greedy"]
    avg, one = ho["fold_models_averaged"], ho["one_fold_model_mean"]
    w = 54
    print(f"  {'best single trial, OOF strict hF':{w}s} {best:.4f}")
    print(f"  {'selected ensemble, OOF strict hF':{w}s} {sel:.4f}   (chosen on these rows: optimistic)")
    print(f"  {'honest estimate (selection in nested CV), strict hF':{w}s} {hon['mean']:.4f} fold "
          f"mean, {hon['pooled_hF_strict']:.4f} pooled   (covers the selection, not the search)")
    print(f"  {'holdout, ensemble of one fold model each, strict hF':{w}s} {one['hF_strict']:.4f}   "
          f"(how every OOF row is predicted)")
    print(f"  {'holdout, ensemble of 5 fold models each, strict hF':{w}s} {avg['hF_strict']:.4f}   "
          f"(the submission's recipe; covers the search too)")
    print(f"  {'evaluation set, official hF':{w}s} {score['hF']:.4f}   (strict {score['hF_strict']:.4f})")
    print(f"  evaluation - honest = {score['hF'] - hon['mean']:+.4f}; evaluation - holdout (5 "
          f"models, official) = {score['hF'] - avg['hF']:+.4f}")
    print(f"\nsubmission: {out / 'submission.csv'}\nMLflow UI:  {summary.ui}")

    from bst_search.report import load_sweep, log_to_ensemble_run, write_report

    sweep = load_sweep(experiment, workdir=workdir, eval_labels=data / "eval_labels.csv")
    path = write_report(sweep, workdir / "reports" / f"{experiment}.html")
    log_to_ensemble_run(sweep, path)
    print(f"dashboards: bst-search dashboard --experiment {experiment} --workdir {workdir}")
    print("the sweep's report (self-contained HTML, also logged with the ensemble run):")
    print(f"report:     {path}")
    return 0
