"""The holdout (``search --holdout-fraction``): development sounds no trial and no selection saw.

Every trial's fold models predicted them (``holdout.parquet``, one block per fold model).
The coordinator applies each method's final ensemble to them once, with two recipes side by
side: the members' fold models averaged (what the submission does with the evaluation set:
the end-to-end estimate) and one fold model per member (how every OOF row was predicted, so
the gap between the two is what the honest estimate cannot see). Nothing is chosen here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bst_search.ensemble.methods import DEFAULT_METHOD
from bst_search.ensemble.scoring import combine, score_pred, to_combine_space
from bst_search.taxonomy import N_CLASSES

if TYPE_CHECKING:
    from bst_search.ensemble.candidates import CandidateSet
    from bst_search.ensemble.outcome import Outcome

# one method's holdout predictions: (fold models averaged, [under each fold model])
HoldoutPredictions = tuple[np.ndarray, list[np.ndarray]]


def _member_blocks(cs: CandidateSet, members: np.ndarray) -> np.ndarray:
    """(members, fold models, holdout rows, 23) probabilities of the given candidates."""
    H = cs.holdout_store.take(cs.store_index(members))
    return H.reshape(len(members), len(cs.holdout_folds), len(cs.holdout_ids), N_CLASSES)


class EvalWithHoldout:
    """Evaluation rows, then the holdout's, as one candidate matrix; read a pool at a time.

    Rows: the evaluation set (M, already in the combine space), the holdout with each
    candidate's fold models averaged (H), then the holdout under each fold model (F x H).
    A method's ``predict`` reads it through ``rows[pool]`` for its members only, so the
    holdout of the whole working set is never held at once, and every method predicts the
    evaluation and holdout rows in one call (:meth:`split` takes them apart).
    """

    ndim = 3

    def __init__(self, cs: CandidateSet, E: np.ndarray | None, combine_mode: str) -> None:
        self.cs, self.E, self.combine = cs, E, combine_mode
        self.m = 0 if E is None else E.shape[1]
        self.h, self.f = len(cs.holdout_ids), len(cs.holdout_folds)
        self.shape = (len(cs.infos), self.m + (1 + self.f) * self.h, N_CLASSES)

    def __getitem__(self, pool: np.ndarray) -> np.ndarray:
        H = _member_blocks(self.cs, pool)
        rows = np.concatenate([H.mean(axis=1), *(H[:, k] for k in range(self.f))], axis=1)
        rows = to_combine_space(np.ascontiguousarray(rows, dtype=np.float32), self.combine)
        return rows if self.E is None else np.concatenate([self.E[pool], rows], axis=1)

    def split(self, fused: np.ndarray) -> tuple[np.ndarray | None, HoldoutPredictions]:
        """Fused rows -> (evaluation part or None, (holdout averaged, [holdout per fold model]))."""
        ev = fused[:self.m] if self.E is not None else None
        hold = fused[self.m:]
        blocks = [hold[i * self.h:(i + 1) * self.h] for i in range(1 + self.f)]
        return ev, (blocks[0], blocks[1:])


def rows_to_predict(cs: CandidateSet, E: np.ndarray | None,
                    combine_mode: str) -> np.ndarray | EvalWithHoldout | None:
    """What every fitted method predicts: the evaluation rows, and the holdout's when there
    is one (None: neither)."""
    return EvalWithHoldout(cs, E, combine_mode) if cs.holdout_store is not None else E


def split_predictions(rows: np.ndarray | EvalWithHoldout, fused: np.ndarray
                      ) -> tuple[np.ndarray | None, HoldoutPredictions | None]:
    """A method's predictions of :func:`rows_to_predict` -> (evaluation part, holdout part)."""
    if isinstance(rows, EvalWithHoldout):
        return rows.split(fused)
    return fused, None


def _scored(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    pred = proba.argmax(axis=1)
    return {"hF_strict": score_pred(y, pred, "strict"), "hF": score_pred(y, pred, "official")}


def _recipes(y: np.ndarray, averaged: np.ndarray, per_model: list[np.ndarray]) -> dict[str, Any]:
    one = [_scored(y, p) for p in per_model]
    return {"fold_models_averaged": _scored(y, averaged), "one_fold_model": one,
            "one_fold_model_mean": {m: float(np.mean([o[m] for o in one]))
                                    for m in ("hF_strict", "hF")}}


def _weighted(P: np.ndarray, weights: np.ndarray, combine_mode: str) -> np.ndarray:
    """The ensemble of (members, rows, 23) probabilities with the members' weights."""
    Z = to_combine_space(np.ascontiguousarray(P, dtype=np.float32), combine_mode)
    return combine(Z, weights, None, combine_mode)


def _single_recipes(cs: CandidateSet, y: np.ndarray, best: int, combine_mode: str
                    ) -> dict[str, Any]:
    """The best single trial under both recipes: its fold models averaged, and each alone."""
    H = _member_blocks(cs, np.array([best]))
    one = np.ones(1)
    return _recipes(y, _weighted(H.mean(axis=1), one, combine_mode),
                    [_weighted(H[:, k], one, combine_mode) for k in range(H.shape[1])])


def score_holdout(res: Outcome) -> dict[str, Any] | None:
    """Every method that predicted the holdout and the best single trial, under both
    recipes; None without a holdout."""
    cs = res.cs
    if cs.holdout_store is None or cs.holdout_labels is None:
        return None
    y = cs.holdout_labels
    scored = {name: _recipes(y, *fit.holdout) for name, fit in res.fits.items()
              if fit.holdout is not None}
    best = res.best
    best_single = {"run_id": cs.infos[best].run_id, "trial_id": cs.infos[best].trial_id,
                   **_single_recipes(cs, y, best, res.opts.combine)}
    # ensemble.json's order: the default method, the best single trial it is measured
    # against, then the other methods
    default = {DEFAULT_METHOD: scored.pop(DEFAULT_METHOD)}
    return {"n": int(len(y)), "fold_models": cs.holdout_folds, "submitted": res.method,
            **default, "best_single": best_single, **scored}
