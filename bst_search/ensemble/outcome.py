"""What the coordinator computed for one experiment: the object ``ensemble.json``, the
holdout scores and the printed summary are all read from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bst_search.ensemble.candidates import CandidateSet
from bst_search.ensemble.honest import HonestResult
from bst_search.ensemble.selection import SelectionOptions, SelectionResult

if TYPE_CHECKING:  # torch is imported only when the coordinator runs
    from bst_search.ensemble.sk_fusion import SKOptions, SKResult


@dataclass
class Outcome:
    """Everything the coordinator computed; what ensemble.json and the summary are made of."""

    cs: CandidateSet
    opts: SelectionOptions
    sk_opts: SKOptions
    method: str
    sel: SelectionResult
    hon: HonestResult | None
    sk: SKResult | None
    single_strict: np.ndarray
    single_official: np.ndarray
    greedy_ens: dict[str, float]
    sk_ens: dict[str, float] | None
    proba: np.ndarray  # the submitted method's OOF probabilities
    ens: dict[str, float]  # ... and their scores
    members: np.ndarray  # the submitted method's members, heaviest first
    counts: np.ndarray
    weights: np.ndarray
    best_per_fold: list[float]  # best single trial, strict hF per OOF fold
    selected_per_fold: list[float]  # greedy ensemble on the rows it was chosen on, strict, per fold
    sk_notes: list[str] = field(default_factory=list)
    holdout: dict[str, Any] | None = None  # score_holdout's result

    @property
    def singles(self) -> np.ndarray:
        return self.single_strict if self.opts.metric == "strict" else self.single_official

    @property
    def best(self) -> int:
        return int(np.argmax(self.singles))

    @property
    def selected(self) -> float:
        g = self.greedy_ens
        return float(g["hF_strict"] if self.opts.metric == "strict" else g["hF"])
