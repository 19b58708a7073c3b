"""Ensemble coordinator: greedy forward selection, exhaustive subsets and SK fusion over one
experiment's trials.

``add_arguments`` + ``execute(args)`` (or ``main(argv)``) are the ``bst-search ensemble``
command; ``add_score_arguments`` + ``score_execute(args)`` (or ``score_main(argv)``) the
``bst-search score`` command. MLflow, matplotlib and torch (SK fusion) are imported only
when a command runs or an SK name is first used.
"""

from __future__ import annotations

from typing import Any

from bst_search.ensemble.cli import add_arguments, execute, main
from bst_search.ensemble.honest import HonestResult, honest_estimate
from bst_search.ensemble.scoring import candidate_stats, combine
from bst_search.ensemble.selection import SelectionOptions, SelectionResult, select_ensemble
from bst_search.ensemble.submission import (
    SubmissionCheckError,
    add_score_arguments,
    score_execute,
    score_main,
    score_submission,
)

_SK_NAMES = ("SKFusion", "SKOptions", "SKResult", "cross_fit_sk")


def __getattr__(name: str) -> Any:
    """SK fusion names, imported on first use so that importing the package needs no torch."""
    if name in _SK_NAMES:
        from bst_search.ensemble import sk_fusion

        return sk_fusion.cross_fit if name == "cross_fit_sk" else getattr(sk_fusion, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HonestResult",
    "SelectionOptions",
    "SKFusion",
    "SKOptions",
    "SKResult",
    "SelectionResult",
    "SubmissionCheckError",
    "add_arguments",
    "add_score_arguments",
    "candidate_stats",
    "combine",
    "cross_fit_sk",
    "execute",
    "honest_estimate",
    "main",
    "score_execute",
    "score_main",
    "score_submission",
    "select_ensemble",
]
