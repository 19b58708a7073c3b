"""``bst-search pseudo-label``: soft labels for the crowd set from a first-stage ensemble.

The ensemble run that ``python -m bst_search.ensemble --experiment STAGE1`` logged names its
members and weights. Every member trial predicted every crowd sound with each of its fold
models (``crowd.parquet``, when its sweep had ``--crowd-data``). The labels of fold k are the
ensemble of the members' fold-k models alone, combined as the ensemble combines (``prob`` or
``logit``), then tempered: q ~ p^(1/T). The folder layout and the checks a stage-2 trial
makes are in :mod:`bst_search.data.pseudo`.

What stays honest and what does not: fold k's labels come from models that never saw fold
k's held-out rows, so a stage-2 trial's fold k may train on them. The choice of members and
weights did see every out-of-fold row, as every ensemble's does; a stage-2 trial's scores
inherit that much of stage 1's selection.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bst_search import tracking
from bst_search.data import DataError, load_dataset
from bst_search.data import pseudo as pl
from bst_search.ensemble.scoring import combine
from bst_search.folds import fold_fingerprint
from bst_search.taxonomy import CODES, PROBA_COLUMNS
from bst_search.tracking.schema import (
    CROWD_FILE,
    ENSEMBLE_FILE,
    KIND,
    KIND_ENSEMBLE,
    OOF_FILE,
)
from bst_search.tracking.stores import add_store_arguments

WEIGHTED_METHODS = ("greedy", "exhaustive")  # a weighted mean of trials' fold models


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_store_arguments(p, optuna=False)
    p.add_argument("--crowd-data", required=True,
                   help="the crowd dataset root the stage-1 sweep was given (--crowd-data)")
    p.add_argument("--out", required=True, help="folder to write the pseudo-labels into")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="q ~ p^(1/T) of the ensemble's probabilities: above 1 softens, below 1 "
                        "sharpens (default 1)")
    p.add_argument("--ensemble-run", default=None,
                   help="the ensemble run to use (default: the newest finished one)")
    return p


def _ensemble_run(cl: Any, experiment: str, run_id: str | None) -> Any:
    exp = cl.get_experiment_by_name(experiment)
    if exp is None:
        raise DataError(f"experiment {experiment!r} not found in the tracking store")
    if run_id:
        return cl.get_run(run_id)
    runs = cl.search_runs([exp.experiment_id], f"tags.`{KIND}` = '{KIND_ENSEMBLE}' and "
                          "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                          max_results=1)
    if not runs:
        raise DataError(f"experiment {experiment!r} has no finished ensemble run: run "
                        f"`python -m bst_search.ensemble --experiment {experiment}` first")
    return runs[0]


def _download(run_id: str, name: str, dst: Path, uri: str, what: str) -> Path:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name,
                                                        dst_path=str(dst), tracking_uri=uri))
    except (MlflowException, OSError) as exc:
        raise DataError(f"run {run_id} ({what}) has no {name}: {str(exc).splitlines()[0]}"
                        + (" (its sweep ran without --crowd-data)" if name == CROWD_FILE else "")
                        ) from None


def fold_labels(frames: list[pd.DataFrame], weights: np.ndarray, n_folds: int, mode: str,
                temperature: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """(sound ids, per fold k the (n, 23) labels of the members' fold-k models): each member's
    ``crowd.parquet`` frame, aligned on the first member's sound ids."""
    ids = frames[0].loc[frames[0]["fold"] == 0, "sound_id"].astype(str).to_numpy()
    per_fold = []
    for k in range(n_folds):
        X = np.empty((len(frames), len(ids), len(PROBA_COLUMNS)), dtype=np.float64)
        for i, f in enumerate(frames):
            block = f[f["fold"] == k]
            pos = pd.Index(block["sound_id"].astype(str)).get_indexer(ids)
            if len(block) != len(ids) or (pos < 0).any():
                raise DataError(f"member {i}'s {CROWD_FILE} has other crowd sounds in fold {k} "
                                f"({len(block)} rows, {len(ids)} in the first member's)")
            X[i] = block[list(PROBA_COLUMNS)].to_numpy(dtype=np.float64)[pos]
        if mode == "logit":
            X = np.log(np.clip(X, 1e-7, 1.0))
        p = combine(X, weights, mode=mode)
        if temperature != 1.0:
            p = np.exp(np.log(np.clip(p, 1e-12, 1.0)) / temperature)
            p /= p.sum(axis=1, keepdims=True)
        per_fold.append(p.astype(np.float32))
    return ids, per_fold


def _dev_fingerprints(oof: pd.DataFrame) -> dict[str, str]:
    """What a stage-2 trial's development rows must match: (id, label) rows and folds."""
    ids = oof["sound_id"].astype(str).to_numpy()
    y = pd.Index(CODES).get_indexer(oof["label"].astype(str))
    return {"dev_labels_fp": pl.rows_fp(ids, y),
            "fold_fp": fold_fingerprint(ids, oof["fold"].to_numpy())}


def make_pseudo_labels(args: argparse.Namespace) -> dict[str, Any]:
    """Fetch the ensemble and its members' crowd predictions, write the folder; returns
    the manifest."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # ours counts members
    if args.temperature <= 0:
        raise DataError(f"--temperature must be > 0, got {args.temperature}")
    uri = tracking.tracking_uri(Path(args.workdir), args.tracking_uri)
    crowd = load_dataset(Path(args.crowd_data), backbones=[])
    cl = MlflowClient(uri)
    run = _ensemble_run(cl, args.experiment, args.ensemble_run)
    with tempfile.TemporaryDirectory(prefix="bst-pseudo-") as tmp:
        report = json.loads(_download(run.info.run_id, ENSEMBLE_FILE, Path(tmp), uri,
                                      "the ensemble").read_text())
        if report["method"] not in WEIGHTED_METHODS:
            raise DataError(f"ensemble run {run.info.run_id} used --method {report['method']}, "
                            f"whose submission is not a weighted mean of the trials' fold models; "
                            f"pseudo-labels need one of {', '.join(WEIGHTED_METHODS)}")
        members = report["members"]
        frames = []
        for i, m in enumerate(members):
            what = f"trial {m.get('trial_id') or '?'}, member {i + 1}/{len(members)}"
            frames.append(pd.read_parquet(_download(m["run_id"], CROWD_FILE, Path(tmp) / m["run_id"],
                                                    uri, what)))
            print(f"\r  crowd predictions of {i + 1}/{len(members)} members", end="", flush=True)
        print()
        oof = pd.read_parquet(_download(members[0]["run_id"], OOF_FILE, Path(tmp) / "oof", uri,
                                        "member 1"), columns=["sound_id", "fold", "label"])
    n_folds = int(oof["fold"].max()) + 1
    weights = np.array([m["weight"] for m in members], dtype=np.float64)
    ids, per_fold = fold_labels(frames, weights, n_folds, report["options"]["combine"],
                                args.temperature)
    unknown = np.setdiff1d(ids, crowd.ids.astype(str))
    if len(unknown):
        raise DataError(f"{args.crowd_data}: {len(unknown)} sounds the members predicted are not in "
                        f"this crowd set (e.g. {unknown[0]}): the stage-1 sweep had other crowd data")
    final = np.mean(per_fold, axis=0)
    manifest = {
        "experiment": args.experiment, "ensemble_run_id": run.info.run_id,
        "method": report["method"], "combine": report["options"]["combine"],
        "temperature": args.temperature, "n_folds": n_folds, "n_labelled": int(len(ids)),
        "members": [{"run_id": m["run_id"], "trial_id": m.get("trial_id"), "weight": m["weight"]}
                    for m in members],
        "data_fp": report["data_fp"], **_dev_fingerprints(oof),
        "crowd_fp": pl.rows_fp(crowd.ids, crowd.y), "crowd_data": str(Path(args.crowd_data).resolve()),
        "class_counts": {"final": pl.class_counts(final),
                         **{f"fold_{k}": pl.class_counts(p) for k, p in enumerate(per_fold)}},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    pl.write_folder(Path(args.out), [pl.label_frame(ids, p) for p in per_fold],
                    pl.label_frame(ids, final), manifest)
    return manifest


def main(args: argparse.Namespace) -> int:
    manifest = make_pseudo_labels(args)
    counts = manifest["class_counts"]["final"]
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
    print(f"pseudo-labels for {manifest['n_labelled']} crowd sounds from ensemble run "
          f"{manifest['ensemble_run_id']} ({len(manifest['members'])} members, "
          f"{manifest['n_folds']} folds, T={manifest['temperature']:g}) -> {args.out}")
    print("  most frequent labels: " + ", ".join(f"{c} {n}" for c, n in top))
    print(f"  stage 2: bst-search search ... --crowd-data {args.crowd_data} "
          f"--pseudo-labels {args.out} (a space with data.crowd: pseudo)", file=sys.stdout)
    return 0
