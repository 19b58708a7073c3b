"""``make demo``: the whole loop on synthetic data, on one machine, with no server.

synthetic dataset in the official layout -> a small Ray Tune + Optuna sweep logged to a local
MLflow -> greedy ensemble with its honest estimate -> challenge submission -> its score on
the held-out synthetic evaluation labels, printed next to the honest estimate.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
DEMO_N, DEMO_EVAL_N = 4000, 2000


def run_demo(workdir: Path, trials: int = 8, experiment: str = "demo") -> int:
    from bst_search.ensemble import main as ensemble_main
    from bst_search.ensemble.submission import score_submission
    from bst_search.search import build_parser, print_summary, run_search
    from bst_search.synth import make_synthetic

    workdir = workdir.resolve()
    data = workdir / "data"
    if not (data / "dev").exists():
        print(f"== 1/4 synthetic BST data ({DEMO_N} development, {DEMO_EVAL_N} evaluation sounds) -> {data}")
        make_synthetic(data, n=DEMO_N, eval_n=DEMO_EVAL_N, seed=0, progress=True)
    else:
        print(f"== 1/4 synthetic data already in {data}")
    for old in ("tune", "sweeps", "mlflow.db", "mlartifacts", "optuna.db", "ensembles", "ensemble-cache"):
        p = workdir / old  # the demo owns its work dir: every `make demo` starts a fresh sweep
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    print(f"== 2/4 sweep: {trials} trials of search_spaces/demo.yaml with Ray Tune + Optuna")
    args = build_parser().parse_args([
        "--data", str(data / "dev"), "--eval-data", str(data / "eval"),
        "--space", str(SPACES / "demo.yaml"), "--experiment", experiment, "--trials", str(trials),
        "--workdir", str(workdir)])
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
    best, sel, honest = ens["best_single"]["score"], ens["selected_score"], ens["honest"]["mean"]
    print(f"  best single trial, OOF strict hF   {best:.4f}")
    print(f"  selected ensemble, OOF strict hF   {sel:.4f}   (selected on these rows: optimistic)")
    print(f"  honest estimate (nested CV)        {honest:.4f}   <- the number to believe")
    print(f"  evaluation set, official hF        {score['hF']:.4f}   (strict {score['hF_strict']:.4f})")
    print(f"  |evaluation - honest| = {abs(score['hF'] - honest):.4f}")
    print(f"\nsubmission: {out / 'submission.csv'}\nMLflow UI:  {summary['ui']}")
    return 0
