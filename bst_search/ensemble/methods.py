"""Ensemble methods behind one small interface, registered by name: the ``--method`` choices.

The coordinator (:func:`bst_search.ensemble.run.score_candidates`) fits every registered
method on the working set's OOF matrix, scores each fit, lets each predict the evaluation
(and holdout) rows, and submits the one ``--method`` names, so the summary compares them
whichever is submitted. A method is one class:

- :meth:`EnsembleMethod.fit`: the OOF candidate matrix -> a :class:`MethodFit`: its OOF
  probabilities (scored), members, counts and weights (listed in ensemble.json);
- :meth:`EnsembleMethod.predict`: the fitted ensemble applied to other rows of the same
  candidates (the evaluation set, the holdout);

decorated with :func:`register_method`. Greedy selection is the default and the one the
report is built around (its curve, its honest estimate): it always runs. Exhaustive subset
selection (:mod:`~bst_search.ensemble.exhaustive`) is cheap by construction (793 subsets at
its defaults), so it runs beside it every time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np

from bst_search.ensemble.exhaustive import (
    ExhaustiveOptions,
    ExhaustiveResult,
    exhaustive_honest,
    exhaustive_select,
)
from bst_search.ensemble.honest import HonestResult, honest_estimate
from bst_search.ensemble.scoring import CandidateMatrix, CandidateStats, combine
from bst_search.ensemble.selection import SelectionOptions, SelectionResult, select_ensemble

if TYPE_CHECKING:
    import argparse

    from bst_search.ensemble.holdout import HoldoutPredictions
    from bst_search.ensemble.sk_fusion import SKOptions, SKResult  # torch: imported on use

DEFAULT_METHOD = "greedy"
METHODS: dict[str, type[EnsembleMethod]] = {}  # name -> class, in registration order

_M = TypeVar("_M", bound="EnsembleMethod")


def register_method(cls: type[_M]) -> type[_M]:
    """Class decorator: make the method selectable as ``--method <cls.name>``."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"ensemble method {cls.name!r} is already registered by "
                         f"{METHODS[cls.name].__qualname__}")
    METHODS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class MethodInput:
    """What every method is fitted on: the working set's OOF matrix and its rows' facts."""

    X: np.ndarray  # (C, N, 23) float32, in the combine space
    y: np.ndarray  # (N,) class indices
    folds: np.ndarray  # (N,) the OOF fold of each row
    stats: CandidateStats  # one pass over X, shared by every method
    combine: str  # the space X is in: "prob" or "logit"

    @property
    def n_folds(self) -> int:
        return int(np.unique(self.folds).size)


@dataclass(kw_only=True)
class MethodFit:
    """A fitted ensemble: what is scored, listed in ensemble.json and, if chosen, submitted."""

    oof: np.ndarray  # (N, 23) float64 OOF probabilities
    members: np.ndarray  # candidates the ensemble uses, heaviest first
    counts: np.ndarray  # (C,) int; what a count means is the method's members_meaning
    weights: np.ndarray  # (C,) float64
    # set by the coordinator from predict: the evaluation rows and the holdout recipes
    eval_proba: np.ndarray | None = None
    holdout: HoldoutPredictions | None = None


class EnsembleMethod(ABC):
    """One way to make an ensemble of the candidates; see the module docstring."""

    name: ClassVar[str]
    # what ensemble.json and the summary say about the submitted fit
    estimate: ClassVar[str]  # how far its OOF score can be trusted
    members_meaning: ClassVar[str]  # what a member's count and weight are
    member_note: ClassVar[str] = ""  # printed after "submitted method: <name>"

    @classmethod
    @abstractmethod
    def from_args(cls, args: argparse.Namespace, opts: SelectionOptions) -> EnsembleMethod:
        """The method with its options from the command line; a bad option fails here,
        before any candidate is loaded."""

    def params(self) -> dict[str, str]:
        """MLflow params of the ensemble run beside the ``ensemble.*`` selection options."""
        return {}

    def skip_reason(self, data: MethodInput) -> str | None:
        """Why the method cannot run on ``data``, noted when it is not the one submitted
        (the submitted one runs and fails loudly)."""
        return None

    @abstractmethod
    def fit(self, data: MethodInput) -> MethodFit:
        """The ensemble of the OOF matrix, and its OOF probabilities."""

    @abstractmethod
    def predict(self, fit: MethodFit, rows: CandidateMatrix) -> np.ndarray:
        """(n, 23) float64 probabilities of the fitted ensemble on (C, n, 23) other rows."""


# ---------------------------------------------------------------------------------------
# the methods


@dataclass(kw_only=True)
class HonestFit(MethodFit):
    """A fit chosen on the OOF rows it is scored on, so it carries the nested-CV estimate of
    its whole choice (greedy's, exhaustive's)."""

    hon: HonestResult | None  # None with --no-honest


@dataclass(kw_only=True)
class GreedyFit(HonestFit):
    sel: SelectionResult


