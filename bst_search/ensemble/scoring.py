"""The candidate matrix and what every ensemble method does with it: combine members, score.

The candidate tensor ``X`` has shape (n_candidates, n_samples, 23), float32, in the space in
which members are averaged: probabilities (``combine="prob"``) or log-probabilities
(``combine="logit"``, averaged then softmaxed). It is never copied whole: a sweep of 1,000
trials on 11,000 sounds is already 1 GB.

Every score is computed by :func:`bst_search.metrics.prf_from_confusion` on a 23 x 23
confusion matrix, the project's one implementation of the DCASE metric. Greedy selection
(:mod:`~bst_search.ensemble.selection`), SK fusion, the honest estimate and the holdout all
score through here, so no two of them can disagree on what a score is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bst_search.metrics import confusion_matrix, prf_from_confusion
from bst_search.taxonomy import N_CLASSES

COMBINES: tuple[str, ...] = ("prob", "logit")
LOG_FLOOR = 1e-7  # probabilities are clipped here before the log in logit mode
_K2 = N_CLASSES * N_CLASSES


class CandidateMatrix(Protocol):
    """(candidates, rows, 23) predictions read a pool of candidates at a time.

    A float32 array, or rows assembled on demand such as
    :class:`~bst_search.ensemble.holdout.EvalWithHoldout`; a method's ``predict`` reads
    only its members' rows through ``matrix[pool]``.
    """

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def ndim(self) -> int: ...

    def __getitem__(self, pool: np.ndarray) -> np.ndarray: ...


@dataclass
class CandidateStats:
    """Per-candidate, per-row facts computed once over all rows and reused by every selection.

    Each entry depends on one (candidate, row) or on one row only, so restricting a selection
    to some rows (the honest estimate) never lets another row's values in.
    """

    pred: np.ndarray  # (C, N) int8: each candidate's own argmax
    cmax: np.ndarray  # (C, N) float32: each candidate's max over classes
    spread: np.ndarray  # (N,) float32: bound on X[c,i,j] - X[c,i,a] over all c, j, a
    xabs: float  # bound on |X|, for the rounding tolerance


# ---------------------------------------------------------------------------------------
# input preparation


def check_tensor(X: np.ndarray, y: np.ndarray) -> None:
    """Validate the boundary contract: float32 (C, N, 23) tensor, int labels of length N."""
    if not isinstance(X, np.ndarray) or X.ndim != 3 or X.shape[2] != N_CLASSES:
        raise ValueError(f"candidate tensor must have shape (C, N, {N_CLASSES}), got "
                         f"{getattr(X, 'shape', type(X))}")
    if X.dtype != np.float32:
        raise ValueError(f"candidate tensor must be float32 (no float64 copy of it), got {X.dtype}")
    if not X.flags.c_contiguous:
        raise ValueError("candidate tensor must be C-contiguous")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"candidate tensor is empty: shape {X.shape}")
    y = np.asarray(y)
    if y.shape != (X.shape[1],):
        raise ValueError(f"labels must have shape ({X.shape[1]},), got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= N_CLASSES):
        raise ValueError(f"labels must be class indices in 0..{N_CLASSES - 1}")


def to_combine_space(proba: np.ndarray, combine: str) -> np.ndarray:
    """Turn probabilities into the averaging space, in place (no second 1 GB array).

    ``prob``: unchanged. ``logit``: log of the probabilities clipped at LOG_FLOOR, so that
    averaging then softmax is the geometric mean of the members' probabilities.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if combine == "logit":
        np.maximum(proba, LOG_FLOOR, out=proba)
        np.log(proba, out=proba)
    return proba


def candidate_stats(X: np.ndarray, combine: str, chunk: int = 32) -> CandidateStats:
    """One pass over the tensor: each candidate's argmax and max, and the per-row spread."""
    C, N, _ = X.shape
    pred = np.empty((C, N), dtype=np.int8)
    cmax = np.empty((C, N), dtype=np.float32)
    spread = np.zeros(N, dtype=np.float32)
    xabs = 1.0
    for s in range(0, C, chunk):
        Z = X[s:s + chunk]
        p = Z.argmax(axis=2)
        mx = np.take_along_axis(Z, p[..., None], axis=2)[..., 0]
        pred[s:s + chunk] = p
        cmax[s:s + chunk] = mx
        if combine == "prob":  # X >= 0, so X[j] - X[a] <= X[j] <= max
            np.maximum(spread, mx.max(axis=0), out=spread)
            xabs = max(xabs, float(np.abs(mx).max()))
        else:
            mn = Z.min(axis=2)
            np.maximum(spread, (mx - mn).max(axis=0), out=spread)
            xabs = max(xabs, float(np.abs(mn).max()), float(np.abs(mx).max()))
    return CandidateStats(pred=pred, cmax=cmax, spread=spread, xabs=xabs)


# ---------------------------------------------------------------------------------------
# scoring and combining


def score_pred(y: np.ndarray, pred: np.ndarray, metric: str) -> float:
    """hF of index predictions, through the project's metric."""
    return prf_from_confusion(confusion_matrix(y, pred), variant=metric)[2]


def single_scores(stats: CandidateStats, y: np.ndarray, rows: np.ndarray, metric: str,
                  candidates: np.ndarray | None = None) -> np.ndarray:
    """Score of every candidate alone on ``rows``, from the precomputed argmaxes."""
    cand = np.arange(stats.pred.shape[0]) if candidates is None else np.asarray(candidates)
    yr = y[rows].astype(np.int64)
    out = np.empty(len(cand), dtype=np.float64)
    step = max(1, (1 << 22) // max(len(rows), 1))
    for s in range(0, len(cand), step):
        idx = cand[s:s + step]
        p = stats.pred[idx][:, rows].astype(np.int64)
        codes = (np.arange(len(idx))[:, None] * _K2 + yr[None, :] * N_CLASSES + p).ravel()
        cms = np.bincount(codes, minlength=len(idx) * _K2).reshape(len(idx), N_CLASSES, N_CLASSES)
        for j in range(len(idx)):
            out[s + j] = prf_from_confusion(cms[j], variant=metric)[2]
    return out


def combine(X: np.ndarray, weights: np.ndarray, rows: np.ndarray | None = None,
            mode: str = "prob") -> np.ndarray:
    """Ensemble probabilities (n, 23) float64 of the weighted members on ``rows``.

    ``prob``: weighted mean of probabilities. ``logit``: softmax of the weighted mean of
    log-probabilities (X already holds them).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (X.shape[0],) or not np.all(np.isfinite(weights)) or weights.min() < 0:
        raise ValueError("weights must be finite, non-negative, one per candidate")
    members = np.flatnonzero(weights > 0)
    if members.size == 0:
        raise ValueError("weights select no member")
    n = X.shape[1] if rows is None else len(rows)
    acc = np.zeros((n, N_CLASSES), dtype=np.float64)
    for c in members:
        acc += weights[c] * (X[c] if rows is None else X[c, rows])
    acc /= weights[members].sum()
    if mode == "logit":
        acc -= acc.max(axis=1, keepdims=True)
        np.exp(acc, out=acc)
    elif mode != "prob":
        raise ValueError(f"combine must be one of {COMBINES}, got {mode!r}")
    acc /= acc.sum(axis=1, keepdims=True)
    return acc
