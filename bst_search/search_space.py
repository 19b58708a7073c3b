"""Search spaces: YAML files that say what a sweep varies, turned into Optuna define-by-run.

A space is checked completely when it is loaded, before Ray or any trial starts: every
parameter key must exist in :data:`bst_search.config.SCHEMA`, every bound and choice is run
through the configuration's own validation, conditions must refer to earlier parameters and
to values they can take, and the fixed part (``base`` + ``fixed``) must resolve to a valid
configuration. Because :data:`~bst_search.config.SCHEMA` has no cross-key constraints, that
makes every sampled configuration valid by construction.

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

import itertools
import math
from collections.abc import Mapping
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
        return out

    def config(self, sampled: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The full validated nested configuration of a trial: base, then fixed, then sampled."""
        base = self.base_config if self.base_config is not None else self.base
        return config.load(base, {**self.fixed, **dict(sampled or {})})

    def conditional(self) -> dict[str, dict[str, tuple[Any, ...]]]:
        """``{param: its when}`` for the conditional parameters."""
        return {n: dict(p.when) for n, p in self.params.items() if p.when}

    def can_take(self, key: str, value: Any) -> bool:
        """Whether some trial of this space may have ``key == value``; lets the driver refuse
        early what trials would fail on (``data.crowd: all`` without ``--crowd-data``)."""
        if key not in config.SCHEMA:
            raise SpaceError(f"{self.source}: {key}: unknown configuration key")
        fallback = config.flatten(self.config())[key]  # what a trial without the param gets
        p = self.params.get(key)
        if p is None:
            return _same(fallback, value)
        if p.when and _same(fallback, value):
            return True
        if p.type == "categorical":
            return any(_same(c, value) for c in p.choices)
        if p.type == "subset":
            return isinstance(value, (list, tuple)) and tuple(value) in p.subsets
        return _number(value) and p.low <= value <= p.high

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
    return SearchSpace(
        metric=metric, mode=mode, resources=resources, base=base, fixed=fixed,
        params=params, description=description.strip(), source=source, scheduler=scheduler,
        base_config=config.load(base) if base else None,
    )


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
