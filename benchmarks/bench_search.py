"""Driver overhead of a sweep and how well it keeps the cores busy.

Runs a sweep of N trials on a synthetic set with a local Ray and prints
* the sum of the trials' own times (``wall_seconds`` measured inside ``run_trial``),
* the wall time of the tuning loop, and its ratio to (sum of trial times / concurrency),
* the per-trial overhead of the driver: (loop wall x concurrency - sum of trial times) / N,
  i.e. scheduling, object-store reads, reporting, checkpoints and MLflow logging.

    python benchmarks/bench_search.py [--trials 8] [--n 3000] [--epochs 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from bst_search import tracking
from bst_search.search import build_parser
from bst_search.search.driver import run_search
from bst_search.synth import make_synthetic

SPACE = {
    "description": "benchmark: fixed-cost late fusion trials",
    "scheduler": "none",
    "base": "late_fusion",
    "fixed": {"model.hidden": 64, "model.heads": 2, "train.patience": 100,
              "backbones": ["clap_audio", "clap_text"]},
    "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_synthetic(tmp / "data", n=a.n, eval_n=0, seed=0)
        space = tmp / "space.yaml"
        SPACE["fixed"]["train.max_epochs"] = a.epochs
        space.write_text(yaml.safe_dump(SPACE))
        args = build_parser().parse_args([
            "--data", str(data["dev"]), "--space", str(space), "--experiment", "bench",
            "--trials", str(a.trials), "--concurrency", str(a.concurrency), "--cpus-per-trial", "1",
            "--gpus-per-trial", "0", "--workdir", str(tmp / "runs"), "--max-failures", "0"])
        t0 = time.perf_counter()
        summary = run_search(args)
        total = time.perf_counter() - t0
        cl = tracking.client(summary.tracking_uri)
        exp = cl.get_experiment_by_name("bench").experiment_id
        runs = tracking.find_runs(cl, exp, status="FINISHED")
        trial_sum = sum(r.data.metrics["wall_seconds"] for r in runs)
        loop = max(r.info.end_time for r in runs) / 1000 - min(r.info.start_time for r in runs) / 1000
    ideal = trial_sum / a.concurrency
    print(f"trials: {len(runs)} finished of {a.trials}, concurrency {a.concurrency}, {a.n} sounds, "
          f"{a.epochs} epochs")
    print(f"sum of trial times            {trial_sum:8.1f} s  (ideal loop wall {ideal:.1f} s)")
    print(f"tuning loop wall (first run start -> last run end) {loop:8.1f} s  "
          f"= {loop / ideal:.2f} x ideal")
    print(f"whole command incl. data load and Ray start-up      {total:8.1f} s "
          f"(fixed start-up {total - loop:.1f} s)")
    print(f"driver overhead per trial     {(loop * a.concurrency - trial_sum) / len(runs):8.2f} s")


if __name__ == "__main__":
    main()
