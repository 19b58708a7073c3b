"""The holdout (``search --holdout-fraction``): development sounds no trial and no selection saw.

Every trial's fold models predicted them (``holdout.parquet``, one block per fold model).
The coordinator applies its final ensembles to them once, with two recipes side by side:
the members' fold models averaged (what the submission does with the evaluation set: the
end-to-end estimate) and one fold model per member (how every OOF row was predicted, so the
gap between the two is what the honest estimate cannot see). Nothing is chosen here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bst_search.ensemble.selection import combine, score_pred, to_combine_space
from bst_search.taxonomy import N_CLASSES

if TYPE_CHECKING:
    from bst_search.ensemble.candidates import CandidateSet
    from bst_search.ensemble.outcome import Outcome


def _member_blocks(cs: CandidateSet, members: np.ndarray) -> np.ndarray:
    """(members, fold models, holdout rows, 23) probabilities of the given candidates."""
    H = cs.holdout_store.take(cs.store_index(members))
    return H.reshape(len(members), len(cs.holdout_folds), len(cs.holdout_ids), N_CLASSES)


class SKInput:
    """Evaluation rows, then the holdout's, for SK fusion's fusers; read for a pool at a time.

    Rows: the evaluation set (M, already in the combine space), the holdout with each
    candidate's fold models averaged (H), then the holdout under each fold model (F x H).
    :func:`~bst_search.ensemble.sk_fusion.cross_fit` indexes it by its pools only, so the
    holdout of the whole working set is never held at once.
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

    def split(self, fused: np.ndarray) -> tuple[np.ndarray | None, tuple[np.ndarray, list[np.ndarray]]]:
        """Fused rows -> (evaluation part or None, (holdout averaged, [holdout per fold model]))."""
        ev = fused[:self.m] if self.E is not None else None
        hold = fused[self.m:]
        blocks = [hold[i * self.h:(i + 1) * self.h] for i in range(1 + self.f)]
        return ev, (blocks[0], blocks[1:])


def _scored(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    pred = proba.argmax(axis=1)
    return {"hF_strict": score_pred(y, pred, "strict"), "hF": score_pred(y, pred, "official")}


def _recipes(y: np.ndarray, averaged: np.ndarray, per_model: list[np.ndarray]) -> dict[str, Any]:
    one = [_scored(y, p) for p in per_model]
    return {"fold_models_averaged": _scored(y, averaged), "one_fold_model": one,
            "one_fold_model_mean": {m: float(np.mean([o[m] for o in one]))
                                    for m in ("hF_strict", "hF")}}


def score_holdout(res: Outcome, sk_holdout: tuple[np.ndarray, list[np.ndarray]] | None = None
                  ) -> dict[str, Any] | None:
    """Greedy ensemble, SK fusion (when its fusers fused the holdout) and the best single
    trial on the holdout, under both recipes; None without a holdout."""
    cs, opts = res.cs, res.opts
    if cs.holdout_store is None or cs.holdout_labels is None:
        return None
    y = cs.holdout_labels

    def weighted(members: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
        H = _member_blocks(cs, members)

        def ens(P: np.ndarray) -> np.ndarray:
            Z = to_combine_space(np.ascontiguousarray(P, dtype=np.float32), opts.combine)
            return combine(Z, weights, None, opts.combine)

        return _recipes(y, ens(H.mean(axis=1)), [ens(H[:, k]) for k in range(H.shape[1])])

    greedy = np.flatnonzero(res.sel.weights > 0)
    best = res.best
    out: dict[str, Any] = {
        "n": int(len(y)), "fold_models": cs.holdout_folds, "submitted": res.method,
        "greedy": weighted(greedy, res.sel.weights[greedy]),
        "best_single": {"run_id": cs.infos[best].run_id, "trial_id": cs.infos[best].trial_id,
                        **weighted(np.array([best]), np.ones(1))}}
    if sk_holdout is not None:
        out["sk"] = _recipes(y, *sk_holdout)
    return out
