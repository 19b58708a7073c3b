"""Exhaustive subset selection: every equal-weight subset of up to S of the top-N candidates.

Why beside greedy. Greedy forward selection is path-dependent: its first pick is the best
single candidate, and a pair that is good only together may never be reached. With N = 12
candidates and subsets of up to S = 4 there are only 12 + 66 + 220 + 495 = 793 subsets, so
trying them all finds the best equal-weight subset by the chosen hF for sure, and its
small, fixed search space (no steps, no weights) leaves less room to overfit the OOF rows.

The top N are the N best single candidates by the metric on the selection rows, so inside
the honest estimate (:func:`exhaustive_honest`) they are ranked on the training folds only.

Why it is fast. Subsets are walked depth first in lexicographic order; a subset's per-class
sums (of probabilities, or of log-probabilities with ``combine="logit"``: the combine
space of the tensor) are its prefix's sums plus one candidate, so every extension of a
prefix is one broadcast add, one argmax and one ``bincount`` of confusion matrices, and
hF is read from each 23 x 23 matrix by :func:`bst_search.metrics.prf_from_confusion`.
Nothing loops over rows in Python; 793 subsets on 11,000 rows take about a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from math import comb

import numpy as np

from bst_search.ensemble.honest import HonestResult, nested_cv
from bst_search.ensemble.scoring import (
    COMBINES,
    CandidateStats,
    candidate_stats,
    check_tensor,
    single_scores,
)
from bst_search.metrics import VARIANTS, prf_from_confusion
from bst_search.taxonomy import N_CLASSES

_K2 = N_CLASSES * N_CLASSES


@dataclass(frozen=True)
class ExhaustiveOptions:
    """What defines the exhaustive search; the honest estimate re-runs it as is."""

    top: int = 12  # --exhaustive-top: the N best single candidates
    max_size: int = 4  # --exhaustive-max-size: subsets of 1..S members
    metric: str = "strict"
    combine: str = "prob"

    def __post_init__(self) -> None:
        if self.top < 1:
            raise ValueError(f"--exhaustive-top must be >= 1, got {self.top}")
        if self.max_size < 1:
            raise ValueError(f"--exhaustive-max-size must be >= 1, got {self.max_size}")
        if self.max_size > self.top:
            raise ValueError(f"--exhaustive-max-size ({self.max_size}) is larger than "
                             f"--exhaustive-top ({self.top}): a subset cannot have more members "
                             f"than the candidates it is drawn from")
        if self.metric not in VARIANTS:
            raise ValueError(f"--metric must be one of {VARIANTS}, got {self.metric!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"--combine must be one of {COMBINES}, got {self.combine!r}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def n_subsets(n: int, max_size: int) -> int:
    """How many subsets of 1..max_size members n candidates have (793 for 12 and 4)."""
    return sum(comb(n, k) for k in range(1, min(max_size, n) + 1))


@dataclass
class ExhaustiveResult:
    """The best subset on the selection rows, and what it was chosen from."""

    members: np.ndarray  # global candidate indices of the best subset, ascending
    score: float  # its chosen-metric hF on the selection rows
    pool: np.ndarray  # the top-N candidates (global indices), best single first
    pool_singles: np.ndarray  # their single scores on the selection rows
    n_subsets: int  # subsets scored
    best_by_size: list[float] = field(default_factory=list)  # best score of each size 1..S

    @property
    def size(self) -> int:
        return len(self.members)

    def counts(self, n_candidates: int) -> np.ndarray:
        """(C,) int64: 1 for each member. Combining with these as weights sums the members
        exactly as the search did (an equal-weight mean, up to the final normalisation)."""
        out = np.zeros(n_candidates, dtype=np.int64)
        out[self.members] = 1
        return out

    def weights(self, n_candidates: int) -> np.ndarray:
        """(C,) float64 equal weights 1/k of the k members: what ensemble.json lists."""
        return self.counts(n_candidates) / self.size


class _Search:
    """The depth-first walk over the subsets of one pool on one set of rows."""

    def __init__(self, Xp: np.ndarray, y: np.ndarray, max_size: int, metric: str) -> None:
        self.Xp, self.y, self.max_size, self.metric = Xp, y, max_size, metric
        self.n = Xp.shape[0]
        self.best: tuple[float, int, tuple[int, ...]] = (-np.inf, 0, ())
        self.best_by_size = [-np.inf] * max_size
        self.scored = 0

    def run(self) -> None:
        self._extend((), np.zeros(self.Xp.shape[1:], dtype=np.float64), 0)

    def _extend(self, prefix: tuple[int, ...], S: np.ndarray, start: int) -> None:
        """Score every ``prefix + (j,)`` for j >= start, then recurse into each."""
        js = np.arange(start, self.n)
        if js.size == 0:
            return
        sums = S[None] + self.Xp[js]  # (m, rows, 23) float64: sums of float32 values
        pred = sums.argmax(axis=2)
        m = len(js)
        codes = (np.arange(m)[:, None] * _K2 + self.y[None, :] * N_CLASSES + pred).ravel()
        cms = np.bincount(codes, minlength=m * _K2).reshape(m, N_CLASSES, N_CLASSES)
        size = len(prefix) + 1
        for i, j in enumerate(js):
            score = prf_from_confusion(cms[i], variant=self.metric)[2]
            self._keep(score, prefix + (int(j),))
        self.scored += m
        if size < self.max_size:
            for i, j in enumerate(js[:-1]):  # the last candidate has nothing after it
                self._extend(prefix + (int(j),), sums[i], int(j) + 1)

    def _keep(self, score: float, subset: tuple[int, ...]) -> None:
        """The best subset, ties to the smaller one, then to the lexicographically first: the
        first maximum in size-then-lexicographic order (what a brute force over
        ``itertools.combinations`` finds), whatever order the walk visits them in."""
        k = len(subset)
        self.best_by_size[k - 1] = max(self.best_by_size[k - 1], score)
        best_score, best_k, best_subset = self.best
        if score > best_score or (score == best_score and (k, subset) < (best_k, best_subset)):
            self.best = (score, k, subset)


def exhaustive_select(X: np.ndarray, y: np.ndarray, *, rows: np.ndarray | None = None,
                      options: ExhaustiveOptions | None = None,
                      stats: CandidateStats | None = None) -> ExhaustiveResult:
    """The best equal-weight subset of up to S of the top-N candidates on ``rows``.

    Ranking, sums, predictions and scores read ``X[:, rows]``, ``y[rows]`` and the
    per-(candidate, row) ``stats`` of those rows only, so a selection on training rows never
    sees the others. With fewer than N candidates all of them are the pool.
    """
    opts = options or ExhaustiveOptions()
    check_tensor(X, y)
    y = np.asarray(y, dtype=np.int64)
    rows = np.arange(X.shape[1]) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or rows.size == 0:
        raise ValueError("rows must be a non-empty 1-d index array")
    if stats is None:
        stats = candidate_stats(X, opts.combine)
    singles = single_scores(stats, y, rows, opts.metric)
    pool = np.argsort(-singles, kind="stable")[:opts.top]  # ties: the lower index first
    Xp = X[np.ix_(pool, rows)]  # (N, rows, 23): one gather, 12 MB at 11,000 rows
    search = _Search(Xp, y[rows], min(opts.max_size, len(pool)), opts.metric)
    search.run()
    score, _, subset = search.best
    return ExhaustiveResult(members=np.sort(pool[list(subset)]), score=float(score), pool=pool,
                            pool_singles=singles[pool], n_subsets=search.scored,
                            best_by_size=[float(s) for s in search.best_by_size])


def exhaustive_honest(X: np.ndarray, y: np.ndarray, folds: np.ndarray,
                      options: ExhaustiveOptions | None = None, *,
                      stats: CandidateStats | None = None) -> HonestResult:
    """The whole exhaustive choice (top-N ranking included) on four folds, scored on the
    fifth, for every fold: the nested CV of :func:`~bst_search.ensemble.honest.nested_cv`,
    the very machinery greedy's honest estimate runs in."""
    opts = options or ExhaustiveOptions()
    if stats is None:
        check_tensor(X, y)
        stats = candidate_stats(X, opts.combine)

    def choose(train: np.ndarray) -> tuple[np.ndarray, int]:
        sel = exhaustive_select(X, y, rows=train, options=opts, stats=stats)
        return sel.counts(X.shape[0]).astype(np.float64), sel.size

    return nested_cv(X, y, folds, choose, metric=opts.metric, combine_mode=opts.combine)
