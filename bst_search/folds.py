"""Cross-validation folds identical to the official baseline's.

``StratifiedKFold(5, shuffle=True, random_state=1821)`` over the development rows (after the
taxonomy filter) in metadata order, then inside each fold ``StratifiedShuffleSplit(1,
test_size=0.2, random_state=1821)`` over the training part for the validation split. Every
trial on the same data gets the same folds, so OOF matrices of different trials line up.
The labels are encoded by ascending ``class_idx``; taxonomy order is that order, and the
splitters only depend on label equality and order, so taxonomy indices give the same folds.
"""

from __future__ import annotations

import hashlib

import numpy as np
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

FOLD_SEED = 1821


def assign_folds(y: np.ndarray, n_folds: int = 5, seed: int = FOLD_SEED) -> np.ndarray:
    """fold[i] = the fold in which development row i is held out."""
    y = np.asarray(y)
    fold = np.full(len(y), -1, dtype=np.int64)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test_idx) in enumerate(skf.split(np.zeros(len(y)), y)):
        fold[test_idx] = k
    return fold


def train_val_split(y: np.ndarray, fold: np.ndarray, k: int,
                    seed: int = FOLD_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (into the development set) of fold k's training and validation parts."""
    trainval = np.flatnonzero(fold != k)
    sss = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=seed)
    tr, va = next(sss.split(np.zeros(len(trainval)), np.asarray(y)[trainval]))
    return trainval[tr], trainval[va]


def holdout_mask(y: np.ndarray, fraction: float, seed: int = FOLD_SEED) -> np.ndarray:
    """mask[i] = development row i is in the holdout: a stratified ``fraction`` of the rows.

    ``--holdout-fraction``: these rows are set aside before the folds are drawn (the folds
    are then ``assign_folds`` over the other rows, in metadata order), so no trial trains,
    validates or is scored on them and no ensemble selection sees them.
    """
    y = np.asarray(y)
    mask = np.zeros(len(y), dtype=bool)
    if fraction <= 0:
        return mask
    if not fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    sss = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    try:
        _, hold = next(sss.split(np.zeros(len(y)), y))
    except ValueError as exc:  # too few rows for a stratified holdout of this size
        raise ValueError(f"holdout fraction {fraction} of {len(y)} development rows: {exc}") from exc
    mask[hold] = True
    return mask


def development_fold_fp(ids: np.ndarray, y: np.ndarray, n_folds: int,
                        holdout_fraction: float = 0.0) -> str:
    """The fold fingerprint every trial of a sweep logs, holdout rows set aside first."""
    keep = ~holdout_mask(y, holdout_fraction)
    return fold_fingerprint(np.asarray(ids)[keep], assign_folds(np.asarray(y)[keep], n_folds))


def fold_fingerprint(ids: np.ndarray, fold: np.ndarray) -> str:
    """Short hash of (id, fold) pairs: two trials may be combined only when it is equal."""
    h = hashlib.sha256()
    for i, f in zip(ids, fold, strict=True):
        h.update(f"{i}:{f}\n".encode())
    return h.hexdigest()[:16]
