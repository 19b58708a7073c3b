"""Warm starts: the best configurations of an earlier experiment, as Optuna params of the
new space, for ``OptunaSearch(points_to_evaluate=...)`` (``--warm-start``)."""

from __future__ import annotations

from typing import Any

from bst_search import config, tracking
from bst_search.search.space import SUBSET_SEP, SearchSpace


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
