"""Data strategies: which rows, with which weights, train fold k (``data.*``).

Everything here sees only fold k's training part (docs/design.md, "Trial protocol"): the
development rows of the other folds minus the early-stopping validation split, and crowd
rows whose sound ids are not in the development set at all. Teachers and EL2N scores are
fitted on that training part, validated on the fold's validation split, and never see fold
k's held-out rows, so an OOF prediction stays out of fold.

A crowd filter is a small class registered by name in :data:`CROWD_FILTERS` (the value of
``data.crowd``) whose ``select(ctx)`` returns the crowd rows it keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bst_search.data import DataError, Dataset
from bst_search.registry import Registry

CROWD_FILTERS = Registry("data.crowd")
register_crowd_filter = CROWD_FILTERS.register


def confident_rows(cfg: dict[str, Any], ds: Dataset, rows: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """``data.min_confidence`` and ``data.confidence_weighting`` on some training rows of
    ``ds``, development or crowd alike: (kept rows, per-row weights confidence / 5, or None
    when weighting is off). A row whose confidence cell is empty (crowd data may leave it
    empty) is kept at weight 1. A dataset with no confidence at all cannot honour the keys:
    that is an error naming the dataset, not a silent no-op."""
    data_cfg = cfg["data"]
    keys = [f"data.{k}={data_cfg[k]}" for k in ("min_confidence", "confidence_weighting")
            if data_cfg[k]]
    if not keys:
        return rows, None
    if ds.confidence is None or np.isnan(ds.confidence).all():
        raise DataError(f"{ds.root}: {' and '.join(keys)} need annotator confidences, and this "
                        f"dataset has none (no confidence column, or an empty one)")
    if data_cfg["min_confidence"] > 0:
        rows = rows[~(ds.confidence[rows] < data_cfg["min_confidence"])]
    weights = None
    if data_cfg["confidence_weighting"]:
        conf = ds.confidence[rows]
        weights = np.where(np.isnan(conf), 1.0, conf / 5.0)
    return rows, weights


def crowd_candidates(crowd: Dataset, dev: Dataset) -> np.ndarray:
    """Crowd rows eligible at all: those whose sound is not also a development sound, so no
    held-out row can come back into training through the crowd set."""
    return np.flatnonzero(~np.isin(crowd.ids, dev.ids))


# A fit function: (X_train, y_train, sample_weight, max_epochs) -> a model whose
# predictions ``predict(model, X)`` are (n, 23) probabilities. The trial binds the fold's
# validation split, seed and device into it, so filters cannot reach anything else.
FitFn = Callable[[list[np.ndarray], np.ndarray, np.ndarray | None, int | None], Any]
PredictFn = Callable[[Any, list[np.ndarray]], np.ndarray]


@dataclass
class FoldContext:
    """What a crowd filter may use: fold k's training part, the crowd set and a trainer."""

    cfg: dict[str, Any]
    X_train: list[np.ndarray]  # the fold's development training rows, per backbone
    y_train: np.ndarray
    w_train: np.ndarray | None
    crowd: Dataset
    candidates: np.ndarray  # crowd rows eligible (crowd_candidates) and confident enough
    backbones: list[str]
    fit: FitFn
    predict: PredictFn
    log: Callable[[str], None] | None = None
    # data.crowd=pseudo: fold k's soft pseudo-labels per crowd row (NaN: none), from stage-1
    # models that never saw fold k's held-out rows (bst_search.data.pseudo)
    pseudo: np.ndarray | None = None

    def crowd_X(self, rows: np.ndarray) -> list[np.ndarray]:
        return [x[rows] for x in self.crowd.X(self.backbones)]

    def crowd_weights(self, rows: np.ndarray) -> np.ndarray | None:
        """Confidence weights of crowd rows, as the development rows get theirs."""
        return confident_rows(self.cfg, self.crowd, rows)[1]


@register_crowd_filter("none")
class NoCrowd:
    """Development data only."""

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> NoCrowd:
        return cls()

    def select(self, ctx: FoldContext) -> np.ndarray:
        return ctx.candidates[:0]


@register_crowd_filter("all")
class AllCrowd:
    """Every eligible crowd row."""

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> AllCrowd:
        return cls()

    def select(self, ctx: FoldContext) -> np.ndarray:
        return ctx.candidates


@register_crowd_filter("uploader_cap")
class UploaderCap:
    """At most K rows per (uploader, class), in file order (the multi-branch system: K = 200), so that a
    few prolific uploaders' templates do not dominate a class."""

    def __init__(self, cap: int) -> None:
        self.cap = cap

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> UploaderCap:
        return cls(cfg["data"]["crowd_per_uploader"])

    def select(self, ctx: FoldContext) -> np.ndarray:
        rows = ctx.candidates
        if ctx.crowd.uploader is None:
            raise DataError(f"{ctx.crowd.root}: data.crowd=uploader_cap needs the uploader "
                            f"column in the crowd metadata")
        frame = pd.DataFrame({"u": ctx.crowd.uploader[rows], "y": ctx.crowd.y[rows]})
        return rows[(frame.groupby(["u", "y"]).cumcount() < self.cap).to_numpy()]


