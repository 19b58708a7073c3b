"""Honest estimate of an ensemble: the whole selection procedure inside a CV over the OOF folds.

The score of the selected ensemble is measured on the very rows it was chosen on, so it is
optimistic, and more so the more candidates and steps there are (MESH: 0.846 on dev
OOF, 0.372 on the blind evaluation). Here the procedure (pre-selection, initialisation,
greedy steps, Nelder-Mead, choice of the best step, bagging) is re-run on four folds' rows
and scored on the fifth, which no part of it saw. :func:`nested_cv` is that loop for any
selection procedure; exhaustive subset selection runs in it too.

Without a holdout this fold mean is the headline estimate, read as a lower bound: each
OOF row was predicted by one fold model, while the submission averages all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bst_search.ensemble.scoring import (
    CandidateStats,
    candidate_stats,
    check_tensor,
    combine,
    score_pred,
)
from bst_search.ensemble.selection import SelectionOptions, select_ensemble


@dataclass
class HonestResult:
    """Nested-CV scores of the selection procedure, in the chosen metric and both variants."""

    metric: str
    per_fold: list[float]  # chosen metric on each held-out fold
    per_fold_strict: list[float]
    per_fold_official: list[float]
    folds: list[int]
    fold_sizes: list[int]
    pooled_strict: float  # all held-out predictions scored together
    pooled_official: float
    members_per_fold: list[int]  # distinct members chosen in each fold

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_fold))

    @property
    def std(self) -> float:
        return float(np.std(self.per_fold))

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric, "mean": self.mean, "score": self.mean, "std": self.std,
            "per_fold": self.per_fold, "folds": self.folds, "fold_sizes": self.fold_sizes,
            "hF_strict_mean": float(np.mean(self.per_fold_strict)),
            "hF_mean": float(np.mean(self.per_fold_official)),
            "per_fold_strict": self.per_fold_strict, "per_fold_official": self.per_fold_official,
            "pooled_hF_strict": self.pooled_strict, "pooled_hF": self.pooled_official,
            "members_per_fold": self.members_per_fold,
        }


# a selection procedure as the nested CV runs it: training rows -> (weights over all
# candidates, distinct members chosen); it must read those rows only
Chooser = Callable[[np.ndarray], tuple[np.ndarray, int]]


def _checked(X: np.ndarray, y: np.ndarray, folds: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and folds as arrays, and the fold ids; a bad tensor or too few folds fail here."""
    check_tensor(X, y)
    y = np.asarray(y, dtype=np.int64)
    folds = np.asarray(folds)
    if folds.shape != y.shape:
        raise ValueError(f"folds must have shape {y.shape}, got {folds.shape}")
    fold_ids = np.unique(folds)
    if fold_ids.size < 2:
        raise ValueError(f"the honest estimate needs at least 2 folds, got {fold_ids.tolist()}")
    return y, folds, fold_ids


def honest_estimate(X: np.ndarray, y: np.ndarray, folds: np.ndarray,
                    options: SelectionOptions | None = None, *,
                    stats: CandidateStats | None = None) -> HonestResult:
    """Select on the rows of all folds but k, score the chosen ensemble on fold k, for every k."""
    opts = options or SelectionOptions()
    y, folds, _ = _checked(X, y, folds)
    if stats is None:
        stats = candidate_stats(X, opts.combine)

    def choose(train: np.ndarray) -> tuple[np.ndarray, int]:
        sel = select_ensemble(X, y, rows=train, options=opts, stats=stats)
        return sel.weights, int((sel.counts > 0).sum())

    return nested_cv(X, y, folds, choose, metric=opts.metric, combine_mode=opts.combine)


def nested_cv(X: np.ndarray, y: np.ndarray, folds: np.ndarray, choose: Chooser, *,
              metric: str, combine_mode: str) -> HonestResult:
    """Run ``choose`` on the rows of all folds but k and score its ensemble on fold k, for
    every k: the honest estimate of any selection procedure (greedy's, exhaustive's)."""
    y, folds, fold_ids = _checked(X, y, folds)
    pooled = np.empty(len(y), dtype=np.int64)
    res = HonestResult(metric=metric, per_fold=[], per_fold_strict=[], per_fold_official=[],
                       folds=[int(f) for f in fold_ids], fold_sizes=[], pooled_strict=0.0,
                       pooled_official=0.0, members_per_fold=[])
    for k in fold_ids:
        held = np.flatnonzero(folds == k)
        train = np.flatnonzero(folds != k)
        # the guarantee this module exists for: no scored row reaches the selection
        assert np.intersect1d(train, held).size == 0, f"fold {k}: scored rows in the selection"
        assert train.size + held.size == len(y)
        weights, n_members = choose(train)
        pred = combine(X, weights, held, combine_mode).argmax(axis=1)
        pooled[held] = pred
        s_strict = score_pred(y[held], pred, "strict")
        s_official = score_pred(y[held], pred, "official")
        res.per_fold_strict.append(s_strict)
        res.per_fold_official.append(s_official)
        res.per_fold.append(s_strict if metric == "strict" else s_official)
        res.fold_sizes.append(int(held.size))
        res.members_per_fold.append(n_members)
    res.pooled_strict = score_pred(y, pooled, "strict")
    res.pooled_official = score_pred(y, pooled, "official")
    return res
