"""Report over a large sweep: build time and file size (target: 1,000 trials in < 30 s, < 20 MB).

Writes a synthetic sweep into a temporary work dir: N FINISHED trial runs in a SQLite MLflow
store (tags, the active params of a mesh-like space, summary and per-class metrics), the same
N trials in a SQLite Optuna study, and one ensemble run with an ensemble.json and an OOF
parquet of 11,000 rows. Then times ``bst-search report`` on it (load + figures + write) and
prints the seconds and megabytes. Writing the synthetic store is not timed.

    python benchmarks/bench_report.py [--trials 1000] [--keep DIR]   (DIR with a sweep: reused)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bst_search import report, tracking
from bst_search.taxonomy import CODES, PROBA_COLUMNS

FUSIONS, HEADS = ("concat", "attention", "transformer", "gated"), ("flat", "gc", "lcl", "proxy")
CROWD = ("none", "all", "teacher")
SUBSETS = ("clap_audio,clap_text", "clap_audio,panns", "clap_audio,clap_text,panns", "clap_audio")


def _trial(rng: np.random.Generator) -> tuple[dict[str, object], float]:
    """One trial's sampled params and a plausible objective."""
    p = {"model.fusion": rng.choice(FUSIONS), "model.head": rng.choice(HEADS),
         "data.crowd": rng.choice(CROWD), "backbones": rng.choice(SUBSETS),
         "train.lr": float(10 ** rng.uniform(-4, -2)), "model.dropout": float(rng.uniform(0, 0.5)),
         "loss.alpha": float(rng.uniform(0, 1)), "model.hidden": int(rng.choice([64, 128, 256]))}
    y = (0.78 + 0.01 * FUSIONS.index(p["model.fusion"]) / 3 + 0.015 * (p["data.crowd"] != "none")
         - 0.02 * abs(np.log10(p["train.lr"]) + 3) + 0.01 * p["backbones"].count(",")
         + rng.normal(0, 0.006))
    return p, float(y)


def write_sweep(wd: Path, n: int, seed: int = 0) -> None:
    import optuna
    from mlflow.entities import Metric, Param, RunTag
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    rng = np.random.default_rng(seed)
    uri = f"sqlite:///{wd / 'mlflow.db'}"
    cl = tracking.client(uri)
    exp = tracking.ensure_experiment(cl, "bench", wd, uri)
    sweep = "bench-00000000"
    dists = {"model.fusion": CategoricalDistribution(FUSIONS), "model.head": CategoricalDistribution(HEADS),
             "data.crowd": CategoricalDistribution(CROWD), "backbones": CategoricalDistribution(SUBSETS),
             "train.lr": FloatDistribution(1e-4, 1e-2, log=True),
             "model.dropout": FloatDistribution(0.0, 0.5), "loss.alpha": FloatDistribution(0.0, 1.0),
             "model.hidden": IntDistribution(64, 256)}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{wd / 'optuna.db'}", study_name=sweep,
                                direction="maximize")
    frozen, t0 = [], int(time.time() * 1000) - n * 60_000
    for i in range(n):
        p, y = _trial(rng)
        run = cl.create_run(exp, start_time=t0 + i * 60_000, tags={
            tracking.KIND: "trial", tracking.SWEEP: sweep, tracking.TRIAL_ID: f"{i:08x}_{i:05d}",
            tracking.STATUS: "complete", tracking.CPUS: "1.0", tracking.DATA_FP: "D",
            tracking.FOLD_FP: "F",
            tracking.RUN_NAME: f"{i:05d} late_fusion {p['model.fusion']}/{p['model.head']} {y:.4f}"})
        now = t0 + i * 60_000 + 55_000
        ms = {"oof_hF_strict": y, "oof_hF": y + 0.001, "oof_top_acc": min(1.0, y + 0.12),
              "fold_hF_strict_mean": y, "fold_hF_strict_std": 0.01, "fold_hF_mean": y,
              "fold_hF_std": 0.01, "wall_seconds": 55.0,
              **{f"hF_{c}": float(np.clip(y + rng.normal(0, 0.08), 0, 1)) for c in CODES}}
        cl.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in ms.items()],
                     params=[Param(k, str(v)) for k, v in {**p, "model.name": "late_fusion"}.items()],
                     tags=[RunTag("bst.note", "")])
        cl.set_terminated(run.info.run_id, "FINISHED", end_time=now)
        frozen.append(optuna.trial.create_trial(params=p, distributions=dists, value=y))
        if (i + 1) % 200 == 0:
            print(f"  {i + 1}/{n} synthetic trial runs", flush=True)
    study.add_trials(frozen)
    _write_ensemble(cl, exp, wd, rng)


