"""Greedy forward ensemble selection with replacement (Caruana et al., 2004) on OOF tensors.

The candidate tensor ``X`` has shape (n_candidates, n_samples, 23), float32, in the space in
which members are averaged: probabilities (``combine="prob"``) or log-probabilities
(``combine="logit"``, averaged then softmaxed). It is never copied whole: a sweep of 1,000
trials on 11,000 sounds is already 1 GB.

Why it is fast. Adding candidate c to the current ensemble (running sum S of its k members)
predicts ``argmax_j S[i, j] + X[c, i, j]``. With a = argmax S[i] and margin m = S[i, a] minus
the runner-up, that prediction can differ from a only if
``max_j X[c, i, j] - X[c, i, a] >= m``. Both sides are cheap to gather, so the full 23-way
argmax runs only for the (candidate, sample) pairs that can change, and the confusion
matrix of every candidate is the current one plus a sparse correction. The recorded scores
are exactly those of the definition; the bound only skips work whose result is known.

Every score is computed by :func:`bst_search.metrics.prf_from_confusion` on a 23 x 23
confusion matrix, the project's one implementation of the DCASE metric.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import minimize

from bst_search.metrics import VARIANTS, confusion_matrix, prf_from_confusion
from bst_search.taxonomy import N_CLASSES

COMBINES: tuple[str, ...] = ("prob", "logit")
WEIGHT_MODES: tuple[str, ...] = ("none", "nelder-mead")
LOG_FLOOR = 1e-7  # probabilities are clipped here before the log in logit mode
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
class CandidateStats:
    """Per-candidate, per-row facts computed once over all rows and reused by every selection.

    Each entry depends on one (candidate, row) or on one row only, so restricting a selection
    to some rows (the honest estimate) never lets another row's values in.
    """

    pred: np.ndarray  # (C, N) int8: each candidate's own argmax
    cmax: np.ndarray  # (C, N) float32: each candidate's max over classes
    spread: np.ndarray  # (N,) float32: bound on X[c,i,j] - X[c,i,a] over all c, j, a
    xabs: float  # bound on |X|, for the rounding tolerance


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
# scoring helpers


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
    picks: list[int]  # pool positions, in order
    curve: list[dict[str, object]]
    nm_weights: dict[int, np.ndarray]  # step size -> weights over pool positions
    best_size: int
    best_score: float
    weighted: bool


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
        del V, hi, viable
        yc = np.concatenate([self.y[r] for r, _, _ in buckets]) if buckets else None

        def objective(x: np.ndarray) -> float:
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

        w = x0
        if buckets:  # otherwise no weighting can change a prediction
            simplex = np.vstack([x0] + [x0 + np.eye(d)[i] * (0.5 / d) for i in range(d)])
            res = minimize(objective, x0, method="Nelder-Mead",
                           options={"maxfev": self.opts.nm_maxfev, "initial_simplex": simplex,
                                    "xatol": 1e-4, "fatol": 1e-9})
            w = np.abs(np.asarray(res.x, dtype=np.float64))
            w = w / w.sum() if w.sum() > 0 else x0
        full = np.zeros(self.X.shape[0], dtype=np.float64)
        full[members] = w
        proba = combine(self.X, full, self.rows_or_none, self.opts.combine)
        return w, score_pred(self.y, proba.argmax(axis=1), self.opts.metric)

    def greedy(self, pool: np.ndarray, singles: np.ndarray) -> _Path:
        """One greedy path over ``pool`` (global candidate indices); ``singles`` their scores."""
        opts = self.opts
        S = np.zeros((len(self.rows), N_CLASSES), dtype=np.float64)
        picks: list[int] = []
        curve: list[dict[str, object]] = []
        nm_weights: dict[int, np.ndarray] = {}
        n_init = min(opts.init_size, len(pool))
        order = np.argsort(-singles, kind="stable")

        def add(pos: int) -> None:
            picks.append(pos)
            S[...] += self.X[pool[pos], self.rows]

        def record(added: list[int], score: float) -> None:
            size = len(picks)
            entry: dict[str, object] = {"size": size, "added": [int(pool[p]) for p in added],
                                        "score": float(score), "score_nm": None,
                                        "score_best": float(score)}
            if opts.weights == "nelder-mead":
                members, counts = np.unique(np.asarray(picks), return_counts=True)
                if len(members) >= 2:
                    w, s_nm = self.nelder_mead(pool[members], counts.astype(np.float64))
                    entry["score_nm"] = float(s_nm)
                    if s_nm > score:
                        entry["score_best"] = float(s_nm)
                        nm_weights[size] = np.zeros(len(pool))
                        nm_weights[size][members] = w
            curve.append(entry)

        if n_init > 0:
            for pos in order[:n_init]:
                add(int(pos))
            record([int(p) for p in order[:n_init]],
                   score_pred(self.y, S.argmax(axis=1), opts.metric))
        while len(picks) < opts.max_size:
            scores = singles if not picks else self.score_additions(S, pool)
            best = int(np.argmax(scores))  # first maximum: lowest candidate position on ties
            add(best)
            record([best], float(scores[best]))
        best_entry = max(curve, key=lambda e: e["score_best"])  # max() keeps the earliest tie
        size = int(best_entry["size"])
        return _Path(picks=picks, curve=curve, nm_weights=nm_weights, best_size=size,
                     best_score=float(best_entry["score_best"]), weighted=size in nm_weights)


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
