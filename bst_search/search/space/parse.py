"""Search-space YAML files, read and checked completely before Ray or any trial starts.

Search spaces: YAML files that say what a sweep varies, turned into Optuna define-by-run.

A space is checked completely when it is loaded, before Ray or any trial starts: every
parameter key must exist in :data:`bst_search.config.SCHEMA`, every bound and choice is run
through the configuration's own validation, conditions must refer to earlier parameters and
to values they can take, and the fixed part (``base`` + ``fixed``) must resolve to a valid
configuration.

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
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bst_search import config
from bst_search.config import ConfigError, is_text_backbone
from bst_search.search.schedulers import SCHEDULERS
from bst_search.search.space.model import (
    MAX_SUBSET_CHOICES,
    MODES,
    OBJECTIVE_METRICS,
    PARAM_KEYS,
    PARAM_TYPES,
    SUBSET_SEP,
    TOP_KEYS,
    Param,
    SearchSpace,
    SpaceError,
    checked_value,
    is_number,
    same_value,
)
from bst_search.search.space.rules import unsatisfiable


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
        if not is_number(v) or not math.isfinite(v) or v < 0 or (k == "cpu" and v == 0):
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
        if not is_number(spec[b]) and not isinstance(spec[b], str):
            raise SpaceError(f"{where}.{b}: expected a number, got {spec[b]!r}")
    low = checked_value(name, spec["low"], f"{where}.low")
    high = checked_value(name, spec["high"], f"{where}.high")
    if not low < high:
        raise SpaceError(f"{where}: low {low!r} must be below high {high!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise SpaceError(f"{where}.low: a log-scaled parameter needs low > 0, got {low!r}")
    step = spec.get("step")
    if step is not None:
        if not is_number(step) or step <= 0 or ptype == "int" and not float(step).is_integer():
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
        v = checked_value(name, c, f"{where}.choices[{i}]")
        if any(same_value(v, o) for o in choices):
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
    choices = checked_value(name, raw, f"{where}.choices")
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
            c = checked_value(parent, v, at)
            if p.type == "categorical":
                ok = any(same_value(c, o) for o in p.choices)
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
        fixed[k] = checked_value(k, v, f"{src}: fixed.{k}")
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


# package data; a plain folder in every install pip makes (a wheel is never run zipped)
SPACE_DIR = Path(str(resources.files("bst_search") / "search_spaces"))


def packaged_spaces() -> list[str]:
    """Names of the search spaces that ship with the package (``--space mesh``)."""
    return sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))


def resolve_space(name: str | Path) -> Path:
    """A search-space file: a path as given, else a packaged space by its bare name
    (``demo``, ``mesh.yaml``), so ``--space mesh`` works from any directory and from a wheel."""
    p = Path(name)
    if p.is_file() or len(p.parts) > 1:
        return p
    packaged = SPACE_DIR / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    return packaged if packaged.is_file() else p


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file, a path or a packaged space's name; raises
    :class:`SpaceError` naming the key."""
    p = resolve_space(path)
    if not p.is_file():
        raise SpaceError(f"{p}: no such search-space file (the packaged spaces: "
                         f"{', '.join(packaged_spaces())})")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpaceError(f"{p}: not valid YAML: {e}") from None
    return space_from_dict(data, source=str(p), root=p.parent)
