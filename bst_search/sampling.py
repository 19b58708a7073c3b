"""How a sweep proposes trials: the Optuna sampler, valid-only suggestions and warm starts.

* :func:`make_sampler` builds the sampler named by ``--sampler`` (registered in
  :data:`SAMPLERS`). TPE runs with the constant liar: a trial still running counts as a
  bad result, so K trials asked at once do not all land on the same promising point, and
  its random start-up phase is scaled to the concurrency (:func:`startup_trials`).
* :class:`ValidOptunaSearch` is Ray Tune's ``OptunaSearch`` that never hands Tune a
  combination breaking a configuration rule: the space's define-by-run function raises
  :class:`~bst_search.search_space.InvalidSample`, the Optuna trial is told FAIL with the
  rule's message (user attribute ``bst.invalid``) and Optuna is asked again.
* :func:`warm_start_points` picks the best configurations of an earlier experiment, as
  Optuna params of the new space, for ``OptunaSearch(points_to_evaluate=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from bst_search import config, tracking
from bst_search.search_space import SUBSET_SEP, InvalidSample, SearchSpace, SpaceError

# consecutive rejected samples for one trial before the sweep gives up on the space
MAX_REJECTS = 500
MIN_STARTUP = 10  # Optuna's default number of random trials before TPE models anything

SAMPLERS: dict[str, Callable[[int, int], Any]] = {}


def register_sampler(name: str) -> Callable[[Callable[[int, int], Any]], Callable[[int, int], Any]]:
    """Make a ``(seed, concurrency) -> optuna sampler`` factory selectable as ``--sampler name``."""

    def deco(fn: Callable[[int, int], Any]) -> Callable[[int, int], Any]:
        SAMPLERS[name] = fn
        return fn

    return deco


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
    if name not in SAMPLERS:
        raise ValueError(f"--sampler: unknown {name!r}; one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed, concurrency)


def concurrency_of(requested: int | None, cpu: float, gpu: float) -> int:
    """Trials at once: ``--concurrency`` if given, else what the Ray cluster's resources allow."""
    if requested:
        return int(requested)
    import ray

    res = ray.cluster_resources()
    fits = [res.get("CPU", 1.0) / cpu] + ([res.get("GPU", 0.0) / gpu] if gpu else [])
    return max(1, int(min(fits)))


class ValidOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna FAIL for a sampled combination breaking a rule of
    the configuration and asks again, so Tune only ever starts valid trials."""

    def suggest(self, trial_id: str) -> dict | None:
        import optuna

        for _ in range(MAX_REJECTS):
            try:
                return super().suggest(trial_id)
            except InvalidSample as e:
                rejected = self._ot_trials.pop(trial_id)
                rejected.set_user_attr("bst.invalid", str(e))
                self._ot_study.tell(rejected, state=optuna.trial.TrialState.FAIL)
                self.n_rejected = getattr(self, "n_rejected", 0) + 1
                last = str(e)
        raise SpaceError(f"{MAX_REJECTS} sampled combinations in a row break configuration rules "
                         f"(the last: {last}); restrict the space with `when` conditions")


def _encode(space: SearchSpace, values: dict[str, Any]) -> dict[str, Any]:
    """A configuration's values as the Optuna params of ``space``: only parameters that are
    active and whose value the space can take (the rest is left for the sampler)."""
    sampled: dict[str, Any] = {}
    point: dict[str, Any] = {}
    for p in space.params.values():
        if p.name not in values or not p.active(sampled):
            continue
        v = values[p.name]
        if p.type == "subset":
            v = [b for b in p.choices if b in set(v)]
        if not p.contains(v):
            continue
        sampled[p.name] = v
        point[p.name] = SUBSET_SEP.join(v) if p.type == "subset" else v
    return point


def warm_start_points(uri: str, experiment: str, space: SearchSpace, n: int) -> list[dict[str, Any]]:
    """The ``n`` best complete trials of MLflow experiment ``experiment`` (by ``space``'s own
    objective and direction) as Optuna params of ``space``, best first, without duplicates.

    A configuration is carried over key by key: a parameter the new space does not search,
    or a value outside its new domain, is left for the sampler; fixed values are the new
    space's. A point that breaks a rule in the new space is rejected like any other sample.
    """
    cl = tracking.client(uri)
    exp = cl.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: --warm-start: no experiment {experiment!r} in {uri}")
    runs = [r for r in tracking.find_runs(cl, exp.experiment_id, status="FINISHED")
            if r.data.tags.get(tracking.STATUS) == "complete" and space.metric in r.data.metrics]
    if not runs:
        raise SystemExit(f"error: --warm-start: experiment {experiment!r} has no complete trial "
                         f"with the metric {space.metric}")
    runs.sort(key=lambda r: r.data.metrics[space.metric], reverse=space.mode == "max")
    points: list[dict[str, Any]] = []
    for r in runs:
        values = {k: config.check_value(k, v) for k, v in r.data.params.items() if k in space.params}
        point = _encode(space, values)
        if point and point not in points:
            points.append(point)
        if len(points) == n:
            break
    return points
