"""How a sweep stops poor trials early, on the per-fold results every trial reports.

A scheduler is a ``(metric, mode, n_folds) -> Ray Tune scheduler`` factory registered by name
with :func:`register_scheduler`; ``--scheduler`` and a space's ``scheduler:`` key choose one.
A fold is one Tune training iteration, so the rungs are counted in folds.
"""

from __future__ import annotations

from typing import Any

from bst_search.registry import Options

SCHEDULERS = Options("--scheduler")  # name -> (metric, mode, n_folds) -> Tune scheduler
register_scheduler = SCHEDULERS.register


@register_scheduler("asha")
def _asha(metric: str, mode: str, n_folds: int) -> Any:
    """Asynchronous successive halving: at 2, 4, ... folds, the worse half stops."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(metric=metric, mode=mode, time_attr="training_iteration",
                         max_t=n_folds, grace_period=min(2, n_folds), reduction_factor=2)


@register_scheduler("median")
def _median(metric: str, mode: str, n_folds: int) -> Any:
    """The median stopping rule: a trial worse than the median of others at the same fold stops."""
    from ray.tune.schedulers import MedianStoppingRule

    return MedianStoppingRule(metric=metric, mode=mode, time_attr="training_iteration",
                              grace_period=min(2, n_folds), min_samples_required=3)


@register_scheduler("none")
def _fifo(metric: str, mode: str, n_folds: int) -> Any:
    """Every trial runs all its folds."""
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def make_scheduler(name: str, metric: str, mode: str, n_folds: int) -> Any:
    """The Tune scheduler ``--scheduler name`` for an objective and a fold count."""
    return SCHEDULERS.build(name, metric, mode, n_folds)
