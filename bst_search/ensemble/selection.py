"""Greedy forward ensemble selection with replacement (Caruana et al., 2004) on OOF tensors.

The candidate tensor and the helpers that combine and score members are in
:mod:`~bst_search.ensemble.scoring` (re-exported here, where callers have always found
them); this module is the search itself: pre-selection, the greedy path, Nelder-Mead weights
and bagging.

Why it is fast. Adding candidate c to the current ensemble (running sum S of its k members)
predicts ``argmax_j S[i, j] + X[c, i, j]``. With a = argmax S[i] and margin m = S[i, a] minus
the runner-up, that prediction can differ from a only if
``max_j X[c, i, j] - X[c, i, a] >= m``. Both sides are cheap to gather, so the full 23-way
argmax runs only for the (candidate, sample) pairs that can change, and the confusion
matrix of every candidate is the current one plus a sparse correction. The recorded scores
are exactly those of the definition; the bound only skips work whose result is known.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import minimize

from bst_search.ensemble.scoring import (
    COMBINES,
    LOG_FLOOR,
    CandidateStats,
    candidate_stats,
    check_tensor,
    combine,
    score_pred,
    single_scores,
    to_combine_space,
)
from bst_search.metrics import VARIANTS, confusion_matrix, prf_from_confusion
from bst_search.taxonomy import N_CLASSES

__all__ = [
    "COMBINES",
    "LOG_FLOOR",
    "WEIGHT_MODES",
    "CandidateStats",
    "SelectionOptions",
    "SelectionResult",
    "candidate_stats",
    "check_tensor",
    "combine",
    "preselect",
    "score_pred",
    "select_ensemble",
    "single_scores",
    "to_combine_space",
    "working_set",
]

WEIGHT_MODES: tuple[str, ...] = ("none", "nelder-mead")
_K2 = N_CLASSES * N_CLASSES
_PAIR_BUDGET = 1 << 19  # (candidate, sample) pairs handled per chunk: bounds temporary memory


@dataclass(frozen=True)
class SelectionOptions:
    """Everything that defines the selection procedure; the honest estimate re-runs it as is."""

    metric: str = "strict"
    init_size: int = 0
    max_size: int = 50
    top_k: int | None = None
    diversity: float = 0.0  # with top_k: skip near-duplicates (see preselect)
    bags: int = 1
    bag_fraction: float = 0.5
    weights: str = "none"
    combine: str = "prob"
    seed: int = 0
    nm_maxfev: int = 100

    def __post_init__(self) -> None:
        if self.metric not in VARIANTS:
            raise ValueError(f"metric must be one of {VARIANTS}, got {self.metric!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        if self.weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {WEIGHT_MODES}, got {self.weights!r}")
        if self.max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {self.max_size}")
        if not 0 <= self.init_size <= self.max_size:
            raise ValueError(f"init_size must be in 0..max_size ({self.max_size}), got {self.init_size}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.diversity < 1.0:
            raise ValueError(f"diversity must be in [0, 1), got {self.diversity}")
        if self.bags < 1:
            raise ValueError(f"bags must be >= 1, got {self.bags}")
        if not 0.0 < self.bag_fraction <= 1.0:
            raise ValueError(f"bag_fraction must be in (0, 1], got {self.bag_fraction}")
        if self.nm_maxfev < 1:
            raise ValueError(f"nm_maxfev must be >= 1, got {self.nm_maxfev}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class SelectionResult:
    """Outcome of one selection run on a set of rows."""

    counts: np.ndarray  # (C,) int64 picks per candidate (summed over bags)
    weights: np.ndarray  # (C,) float64, sums to 1: the ensemble
    score: float  # searched score of the chosen ensemble on the selection rows
    best_step: int | None  # ensemble size of the winning step (None with bagging)
    weighted: bool  # True when Nelder-Mead weights won
    curve: list[dict[str, object]]  # one entry per step (first bag when bagging)
    bag_curves: list[list[dict[str, object]]] = field(default_factory=list)
    singles: np.ndarray | None = None  # (C,) single-candidate scores on the selection rows
    pool: np.ndarray | None = None  # candidate indices after --top-k


# ---------------------------------------------------------------------------------------
# pre-selection: the candidates a selection on some rows may pick


def preselect(pred: np.ndarray, y: np.ndarray, rows: np.ndarray, singles: np.ndarray,
              top_k: int | None, diversity: float = 0.0) -> np.ndarray:
    """Sorted indices of the ``top_k`` best candidates on ``rows``, skipping near-duplicates.

    Candidates are visited best first (ties: lower index). With ``diversity`` d > 0, one whose
    right/wrong pattern on ``rows`` differs from an already kept (better) candidate's on
    fewer than d * len(rows) rows is skipped: it repeats a kept candidate's errors, and a
    pool of 1,000 such copies would crowd out the candidates that fix other rows. Reads only
    ``pred[:, rows]`` and ``y[rows]``, so a selection on training rows never sees the rest.
    """
    C = len(singles)
    if top_k is None or top_k >= C:
        return np.arange(C)
    order = np.argsort(-singles, kind="stable")
    if diversity <= 0:
        return np.sort(order[:top_k])
    yr = np.asarray(y)[rows]
    need = int(np.ceil(diversity * len(rows)))
    kept_bits = np.empty((top_k, (len(rows) + 7) // 8), dtype=np.uint8)
    kept: list[int] = []
    for c in order:
        bits = np.packbits(pred[c, rows] == yr)
        if kept and int(np.bitwise_count(kept_bits[:len(kept)] ^ bits).sum(axis=1).min()) < need:
            continue
        kept_bits[len(kept)] = bits
        kept.append(int(c))
        if len(kept) == top_k:
            break
    return np.sort(np.asarray(kept, dtype=np.int64))


def working_set(pred: np.ndarray, y: np.ndarray, folds: np.ndarray, opts: SelectionOptions, *,
                metric_top: int = 0, honest: bool = True) -> np.ndarray:
    """Sorted indices of every candidate the coordinator's selections can read.

    The union, over the rows of the final selection and (``honest``) the training rows of
    each outer fold, of the greedy pool (:func:`preselect`) and of the ``metric_top`` best
    single candidates (SK fusion's pool). Selecting on this subset gives the same ensembles
    as on all candidates: each pool is a function of its own candidates' ranks and
    predictions, all inside the subset. Only this subset is ever loaded in float32.
    """
    C = pred.shape[0]
    if opts.top_k is None or opts.top_k >= C:
        return np.arange(C)
    y = np.asarray(y, dtype=np.int64)
    row_sets = [np.arange(len(y))]
    if honest or metric_top:
        row_sets += [np.flatnonzero(folds != k) for k in np.unique(folds)]
    stats = CandidateStats(pred=pred, cmax=np.empty((0, 0), np.float32),
                           spread=np.empty(0, np.float32), xabs=1.0)
    keep = np.zeros(C, dtype=bool)
    for rows in row_sets:
        singles = single_scores(stats, y, rows, opts.metric)
        keep[preselect(pred, y, rows, singles, opts.top_k, opts.diversity)] = True
        keep[np.argsort(-singles, kind="stable")[:metric_top]] = True
    return np.flatnonzero(keep)


# ---------------------------------------------------------------------------------------
# the greedy path


@dataclass
class _Path:
    """One greedy path over a pool: its picks, their running sum, and the curve so far."""

    pool: np.ndarray  # global candidate indices the path picks from
    S: np.ndarray  # (rows, 23) float64: sum of the picked candidates on the selection rows
    picks: list[int] = field(default_factory=list)  # pool positions, in order
    curve: list[dict[str, object]] = field(default_factory=list)
    nm_weights: dict[int, np.ndarray] = field(default_factory=dict)  # step size -> weights

    @property
    def best_step(self) -> dict[str, object]:
        """The winning step's curve entry (max() keeps the earliest of tied steps)."""
        return max(self.curve, key=lambda e: e["score_best"])

    @property
    def best_size(self) -> int:
        return int(self.best_step["size"])

    @property
    def best_score(self) -> float:
        return float(self.best_step["score_best"])

    @property
    def weighted(self) -> bool:
        """True when Nelder-Mead weights won the winning step."""
        return self.best_size in self.nm_weights


class _Context:
    """The arrays of one selection run: tensor, stats, labels and rows (global indices)."""

    def __init__(self, X: np.ndarray, stats: CandidateStats, y: np.ndarray, rows: np.ndarray,
                 opts: SelectionOptions) -> None:
        self.X = X
        self.Xf = X.reshape(X.shape[0], -1)  # views, no copy
        self.Xr = X.reshape(-1, N_CLASSES)
        self.N = X.shape[1]
        self.stats = stats
        self.rows = rows
        full = rows.size == self.N and bool(np.all(rows == np.arange(self.N)))
        self.rows_or_none = None if full else rows  # a slice beats a gather on all rows
        self.y = y[rows].astype(np.int64)
        self.spread = stats.spread[rows].astype(np.float64)
        self.opts = opts

    def prf(self, cm: np.ndarray) -> float:
        return prf_from_confusion(cm, variant=self.opts.metric)[2]

    def score_additions(self, S: np.ndarray, pool: np.ndarray) -> np.ndarray:
        """Score of (S + X[c]) for every c in pool, exactly, skipping pairs that cannot change."""
        a = S.argmax(axis=1)
        top2 = np.partition(S, N_CLASSES - 2, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        # float64 sums of float32 values: a relative slack far above rounding keeps it exact
        tol = 1e-9 * (np.abs(S).max(axis=1) + self.stats.xabs + 1.0)
        cm0 = confusion_matrix(self.y, a)
        scores = np.full(len(pool), self.prf(cm0), dtype=np.float64)
        unc = np.flatnonzero(margin <= self.spread + tol)
        if unc.size == 0:
            return scores
        g = self.rows[unc]
        au = a[unc]
        yu = self.y[unc]
        thresh = (margin[unc] - tol[unc]).astype(np.float64)
        flat = g * N_CLASSES + au
        Sunc = S[unc]
        step = max(1, _PAIR_BUDGET // unc.size)
        for s in range(0, len(pool), step):
            cidx = pool[s:s + step]
            gain = self.stats.cmax[cidx[:, None], g[None, :]].astype(np.float64)
            gain -= self.Xf[cidx[:, None], flat[None, :]]
            ci, ui = np.nonzero(gain >= thresh)
            del gain
            if ci.size == 0:
                continue
            Z = Sunc[ui]
            Z += self.Xr[cidx[ci] * self.N + g[ui]]
            p = Z.argmax(axis=1)
            del Z
            moved = p != au[ui]
            if not moved.any():
                continue
            ci, ui, p = ci[moved], ui[moved], p[moved]
            base = ci * _K2 + yu[ui] * N_CLASSES
            size = len(cidx) * _K2
            delta = np.bincount(base + p, minlength=size) - np.bincount(base + au[ui], minlength=size)
            delta = delta.reshape(len(cidx), N_CLASSES, N_CLASSES)
            for j in np.unique(ci):
                scores[s + j] = self.prf(cm0 + delta[j])
        return scores

    def nelder_mead(self, members: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, float]:
        """Nelder-Mead on the members' weights (abs-normalised simplex), exact score of the best.

        Under any convex weighting, class j can win row i only if some member gives it at
        least ``max_a min_m X[m, i, a]``. Rows with one such class are fixed; the others keep
        only their viable classes, so an evaluation reads a few values per row, not 23.
        """
        d = len(members)
        x0 = counts / counts.sum()
        cm_fixed, buckets = self._viable_buckets(members)
        w = x0
        if buckets:  # otherwise no weighting can change a prediction
            yc = np.concatenate([self.y[r] for r, _, _ in buckets])
            simplex = np.vstack([x0] + [x0 + np.eye(d)[i] * (0.5 / d) for i in range(d)])
            res = minimize(self._nm_objective, x0, args=(buckets, cm_fixed, yc),
                           method="Nelder-Mead",
                           options={"maxfev": self.opts.nm_maxfev, "initial_simplex": simplex,
                                    "xatol": 1e-4, "fatol": 1e-9})
            w = np.abs(np.asarray(res.x, dtype=np.float64))
            w = w / w.sum() if w.sum() > 0 else x0
        full = np.zeros(self.X.shape[0], dtype=np.float64)
        full[members] = w
        proba = combine(self.X, full, self.rows_or_none, self.opts.combine)
        return w, score_pred(self.y, proba.argmax(axis=1), self.opts.metric)

    def _viable_buckets(self, members: np.ndarray
                        ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """Confusion of the rows no weighting can change, and the others bucketed by how
        many classes can still win them: (rows, their viable classes, member values)."""
        d = len(members)
        V = self.X[members[:, None], self.rows[None, :]]  # (d, n, 23), d <= max_size
        hi = V.max(axis=0)
        floor = V.min(axis=0).max(axis=1)
        slack = 1e-5 * (np.abs(floor) + 1.0)  # float32 rounding of the weighted sums
        viable = hi >= (floor - slack)[:, None]
        n_viable = viable.sum(axis=1)
        fixed = n_viable == 1
        cm_fixed = confusion_matrix(self.y[fixed], viable[fixed].argmax(axis=1))
        buckets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        lo = 1
        for k in (2, 4, 8, N_CLASSES):
            r = np.flatnonzero((n_viable > lo) & (n_viable <= k))
            lo = k
            if r.size == 0:
                continue
            # viable classes in ascending order first, padded with the first one (ties: the
            # lowest class wins, as in argmax over all 23)
            cls = np.argsort(~viable[r], axis=1, kind="stable")[:, :k]
            cls = np.where(np.arange(k)[None, :] < n_viable[r][:, None], cls, cls[:, :1])
            M = V[:, r[:, None], cls].reshape(d, -1)
            buckets.append((r, cls, M))
        return cm_fixed, buckets

    def _nm_objective(self, x: np.ndarray,
                      buckets: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      cm_fixed: np.ndarray, yc: np.ndarray) -> float:
        """Minus the score of weights ``|x|`` (normalised), from the viable classes only."""
        w = np.abs(x)
        total = w.sum()
        if not np.isfinite(total) or total <= 0:
            return 1.0
        w32 = (w / total).astype(np.float32)
        preds = []
        for r, cls, M in buckets:
            z = (w32 @ M).reshape(len(r), -1)
            best = z[:, 0].copy()
            arg = np.zeros(len(r), dtype=np.int64)
            for j in range(1, z.shape[1]):
                better = z[:, j] > best
                arg[better] = j
                np.maximum(best, z[:, j], out=best)
            preds.append(cls[np.arange(len(r)), arg])
        return -self.prf(cm_fixed + confusion_matrix(yc, np.concatenate(preds)))

    def greedy(self, pool: np.ndarray, singles: np.ndarray) -> _Path:
        """One greedy path over ``pool`` (global candidate indices); ``singles`` their scores."""
        opts = self.opts
        path = _Path(pool=pool, S=np.zeros((len(self.rows), N_CLASSES), dtype=np.float64))
        n_init = min(opts.init_size, len(pool))
        order = np.argsort(-singles, kind="stable")
        if n_init > 0:
            for pos in order[:n_init]:
                self._add(path, int(pos))
            self._record(path, [int(p) for p in order[:n_init]],
                         score_pred(self.y, path.S.argmax(axis=1), opts.metric))
        while len(path.picks) < opts.max_size:
            scores = singles if not path.picks else self.score_additions(path.S, pool)
            best = int(np.argmax(scores))  # first maximum: lowest candidate position on ties
            self._add(path, best)
            self._record(path, [best], float(scores[best]))
        return path

    def _add(self, path: _Path, pos: int) -> None:
        path.picks.append(pos)
        path.S[...] += self.X[path.pool[pos], self.rows]

    def _record(self, path: _Path, added: list[int], score: float) -> None:
        """The curve entry of the step just taken, with Nelder-Mead weights when asked for."""
        size = len(path.picks)
        entry: dict[str, object] = {"size": size, "added": [int(path.pool[p]) for p in added],
                                    "score": float(score), "score_nm": None,
                                    "score_best": float(score)}
        if self.opts.weights == "nelder-mead":
            members, counts = np.unique(np.asarray(path.picks), return_counts=True)
            if len(members) >= 2:
                w, s_nm = self.nelder_mead(path.pool[members], counts.astype(np.float64))
                entry["score_nm"] = float(s_nm)
                if s_nm > score:
                    entry["score_best"] = float(s_nm)
                    path.nm_weights[size] = np.zeros(len(path.pool))
                    path.nm_weights[size][members] = w
        path.curve.append(entry)


def _path_weights(path: _Path, n_pool: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and weights (over pool positions) of the winning step of a path."""
    counts = np.bincount(np.asarray(path.picks[:path.best_size]), minlength=n_pool)
    if path.weighted:
        weights = path.nm_weights[path.best_size]
    else:
        weights = counts / counts.sum()
    return counts.astype(np.int64), weights


def _single_threaded_blas() -> AbstractContextManager[object]:
    """Nelder-Mead evaluates thousands of tiny matrix-vector products; a multi-threaded BLAS
    spends more time waking its threads than computing (10x slower on a busy 2-core box)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - shipped with scikit-learn
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def select_ensemble(X: np.ndarray, y: np.ndarray, *, rows: np.ndarray | None = None,
                    options: SelectionOptions | None = None,
                    stats: CandidateStats | None = None) -> SelectionResult:
    """Run the whole selection procedure on ``rows`` (all rows by default).

    Pre-selection (``top_k``), sorted initialisation, greedy steps, Nelder-Mead weights and
    the choice of the best step all look at ``y[rows]`` and ``X[:, rows]`` only.
    """
    with _single_threaded_blas():
        return _select(X, y, rows, options, stats)


def _select(X: np.ndarray, y: np.ndarray, rows: np.ndarray | None,
            options: SelectionOptions | None, stats: CandidateStats | None) -> SelectionResult:
    opts = options or SelectionOptions()
    check_tensor(X, y)
    y = np.asarray(y, dtype=np.int64)
    C, N, _ = X.shape
    rows = np.arange(N) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or rows.size == 0:
        raise ValueError("rows must be a non-empty 1-d index array")
    if rows.min() < 0 or rows.max() >= N or np.unique(rows).size != rows.size:
        raise ValueError("rows must be distinct indices into the samples")
    if stats is None:
        stats = candidate_stats(X, opts.combine)
    ctx = _Context(X, stats, y, rows, opts)

    singles = single_scores(stats, y, rows, opts.metric)
    pool = preselect(stats.pred, y, rows, singles, opts.top_k, opts.diversity)

    if opts.bags <= 1:
        path = ctx.greedy(pool, singles[pool])
        counts_p, weights_p = _path_weights(path, len(pool))
        counts = np.zeros(C, dtype=np.int64)
        weights = np.zeros(C, dtype=np.float64)
        counts[pool] = counts_p
        weights[pool] = weights_p
        return SelectionResult(counts=counts, weights=weights, score=path.best_score,
                               best_step=path.best_size, weighted=path.weighted,
                               curve=path.curve, singles=singles, pool=pool)

    rng = np.random.default_rng(opts.seed)
    bag_size = max(1, int(round(opts.bag_fraction * len(pool))))
    counts = np.zeros(C, dtype=np.int64)
    mass = np.zeros(C, dtype=np.float64)
    curves: list[list[dict[str, object]]] = []
    for _ in range(opts.bags):
        sub = np.sort(rng.choice(pool, size=bag_size, replace=False))
        path = ctx.greedy(sub, singles[sub])
        counts_b, weights_b = _path_weights(path, len(sub))
        counts[sub] += counts_b
        mass[sub] += weights_b * path.best_size  # count-like: a bag weighs by its size
        curves.append(path.curve)
    weights = mass / mass.sum()
    proba = combine(X, weights, rows, opts.combine)
    score = score_pred(ctx.y, proba.argmax(axis=1), opts.metric)
    return SelectionResult(counts=counts, weights=weights, score=score, best_step=None,
                           weighted=opts.weights == "nelder-mead", curve=curves[0],
                           bag_curves=curves, singles=singles, pool=pool)
