"""Trial configuration: one nested mapping, validated, with dotted keys.

The dotted keys (``model.name``, ``train.lr``) are what ``--set`` overrides, what a search
space names, and what MLflow logs as params. :data:`SCHEMA` is the single place that says
which keys exist, their type, and which values are allowed; anything else is an error that
names the key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration key or value is not valid; the message names it."""


@dataclass(frozen=True)
class Spec:
    """What one dotted key accepts."""

    default: Any
    type: type | tuple[type, ...]
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    doc: str = ""


# fmt: off
SCHEMA: dict[str, Spec] = {
    "seed": Spec(0, int, low=0, doc="seed of model init, batching and augmentation"),
    "backbones": Spec(["clap_audio", "clap_text"], list, doc="embedding folders to use, in order"),
    # model
    "model.name": Spec("hatr", str, ("hatr", "late_fusion"), doc="registered model"),
    "model.hidden": Spec(128, int, low=8, high=4096, doc="shared width of the encoders"),
    "model.dropout": Spec(0.1, float, low=0.0, high=0.9),
    "model.batch_norm": Spec(True, bool, doc="HATR: batch norm in encoders and residual blocks"),
    "model.res_blocks": Spec(3, int, low=0, high=8, doc="HATR: residual blocks per encoder"),
    "model.init": Spec("xavier_uniform", str, ("xavier_uniform", "torch_default")),
    "model.heads": Spec(8, int, low=1, high=32, doc="late_fusion: attention heads"),
    "model.layers": Spec(1, int, low=1, high=8, doc="late_fusion: Transformer encoder layers"),
    "model.ff_mult": Spec(4, int, low=1, high=8, doc="late_fusion: feed-forward width / hidden"),
    # loss
    "loss.name": Spec("hierarchical_ce", str, ("hierarchical_ce",)),
    "loss.label_smoothing": Spec(0.01, float, low=0.0, high=0.5),
    "loss.class_weights": Spec("none", str, ("none", "inverse_freq"), doc="fine CE class weights"),
    "loss.alpha": Spec(0.0, float, low=0.0, high=10.0, doc="weight of the coarse (top-level) CE"),
    "loss.coarse": Spec("logsumexp", str, ("logsumexp", "sum"), doc="children logits -> top logits"),
    # training
    "train.optimizer": Spec("adam", str, ("adam", "adamw")),
    "train.lr": Spec(1e-3, float, low=1e-6, high=1.0),
    "train.weight_decay": Spec(1e-5, float, low=0.0, high=1.0),
    "train.schedule": Spec("step", str, ("step", "plateau", "none")),
    "train.step_size": Spec(20, int, low=1, doc="step schedule: epochs between decays"),
    "train.gamma": Spec(0.5, float, low=0.0, high=1.0, doc="step/plateau: decay factor"),
    "train.plateau_patience": Spec(5, int, low=0, doc="plateau: epochs without val hF gain"),
    "train.warmup_epochs": Spec(0, int, low=0, doc="linear learning-rate warm-up"),
    "train.grad_clip": Spec(0.0, float, low=0.0, doc="max gradient norm, 0 = off"),
    "train.batch_size": Spec(64, int, low=2, high=65536),
    "train.drop_last": Spec(True, bool),
    "train.max_epochs": Spec(100, int, low=1, high=10000),
    "train.patience": Spec(15, int, low=1, doc="early stop after this many epochs without val hF gain"),
    "train.noise_std": Spec(1e-4, float, low=0.0, doc="Gaussian noise added to embeddings"),
    "train.mask_mode": Spec("count", str, ("count", "bernoulli", "none"),
                            doc="count: zero 1..mask_p*dim random dims; bernoulli: each dim with p"),
    "train.mask_p": Spec(0.7, float, low=0.0, high=1.0),
    # data strategy: changes only the training part of each fold
    "data.min_confidence": Spec(0, int, low=0, high=5, doc="drop training rows below this confidence"),
    "data.confidence_weighting": Spec(False, bool, doc="weight training rows by confidence / 5"),
    "data.crowd": Spec("none", str, ("none", "mix"), doc="add the crowd set to every fold's training"),
    "data.crowd_per_uploader": Spec(0, int, low=0, doc="cap crowd rows per (uploader, class), 0 = no cap"),
}
# fmt: on

SECTIONS = ("backbones", "model", "loss", "train", "data", "seed")


def defaults() -> dict[str, Any]:
    """The full default configuration as a nested mapping."""
    return unflatten({k: copy.deepcopy(s.default) for k, s in SCHEMA.items()})


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted key: value}. Lists stay values."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{dotted key: value} -> nested mapping."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _coerce(key: str, value: Any, spec: Spec) -> Any:
    if spec.type is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a non-empty list of names, got {value!r}")
        if len(set(value)) != len(value):
            raise ConfigError(f"{key}: duplicate entries in {value!r}")
        return list(value)
    if spec.type is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if spec.type is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    elif spec.type is int and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if not isinstance(value, spec.type) or isinstance(value, bool) and spec.type is not bool:
        raise ConfigError(f"{key}: expected {spec.type.__name__}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, spec.choices))}")
    if spec.low is not None and value < spec.low:
        raise ConfigError(f"{key}: {value!r} is below the minimum {spec.low}")
    if spec.high is not None and value > spec.high:
        raise ConfigError(f"{key}: {value!r} is above the maximum {spec.high}")
    return value


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults, coerce types and check every key and value; returns a new mapping."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"a configuration must be a mapping, got {type(cfg).__name__}")
    flat = flatten(cfg)
    unknown = sorted(set(flat) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}")
    out = {k: copy.deepcopy(s.default) for k, s in SCHEMA.items()}
    for k, v in flat.items():
        out[k] = _coerce(k, v, SCHEMA[k])
    return unflatten(out)


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, YAML-parsed value); the key must exist in the schema."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key not in SCHEMA:
        raise ConfigError(f"unknown configuration key {key!r} in override {text!r}")
    return key, yaml.safe_load(raw) if raw.strip() else ""


def presets() -> list[str]:
    """Names usable as ``--config NAME``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load(source: str | Path | dict[str, Any] | None = None,
         overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """Resolve a configuration: preset name, YAML path, mapping or None (defaults), then
    dotted overrides, then validation."""
    if source is None:
        cfg: dict[str, Any] = {}
    elif isinstance(source, dict):
        cfg = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.exists() and (PRESET_DIR / f"{source}.yaml").exists():
            path = PRESET_DIR / f"{source}.yaml"
        if not path.exists():
            raise ConfigError(f"config {source!r} is neither a file nor a preset ({', '.join(presets())})")
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    flat = flatten(cfg)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for k, v in items:
        if k not in SCHEMA:
            raise ConfigError(f"unknown configuration key {k!r}")
        flat[k] = v
    return validate(unflatten(flat))


def dump(cfg: dict[str, Any], path: Path) -> None:
    """Write the resolved configuration as YAML."""
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
