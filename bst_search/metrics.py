"""Hierarchical precision, recall and F-score of DCASE 2026 Task 1, vectorised.

Each (prediction, truth) pair scores s = 1 when the codes are equal, lam * 1 / 2 when only
the top level matches, else 0. Per class c, hP_c is the mean s over samples predicted c and
hR_c the mean s over samples whose truth is c; hF_c = 2 hP_c hR_c / (hP_c + hR_c). The macro
means run over the classes present in the ground truth.

Two variants:

* ``official``: bit-for-bit the published ``evaluate.py`` of MTG/dcase2026_task1_baseline,
  where a class that is never predicted raises ZeroDivisionError inside a bare ``except`` and
  is silently dropped from all three means. A model can raise this value by never
  predicting a hard class.
* ``strict``: such a class keeps its hR_c, counts hP_c = 0 and hence hF_c = 0. This is the
  default objective of bst-search because it cannot be gamed that way.

Everything is computed from a 23 x 23 confusion matrix, O(n + 23^2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from bst_search.taxonomy import CODES, INDEX, N_CLASSES, N_TOP, PARENT

Variant = Literal["official", "strict"]
VARIANTS: tuple[str, ...] = ("official", "strict")

_INDEX = dict(INDEX)
_SAME_TOP = PARENT[:, None] == PARENT[None, :]
_EYE = np.eye(N_CLASSES, dtype=bool)


def score_matrix(lam: float = 0.75) -> np.ndarray:
    """S[t, p]: credit of predicting p when the truth is t.

    Written as the official code computes it, ``(w * |p ∩ t|) / |p|`` with |p| = |t| = 2
    (top level and code), so that the floats are identical.
    """
    s = np.zeros((N_CLASSES, N_CLASSES), dtype=np.float64)
    s[_SAME_TOP] = (lam * 1) / 2
    s[_EYE] = (1 * 2) / 2
    return s


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts C[t, p] of truth index t and predicted index p (int64, 23 x 23)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    flat = np.bincount(y_true * N_CLASSES + y_pred, minlength=N_CLASSES * N_CLASSES)
    return flat.reshape(N_CLASSES, N_CLASSES)


def per_class_prf(cm: np.ndarray, lam: float = 0.75) -> dict[str, np.ndarray]:
    """Per-class hP, hR, hF (strict convention) plus the masks the macro means need.

    Returns arrays of length 23: ``hP`` (0 where never predicted), ``hR`` (NaN where absent
    from the truth), ``hF`` (0 where never predicted, NaN where absent), ``present`` (class
    occurs in the truth) and ``predicted`` (class occurs in the predictions).
    """
    cm = np.asarray(cm)
    credit = cm * score_matrix(lam)
    n_pred = cm.sum(axis=0)
    n_true = cm.sum(axis=1)
    present = n_true > 0
    predicted = n_pred > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        hp = np.where(predicted, credit.sum(axis=0) / np.maximum(n_pred, 1), 0.0)
        hr = np.where(present, credit.sum(axis=1) / np.maximum(n_true, 1), np.nan)
        denom = hp + hr
        hf = np.where(denom > 0, 2 * hp * hr / np.where(denom > 0, denom, 1.0), 0.0)
    hf = np.where(present, hf, np.nan)
    return {"hP": hp, "hR": hr, "hF": hf, "present": present, "predicted": predicted}


def prf_from_confusion(cm: np.ndarray, *, lam: float = 0.75,
                       variant: Variant = "official") -> tuple[float, float, float]:
    """Macro hP, hR, hF from a confusion matrix, in the chosen variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown metric variant {variant!r}; expected one of {VARIANTS}")
    pc = per_class_prf(cm, lam)
    keep = pc["present"] & pc["predicted"] if variant == "official" else pc["present"]
    if not keep.any():
        return 0.0, 0.0, 0.0
    return (float(np.mean(pc["hP"][keep])), float(np.mean(pc["hR"][keep])),
            float(np.mean(pc["hF"][keep])))


