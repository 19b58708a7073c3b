"""meta_probs: what the text model's cross-fit costs, and what it adds to a late-fusion trial.

    python benchmarks/bench_meta.py --data D [--trials DIR]

``D`` is the synthetic testbed (``bst-search synth --out D``: 11,000 development sounds, 3,246
evaluation sounds). Prints

* the ``tfidf_lr`` cross-fit of all 5 folds (5 x 6 fits: 5 inner folds and the full model per
  fold), computed once into a fresh cache, in CPU seconds (the limit is 60 s);
* what a trial pays afterwards: its 5 folds' probabilities read from the cache (limit 0.1 s),
  the development set's text hash included;
* the text model alone: the hF of its probabilities on each fold's held-out rows;
* with ``--trials DIR``: for every trial folder in ``DIR`` (``bst-search trial --eval-data
  D/eval --out DIR/<name>``), its OOF hF (``metrics.json``) and its evaluation hF, scored here
  from ``eval.parquet`` against ``D/eval_labels.csv`` (a single trial writes no submission).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bst_search import config, metrics
from bst_search.data import load_dataset
from bst_search.data.cache import ENV_CACHE_DIR
from bst_search.data.meta_probs import attach, fold_meta_probs
from bst_search.folds import assign_folds
from bst_search.taxonomy import N_CLASSES, PROBA_COLUMNS, encode

N_FOLDS = 5
CPU_LIMIT_S, HIT_LIMIT_S = 60.0, 0.1


def cross_fit_costs(data: Path) -> None:
    dev = load_dataset(data / "dev", backbones=[])
    ev = load_dataset(data / "eval", backbones=[])
    cfg = config.load("late_fusion", {"backbones": ["clap_audio", "meta_probs"]})
    fold = assign_folds(dev.y, N_FOLDS)
    with tempfile.TemporaryDirectory() as cache:
        os.environ[ENV_CACHE_DIR] = cache  # a fresh cache, where trials look for it
        t0 = time.process_time()
        computed = [fold_meta_probs(cfg, dev, fold, k, eval_data=ev) for k in range(N_FOLDS)]
        cpu = time.process_time() - t0
        assert not any(m.cache_hit for m in computed)
        fits = sum(m.fits for m in computed)
        print(f"tfidf_lr cross-fit, {N_FOLDS} folds x {fits // N_FOLDS} fits, {len(dev.ids)} "
              f"development + {len(ev.ids)} evaluation sounds: {cpu:.1f} s CPU once "
              f"(limit {CPU_LIMIT_S:.0f} s)")
        hits = []
        for _ in range(5):  # a trial: fresh dataset objects, so the text hash is paid again
            d, e = dataclasses.replace(dev), dataclasses.replace(ev)
            t0 = time.perf_counter()
            for k in range(N_FOLDS):
                attach(cfg, d, fold, k, eval_data=e, crowd=None, holdout=None)
            hits.append(time.perf_counter() - t0)
        assert all(fold_meta_probs(cfg, dev, fold, k, eval_data=ev).cache_hit for k in range(N_FOLDS))
        print(f"per trial afterwards (5 folds from the cache): {np.median(hits):.3f} s median of "
              f"5, {max(hits):.3f} s max (limit {HIT_LIMIT_S} s)")
    held = [metrics.hf_score(dev.y[fold == k], m.dev[fold == k, :N_CLASSES].argmax(axis=1),
                             variant="strict") for k, m in enumerate(computed)]
    print(f"text model alone on each fold's held-out rows: strict hF {np.mean(held):.4f} "
          f"(min {min(held):.4f})")


def eval_scores(data: Path, run: Path) -> dict[str, float]:
    """A trial folder's evaluation metrics, scored from ``eval.parquet`` against the synthetic
    evaluation labels (a single trial writes no submission)."""
    labels = pd.read_csv(data / "eval_labels.csv", dtype=str).set_index("id")["class"]
    ev = pd.read_parquet(run / "eval.parquet")
    y_true = encode(labels.loc[ev["id"]].to_numpy())
    return metrics.evaluate(y_true, ev[list(PROBA_COLUMNS)].to_numpy())


def trial_figures(data: Path, trials: Path) -> None:
    print("| trial | backbones | OOF hF official / strict | evaluation hF official / strict |")
    print("|---|---|---|---|")
    for run in sorted(p for p in trials.iterdir() if (p / "metrics.json").is_file()):
        m = json.loads((run / "metrics.json").read_text())
        backbones = config.load(run / "config.yaml")["backbones"]
        e = eval_scores(data, run)
        print(f"| {run.name} | {', '.join(backbones)} | {m['oof_hF']:.4f} / "
              f"{m['oof_hF_strict']:.4f} | {e['hF']:.4f} / {e['hF_strict']:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the synthetic testbed (bst-search synth)")
    ap.add_argument("--trials", type=Path, help="a folder of bst-search trial outputs to score")
    args = ap.parse_args()
    cross_fit_costs(args.data)
    if args.trials is not None:
        trial_figures(args.data, args.trials)


if __name__ == "__main__":
    main()
