"""How a sweep proposes trials: the Optuna sampler behind ``--sampler``.

A sampler is a ``(seed, concurrency) -> optuna sampler`` factory registered by name with
:func:`register_sampler`. TPE runs with the constant liar: a trial still running counts as a
bad result, so K trials asked at once do not all land on the same promising point, and its
random start-up phase is scaled to the concurrency (:func:`startup_trials`).
"""

from __future__ import annotations

from typing import Any

from bst_search.registry import Options

MIN_STARTUP = 10  # Optuna's default number of random trials before TPE models anything

SAMPLERS = Options("--sampler")  # name -> (seed, concurrency) -> optuna sampler
register_sampler = SAMPLERS.register


def startup_trials(concurrency: int) -> int:
    """Random trials before a model-based sampler fits anything: twice the concurrency, at
    least Optuna's 10. With K trials in flight, the trial that ends the start-up phase is
    asked when about K trials have finished, so the first model sees as many real results
    as with 10 sequential start-up trials, not K liars and a handful of results."""
    return max(MIN_STARTUP, 2 * max(1, concurrency))


@register_sampler("tpe")
def _tpe(seed: int, concurrency: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=startup_trials(concurrency))


@register_sampler("random")
def _random(seed: int, concurrency: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@register_sampler("gp")
def _gp(seed: int, concurrency: int) -> Any:
    """Gaussian-process Bayesian optimisation (Optuna's GPSampler, log EI); parameters
    outside the space every trial shares (conditional ones) are sampled at random."""
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(concurrency),
                                     warn_independent_sampling=False)


def make_sampler(name: str, seed: int, concurrency: int) -> Any:
    """The Optuna sampler ``--sampler name`` for a sweep running ``concurrency`` trials at once."""
    return SAMPLERS.build(name, seed, concurrency)