@register_crowd_filter("teacher")
class TeacherAgreement:
    """Keep crowd rows whose label is the teacher's top prediction (the multi-branch system). The teacher is
    the trial's own model trained on the fold's development training part."""

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TeacherAgreement:
        return cls()

    def select(self, ctx: FoldContext) -> np.ndarray:
        rows = ctx.candidates
        teacher = ctx.fit(ctx.X_train, ctx.y_train, ctx.w_train, None)
        agree = ctx.predict(teacher, ctx.crowd_X(rows)).argmax(axis=1) == ctx.crowd.y[rows]
        ctx.log and ctx.log(f"  teacher keeps {agree.sum()}/{len(rows)} crowd rows")
        return rows[agree]


@register_crowd_filter("el2n")
class EL2N:
    """Drop the hardest ``data.el2n_drop`` fraction of crowd rows by EL2N score (MESH):
    ||softmax - onehot||_2 after ``data.el2n_epochs`` epochs on development + crowd rows."""

    def __init__(self, epochs: int, drop: float) -> None:
        self.epochs, self.drop = epochs, drop

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> EL2N:
        return cls(cfg["data"]["el2n_epochs"], cfg["data"]["el2n_drop"])

    def select(self, ctx: FoldContext) -> np.ndarray:
        rows = ctx.candidates
        Xc = ctx.crowd_X(rows)
        X = [np.concatenate([a, c]) for a, c in zip(ctx.X_train, Xc, strict=True)]
        y = np.concatenate([ctx.y_train, ctx.crowd.y[rows]])
        w = None if ctx.w_train is None else np.concatenate([ctx.w_train, ctx.crowd_weights(rows)])
        model = ctx.fit(X, y, w, self.epochs)
        p = ctx.predict(model, Xc)
        p[np.arange(len(rows)), ctx.crowd.y[rows]] -= 1.0
        score = np.linalg.norm(p, axis=1)
        n_keep = len(rows) - int(round(self.drop * len(rows)))
        keep = np.sort(np.argsort(score, kind="stable")[:n_keep])
        ctx.log and ctx.log(f"  el2n keeps {n_keep}/{len(rows)} crowd rows")
        return rows[keep]


@register_crowd_filter("pseudo")
class PseudoLabelled:
    """Every eligible crowd row that has a pseudo-label for this fold whose top probability
    reaches ``data.pseudo_min_p`` (the winning system's stage 2 keeps them all)."""

    def __init__(self, min_p: float) -> None:
        self.min_p = min_p

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> PseudoLabelled:
        return cls(cfg["data"]["pseudo_min_p"])

    def select(self, ctx: FoldContext) -> np.ndarray:
        if ctx.pseudo is None:
            raise DataError("data.crowd=pseudo needs pseudo-labels (data.pseudo_dir); the trial "
                            "gave none")
        rows = ctx.candidates
        q = ctx.pseudo[rows]
        labelled = np.isfinite(q).all(axis=1)
        keep = labelled & (np.nan_to_num(q).max(axis=1) >= self.min_p)
        ctx.log and ctx.log(f"  pseudo-labels: {int(labelled.sum())}/{len(rows)} crowd rows "
                            f"labelled, {int(keep.sum())} kept (top p >= {self.min_p:g})")
        return rows[keep]


def crowd_targets(ctx: FoldContext, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(class index, label distribution or None) of the chosen crowd rows. With pseudo-labels
    the distribution is lambda q + (1 - lambda) onehot(crowd label), ``data.pseudo_lambda``
    = lambda (1 ignores the crowd's own label), and the index its argmax; otherwise the crowd
    label alone."""
    if ctx.pseudo is None:
        return ctx.crowd.y[rows], None
    lam = float(ctx.cfg["data"]["pseudo_lambda"])
    q = ctx.pseudo[rows].astype(np.float32)
    if lam < 1:
        if ctx.crowd.y is None:
            raise DataError(f"{ctx.crowd.root}: data.pseudo_lambda={lam:g} mixes in the crowd's own "
                            f"labels, and this crowd set has none (use 1)")
        q = lam * q + (1 - lam) * np.eye(q.shape[1], dtype=np.float32)[ctx.crowd.y[rows]]
    return q.argmax(axis=1), q


class _Combined:
    """Two filters' selections combined (MESH's union and intersection filtering)."""

    combine: Callable[[np.ndarray, np.ndarray], np.ndarray]

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> _Combined:
        d = cfg["data"]
        return cls(CROWD_FILTERS.lookup(d["crowd_a"]).from_config(cfg),
                   CROWD_FILTERS.lookup(d["crowd_b"]).from_config(cfg))

    def select(self, ctx: FoldContext) -> np.ndarray:
        return self.combine(self.a.select(ctx), self.b.select(ctx))


@register_crowd_filter("union")
class Union(_Combined):
    """Rows kept by at least one of ``data.crowd_a`` and ``data.crowd_b``."""

    combine = staticmethod(np.union1d)


@register_crowd_filter("intersection")
class Intersection(_Combined):
    """Rows kept by both ``data.crowd_a`` and ``data.crowd_b``."""

    combine = staticmethod(np.intersect1d)


def select_crowd(cfg: dict[str, Any], ctx: FoldContext) -> np.ndarray:
    """The crowd rows ``data.crowd`` keeps for this fold (sorted crowd row indices)."""
    return np.sort(CROWD_FILTERS.lookup(cfg["data"]["crowd"]).from_config(cfg).select(ctx))
