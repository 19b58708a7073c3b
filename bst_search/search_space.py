"""Search spaces: YAML files that say what a sweep varies, turned into Optuna define-by-run.

A space is checked completely when it is loaded, before Ray or any trial starts: every
parameter key must exist in :data:`bst_search.config.SCHEMA`, every bound and choice is run
through the configuration's own validation, conditions must refer to earlier parameters and
to values they can take, and the fixed part (``base`` + ``fixed``) must resolve to a valid
configuration. The configuration's cross-key rules (:func:`bst_search.config.check_consistency`:
``gc``/``lcl`` need ``loss.top``, proxy losses need the proxy head, ...) hold for every
configuration a sweep trains, in two steps:

* at load time, :func:`satisfiable` enumerates the values of the keys the rules read and
  refuses a space none of whose combinations passes them (the error quotes the rule, which
  names its keys);
* at sampling time, :meth:`SearchSpace.sample` checks the sampled configuration and raises
  :class:`InvalidSample` with the rule's message; the searcher
  (:class:`bst_search.sampling.ValidOptunaSearch`) tells Optuna that trial FAIL and asks
  again, so an invalid combination never reaches a worker and the sweep still runs
  ``--trials`` valid trials.

Rejection rather than restricting a parameter's choices to the valid ones given its
parents: Optuna requires a parameter's distribution to be the same in every trial of a study
(a categorical whose choices change is an error, and TPE fits one density per parameter),
so a choice list that depended on earlier values would break the sampler. A rejected trial
is FAIL, which TPE ignores, so it learns only from configurations that were trained.

File format::

    description: optional one-line text
    objective: {metric: oof_hF_strict, mode: max}     # defaults
    resources: {cpu: 1, gpu: 0}                        # per trial; gpu may be fractional
    base: baseline_hatr                                # preset name or path (optional)
    fixed: {train.max_epochs: 30}                      # dotted keys (or nested) -> values
    params:                                            # sampled in this order
      train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      model.name: {type: categorical, choices: [hatr, late_fusion]}
      model.heads: {type: categorical, choices: [4, 8], when: {model.name: late_fusion}}
      backbones: {type: subset, choices: [clap_audio, panns, clap_text], min_size: 1}

``when`` maps earlier parameters to a value or a list of accepted values; all entries must
hold (AND). A parameter whose condition is false is not suggested at all, so it is absent
from the trial's Optuna params and from the sampled dict, and the configuration keeps the
base/fixed/default value for it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bst_search import config
from bst_search.config import ConfigError

if TYPE_CHECKING:  # optuna is only needed by callers that sample
    import optuna

OBJECTIVE_METRICS = (
    "oof_hF", "oof_hF_strict", "oof_hP", "oof_hR", "oof_acc", "oof_top_acc", "fold_hF_mean",
)
MODES = ("max", "min")
TOP_KEYS = ("description", "objective", "resources", "scheduler", "base", "fixed", "params")
SCHEDULERS = ("asha", "median", "none")
PARAM_TYPES = ("float", "int", "categorical", "subset")
PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
    "subset": ("type", "choices", "min_size", "max_size", "when"),
}
# 2**12 - 1 subsets is still a reasonable categorical; beyond that the enumeration (see
# Param.suggest) stops being a sensible encoding and the space should be split.
MAX_SUBSET_CHOICES = 12
SUBSET_SEP = ","


class SpaceError(ValueError):
    """A search space is not valid; the message names the file and the offending key."""


class InvalidSample(ValueError):
    """A sampled combination breaks a cross-key configuration rule (the message says which)."""


# Budget of the load-time enumeration of rule-relevant values (satisfiable); beyond it the
# space is accepted and sampling-time rejection alone keeps trials valid.
MAX_RULE_COMBINATIONS = 200_000
# Values of a rule key that the enumeration tries for an int range (all of them up to this many)
MAX_INT_VALUES = 64


def is_text_backbone(name: str) -> bool:
    """Text backbones embed metadata, not audio; every trial needs at least one audio one."""
    return "text" in name


def _same(a: Any, b: Any) -> bool:
    """Equality that does not confuse ``True`` with ``1`` (YAML conditions on bool keys)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(key: str, value: Any, where: str) -> Any:
    """Run one value through the configuration's validation; returns the coerced value."""
    try:
        return config.check_value(key, value)
    except ConfigError as e:
        raise SpaceError(f"{where}: {e}") from None


