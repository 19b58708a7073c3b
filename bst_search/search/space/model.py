"""A search space in memory: its parameters (:class:`Param`) and :class:`SearchSpace`, which
samples them define-by-run for Optuna and resolves a sample into a trial's configuration.

Reading a YAML file is :mod:`~bst_search.search.space.parse`; the configuration rules a space
must satisfy and what the data allow are :mod:`~bst_search.search.space.rules`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bst_search import config
from bst_search.config import ConfigError
from bst_search.search.space.rules import (
    CONFIDENCE_KEYS,
    DATA_NEEDS,
    DATA_WHAT,
    META_KEYS,
    unsatisfiable,
)

if TYPE_CHECKING:  # optuna is only needed by callers that sample
    import optuna

OBJECTIVE_METRICS = (
    "oof_hF", "oof_hF_strict", "oof_hP", "oof_hR", "oof_acc", "oof_top_acc", "fold_hF_mean",
)
MODES = ("max", "min")
TOP_KEYS = ("description", "objective", "resources", "scheduler", "base", "fixed", "params")
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


def same_value(a: Any, b: Any) -> bool:
    """Equality that does not confuse ``True`` with ``1`` (YAML conditions on bool keys)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def checked_value(key: str, value: Any, where: str) -> Any:
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
            parent in sampled and any(same_value(sampled[parent], v) for v in values)
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
            return any(same_value(c, value) for c in self.choices)
        if self.type == "subset":
            return isinstance(value, (list, tuple)) and tuple(value) in self.subsets
        if not is_number(value) or not self.low <= value <= self.high:
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


def _why_gone(gone: list[str]) -> str:
    """Why backbones left a space: no embedding folder, or (meta_probs) no metadata text."""
    embeddings = [b for b in gone if b != config.META_BACKBONE]
    return ", ".join(why for why, hit in (("no embeddings", embeddings),
                                          ("no metadata text", len(embeddings) < len(gone))) if hit)


def _missing_backbones(gone: list[str]) -> str:
    """What backbones need that the data lack, for an error about base or fixed values."""
    embeddings = [b for b in gone if b != config.META_BACKBONE]
    return " and ".join(what for what, hit in (
        (f"embeddings of {', '.join(embeddings)}", embeddings),
        ("metadata text (for meta_probs)", len(embeddings) < len(gone))) if hit)


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
                      has_confidence: bool = True, crowd_confidence: bool = True,
                      has_text: bool = True) -> tuple[SearchSpace, list[str]]:
        """This space without what needs data the sweep does not have, and what was dropped.

        A backbone without embeddings leaves the ``backbones`` subsets; a value listed in
        :data:`DATA_NEEDS` whose data is missing leaves its parameter (crowd strategies
        without crowd data, confidence filtering without confidences); a parameter whose
        choices are all gone, or whose ``when`` can no longer hold, leaves the space. What
        base/fixed set cannot be dropped: needing missing data there is a :class:`SpaceError`,
        as is a restricted space none of whose combinations passes the rules. Crowd data
        without confidences add a data rule (:meth:`violation`): no confidence key together
        with a crowd strategy. Data without metadata text (``has_text``) cannot give
        ``meta_probs``: it leaves the subsets like a backbone without embeddings, and the
        ``meta.*`` keys go with it. ``dropped`` is one short entry per change
        (``data.crowd=all|teacher (no crowd data)``; a parameter dropped because its ``when``
        can no longer hold is named alone).
        """
        missing = {"crowd": not has_crowd, "confidence": not has_confidence,
                   "minilm": "minilm_text" not in available_backbones}
        available = set(available_backbones) | ({config.META_BACKBONE} if has_text else set())
        fallback = self._fallback()

        def needs(key: str, value: Any) -> str | None:
            if key == "backbones":
                gone = [b for b in value if b not in available]
                return _missing_backbones(gone) if gone else None
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
            if p.name in META_KEYS and config.META_BACKBONE not in available:
                dropped.append(f"{p.name} (no metadata text)")
                continue
            why = next(filter(None, (needs(p.name, v) for v in p.representatives())), None)
            q = dataclasses.replace(p, when=when)
            if why and p.type == "subset":
                q = self._subsets_within(q, available, dropped)
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

    def _subsets_within(self, p: Param, available: set[str], dropped: list[str]) -> Param:
        """A subset parameter without the subsets that need what is not available."""
        subsets = tuple(x for x in p.subsets if all(b in available for b in x))
        gone = [b for b in p.choices if b not in available]
        why = _why_gone(gone)
        dropped.append(f"{p.name}={'|'.join(gone)} ({why})")
        if not subsets:
            raise SpaceError(f"{self.source}: params.{p.name}: no valid subset is left "
                             f"without {', '.join(gone)} ({why})")
        keep = tuple(b for b in p.choices if b in available)
        return dataclasses.replace(p, choices=keep, subsets=subsets,
                                   min_size=min(len(x) for x in subsets),
                                   max_size=max(len(x) for x in subsets))

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
        return (fallback_applies and same_value(self._fallback()[key], value)) or (
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