def _to_indices(codes: Sequence[str] | np.ndarray, what: str) -> np.ndarray:
    idx = np.fromiter((_INDEX.get(c, -1) for c in codes), dtype=np.int64, count=len(codes))
    bad = np.flatnonzero(idx < 0)
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{what}[{i}] = {codes[i]!r} is not one of the 23 BST codes "
                         f"({len(bad)} invalid value(s))")
    return idx


def hierarchical_prf(y_true: Sequence[str], y_pred: Sequence[str], *, lam: float = 0.75,
                     variant: Variant = "official") -> tuple[float, float, float]:
    """Macro hierarchical (hP, hR, hF) in [0, 1] of predicted against true class codes.

    ``variant="official"`` reproduces the published DCASE evaluation code (which reports
    the same values x 100); ``variant="strict"`` counts a never-predicted class as hF = 0.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    cm = confusion_matrix(_to_indices(y_true, "y_true"), _to_indices(y_pred, "y_pred"))
    return prf_from_confusion(cm, lam=lam, variant=variant)


def hf_score(y_true: np.ndarray, y_pred: np.ndarray, *, lam: float = 0.75,
             variant: Variant = "strict") -> float:
    """hF alone, on index arrays: the fast path for early stopping and ensemble selection."""
    return prf_from_confusion(confusion_matrix(y_true, y_pred), lam=lam, variant=variant)[2]


_CHILD_TO_TOP = (PARENT[:, None] == np.arange(N_TOP)[None, :]).astype(np.float64)


def coarse_proba(proba: np.ndarray) -> np.ndarray:
    """(n, 23) class probabilities -> (n, 5) top-level probabilities (sum of children)."""
    return np.asarray(proba, dtype=np.float64) @ _CHILD_TO_TOP


def _top2_hit(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """True where y is among the two highest scores (ties count against the truth)."""
    rows = np.arange(len(y))
    higher = (proba > proba[rows, y][:, None]).sum(axis=1)
    return higher < 2


def evaluate(y_true: np.ndarray, proba: np.ndarray, *, lam: float = 0.75) -> dict[str, float]:
    """All metrics of a (n, 23) probability matrix against true indices.

    Keys: ``hF``, ``hP``, ``hR`` (official), ``hF_strict``, ``hP_strict``, ``hR_strict``,
    ``acc``, ``top_acc``, ``macro_acc``, ``macro_top_acc``, ``top2_acc``, ``top_top2_acc``,
    ``n_never_predicted`` and ``hF_<code>`` per class (strict; NaN for a class absent from
    the truth).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba)
    if proba.ndim != 2 or proba.shape != (len(y_true), N_CLASSES):
        raise ValueError(f"proba must have shape ({len(y_true)}, {N_CLASSES}), got {proba.shape}")
    y_pred = proba.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred)
    pc = per_class_prf(cm, lam)
    hp, hr, hf = prf_from_confusion(cm, lam=lam, variant="official")
    hps, hrs, hfs = prf_from_confusion(cm, lam=lam, variant="strict")
    n_true = cm.sum(axis=1)
    present = n_true > 0
    correct = np.diag(cm)
    top_correct = (cm * _SAME_TOP).sum(axis=1)
    coarse = coarse_proba(proba)
    out: dict[str, float] = {
        "hF": hf, "hP": hp, "hR": hr,
        "hF_strict": hfs, "hP_strict": hps, "hR_strict": hrs,
        "acc": float(correct.sum() / max(len(y_true), 1)),
        "top_acc": float(top_correct.sum() / max(len(y_true), 1)),
        "macro_acc": float(np.mean(correct[present] / n_true[present])) if present.any() else 0.0,
        "macro_top_acc": float(np.mean(top_correct[present] / n_true[present])) if present.any() else 0.0,
        "top2_acc": float(_top2_hit(y_true, proba).mean()) if len(y_true) else 0.0,
        "top_top2_acc": float(_top2_hit(PARENT[y_true], coarse).mean()) if len(y_true) else 0.0,
        "n_never_predicted": float((present & ~pc["predicted"]).sum()),
    }
    for code, v in zip(CODES, pc["hF"], strict=True):
        out[f"hF_{code}"] = float(v)
    return out
