"""Selective-kernel (SK) fusion of the candidates' output probabilities (MESH, MESH).

Li et al. (2019) let a network choose, per channel, between branches: fuse the branches
(U = sum), squeeze U into a small descriptor z, turn z into one attention logit per branch
and channel, softmax across the branches, output the attention-weighted sum of the branches.
MESH applied the idea to classifier outputs. Here the branches are M candidates and the
channels are the 23 classes:

    U = sum_m P_m                              (n, 23)     P_m: candidate m's probabilities
    z = ReLU(LayerNorm(W1 log(U / M) + b1))    (n, h)      squeeze (SK's FC-BN-ReLU)
    a = softmax over m of (W2 z + b2)          (n, M, 23)  one weight per candidate and class
    q = sum_m a_m * P_m, renormalised          (n, 23)     the fused distribution

Inputs are probabilities, not log-probabilities: a weighted sum of probability vectors is what
SK's sum of branch outputs means for outputs, and it needs only a renormalisation to be a
distribution again. The squeeze reads the log of the mean so that small probabilities still
count. W2 and b2 start at zero, so an untrained fuser is the plain probability mean, and
weight decay pulls it towards it. Training minimises the NLL of q with AdamW over a fixed
number of epochs of seeded mini-batches: the same seed gives the same fuser on CPU.

The epoch kept is the one (0 = the plain mean included) with the best hF on an inner,
class-stratified validation split of the training rows (``val_fraction``), as the trials
choose their checkpoints. Why: NLL and argmax hF disagree here. On synthetic candidate sets
a fuser trained for all its epochs scored 5-13 points of hF below the plain mean out of fold
while its NLL went down; with the checkpoint chosen on held-out hF it came within half a
point of the mean or beat it. ``val_fraction=0`` trains on every row and keeps the last epoch.

Cross-fitting (:func:`cross_fit`) makes SK's own score out-of-fold, as the honest estimate
does for greedy selection. For each OOF fold k, on the rows of the other folds only, the
``top`` candidates are ranked by their single score and a fuser is trained; it then predicts
fold k. Ranking inside the fold matters: a top-k chosen on all rows has seen fold k's labels.
The evaluation set is fused by the mean of the K cross-fit fusers' outputs, not by a fuser
refitted on all rows, so that the submitted predictions come from exactly the fusers whose
OOF predictions were scored (the trials' own convention: fold models averaged on eval).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from bst_search.ensemble.scoring import (
    CandidateMatrix,
    CandidateStats,
    candidate_stats,
    score_pred,
    single_scores,
)
from bst_search.metrics import VARIANTS
from bst_search.taxonomy import N_CLASSES

PROB_FLOOR = 1e-6  # mean probabilities are clipped here before the squeeze's log
_NLL_FLOOR = 1e-12
_PREDICT_BATCH = 8192
EVAL_FUSION = "mean of the cross-fit fusers' outputs"


def pick_device(pref: str = "auto") -> torch.device:
    """CUDA when present for ``auto``, else CPU; any other value is taken as given."""
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(pref)
    except RuntimeError as exc:
        raise ValueError(f"SK device {pref!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"SK device {pref!r} requested but CUDA is not available")
    return dev


@contextmanager
def _one_cpu_thread(dev: torch.device) -> Iterator[None]:
    """The fuser's matrices are tiny (batch x 23 x 32): on CPU, extra intra-op threads cost more
    in wake-ups than they compute (6 s against 45 s for five folds on a busy 2-core box)."""
    n = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass(frozen=True)
class SKOptions:
    """Everything that defines the SK fusers; recorded in ensemble.json."""

    top: int = 10  # candidates fused, the best by single score on the training rows
    epochs: int = 30
    hidden: int = 32
    lr: float = 5e-3
    weight_decay: float = 1e-4
    batch_size: int = 512
    seed: int = 0
    val_fraction: float = 0.2  # inner validation rows choosing the epoch; 0: keep the last
    metric: str = "strict"  # ranks the candidates, chooses the epoch, names the headline score
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.top < 1:
            raise ValueError(f"sk top must be >= 1, got {self.top}")
        if self.epochs < 1:
            raise ValueError(f"sk epochs must be >= 1, got {self.epochs}")
        if self.hidden < 1 or self.batch_size < 1:
            raise ValueError("sk hidden and batch_size must be >= 1")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ValueError("sk lr must be > 0 and weight_decay >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"sk val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.metric not in VARIANTS:
            raise ValueError(f"metric must be one of {VARIANTS}, got {self.metric!r}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class SKFusion(nn.Module):
    """Per-sample, per-class attention over M candidates' probabilities (module docstring)."""

    def __init__(self, n_candidates: int, hidden: int = 32,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.n_candidates = n_candidates
        self.chosen_epoch = 0  # set by train_fuser
        self.squeeze = nn.Linear(N_CLASSES, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.select = nn.Linear(hidden, n_candidates * N_CLASSES)
        with torch.no_grad():  # seeded here: the default init reads the global generator
            bound = 1.0 / math.sqrt(N_CLASSES)
            self.squeeze.weight.uniform_(-bound, bound, generator=generator)
            self.squeeze.bias.uniform_(-bound, bound, generator=generator)
            self.select.weight.zero_()  # uniform attention: starts as the plain mean
            self.select.bias.zero_()

    def attention(self, P: torch.Tensor) -> torch.Tensor:
        """(n, M, 23) probabilities -> (n, M, 23) weights, summing to 1 over the M candidates."""
        m = self.n_candidates
        s = torch.log((P.sum(dim=1) / m).clamp_min(PROB_FLOOR))
        z = torch.relu(self.norm(self.squeeze(s)))
        return torch.softmax(self.select(z).view(-1, m, N_CLASSES), dim=1)

    def forward(self, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused (n, 23) distribution and the (n, M, 23) attention that made it."""
        a = self.attention(P)
        q = (a * P).sum(dim=1)
        return q / q.sum(dim=1, keepdim=True).clamp_min(_NLL_FLOOR), a


def val_split(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of about ``fraction`` of the rows of every class (at least one row of a
    class with two or more), seeded; all False when ``fraction`` is 0."""
    y = np.asarray(y)
    mask = np.zeros(len(y), dtype=bool)
    if fraction <= 0:
        return mask
    rng = np.random.default_rng(seed)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = min(len(rows) - 1, max(1, int(round(fraction * len(rows)))))
        if k > 0:
            mask[rng.permutation(rows)[:k]] = True
    return mask


def train_fuser(P: np.ndarray, y: np.ndarray, options: SKOptions | None = None,
                device: torch.device | None = None) -> SKFusion:
    """Fit one fuser on (n, M, 23) probabilities and labels; deterministic on CPU.

    The returned module carries ``chosen_epoch``: the epoch kept (0 = the plain mean).
    """
    opts = options or SKOptions()
    P = np.asarray(P, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if P.ndim != 3 or P.shape[2] != N_CLASSES or P.shape[0] != len(y) or P.shape[0] == 0:
        raise ValueError(f"P must have shape (n, M, {N_CLASSES}) with n = len(y) > 0, "
                         f"got {P.shape} and {len(y)} labels")
    dev = device or pick_device(opts.device)
    gen = torch.Generator().manual_seed(opts.seed)  # CPU generator: same draws on any device
    model = SKFusion(P.shape[1], opts.hidden, generator=gen).to(dev)
    val = val_split(y, opts.val_fraction, opts.seed)
    fit = ~val
    Pt = torch.as_tensor(P[fit], device=dev)
    yt = torch.as_tensor(y[fit], device=dev)
    Pv = torch.as_tensor(P[val], device=dev) if val.any() else None
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    n = len(yt)
    bs = min(opts.batch_size, n)

    def val_score() -> float:
        model.eval()
        with torch.no_grad():
            pred = model(Pv)[0].argmax(dim=1).cpu().numpy()
        model.train()
        return score_pred(y[val], pred, opts.metric)

    best = val_score() if Pv is not None else -np.inf
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    chosen = 0
    model.train()
    for epoch in range(1, opts.epochs + 1):
        order = torch.randperm(n, generator=gen).to(dev)
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            q, _ = model(Pt[idx])
            loss = -torch.log(q.gather(1, yt[idx, None]).clamp_min(_NLL_FLOOR)).mean()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        score = val_score() if Pv is not None else float(epoch)  # no split: the last epoch
        if score > best:  # strictly: on ties the earlier epoch, closer to the plain mean, stays
            best, chosen = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    model.chosen_epoch = chosen
    return model


@torch.no_grad()
def fuse(model: SKFusion, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fused (n, 23) float64 distributions and each candidate's mean attention, shape (M,).

    The mean runs over rows and classes, so the M values sum to 1.
    """
    dev = next(model.parameters()).device
    P = np.asarray(P, dtype=np.float32)
    out = np.empty((P.shape[0], N_CLASSES), dtype=np.float64)
    mass = np.zeros(P.shape[1], dtype=np.float64)
    for s in range(0, P.shape[0], _PREDICT_BATCH):
        q, a = model(torch.as_tensor(P[s:s + _PREDICT_BATCH], device=dev))
        out[s:s + _PREDICT_BATCH] = q.double().cpu().numpy()
        mass += a.double().sum(dim=(0, 2)).cpu().numpy()
    out /= out.sum(axis=1, keepdims=True)
    return out, mass / max(mass.sum(), _NLL_FLOOR)


def gather(X: CandidateMatrix, pool: np.ndarray, rows: np.ndarray | None,
           log_input: bool = False) -> np.ndarray:
    """(C, N, 23) candidate tensor -> (n, M, 23) float32 probabilities of ``pool`` on ``rows``."""
    pool = np.asarray(pool, dtype=np.int64)
    Z = X[pool] if rows is None else X[pool[:, None], np.asarray(rows)[None, :]]
    Z = np.ascontiguousarray(Z.transpose(1, 0, 2), dtype=np.float32)
    if log_input:
        np.exp(Z, out=Z)
    return Z


def fit_rows(X: np.ndarray, y: np.ndarray, rows: np.ndarray, pool: np.ndarray,
             options: SKOptions, *, log_input: bool = False,
             device: torch.device | None = None) -> SKFusion:
    """Train a fuser of the candidates ``pool`` on ``rows``: the one way labels reach training."""
    return train_fuser(gather(X, pool, rows, log_input), np.asarray(y)[rows], options, device)


@dataclass
class SKResult:
    """Cross-fitted SK fusion: OOF and evaluation predictions and their scores."""

    options: SKOptions
    oof: np.ndarray  # (N, 23) float64: row i fused by the fuser that never saw it
    eval_proba: np.ndarray | None  # (n_eval, 23): mean of the K fusers' outputs
    folds: list[int]
    fold_sizes: list[int]
    pools: list[np.ndarray]  # per fold: candidate indices, best single score first
    chosen_epochs: list[int]  # per fold: the epoch kept (0 = the plain mean)
    per_fold_strict: list[float]
    per_fold_official: list[float]
    hF_strict: float  # all OOF rows scored together
    hF: float
    weight: np.ndarray  # (C,) mean attention on the OOF rows (0 outside the pools); sums to 1
    uses: np.ndarray  # (C,) int: number of fold fusers that included the candidate
    device: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    log_input: bool = False  # the fusers read log-probabilities (the greedy path's logit space)
    fusers: list[SKFusion] = field(default_factory=list, repr=False)  # per fold, pools[k]'s

    def predict(self, X: CandidateMatrix) -> np.ndarray:
        """(n, 23) float64: the mean of the cross-fit fusers' outputs on other rows of the
        candidates (C, n, 23), e.g. the evaluation set: the fusers whose OOF rows were scored."""
        if not self.fusers:
            raise ValueError("this SK result has no fusers to predict with")
        out = np.zeros((X.shape[1], N_CLASSES), dtype=np.float64)
        with _one_cpu_thread(torch.device(self.device)):
            for pool, model in zip(self.pools, self.fusers, strict=True):
                out += fuse(model, gather(X, pool, None, self.log_input))[0]
        out /= len(self.fusers)
        return out

    @property
    def score(self) -> float:
        """The pooled OOF score in the options' metric."""
        return self.hF_strict if self.options.metric == "strict" else self.hF

    @property
    def per_fold(self) -> list[float]:
        return self.per_fold_strict if self.options.metric == "strict" else self.per_fold_official

    @property
    def members(self) -> np.ndarray:
        """Candidates used by at least one fuser, heaviest first (ties: lower index)."""
        m = np.flatnonzero(self.uses > 0)
        return m[np.lexsort((m, -self.weight[m]))]

    def to_dict(self, names: list[dict[str, str]] | None = None, *,
                eval_fused: bool | None = None) -> dict[str, Any]:
        """JSON-ready summary; ``names`` maps candidate index -> {run_id, trial_id};
        ``eval_fused``: whether :meth:`predict` made the evaluation predictions (default:
        whether this result holds some)."""
        def ident(c: int) -> dict[str, str] | int:
            return names[c] if names is not None else int(c)

        if eval_fused is None:
            eval_fused = self.eval_proba is not None

        return {
            "options": self.options.to_dict(), "metric": self.options.metric,
            "score": float(self.score), "hF_strict": float(self.hF_strict), "hF": float(self.hF),
            "per_fold": [float(s) for s in self.per_fold],
            "per_fold_strict": [float(s) for s in self.per_fold_strict],
            "per_fold_official": [float(s) for s in self.per_fold_official],
            "std": float(np.std(self.per_fold)),
            "folds": self.folds, "fold_sizes": self.fold_sizes,
            "pools": [[ident(int(c)) for c in p] for p in self.pools],
            "chosen_epochs": self.chosen_epochs,
            "eval_fusion": EVAL_FUSION if eval_fused else None,
            "device": self.device,
            "notes": self.notes,
        }


def cross_fit(X: np.ndarray, y: np.ndarray, folds: np.ndarray,
              options: SKOptions | None = None, *, log_input: bool = False,
              eval_X: CandidateMatrix | None = None,
              stats: CandidateStats | None = None) -> SKResult:
    """Out-of-fold SK fusion over the OOF folds, and the fused evaluation predictions.

    ``X`` (C, N, 23) and ``eval_X`` (C, n_eval, 23) hold probabilities, or log-probabilities
    with ``log_input`` (the greedy path's ``logit`` space). ``stats`` (from
    :func:`candidate_stats`) saves a pass over ``X``; only the candidates' argmaxes are read.
    For fold k, both the top-``options.top`` ranking and the training see only the rows of
    the other folds.
    """
    opts = options or SKOptions()
    t0 = time.perf_counter()
    y = np.asarray(y, dtype=np.int64)
    folds = np.asarray(folds)
    if X.ndim != 3 or X.shape[2] != N_CLASSES or X.shape[1] != len(y):
        raise ValueError(f"X must have shape (C, {len(y)}, {N_CLASSES}), got {X.shape}")
    if folds.shape != y.shape:
        raise ValueError(f"folds must have shape {y.shape}, got {folds.shape}")
    if eval_X is not None and (eval_X.ndim != 3 or eval_X.shape[0] != X.shape[0]
                               or eval_X.shape[2] != N_CLASSES):
        raise ValueError(f"eval_X must have shape ({X.shape[0]}, n, {N_CLASSES}), got {eval_X.shape}")
    fold_ids = np.unique(folds)
    if fold_ids.size < 2:
        raise ValueError(f"SK cross-fitting needs at least 2 folds, got {fold_ids.tolist()}")
    if stats is None:
        stats = candidate_stats(X, "logit" if log_input else "prob")
    dev = pick_device(opts.device)
    C = X.shape[0]
    oof = np.zeros((len(y), N_CLASSES), dtype=np.float64)
    weight = np.zeros(C, dtype=np.float64)
    uses = np.zeros(C, dtype=np.int64)
    res = SKResult(options=opts, oof=oof, eval_proba=None, folds=[int(f) for f in fold_ids],
                   fold_sizes=[], pools=[], chosen_epochs=[], per_fold_strict=[],
                   per_fold_official=[], hF_strict=0.0, hF=0.0, weight=weight, uses=uses,
                   device=str(dev), log_input=log_input)
    with _one_cpu_thread(dev):
        _cross_fit_folds(X, y, folds, opts, res, stats=stats, dev=dev)
    weight /= weight.sum()
    pred = oof.argmax(axis=1)
    res.hF_strict = score_pred(y, pred, "strict")
    res.hF = score_pred(y, pred, "official")
    if eval_X is not None:
        res.eval_proba = res.predict(eval_X)
    res.seconds = time.perf_counter() - t0
    return res


def _cross_fit_folds(X: np.ndarray, y: np.ndarray, folds: np.ndarray, opts: SKOptions,
                     res: SKResult, *, stats: CandidateStats, dev: torch.device) -> None:
    """The fold loop of :func:`cross_fit`, filling ``res`` in place (its fusers included)."""
    top = min(opts.top, X.shape[0])
    for k in res.folds:
        held = np.flatnonzero(folds == k)
        train = np.flatnonzero(folds != k)
        # the guarantee cross-fitting exists for: no scored row is ranked on or trained on
        assert np.intersect1d(train, held).size == 0, f"fold {k}: scored rows in training"
        singles = single_scores(stats, y, train, opts.metric)
        pool = np.argsort(-singles, kind="stable")[:top]
        model = fit_rows(X, y, train, pool, opts, log_input=res.log_input, device=dev)
        proba, mass = fuse(model, gather(X, pool, held, res.log_input))
        res.oof[held] = proba
        res.weight[pool] += mass * len(held)
        res.uses[pool] += 1
        pred = proba.argmax(axis=1)
        res.per_fold_strict.append(score_pred(y[held], pred, "strict"))
        res.per_fold_official.append(score_pred(y[held], pred, "official"))
        res.fold_sizes.append(int(held.size))
        res.pools.append(pool)
        res.chosen_epochs.append(int(model.chosen_epoch))
        res.fusers.append(model)