def _write_ensemble(cl, exp: str, wd: Path, rng: np.random.Generator) -> None:
    """An ensemble run with the artifacts the report reads (the coordinator's format)."""
    n = 11_000
    y = rng.integers(0, len(CODES), n)
    z = rng.normal(0, 1, (n, len(CODES)))
    z[np.arange(n), y] += 2.5
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    out = wd / "ens"
    out.mkdir()
    oof = pd.concat([pd.DataFrame({"sound_id": [f"s{i}" for i in range(n)], "fold": np.arange(n) % 5,
                                   "label": np.asarray(CODES)[y]}),
                     pd.DataFrame(p.astype(np.float32), columns=list(PROBA_COLUMNS))], axis=1)
    oof.to_parquet(out / "oof.parquet", index=False)
    curve = [{"size": k, "score": 0.80 + 0.03 * (1 - np.exp(-k / 5)), "score_nm": None,
              "score_best": 0.80 + 0.03 * (1 - np.exp(-k / 5)), "added_trial_ids": [],
              "added_run_ids": []} for k in range(1, 51)]
    dist = {c: 1 / len(CODES) for c in CODES}
    ens = {"options": {"metric": "strict"}, "method": "greedy", "selected_score": 0.83,
           "honest": {"mean": 0.822, "std": 0.012}, "sk": {"score": 0.815, "std": 0.016},
           "best_single": {"score": 0.80}, "curve": curve, "members_meaning": "count = greedy picks",
           "members": [{"run_id": f"{i:032x}", "trial_id": f"{i:08x}", "count": 2, "weight": 0.05,
                        "oof_hF_strict": 0.8, "oof_hF": 0.8, "params": {"model.fusion": "gated"}}
                       for i in range(20)],
           "eval": {"n": 3246, "order": "evaluation metadata", "max_shift": 0.15, "tv_distance": 0.03,
                    "submission_written": True, "failures": [], "eval_distribution": dist,
                    "oof_distribution": dist}, "left_out": []}
    (out / "ensemble.json").write_text(json.dumps(ens))
    run = cl.create_run(exp, tags={tracking.KIND: "ensemble", tracking.RUN_NAME: "ensemble-strict"})
    cl.log_artifacts(run.info.run_id, str(out))
    cl.set_terminated(run.info.run_id, "FINISHED")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--keep", help="write the synthetic sweep and report here (default: a temp "
                                   "dir); a sweep already there is reused")
    args = ap.parse_args(argv)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    wd = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-report-"))
    wd.mkdir(parents=True, exist_ok=True)
    if (wd / "mlflow.db").exists():
        print(f"reusing the synthetic sweep in {wd}")
    else:
        t = time.perf_counter()
        print(f"writing a synthetic sweep of {args.trials} trials to {wd}")
        write_sweep(wd, args.trials)
        print(f"  written in {time.perf_counter() - t:.1f} s (not part of the figure)")
    t, cpu = time.perf_counter(), time.process_time()
    s = report.load_sweep("bench", workdir=wd)
    t_load = time.perf_counter() - t
    path = report.write_report(s, wd / "report.html")
    secs, cpu = time.perf_counter() - t, time.process_time() - cpu
    mb = path.stat().st_size / 1e6
    load = os.getloadavg()[0]
    print(f"report of {len(s.trials)} trials: {secs:.1f} s wall (load {t_load:.1f} s), "
          f"{cpu:.1f} s CPU, {mb:.1f} MB -> {path}")
    print(f"machine load average {load:.1f} on {os.cpu_count()} cores: wall time is inflated "
          f"when the load exceeds the cores; the CPU time is what one idle core would take")
    ok = secs < 30 and mb < 20
    print(f"target < 30 s and < 20 MB: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
