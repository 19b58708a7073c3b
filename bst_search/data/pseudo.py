"""Soft pseudo-labels of the crowd set: the folder ``bst-search pseudo-label`` writes, and what a
stage-2 trial (``data.crowd: pseudo``) reads of it.

Layout of the folder::

    manifest.json        schema, the stage-1 experiment and ensemble run, the members and
                         weights, the fingerprints below, per-class counts of the argmax labels
    fold_<k>.parquet     sound_id, p_<code>: the ensemble of the members' fold-k models only
    final.parquet        sound_id, p_<code>: the mean over folds (for models trained outside
                         the folds; no trial reads it)

Why per fold: fold k's models never saw fold k's held-out rows, so a stage-2 trial's fold k
may train on their labels and its out-of-fold score stays out of fold. The fold-averaged
labels carry fold k's held-out labels through the other folds' models; nothing here hands
them to a trial. The fingerprints tie the folder to the development rows and labels, the
fold assignment and the crowd set it was made for; a stage-2 trial on anything else is
refused with what differs.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bst_search.data.errors import DataError
from bst_search.data.loading import fingerprint
from bst_search.taxonomy import CODES, N_CLASSES, PROBA_COLUMNS

SCHEMA = "bst-search/pseudo-labels/1"
MANIFEST, FINAL_FILE = "manifest.json", "final.parquet"
CHECKED = ("dev_labels_fp", "fold_fp", "crowd_fp")  # what a stage-2 trial must match


def fold_file(k: int) -> str:
    return f"fold_{k}.parquet"


def rows_fp(ids: np.ndarray, y: np.ndarray | None) -> str:
    """Hash of (id, label) rows alone: equal for a dataset loaded with any backbones."""
    return fingerprint(np.asarray(ids, dtype=object), y, {})


def label_frame(ids: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    """sound_id, p_<code> (float32): one fold's (or the final) labels."""
    return pd.concat([pd.DataFrame({"sound_id": np.asarray(ids).astype(str)}),
                      pd.DataFrame(np.asarray(proba, dtype=np.float32), columns=list(PROBA_COLUMNS))],
                     axis=1)


def class_counts(proba: np.ndarray) -> dict[str, int]:
    """How many rows have each class as their argmax label."""
    counts = np.bincount(np.asarray(proba).argmax(axis=1), minlength=N_CLASSES)
    return {code: int(c) for code, c in zip(CODES, counts, strict=True)}


def write_folder(out: Path, folds: list[pd.DataFrame], final: pd.DataFrame,
                 manifest: dict[str, Any]) -> None:
    """Write the folder whole or not at all: into a sibling temporary folder, then renamed
    over ``out`` (a previous pseudo-label folder there is replaced; anything else refused)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DataError(f"{out}: exists and is not a pseudo-label folder (no {MANIFEST}); "
                        f"choose another --out")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for k, frame in enumerate(folds):
        frame.to_parquet(tmp / fold_file(k), index=False)
    final.to_parquet(tmp / FINAL_FILE, index=False)
    (tmp / MANIFEST).write_text(json.dumps({"schema": SCHEMA, **manifest}, indent=1))
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class PseudoLabels:
    """A checked pseudo-label folder: fold k's labels, aligned to a crowd set's rows."""

    root: Path
    manifest: dict[str, Any]

    def fold(self, k: int, crowd_ids: np.ndarray) -> np.ndarray:
        """(n_crowd, 23) float32 labels of fold k; NaN rows for sounds it has no label for
        (development sounds, holdout sounds: never labelled)."""
        path = self.root / fold_file(k)
        frame = pd.read_parquet(path)
        missing = [c for c in ("sound_id", *PROBA_COLUMNS) if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing columns {', '.join(missing)}")
        p = frame[list(PROBA_COLUMNS)].to_numpy(dtype=np.float32)
        bad = ~np.isfinite(p).all(axis=1) | (np.abs(p.sum(axis=1) - 1) > 1e-3) | (p < 0).any(axis=1)
        if bad.any():
            raise DataError(f"{path}: {int(bad.sum())} rows are not probability vectors, e.g. "
                            f"sound_id {frame['sound_id'].iloc[int(np.flatnonzero(bad)[0])]}")
        pos = pd.Index(frame["sound_id"].astype(str)).get_indexer(np.asarray(crowd_ids).astype(str))
        out = np.full((len(crowd_ids), N_CLASSES), np.nan, dtype=np.float32)
        out[pos >= 0] = p[pos[pos >= 0]]
        return out


def load_folder(root: str | Path, expected: dict[str, str], n_folds: int) -> PseudoLabels:
    """The folder at ``root``, refused unless it was made for the same development rows and
    labels, folds and crowd set (``expected``: :data:`CHECKED` keys); the error names what
    differs."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(f"{root}: not a pseudo-label folder (no {MANIFEST}); make one with "
                        f"`bst-search pseudo-label`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from None
    if manifest.get("schema") != SCHEMA:
        raise DataError(f"{path}: schema {manifest.get('schema')!r}, expected {SCHEMA!r}")
    what = {"dev_labels_fp": "development sounds and labels", "fold_fp": "fold assignment "
            "(folds and --holdout-fraction)", "crowd_fp": "crowd set"}
    differ = [f"{what[k]} ({k} {manifest.get(k)} there, {expected[k]} here)"
              for k in CHECKED if manifest.get(k) != expected[k]]
    if manifest.get("n_folds") != n_folds:
        differ.append(f"number of folds ({manifest.get('n_folds')} there, {n_folds} here)")
    if differ:
        raise DataError(f"{root}: these pseudo-labels were made by experiment "
                        f"{manifest.get('experiment')!r} for other data: " + "; ".join(differ))
    for k in range(n_folds):
        if not (root / fold_file(k)).is_file():
            raise DataError(f"{root}: {fold_file(k)} is missing")
    return PseudoLabels(root, manifest)
