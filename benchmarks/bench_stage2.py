"""Stage 2 on the synthetic testbed: soft pseudo-labels from a stage-1 ensemble against the
crowd's own labels, with the wall time of each stage.

    python benchmarks/bench_stage2.py --workdir W [--n 4000 --crowd-n 4000 --eval-n 2000
                                                    --trials 6]

Runs, each through the CLI and timed: synthetic data with a crowd set whose labels are partly
wrong at an uploader-dependent rate (``bst-search synth --crowd-n``); a stage-1 sweep of the
``demo`` space with ``--crowd-data``; its greedy ensemble; ``bst-search pseudo-label``; then
three trials with the configuration of stage 1's best single trial, pre-trained on the crowd
set and fine-tuned on the development set (``data.two_stage``):

* ``data.crowd=pseudo``, ``data.pseudo_lambda`` 1 (the crowd labels ignored) and 0.5;
* ``data.crowd=all``: the crowd's own labels.

Prints one table: OOF, honest and evaluation hF (official) of each. A single trial's OOF is
its honest score (nothing was chosen on it); the ensemble's honest score is the nested-CV
estimate. Stage-2 OOF rows keep one debt to stage 1: the members and weights that made the
pseudo-labels were chosen on every OOF row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_meta import eval_scores

from bst_search import tracking
from bst_search.ensemble.submission import score_submission

STAGE1 = "stage1"


def _run(*cmd: str) -> float:
    """Run a bst-search command; its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bst_search.cli", *cmd], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--crowd-n", type=int, default=4000)
    ap.add_argument("--eval-n", type=int, default=2000)
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    wd, data = args.workdir.resolve(), args.workdir.resolve() / "data"
    rows: list[tuple[str, float, float | None, float, float]] = []
    walls: dict[str, float] = {}
    if not (data / "dev").exists():
        walls["synthetic data"] = _run("synth", "--out", str(data), "--n", str(args.n),
                                       "--crowd-n", str(args.crowd_n), "--eval-n", str(args.eval_n))
    sets = ["--data", str(data / "dev"), "--eval-data", str(data / "eval"),
            "--crowd-data", str(data / "crowd")]
    walls["stage 1 sweep"] = _run("search", *sets, "--space", "demo", "--experiment", STAGE1,
                                  "--trials", str(args.trials), "--workdir", str(wd))
    out = wd / "ensembles" / STAGE1
    walls["stage 1 ensemble"] = _run("ensemble", "--experiment", STAGE1, "--workdir", str(wd),
                                     "--eval-data", str(data / "eval"), "--out", str(out),
                                     "--max-shift", "1")
    ens = json.loads((out / "ensemble.json").read_text())
    best = ens["best_single"]["run_id"]
    cl = tracking.client(tracking.tracking_uri(wd))
    best_dir = Path(cl.download_artifacts(best, "", str(wd / "best-stage1")))
    m = json.loads((best_dir / "metrics.json").read_text())
    rows.append(("stage 1, best single trial", m["oof_hF"], m["oof_hF"],
                 eval_scores(data, best_dir)["hF"], m["wall_seconds"]))
    sub = score_submission(out / "submission.csv", data / "eval_labels.csv")
    rows.append((f"stage 1, greedy ensemble of {len(ens['members'])}", ens["selected"]["hF"],
                 (ens["honest"] or {}).get("pooled_hF"), sub["hF"], walls["stage 1 ensemble"]))
    labels = wd / "pseudo-labels"
    walls["pseudo-label"] = _run("pseudo-label", "--experiment", STAGE1, "--workdir", str(wd),
                                 "--crowd-data", str(data / "crowd"), "--out", str(labels))
    for name, sets2 in [("stage 2, pseudo-labels, lambda 1", ["data.crowd=pseudo",
                                                              "data.pseudo_lambda=1.0"]),
                        ("stage 2, pseudo-labels, lambda 0.5", ["data.crowd=pseudo",
                                                                "data.pseudo_lambda=0.5"]),
                        ("stage 2, the crowd's own labels", ["data.crowd=all"])]:
        tdir = wd / "stage2" / name.split(", ", 1)[1].replace(" ", "_").replace("'", "")
        overrides = [f"--set={s}" for s in [*sets2, "data.two_stage=true",
                                            f"data.pseudo_dir={labels}"]]
        wall = _run("trial", *sets, "--config", str(best_dir / "config.yaml"), *overrides,
                    "--out", str(tdir), "--overwrite")
        tm = json.loads((tdir / "metrics.json").read_text())
        rows.append((name, tm["oof_hF"], tm["oof_hF"], eval_scores(data, tdir)["hF"], wall))
    print(f"{args.n} development, {args.crowd_n} crowd, {args.eval_n} evaluation sounds; "
          f"{args.trials} stage-1 trials of the demo space")
    print("| | OOF hF | honest hF | evaluation hF | wall s |")
    print("|---|---|---|---|---|")
    for name, oof, honest, ev, wall in rows:
        h = f"{honest:.4f}" if honest is not None else "-"
        print(f"| {name} | {oof:.4f} | {h} | {ev:.4f} | {wall:.0f} |")
    print("wall time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()))


if __name__ == "__main__":
    main()
