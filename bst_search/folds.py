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


def fold_fingerprint(ids: np.ndarray, fold: np.ndarray) -> str:
    """Short hash of (id, fold) pairs: two trials may be combined only when it is equal."""
    h = hashlib.sha256()
    for i, f in zip(ids, fold, strict=True):
        h.update(f"{i}:{f}\n".encode())
    return h.hexdigest()[:16]
