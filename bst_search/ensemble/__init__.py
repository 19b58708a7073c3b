"""Ensemble coordinator: greedy forward selection over the trials of one experiment.

``add_arguments`` + ``execute(args)`` (or ``main(argv)``) are the ``bst-search ensemble``
command; ``add_score_arguments`` + ``score_execute(args)`` (or ``score_main(argv)``) the
``bst-search score`` command. MLflow and matplotlib are imported only when a command runs.
"""

from __future__ import annotations

from bst_search.ensemble.cli import add_arguments, execute, main
from bst_search.ensemble.honest import HonestResult, honest_estimate
from bst_search.ensemble.selection import (
    SelectionOptions,
    SelectionResult,
    candidate_stats,
    combine,
    select_ensemble,
)
from bst_search.ensemble.submission import (
    SubmissionCheckError,
    add_score_arguments,
    score_execute,
    score_main,
    score_submission,
)

__all__ = [
    "HonestResult",
    "SelectionOptions",
    "SelectionResult",
    "SubmissionCheckError",
    "add_arguments",
    "add_score_arguments",
    "candidate_stats",
    "combine",
    "execute",
    "honest_estimate",
    "main",
    "score_execute",
    "score_main",
    "score_submission",
    "select_ensemble",
]