@dataclass
class Param:
    """One sampled configuration key."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    min_size: int = 1
    max_size: int | None = None
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # subset only: the valid subsets, in a fixed order, each as a tuple of names in
    # `choices` order (the order the model sees its inputs in)
    subsets: tuple[tuple[str, ...], ...] = ()

    def active(self, sampled: Mapping[str, Any]) -> bool:
        """True when every ``when`` entry holds; an absent parent makes it false."""
        return all(
            parent in sampled and any(_same(sampled[parent], v) for v in values)
            for parent, values in self.when.items()
        )

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask Optuna for this parameter's value.

        ``subset`` is one categorical over the enumerated valid subsets, each encoded as a
        comma-joined string (``"clap_audio,panns"``), rather than one boolean per backbone
        repaired afterwards. A repair maps several boolean vectors onto one subset, so the
        params Optuna records would not be the configuration that was trained, TPE would fit
        its densities to values that were never evaluated and the repair target would be
        over-sampled. The enumeration keeps Optuna's param, the MLflow param and the trained
        configuration identical, puts exactly the allowed subsets (size and audio
        constraints) in the distribution, and gives every valid subset the same prior
        mass. Its cost is that TPE learns each subset on its own instead of per-backbone
        marginals; with the handful of backbones a space uses (3 -> 6 valid subsets) that
        is cheap, and :data:`MAX_SUBSET_CHOICES` bounds the enumeration.
        """
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        encoded = trial.suggest_categorical(self.name, [SUBSET_SEP.join(s) for s in self.subsets])
        return encoded.split(SUBSET_SEP)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` (as :meth:`SearchSpace.sample` returns it) is in this domain."""
        if self.type == "categorical":
            return any(_same(c, value) for c in self.choices)
        if self.type == "subset":
            return isinstance(value, (list, tuple)) and tuple(value) in self.subsets
        if not _number(value) or not self.low <= value <= self.high:
            return False
        if self.type == "int":
            return float(value).is_integer() and (value - self.low) % (self.step or 1) == 0
        return True

    def representatives(self) -> list[Any]:
        """Values that decide every cross-key rule for this key: all choices; for numbers the
        ends of the range (the rules compare weights with 0), every value of a short int
        range (divisibility of model.hidden by model.heads)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "subset":
            return [list(s) for s in self.subsets]
        if self.type == "int" and self.enumerable():
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return [self.low, self.high]

    def enumerable(self) -> bool:
        """Whether :meth:`representatives` decide every rule: all but a long int range, whose
        middle values could matter (divisibility, a ``when`` on one value)."""
        return self.type != "int" or (self.high - self.low) // (self.step or 1) < MAX_INT_VALUES

    def describe_range(self) -> str:
        """Short human-readable domain."""
        if self.type in ("float", "int"):
            show = self.step is not None and (self.type == "float" or self.step != 1)
            step = f" step {self.step:g}" if show else ""
            fmt = "d" if self.type == "int" else "g"
            return f"[{self.low:{fmt}}, {self.high:{fmt}}]{step}"
        if self.type == "categorical":
            return "{" + ", ".join(map(str, self.choices)) + "}"
        return (
            "{" + ", ".join(self.choices) + "}"
            f" size {self.min_size}..{self.max_size} ({len(self.subsets)} valid)"
        )


@dataclass
class SearchSpace:
    """A validated search space; build it with :func:`load_space`."""

    metric: str = "oof_hF_strict"
    mode: str = "max"
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    base: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    description: str = ""
    source: str = "<space>"
    scheduler: str = "asha"  # early stopping on per-fold results: asha, median or none
    # the base resolved when the space is loaded, so that trials on other nodes never
    # re-read a path on the driver's disk
    base_config: dict[str, Any] | None = None
    # False when the sweep's crowd data have no confidences: the confidence keys then cannot
    # go with a crowd strategy (a data rule that violation() adds to the configuration's)
    crowd_confidence: bool = True
    _flat_fallback: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Optuna define-by-run function: suggest the active parameters in file order.

        A parameter whose ``when`` is false is never suggested, so TPE sees the conditional
        structure. Returns the flat dotted values (``backbones`` as a list), which is also
        what Ray Tune's ``OptunaSearch`` merges over the raw suggestions when given this as
        its ``space``.
        """
        out: dict[str, Any] = {}
        for p in self.params.values():
            if p.active(out):
                out[p.name] = p.suggest(trial)
        problem = self.violation(out)
        if problem is not None:
            raise InvalidSample(problem)
        return out

    def restricted_to(self, available_backbones: Collection[str], has_crowd: bool,
                      has_confidence: bool = True, crowd_confidence: bool = True
                      ) -> tuple[SearchSpace, list[str]]:
        """This space without what needs data the sweep does not have, and what was dropped.

        A backbone without embeddings leaves the ``backbones`` subsets; a value listed in
        :data:`DATA_NEEDS` whose data is missing leaves its parameter (crowd strategies
        without crowd data, confidence filtering without confidences); a parameter whose
        choices are all gone, or whose ``when`` can no longer hold, leaves the space. What
        base/fixed set cannot be dropped: needing missing data there is a :class:`SpaceError`,
        as is a restricted space none of whose combinations passes the rules. Crowd data
        without confidences add a data rule (:meth:`violation`): no confidence key together
        with a crowd strategy. ``dropped`` is one short entry per change
        (``data.crowd=all|teacher (no crowd data)``; a parameter dropped because its ``when``
        can no longer hold is named alone).
        """
        missing = {"crowd": not has_crowd, "confidence": not has_confidence}
        available = set(available_backbones)
        fallback = self._fallback()

        def needs(key: str, value: Any) -> str | None:
            if key == "backbones":
                gone = [b for b in value if b not in available]
                return f"embeddings of {', '.join(gone)}" if gone else None
            what, test = DATA_NEEDS.get(key, (None, None))
            return DATA_WHAT[what] if what and missing[what] and test(value) else None

        def check_fallback(key: str) -> None:
            need = needs(key, fallback[key])
            if need:
                raise SpaceError(f"{self.source}: {key}={fallback[key]} (base/fixed) needs "
                                 f"{need}, which this sweep does not have")

        for key in ("backbones", *DATA_NEEDS):  # values a trial gets without sampling them
            if key not in self.params or self.params[key].when:
                check_fallback(key)
        params: dict[str, Param] = {}
        dropped: list[str] = []
        for p in self.params.values():
            when = {parent: tuple(v for v in values if params[parent].contains(v))
                    for parent, values in p.when.items() if parent in params}
            if len(when) < len(p.when) or not all(when.values()):
                dropped.append(p.name)  # its `when` cannot hold any more
                continue
            why = next(filter(None, (needs(p.name, v) for v in p.representatives())), None)
            q = dataclasses.replace(p, when=when)
            if why and p.type == "subset":
                subsets = tuple(x for x in p.subsets if all(b in available for b in x))
                gone = [b for b in p.choices if b not in available]
                dropped.append(f"{p.name}={'|'.join(gone)} (no embeddings)")
                if not subsets:
                    raise SpaceError(f"{self.source}: params.{p.name}: no valid subset is left "
                                     f"without {', '.join(gone)} (no embeddings)")
                keep = tuple(b for b in p.choices if b in available)
                q = dataclasses.replace(q, choices=keep, subsets=subsets,
                                        min_size=min(len(x) for x in subsets),
                                        max_size=max(len(x) for x in subsets))
            elif why:
                keep = tuple(c for c in p.choices if not needs(p.name, c))
                gone = [c for c in p.choices if needs(p.name, c)] if keep else []
                dropped.append(f"{p.name}{'=' + '|'.join(map(str, gone)) if gone else ''} (no {why})")
                if not keep:  # a range, or nothing left: trials get the base/fixed value
                    check_fallback(p.name)
                    continue
                q = dataclasses.replace(q, choices=keep)
            params[p.name] = q
        out = dataclasses.replace(self, params=params, crowd_confidence=crowd_confidence)
        problem = unsatisfiable(out)
        if problem:
            raise SpaceError(f"{self.source}: without {', '.join(dropped)}, every combination "
                             f"breaks a configuration rule: {problem}")
        return out, dropped

    def violation(self, sampled: Mapping[str, Any]) -> str | None:
        """The cross-key rule a sampled combination breaks (its message), or None."""
        flat = {**self._fallback(), **dict(sampled)}
        try:
            config.check_consistency(flat)
        except ConfigError as e:
            return str(e)
        conf = [f"{k}={flat[k]}" for k in CONFIDENCE_KEYS if flat[k]]
        if not self.crowd_confidence and conf and flat["data.crowd"] != "none":
            return (f"{', '.join(conf)} with data.crowd={flat['data.crowd']}: the crowd data "
                    f"have no confidences")
        return None

    def _fallback(self) -> dict[str, Any]:
        """The flat configuration of a trial that samples nothing (base, then fixed)."""
        if self._flat_fallback is None:
            self._flat_fallback = config.flatten(self.config())
        return self._flat_fallback

    def config(self, sampled: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The full validated nested configuration of a trial: base, then fixed, then sampled."""
        base = self.base_config if self.base_config is not None else self.base
        return config.load(base, {**self.fixed, **dict(sampled or {})})

    def conditional(self) -> dict[str, dict[str, tuple[Any, ...]]]:
        """``{param: its when}`` for the conditional parameters."""
        return {n: dict(p.when) for n, p in self.params.items() if p.when}

    def can_take(self, key: str, value: Any) -> bool:
        """Whether some trial of this space may have ``key == value`` (its parameter's domain,
        or the base/fixed value a trial gets while the parameter is absent or inactive)."""
        if key not in config.SCHEMA:
            raise SpaceError(f"{self.source}: {key}: unknown configuration key")
        p = self.params.get(key)
        fallback_applies = p is None or bool(p.when)
        return (fallback_applies and _same(self._fallback()[key], value)) or (
            p is not None and p.contains(value))

    def backbones_needed(self) -> list[str]:
        """Every backbone some trial of this space can use, so the data loads them once."""
        p = self.params.get("backbones")
        fallback = list(self.config()["backbones"])
        if p is None or p.type != "subset":
            return fallback
        used = {b for s in p.subsets for b in s}
        needed = [b for b in p.choices if b in used]
        if p.when:  # trials where the parameter is inactive use the base/fixed backbones
            needed += [b for b in fallback if b not in needed]
        return needed

    def describe(self) -> str:
        """A short text table of the space, for the search driver to print."""
        head = [
            f"search space {self.source}" + (f": {self.description}" if self.description else ""),
            f"  objective {self.mode} {self.metric}; per trial "
            + ", ".join(f"{k}={v:g}" for k, v in self.resources.items())
            + (f"; base {self.base}" if self.base else ""),
        ]
        if self.fixed:
            head.append("  fixed " + ", ".join(f"{k}={v}" for k, v in self.fixed.items()))
        rows = [("param", "type", "domain", "when")]
        for p in self.params.values():
            kind = p.type + ("(log)" if p.log else "")
            when = " & ".join(
                f"{k}={'|'.join(map(str, v))}" for k, v in p.when.items()
            )
            rows.append((p.name, kind, p.describe_range(), when))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [
            "  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
            for r in rows
        ]
        return "\n".join(head + [line.rstrip() for line in lines])


# A value that needs data a sweep may not have: key -> (what, does this value need it).
DATA_NEEDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "data.crowd": ("crowd", lambda v: v != "none"),
    "data.two_stage": ("crowd", lambda v: v is True),
    "data.min_confidence": ("confidence", lambda v: v > 0),
    "data.confidence_weighting": ("confidence", lambda v: v is True),
}
CONFIDENCE_KEYS = ("data.min_confidence", "data.confidence_weighting")
DATA_WHAT = {"crowd": "crowd data", "confidence": "confidences"}


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


# ---------------------------------------------------------------- parsing and validation


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpaceError(f"{where}: expected a mapping, got {value!r}")
    return value


def _parse_objective(raw: Any, src: str) -> tuple[str, str]:
    obj = _mapping(raw, f"{src}: objective")
    unknown = sorted(set(obj) - {"metric", "mode"})
    if unknown:
        raise SpaceError(f"{src}: objective.{unknown[0]}: unknown key (metric, mode)")
    metric = obj.get("metric", "oof_hF_strict")
    mode = obj.get("mode", "max")
    if metric not in OBJECTIVE_METRICS:
        raise SpaceError(
            f"{src}: objective.metric: {metric!r} is not one of {', '.join(OBJECTIVE_METRICS)}"
        )
    if mode not in MODES:
        raise SpaceError(f"{src}: objective.mode: {mode!r} is not max or min")
    return metric, mode


def _parse_resources(raw: Any, src: str) -> dict[str, float]:
    res = _mapping(raw, f"{src}: resources")
    out = {"cpu": 1.0, "gpu": 0.0}
    for k, v in res.items():
        if k not in out:
            raise SpaceError(f"{src}: resources.{k}: unknown resource (cpu, gpu)")
        if not _number(v) or not math.isfinite(v) or v < 0 or (k == "cpu" and v == 0):
            raise SpaceError(f"{src}: resources.{k}: {v!r} is not a valid amount")
        out[k] = float(v)
    return out


def _resolve_base(base: Any, src: str, root: Path) -> str | None:
    """A preset name stays a name; a path is made absolute relative to the space file."""
    if base is None:
        return None
    if not isinstance(base, str) or not base:
        raise SpaceError(f"{src}: base: expected a preset name or a path, got {base!r}")
    if base in config.presets():
        return base
    for cand in (Path(base), root / base):
        if cand.is_file():
            return str(cand.resolve())
    raise SpaceError(
        f"{src}: base: {base!r} is neither a file nor a preset ({', '.join(config.presets())})"
    )


def _parse_bounds(name: str, spec: dict[str, Any], where: str) -> Param:
    ptype = spec["type"]
    schema = config.SCHEMA[name]
    if ptype == "float" and schema.type is not float:
        raise SpaceError(f"{where}.type: {name} is {schema.type.__name__}, not float")
    if ptype == "int" and schema.type is not int:
        raise SpaceError(
            f"{where}.type: {name} is {schema.type.__name__}, not int"
            + (" (use type: float with step)" if schema.type is float else "")
        )
    for b in ("low", "high"):
        if b not in spec:
            raise SpaceError(f"{where}.{b}: required for a {ptype} parameter")
        if not _number(spec[b]) and not isinstance(spec[b], str):
            raise SpaceError(f"{where}.{b}: expected a number, got {spec[b]!r}")
    low = _check_value(name, spec["low"], f"{where}.low")
    high = _check_value(name, spec["high"], f"{where}.high")
    if not low < high:
        raise SpaceError(f"{where}: low {low!r} must be below high {high!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise SpaceError(f"{where}.low: a log-scaled parameter needs low > 0, got {low!r}")
    step = spec.get("step")
    if step is not None:
        if not _number(step) or step <= 0 or ptype == "int" and not float(step).is_integer():
            raise SpaceError(f"{where}.step: {step!r} is not a positive {ptype} step")
        step = int(step) if ptype == "int" else float(step)
        if log and (ptype == "float" or step != 1):
            raise SpaceError(f"{where}.step: Optuna cannot combine log with step {step!r}")
        if step > high - low:
            raise SpaceError(f"{where}.step: {step!r} is wider than the range [{low}, {high}]")
    return Param(name, ptype, low=low, high=high, log=log, step=step)


def _parse_categorical(name: str, spec: dict[str, Any], where: str) -> Param:
    if config.SCHEMA[name].type is list:
        raise SpaceError(f"{where}.type: {name} is a list; use type: subset")
    raw = spec.get("choices")
    if not isinstance(raw, list) or not raw:
        raise SpaceError(f"{where}.choices: expected a non-empty list, got {raw!r}")
    choices: list[Any] = []
    for i, c in enumerate(raw):
        v = _check_value(name, c, f"{where}.choices[{i}]")
        if any(_same(v, o) for o in choices):
            raise SpaceError(f"{where}.choices[{i}]: duplicate choice {c!r}")
        choices.append(v)
    return Param(name, "categorical", choices=tuple(choices))


def _parse_subset(name: str, spec: dict[str, Any], where: str) -> Param:
    if config.SCHEMA[name].type is not list:
        raise SpaceError(f"{where}.type: subset is only for list keys (backbones), not {name}")
    raw = spec.get("choices")
    if not isinstance(raw, list) or not raw:
        raise SpaceError(f"{where}.choices: expected a non-empty list of names, got {raw!r}")
    if not all(isinstance(c, str) and c and SUBSET_SEP not in c for c in raw):
        raise SpaceError(f"{where}.choices: names must be non-empty strings without commas")
    choices = _check_value(name, raw, f"{where}.choices")
    if len(choices) > MAX_SUBSET_CHOICES:
        raise SpaceError(
            f"{where}.choices: {len(choices)} names exceed {MAX_SUBSET_CHOICES}; split the space"
        )
    sizes = {}
    for k, default in (("min_size", 1), ("max_size", len(choices))):
        v = spec.get(k, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise SpaceError(f"{where}.{k}: expected an integer >= 1, got {v!r}")
        if v > len(choices):
            raise SpaceError(f"{where}.{k}: {v} is more than the {len(choices)} choices")
        sizes[k] = v
    if sizes["min_size"] > sizes["max_size"]:
        raise SpaceError(f"{where}.min_size: {sizes['min_size']} is above max_size {sizes['max_size']}")
    subsets = tuple(
        s
        for n in range(sizes["min_size"], sizes["max_size"] + 1)
        for s in itertools.combinations(choices, n)
        if any(not is_text_backbone(b) for b in s)
    )
    if not subsets:
        raise SpaceError(
            f"{where}.choices: no subset of size {sizes['min_size']}..{sizes['max_size']} "
            "contains an audio backbone"
        )
    return Param(name, "subset", choices=tuple(choices), subsets=subsets, **sizes)


def _parse_when(raw: Any, where: str, earlier: dict[str, Param]) -> dict[str, tuple[Any, ...]]:
    when = _mapping(raw, f"{where}.when")
    out: dict[str, tuple[Any, ...]] = {}
    for parent, values in when.items():
        at = f"{where}.when.{parent}"
        if parent not in earlier:
            raise SpaceError(f"{at}: {parent!r} is not a parameter defined before this one")
        p = earlier[parent]
        if p.type not in ("categorical", "int"):
            raise SpaceError(f"{at}: conditions can only test categorical or int parameters")
        vals = values if isinstance(values, list) else [values]
        if not vals:
            raise SpaceError(f"{at}: expected a value or a non-empty list of values")
        coerced = []
        for v in vals:
            c = _check_value(parent, v, at)
            if p.type == "categorical":
                ok = any(_same(c, o) for o in p.choices)
            else:
                ok = p.low <= c <= p.high and (c - p.low) % (p.step or 1) == 0
            if not ok:
                raise SpaceError(f"{at}: {v!r} is not a value {parent} can take ({p.describe_range()})")
            coerced.append(c)
        out[parent] = tuple(coerced)
    return out


def _parse_params(raw: Any, src: str, fixed: dict[str, Any]) -> dict[str, Param]:
    params: dict[str, Param] = {}
    for name, spec in _mapping(raw, f"{src}: params").items():
        where = f"{src}: params.{name}"
        if name not in config.SCHEMA:
            raise SpaceError(f"{where}: unknown configuration key")
        if name in fixed:
            raise SpaceError(f"{where}: also set in fixed; a key is either fixed or searched")
        if not isinstance(spec, dict):
            raise SpaceError(f"{where}: expected a mapping with a type, got {spec!r}")
        ptype = spec.get("type")
        if ptype not in PARAM_TYPES:
            raise SpaceError(f"{where}.type: {ptype!r} is not one of {', '.join(PARAM_TYPES)}")
        unknown = sorted(set(spec) - set(PARAM_KEYS[ptype]))
        if unknown:
            raise SpaceError(
                f"{where}.{unknown[0]}: unknown key for a {ptype} parameter "
                f"({', '.join(PARAM_KEYS[ptype])})"
            )
        if ptype in ("float", "int"):
            p = _parse_bounds(name, spec, where)
        elif ptype == "categorical":
            p = _parse_categorical(name, spec, where)
        else:
            p = _parse_subset(name, spec, where)
        p.when = _parse_when(spec.get("when"), where, params)
        params[name] = p
    return params


def space_from_dict(data: Any, source: str = "<space>", root: Path | None = None) -> SearchSpace:
    """Build and validate a space from a parsed mapping; ``root`` resolves a relative base."""
    src = source
    if not isinstance(data, dict):
        raise SpaceError(f"{src}: top level must be a mapping")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise SpaceError(f"{src}: {unknown[0]}: unknown top-level key ({', '.join(TOP_KEYS)})")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise SpaceError(f"{src}: description: expected text, got {description!r}")
    metric, mode = _parse_objective(data.get("objective"), src)
    resources = _parse_resources(data.get("resources"), src)
    scheduler = data.get("scheduler", "asha")
    if scheduler not in SCHEDULERS:
        raise SpaceError(f"{src}: scheduler: {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    base = _resolve_base(data.get("base"), src, root or Path.cwd())
    fixed = config.flatten(_mapping(data.get("fixed"), f"{src}: fixed"))
    for k, v in fixed.items():
        if k not in config.SCHEMA:
            raise SpaceError(f"{src}: fixed.{k}: unknown configuration key")
        # coerced, so describe() and the trial configuration show the real values
        fixed[k] = _check_value(k, v, f"{src}: fixed.{k}")
    try:
        resolved = config.load(base, fixed)
    except ConfigError as e:  # the fixed values are fine alone, so it is the base
        raise SpaceError(f"{src}: base {base}: {e}") from None
    params = _parse_params(data.get("params"), src, fixed)
    bb = params.get("backbones")
    if (bb is None or bb.when) and all(is_text_backbone(b) for b in resolved["backbones"]):
        raise SpaceError(
            f"{src}: backbones: {resolved['backbones']} from base/fixed has no audio backbone"
        )
    space = SearchSpace(
        metric=metric, mode=mode, resources=resources, base=base, fixed=fixed,
        params=params, description=description.strip(), source=source, scheduler=scheduler,
        base_config=config.load(base) if base else None,
    )
    problem = unsatisfiable(space)
    if problem:
        raise SpaceError(f"{src}: every combination of the space breaks a configuration rule: "
                         f"{problem}")
    return space


def data_available(data: str | Path, *others: str | Path | None) -> dict[str, Any]:
    """What a sweep's data offer, read from the layout without loading embeddings, as the
    keyword arguments of :meth:`SearchSpace.restricted_to`: the backbones every given root
    has, and whether the development and crowd sets carry confidences. ``others`` are the
    evaluation and crowd roots (None when not given); the last one is the crowd root."""
    from bst_search.data import discover_backbones
    from bst_search.data.metadata import find_metadata

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

    return {"available_backbones": sorted(backbones), "has_crowd": crowd is not None,
            "has_confidence": has_confidence(Path(data)),
            "crowd_confidence": crowd is None or has_confidence(Path(crowd))}


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; raises :class:`SpaceError` naming the key."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"{p}: no such search-space file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpaceError(f"{p}: not valid YAML: {e}") from None
    return space_from_dict(data, source=str(p), root=p.parent)
