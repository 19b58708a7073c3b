"""What the coordinator computed for one experiment: the object ``ensemble.json``, the
holdout scores and the printed summary are all read from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bst_search.ensemble.candidates import CandidateSet
from bst_search.ensemble.honest import HonestResult
from bst_search.ensemble.methods import (
    ExhaustiveFit,
    ExhaustiveSubsets,
    GreedyFit,
    GreedySelection,
    MethodFit,
    SKFit,
    SKFusionMethod,
)
from bst_search.ensemble.selection import SelectionOptions, SelectionResult

if TYPE_CHECKING:  # torch is imported only when SK fusion runs
    from bst_search.ensemble.sk_fusion import SKResult


@dataclass
class Outcome:
    """Everything the coordinator computed; what ensemble.json and the summary are made of."""

    cs: CandidateSet
    opts: SelectionOptions
    method: str  # the submitted method
    fits: dict[str, MethodFit]  # every method that ran, in registration order
    scores: dict[str, dict[str, float]]  # evaluate() of each fit's OOF probabilities
    per_fold: dict[str, list[float]]  # each fit's strict hF per OOF fold
    single_strict: np.ndarray
    single_official: np.ndarray
    best_per_fold: list[float]  # best single trial, strict hF per OOF fold
    notes: list[str] = field(default_factory=list)  # the methods that did not run, and why
    holdout: dict[str, Any] | None = None  # score_holdout's result

    # the submitted method's fit: what the parquets, the submission and the members are

    @property
    def submitted(self) -> MethodFit:
        return self.fits[self.method]

    @property
    def proba(self) -> np.ndarray:
        return self.submitted.oof

    @property
    def ens(self) -> dict[str, float]:
        return self.scores[self.method]

    @property
    def members(self) -> np.ndarray:  # heaviest first
        return self.submitted.members

    @property
    def counts(self) -> np.ndarray:
        return self.submitted.counts

    @property
    def weights(self) -> np.ndarray:
        return self.submitted.weights

    # greedy selection, which always runs: the curve, the honest estimate, "selected"

    @property
    def greedy(self) -> GreedyFit:
        fit = self.fits[GreedySelection.name]
        assert isinstance(fit, GreedyFit), fit
        return fit

    @property
    def sel(self) -> SelectionResult:
        return self.greedy.sel

    @property
    def hon(self) -> HonestResult | None:
        return self.greedy.hon

    @property
    def greedy_ens(self) -> dict[str, float]:
        return self.scores[GreedySelection.name]

    @property
    def selected_per_fold(self) -> list[float]:
        """The greedy ensemble on the rows it was chosen on, strict hF per fold."""
        return self.per_fold[GreedySelection.name]

    # SK fusion, when it ran

    @property
    def sk_fit(self) -> SKFit | None:
        fit = self.fits.get(SKFusionMethod.name)
        return fit if isinstance(fit, SKFit) else None

    @property
    def sk(self) -> SKResult | None:
        return self.sk_fit.sk if self.sk_fit is not None else None

    @property
    def sk_ens(self) -> dict[str, float] | None:
        return self.scores.get(SKFusionMethod.name)

    # exhaustive subset selection, when it ran

    @property
    def exhaustive(self) -> ExhaustiveFit | None:
        fit = self.fits.get(ExhaustiveSubsets.name)
        return fit if isinstance(fit, ExhaustiveFit) else None

    @property
    def exhaustive_ens(self) -> dict[str, float] | None:
        return self.scores.get(ExhaustiveSubsets.name)

    # the best single candidate

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
