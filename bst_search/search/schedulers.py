"""How a sweep stops poor trials early, on the per-fold results every trial reports.

A scheduler is a ``(metric, mode, n_folds) -> Ray Tune scheduler`` factory registered by name
with :func:`register_scheduler`; ``--scheduler`` and a space's ``scheduler:`` key choose one.
A fold is one Tune training iteration, so the rungs are counted in folds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SchedulerFactory = Callable[[str, str, int], Any]
SCHEDULERS: dict[str, SchedulerFactory] = {}


def register_scheduler(name: str) -> Callable[[SchedulerFactory], SchedulerFactory]:
    """Make a ``(metric, mode, n_folds) -> scheduler`` factory selectable as ``--scheduler name``."""

    def deco(fn: SchedulerFactory) -> SchedulerFactory:
        SCHEDULERS[name] = fn
        return fn

    return deco


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
    if name not in SCHEDULERS:
        raise ValueError(f"--scheduler: unknown {name!r}; one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](metric, mode, n_folds)
