"""The rules a search space must satisfy, and what the data allow it to search.

The configuration's cross-key rules (:func:`bst_search.config.check_consistency`:
``gc``/``lcl`` need ``loss.top``, proxy losses need the proxy head, ...) hold for every
configuration a sweep trains, in two steps:

* at load time, :func:`satisfiable` enumerates the values of the keys the rules read and
  refuses a space none of whose combinations passes them (the error quotes the rule, which
  names its keys);
* at sampling time, :meth:`SearchSpace.sample` checks the sampled configuration and raises
  :class:`InvalidSample` with the rule's message; the searcher
  (:class:`bst_search.search.searcher.ValidOptunaSearch`) tells Optuna that trial FAIL and asks
  again, so an invalid combination never reaches a worker and the sweep still runs
  ``--trials`` valid trials.

Rejection rather than restricting a parameter's choices to the valid ones given its
parents: Optuna requires a parameter's distribution to be the same in every trial of a study
(a categorical whose choices change is an error, and TPE fits one density per parameter),
so a choice list that depended on earlier values would break the sampler. A rejected trial
is FAIL, which TPE ignores, so it learns only from configurations that were trained.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bst_search import config

if TYPE_CHECKING:
    from bst_search.search.space.model import SearchSpace

# Budget of the load-time enumeration of rule-relevant values (satisfiable); beyond it the
# space is accepted and sampling-time rejection alone keeps trials valid.
MAX_RULE_COMBINATIONS = 200_000

# A value that needs data a sweep may not have: key -> (what, does this value need it).
DATA_NEEDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "data.crowd": ("crowd", lambda v: v != "none"),
    "data.two_stage": ("crowd", lambda v: v is True),
    "data.min_confidence": ("confidence", lambda v: v > 0),
    "data.confidence_weighting": ("confidence", lambda v: v is True),
    "meta.model": ("minilm", lambda v: v == "minilm_lr"),
}
CONFIDENCE_KEYS = ("data.min_confidence", "data.confidence_weighting")
DATA_WHAT = {"crowd": "crowd data", "confidence": "confidences",
             "minilm": "minilm_text embeddings"}
# Keys that only the meta_probs backbone reads: without metadata text they leave the space.
META_KEYS = ("meta.model", "meta.C", "model.meta_encoder")


def unsatisfiable(space: SearchSpace, budget: int = MAX_RULE_COMBINATIONS) -> str | None:
    """A rule every combination of ``space`` breaks (its message), or None when some passes.

    Enumerates depth-first, in file order and respecting ``when``, the representative values
    (:meth:`Param.representatives`) of the parameters the rules read
    (:data:`bst_search.config.RULE_KEYS`) and of their ``when`` parents; other parameters
    keep one value, as they cannot change a rule's outcome. Stops at the first valid
    combination; past ``budget`` combinations, or with a long int range among those
    parameters, it answers None (undecided, accepted).
    """
    need: set[str] = set()
    keys = config.RULE_KEYS + (() if space.crowd_confidence else CONFIDENCE_KEYS)
    stack = [n for n in space.params if n in keys]
    while stack:
        name = stack.pop()
        if name not in need:
            need.add(name)
            stack.extend(space.params[name].when)
    params = [p for p in space.params.values() if p.name in need]
    if not all(p.enumerable() for p in params):
        return None  # undecided: sampling-time rejection alone keeps trials valid
    seen: Counter[str] = Counter()
    count = 0

    def valid_below(i: int, sampled: dict[str, Any]) -> bool:
        nonlocal count
        if i == len(params):
            count += 1
            problem = space.violation(sampled)
            if problem is not None:
                seen[problem] += 1
            return problem is None or count >= budget
        p = params[i]
        if not p.active(sampled):
            return valid_below(i + 1, sampled)
        return any(valid_below(i + 1, {**sampled, p.name: v}) for v in p.representatives())

    if valid_below(0, {}):
        return None
    return seen.most_common(1)[0][0]


def data_available(data: str | Path, *others: str | Path | None) -> dict[str, Any]:
    """What a sweep's data offer, read from the layout without loading embeddings, as the
    keyword arguments of :meth:`SearchSpace.restricted_to`: the backbones every given root
    has, whether the development and crowd sets carry confidences, and whether every given
    root's metadata has text (a title, tags or description column), which ``meta_probs``
    reads. ``others`` are the evaluation and crowd roots (None when not given); the last one
    is the crowd root."""
    from bst_search.data import discover_backbones
    from bst_search.data.metadata import find_metadata
    from bst_search.data.texts import TEXT_FIELDS

    roots = [Path(r) for r in (data, *others) if r is not None]
    backbones = set(discover_backbones(roots[0]))
    for r in roots[1:]:
        backbones &= set(discover_backbones(r))
    crowd = others[-1] if others else None

    def has_confidence(root: Path) -> bool:
        import pandas as pd

        _, path = find_metadata(root)
        head = pd.read_csv(path, nrows=0).columns
        if "confidence" not in head:
            return False
        conf = pd.read_csv(path, usecols=["confidence"], dtype=str)["confidence"]
        return bool(conf.fillna("").str.strip().ne("").any())

    def has_text(root: Path) -> bool:
        import pandas as pd

        _, path = find_metadata(root)
        return bool(set(TEXT_FIELDS) & {str(c).strip() for c in pd.read_csv(path, nrows=0).columns})

    return {"available_backbones": sorted(backbones), "has_crowd": crowd is not None,
            "has_confidence": has_confidence(Path(data)),
            "crowd_confidence": crowd is None or has_confidence(Path(crowd)),
            "has_text": all(has_text(r) for r in roots)}
