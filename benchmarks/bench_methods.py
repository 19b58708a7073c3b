"""The method tables of the README: one trial per fusion x head, one per crowd strategy,
then greedy selection and selective-kernel fusion over all of them.

    python benchmarks/bench_methods.py --out /tmp/methods [--jobs 2] [--groups fusion_head crowd]

Makes the synthetic testbed with a crowd set (``bst-search synth --crowd-n 30000``) unless
``--data`` points at one, runs every trial through :func:`bst_search.trial.run_trial` (5
folds, fixed seed; finished trials are kept, so a second run resumes), logs them to MLflow
experiment ``methods`` in ``<out>/work`` and runs the ensemble coordinator over them. The
trials are small (hidden 128, batch 256, at most --epochs epochs) so that the whole table
fits on a 2-core machine: compare rows with each other, not with the reference trials.
Prints markdown tables and writes ``<out>/methods.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

FUSIONS = ("concat", "attention", "transformer", "gated")
HEADS = {  # the loss each head is trained with
    "flat": {},
    "gc": {"loss.top": 1.0},  # L_second + 1.0 L_top (002)
    "lcl": {"loss.top": 1.0},
    "proxy": {"loss.ce": 0.0, "loss.proxy": 1.0},  # the five-term hierarchical proxy loss (003)
}
CROWD = {
    "none": {},
    "all": {"data.crowd": "all"},
    "uploader_cap": {"data.crowd": "uploader_cap", "data.crowd_per_uploader": 200},
    "teacher": {"data.crowd": "teacher"},
    "el2n": {"data.crowd": "el2n", "data.el2n_epochs": 2, "data.el2n_drop": 0.3},
    "union": {"data.crowd": "union", "data.crowd_a": "teacher", "data.crowd_b": "el2n",
              "data.el2n_epochs": 2, "data.el2n_drop": 0.3},
    "intersection": {"data.crowd": "intersection", "data.crowd_a": "teacher",
                     "data.crowd_b": "el2n", "data.el2n_epochs": 2, "data.el2n_drop": 0.3},
    "two_stage": {"data.crowd": "all", "data.two_stage": True, "data.pretrain_epochs": 6},
}
BACKBONES = ["clap_audio", "panns", "clap_text"]
# the crowd group trains on ~37,000 rows per fold: a shorter budget keeps the eight trials
# within an hour of 2 CPU cores; "none" runs under the same budget
CROWD_BUDGET = {"train.max_epochs": 10, "train.patience": 3, "train.batch_size": 512}


def base(epochs: int) -> dict[str, Any]:
    return {"backbones": BACKBONES, "seed": 0, "model.hidden": 128, "model.heads": 4,
            "model.dropout": 0.2, "train.batch_size": 256, "train.max_epochs": epochs,
            "train.patience": 4, "train.warmup_epochs": 2, "train.drop_last": False}


def jobs(groups: list[str], epochs: int) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    if "crowd" in groups:  # longest first, so the two workers finish together
        out += [("crowd", f"crowd-{n}", {**base(epochs), **CROWD_BUDGET, **o})
                for n, o in CROWD.items()]
    if "fusion_head" in groups:
        out += [("fusion_head", f"fh-{f}-{h}", {**base(epochs), "model.fusion": f,
                                                "model.head": h, **o})
                for f in FUSIONS for h, o in HEADS.items()]
    return out


def run_one(job: tuple[str, str, dict[str, Any]], data: str, out: str) -> dict[str, Any]:
    """One trial in a worker process (one torch thread); skipped when already finished."""
    import torch

    from bst_search import config
    from bst_search.data import load_dataset
    from bst_search.trial import run_trial

    torch.set_num_threads(1)
    group, name, over = job
    work = Path(out) / "trials" / name
    if (work / "metrics.json").exists():
        m = json.loads((work / "metrics.json").read_text())
    else:
        cfg = config.load("late_fusion", over)
        dev = load_dataset(Path(data) / "dev", backbones=BACKBONES)
        ev = load_dataset(Path(data) / "eval", backbones=BACKBONES)
        crowd = (load_dataset(Path(data) / "crowd", backbones=BACKBONES)
                 if cfg["data"]["crowd"] != "none" else None)
        t0 = time.time()
        m = run_trial(cfg, dev, work, eval_data=ev, crowd=crowd)
        print(f"{name}: OOF strict hF {m['oof_hF_strict']:.4f} in {time.time() - t0:.0f}s",
              flush=True)
    return {"group": group, "name": name, "dir": str(work), "oof_hF_strict": m["oof_hF_strict"],
            "oof_hF": m["oof_hF"], "fold_std": m["fold_hF_strict_std"],
            "seconds": m["wall_seconds"], "epochs": m["epochs_mean"],
            "n_crowd": sum(f.get("n_crowd", 0) for f in m["folds"]) / len(m["folds"])}


def log_to_mlflow(rows: list[dict[str, Any]], workdir: Path, experiment: str) -> None:
    """Each trial as a FINISHED MLflow run in the tracking schema (once per trial)."""
    from bst_search import config, tracking

    uri = tracking.tracking_uri(workdir)
    cl = tracking.client(uri)
    exp = tracking.ensure_experiment(cl, experiment, workdir, uri)
    done = {r.data.tags.get(tracking.TRIAL_ID) for r in tracking.find_runs(cl, exp)}
    for r in rows:
        if r["name"] in done:
            continue
        m = json.loads((Path(r["dir"]) / "metrics.json").read_text())
        cfg = config.load(Path(r["dir"]) / "config.yaml")
        run_id = tracking.start_trial_run(cl, exp, sweep=experiment, trial_id=r["name"], cfg=cfg,
                                          fingerprints=m)
        tracking.finish_trial_run(cl, run_id, metrics=m, artifacts_dir=r["dir"],
                                  status="FINISHED", bst_status="complete")


def table(rows: list[dict[str, Any]], group: str) -> str:
    sel = [r for r in rows if r["group"] == group]
    if group == "fusion_head":
        by = {r["name"]: r for r in sel}
        lines = ["| fusion \\ head | " + " | ".join(HEADS) + " |",
                 "|---|" + "---|" * len(HEADS)]
        for f in FUSIONS:
            cells = [f"{by[k]['oof_hF_strict']:.4f}" if (k := f"fh-{f}-{h}") in by else "-"
                     for h in HEADS]
            lines.append(f"| {f} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
    none = next((r["oof_hF_strict"] for r in sel if r["name"] == "crowd-none"), float("nan"))
    lines = ["| crowd strategy | crowd rows per fold | OOF strict hF | vs none | fold std | time |",
             "|---|---|---|---|---|---|"]
    for r in sel:
        lines.append(f"| {r['name'][6:]} | {r['n_crowd']:.0f} | {r['oof_hF_strict']:.4f} | "
                     f"{r['oof_hF_strict'] - none:+.4f} | {r['fold_std']:.4f} | {r['seconds']:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None, help="synthetic release with crowd/")
    ap.add_argument("--n", type=int, default=11000, help="development sounds (new data only)")
    ap.add_argument("--crowd-n", type=int, default=30000)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--groups", nargs="+", default=["fusion_head", "crowd"],
                    choices=["fusion_head", "crowd"])
    ap.add_argument("--no-ensemble", action="store_true")
    args = ap.parse_args(argv)

    from bst_search.synth import make_synthetic

    data = args.data or args.out / "data"
    if not (data / "dev").exists():
        make_synthetic(data, n=args.n, crowd_n=args.crowd_n, seed=0, progress=True)
    todo = jobs(args.groups, args.epochs)
    t0 = time.time()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        rows = pool.starmap(run_one, [(j, str(data), str(args.out)) for j in todo], chunksize=1)
    print(f"\n{len(rows)} trials in {time.time() - t0:.0f} s wall\n")
    result: dict[str, Any] = {"trials": rows}
    for g in args.groups:
        print(table(rows, g) + "\n")

    if not args.no_ensemble:
        from bst_search.ensemble.cli import main as ensemble_main

        work = args.out / "work"
        log_to_mlflow(rows, work, "methods")
        ens_out = work / "ensembles" / "methods"
        rc = ensemble_main(["--experiment", "methods", "--workdir", str(work), "--out", str(ens_out),
                            "--eval-data", str(data / "eval"), "--weights", "nelder-mead"])
        if rc != 0:
            return rc
        ens = json.loads((ens_out / "ensemble.json").read_text())
        result["ensemble"] = ens
    (args.out / "methods.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