@register_method
class GreedySelection(EnsembleMethod):
    """Greedy forward selection (:mod:`~bst_search.ensemble.selection`), with the honest
    nested-CV estimate of the whole procedure."""

    name = DEFAULT_METHOD
    estimate = "optimistic (chosen on these rows); see honest"
    members_meaning = "count = greedy picks, weight = ensemble weight"

    def __init__(self, options: SelectionOptions, *, honest: bool = True) -> None:
        self.options, self.honest = options, honest

    @classmethod
    def from_args(cls, args: argparse.Namespace, opts: SelectionOptions) -> GreedySelection:
        return cls(opts, honest=not args.no_honest)

    def fit(self, data: MethodInput) -> GreedyFit:
        opts = self.options
        sel = select_ensemble(data.X, data.y, options=opts, stats=data.stats)
        hon = (honest_estimate(data.X, data.y, data.folds, opts, stats=data.stats)
               if self.honest else None)
        members = np.flatnonzero(sel.weights > 0)
        members = members[np.lexsort((members, -sel.weights[members]))]
        return GreedyFit(oof=combine(data.X, sel.weights, None, opts.combine), members=members,
                         counts=sel.counts, weights=sel.weights, sel=sel, hon=hon)

    def predict(self, fit: MethodFit, rows: CandidateMatrix) -> np.ndarray:
        # only the members' rows are read, in index order: the same sums as over all
        used = np.flatnonzero(fit.weights > 0)
        return combine(rows[used], fit.weights[used], None, self.options.combine)


@dataclass(kw_only=True)
class SKFit(MethodFit):
    sk: SKResult


@register_method
class SKFusionMethod(EnsembleMethod):
    """Cross-fitted selective-kernel fusion of the top candidates (MESH,
    :mod:`~bst_search.ensemble.sk_fusion`); torch is imported only when it is built."""

    name = "sk"
    estimate = "out-of-fold (cross-fitted)"
    members_meaning = ("count = cross-fit fusers using the candidate, weight = its mean "
                       "attention on the OOF rows")
    member_note = " (weight = mean SK attention on the OOF rows, count = fusers using it)"

    def __init__(self, options: SKOptions) -> None:
        self.options = options

    @classmethod
    def from_args(cls, args: argparse.Namespace, opts: SelectionOptions) -> SKFusionMethod:
        from bst_search.ensemble.sk_fusion import SKOptions, pick_device

        options = SKOptions(top=getattr(args, "sk_top", 10), epochs=getattr(args, "sk_epochs", 30),
                            seed=args.seed, metric=args.metric,
                            device=getattr(args, "sk_device", "auto"))
        pick_device(options.device)  # a bad --sk-device fails here
        return cls(options)

    def params(self) -> dict[str, str]:
        return {f"ensemble.sk_{k}": str(v) for k, v in self.options.to_dict().items()
                if k not in ("metric", "seed")}  # both already under ensemble.*

    def skip_reason(self, data: MethodInput) -> str | None:
        if data.n_folds >= 2:
            return None
        return (f"SK fusion not scored: cross-fitting needs 2 or more OOF folds, "
                f"got {data.n_folds}")

    def fit(self, data: MethodInput) -> SKFit:
        from bst_search.ensemble.sk_fusion import cross_fit

        sk = cross_fit(data.X, data.y, data.folds, self.options,
                       log_input=data.combine == "logit", stats=data.stats)
        return SKFit(oof=sk.oof, members=sk.members, counts=sk.uses, weights=sk.weight, sk=sk)

    def predict(self, fit: MethodFit, rows: CandidateMatrix) -> np.ndarray:
        assert isinstance(fit, SKFit), fit
        return fit.sk.predict(rows)


@dataclass(kw_only=True)
class ExhaustiveFit(HonestFit):
    sel: ExhaustiveResult


@register_method
class ExhaustiveSubsets(EnsembleMethod):
    """Every equal-weight subset of up to ``--exhaustive-max-size`` of the
    ``--exhaustive-top`` best candidates, the best by the metric kept, with the same honest
    nested-CV estimate as greedy's."""

    name = "exhaustive"
    estimate = "optimistic (chosen on these rows); see its honest estimate"
    members_meaning = "count = 1 per member of the best subset, weight = 1 / its size"
    member_note = " (the best equal-weight subset: weight = 1 / its size)"

    def __init__(self, options: ExhaustiveOptions, *, honest: bool = True) -> None:
        self.options, self.honest = options, honest

    @classmethod
    def from_args(cls, args: argparse.Namespace, opts: SelectionOptions) -> ExhaustiveSubsets:
        options = ExhaustiveOptions(top=getattr(args, "exhaustive_top", 12),
                                    max_size=getattr(args, "exhaustive_max_size", 4),
                                    metric=opts.metric, combine=opts.combine)
        return cls(options, honest=not getattr(args, "no_honest", False))

    def params(self) -> dict[str, str]:
        return {"ensemble.exhaustive_top": str(self.options.top),
                "ensemble.exhaustive_max_size": str(self.options.max_size)}

    def fit(self, data: MethodInput) -> ExhaustiveFit:
        opts, C = self.options, data.X.shape[0]
        sel = exhaustive_select(data.X, data.y, options=opts, stats=data.stats)
        hon = (exhaustive_honest(data.X, data.y, data.folds, opts, stats=data.stats)
               if self.honest else None)
        counts = sel.counts(C)
        return ExhaustiveFit(oof=combine(data.X, counts.astype(np.float64), None, opts.combine),
                             members=sel.members, counts=counts, weights=sel.weights(C),
                             sel=sel, hon=hon)

    def predict(self, fit: MethodFit, rows: CandidateMatrix) -> np.ndarray:
        used = np.asarray(fit.members)  # ascending: the search's order of summation
        return combine(rows[used], np.ones(len(used)), None, self.options.combine)
