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


# The one backbone that is not an embedding folder: the 23 class probabilities (+ a no-text
# flag) that a text classifier over each sound's title, tags and description gives, cross-fitted
# inside every fold (bst_search.data.meta_probs). Named here because configuration, data and
# search space all need to tell it apart, and this module imports nothing heavy.
META_BACKBONE = "meta_probs"


def backbone_modality(name: str) -> str:
    """"meta" for :data:`META_BACKBONE`, "text" for a text embedding (a name with ``text`` in
    it, ``clap_text``), else "audio": what the model builds for that input."""
    if name == META_BACKBONE:
        return "meta"
    return "text" if "text" in name else "audio"


def is_text_backbone(name: str) -> bool:
    """Text backbones come from metadata, not audio (``clap_text``, ``meta_probs``); every trial
    needs at least one audio backbone."""
    return backbone_modality(name) != "audio"


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
    "model.name": Spec("hatr", str, ("hatr", "late_fusion"),
                       doc="hatr: the official baseline, fixed layout; late_fusion: encoder x fusion x head"),
    "model.hidden": Spec(128, int, low=8, high=4096, doc="width of the encoders and the fused vector"),
    "model.dropout": Spec(0.1, float, low=0.0, high=0.9),
    "model.batch_norm": Spec(True, bool, doc="hatr encoders: batch norm in encoders and residual blocks"),
    "model.res_blocks": Spec(3, int, low=0, high=8, doc="hatr encoders: residual blocks per encoder"),
    "model.init": Spec("xavier_uniform", str, ("xavier_uniform", "torch_default")),
    "model.encoder": Spec("linear", str, ("linear", "hatr"),
                          doc="late_fusion: per-backbone encoder (linear: 000/003, hatr: 001)"),
    "model.linear_layers": Spec(1, int, low=1, high=4, doc="linear encoder: Linear layers (GELU between)"),
    "model.meta_encoder": Spec("linear", str, ("linear", "class_embedding"),
                               doc="meta_probs branch: linear encoder, or class_embedding m = q^T E"),
    "model.fusion": Spec("transformer", str, ("concat", "attention", "transformer", "gated"),
                         doc="late_fusion: how the backbones' encodings are combined"),
    "model.heads": Spec(8, int, low=1, high=32, doc="transformer fusion: attention heads"),
    "model.layers": Spec(1, int, low=1, high=8, doc="transformer fusion: encoder layers"),
    "model.ff_mult": Spec(4, int, low=1, high=8, doc="transformer fusion: feed-forward width / hidden"),
    "model.pool": Spec("mean", str, ("mean", "cls"), doc="transformer fusion: token pooling"),
    "model.head": Spec("flat", str, ("flat", "gc", "lcl", "proxy"),
                       doc="late_fusion: classifier head (gc, lcl: 002; proxy: 003)"),
    "model.head_depth": Spec(2, int, low=0, high=6, doc="residual MLP blocks in the head"),
    "model.proxy_dim": Spec(128, int, low=8, high=1024, doc="proxy head: embedding width"),
    "model.proxy_tau": Spec(0.07, float, low=0.01, high=1.0,
                            doc="proxy head: temperature of the cosine logits and of loss.proxy"),
    # loss: a sum of terms, each with its weight (0 = off)
    "loss.ce": Spec(1.0, float, low=0.0, high=10.0, doc="weight of the fine (second-level) CE"),
    "loss.label_smoothing": Spec(0.01, float, low=0.0, high=0.5, doc="fine, coarse and top CE"),
    "loss.class_weights": Spec("none", str, ("none", "inverse_freq"), doc="fine CE / focal class weights"),
    "loss.alpha": Spec(0.0, float, low=0.0, high=10.0, doc="weight of the coarse CE from child logits (000)"),
    "loss.coarse": Spec("logsumexp", str, ("logsumexp", "sum"), doc="children logits -> top logits"),
    "loss.top": Spec(0.0, float, low=0.0, high=10.0,
                     doc="weight of the CE on the head's own top-level output (gc, lcl, proxy)"),
    "loss.focal": Spec(0.0, float, low=0.0, high=10.0, doc="weight of the fine focal loss (003)"),
    "loss.focal_gamma": Spec(2.0, float, low=0.0, high=10.0),
    "loss.proxy": Spec(0.0, float, low=0.0, high=10.0,
                       doc="weight of the hierarchical proxy loss, five terms (003; proxy head)"),
    "loss.proxy_margin": Spec(0.0, float, low=-1.0, high=1.0,
                              doc="proxy loss: cosine above which proxies are pushed apart"),
    "loss.proxy_anchor": Spec(0.0, float, low=0.0, high=10.0, doc="weight of Proxy Anchor (003; proxy head)"),
    "loss.pa_margin": Spec(0.1, float, low=0.0, high=1.0, doc="Proxy Anchor margin delta"),
    "loss.pa_alpha": Spec(32.0, float, low=1.0, high=128.0, doc="Proxy Anchor scale alpha"),
    "loss.supcon": Spec(0.0, float, low=0.0, high=10.0,
                        doc="weight of supervised contrastive loss on top-level labels (004)"),
    "loss.supcon_tau": Spec(0.5, float, low=0.01, high=2.0),
    "loss.top_penalty": Spec(0.0, float, low=0.0, high=10.0,
                             doc="weight of the expected top-level error 1 - P(true top) (004)"),
    "loss.knn_distill": Spec(0.0, float, low=0.0, high=10.0,
                             doc="weight of KL(p_knn || p_model), bank = the fold's training rows (002)"),
    "loss.knn_k": Spec(10, int, low=1, high=1000),
    "loss.knn_tau": Spec(0.1, float, low=0.001, high=10.0, doc="similarity temperature of the KNN target"),
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
    "train.mixup_alpha": Spec(0.0, float, low=0.0, high=10.0, doc="mixup Beta(a, a); 0 = off"),
    # data strategy: changes only the training part of each fold
    "data.min_confidence": Spec(0, int, low=0, high=5,
                                doc="drop training rows (development and crowd) below this confidence"),
    "data.confidence_weighting": Spec(False, bool,
                                      doc="weight training rows (development and crowd) by confidence / 5"),
    "data.crowd": Spec("none", str, ("none", "all", "teacher", "el2n", "uploader_cap", "union",
                                     "intersection", "pseudo"),
                       doc="which crowd rows (--crowd-data) join every fold's training part"),
    "data.crowd_per_uploader": Spec(200, int, low=1, doc="uploader_cap: rows per (uploader, class)"),
    "data.crowd_a": Spec("teacher", str, ("teacher", "el2n", "uploader_cap"),
                         doc="union/intersection: first filter"),
    "data.crowd_b": Spec("el2n", str, ("teacher", "el2n", "uploader_cap"),
                         doc="union/intersection: second filter"),
    "data.el2n_epochs": Spec(5, int, low=1, high=100, doc="el2n: epochs before scoring"),
    "data.el2n_drop": Spec(0.2, float, low=0.0, high=0.95, doc="el2n: hardest crowd fraction dropped"),
    "data.two_stage": Spec(False, bool, doc="pre-train on the crowd rows, then fine-tune on the fold"),
    "data.pretrain_epochs": Spec(20, int, low=1, high=1000, doc="two_stage: max epochs of stage 1"),
    "data.pseudo_dir": Spec("", str, doc="pseudo: the folder `bst-search pseudo-label` wrote"),
    "data.pseudo_lambda": Spec(1.0, float, low=0.0, high=1.0,
                               doc="pseudo: weight of the soft pseudo-label against the crowd label"),
    "data.pseudo_min_p": Spec(0.0, float, low=0.0, high=1.0,
                              doc="pseudo: drop crowd rows whose pseudo-label's top probability is lower"),
    # post-processing of each fold model's predictions
    "post.knn_alpha": Spec(0.0, float, low=0.0, high=1.0,
                           doc="p = (1-a) p_model + a p_knn; bank = the fold's training rows (002)"),
    "post.knn_k": Spec(10, int, low=1, high=1000),
    "post.knn_tau": Spec(0.1, float, low=0.001, high=10.0),
    "post.ckpt_avg": Spec(1, int, low=1, high=20, doc="average the logits of the top-k val checkpoints (000)"),
    # the meta_probs backbone: a text classifier cross-fitted inside every fold
    "meta.model": Spec("tfidf_lr", str, ("tfidf_lr", "minilm_lr"),
                       doc="tfidf_lr: TF-IDF n-grams + LogReg; minilm_lr: minilm_text + LogReg"),
    # 1: on text whose words are a sibling's or another class's for 29 % of the sounds, C = 10
    # overfits (balanced accuracy 0.63 against 0.71, docs/benchmarks.md) and costs twice the CPU
    "meta.C": Spec(1.0, float, low=1e-4, high=1e4, doc="inverse L2 strength of the LogReg"),
}
# fmt: on

SECTIONS = ("backbones", "model", "loss", "train", "data", "post", "meta", "seed")


# Keys that only matter while another key has some value: {key: predicate on the flat
# resolved configuration}. A key absent here is always in use. Read by :func:`active_keys`.
_LOSS_SMOOTHED = ("loss.ce", "loss.alpha", "loss.top")
_CROWD_FILTER_KEYS = {"uploader_cap": ("data.crowd_per_uploader",),
                      "el2n": ("data.el2n_epochs", "data.el2n_drop")}


def _late(f: dict[str, Any]) -> bool:
    return f["model.name"] == "late_fusion"


def _meta(f: dict[str, Any]) -> bool:
    return META_BACKBONE in f["backbones"]


def _crowd_filters(f: dict[str, Any]) -> set[str]:
    """The crowd filters a configuration runs (both sides of union/intersection)."""
    c = f["data.crowd"]
    return {f["data.crowd_a"], f["data.crowd_b"]} if c in ("union", "intersection") else {c}


ACTIVE_WHEN: dict[str, Any] = {
    "model.batch_norm": lambda f: not _late(f) or f["model.encoder"] == "hatr",
    "model.res_blocks": lambda f: not _late(f) or f["model.encoder"] == "hatr",
    "model.encoder": _late,
    "model.linear_layers": lambda f: ((_late(f) and f["model.encoder"] == "linear")
                                      or (_meta(f) and f["model.meta_encoder"] == "linear")),
    "model.meta_encoder": _meta,
    "meta.model": _meta,
    "meta.C": _meta,
    "model.fusion": _late,
    "model.heads": lambda f: _late(f) and f["model.fusion"] == "transformer",
    "model.layers": lambda f: _late(f) and f["model.fusion"] == "transformer",
    "model.ff_mult": lambda f: _late(f) and f["model.fusion"] == "transformer",
    "model.pool": lambda f: _late(f) and f["model.fusion"] == "transformer",
    "model.head": _late,
    "model.head_depth": _late,
    "model.proxy_dim": lambda f: _late(f) and f["model.head"] == "proxy",
    "model.proxy_tau": lambda f: _late(f) and f["model.head"] == "proxy",
    "loss.label_smoothing": lambda f: any(f[k] > 0 for k in _LOSS_SMOOTHED),
    "loss.class_weights": lambda f: f["loss.ce"] > 0 or f["loss.focal"] > 0,
    "loss.coarse": lambda f: f["loss.alpha"] > 0,
    "loss.focal_gamma": lambda f: f["loss.focal"] > 0,
    "loss.proxy_margin": lambda f: f["loss.proxy"] > 0,
    "loss.pa_margin": lambda f: f["loss.proxy_anchor"] > 0,
    "loss.pa_alpha": lambda f: f["loss.proxy_anchor"] > 0,
    "loss.supcon_tau": lambda f: f["loss.supcon"] > 0,
    "loss.knn_k": lambda f: f["loss.knn_distill"] > 0,
    "loss.knn_tau": lambda f: f["loss.knn_distill"] > 0,
    "train.step_size": lambda f: f["train.schedule"] == "step",
    "train.gamma": lambda f: f["train.schedule"] in ("step", "plateau"),
    "train.plateau_patience": lambda f: f["train.schedule"] == "plateau",
    "train.mask_p": lambda f: f["train.mask_mode"] != "none",
    "data.crowd_a": lambda f: f["data.crowd"] in ("union", "intersection"),
    "data.crowd_b": lambda f: f["data.crowd"] in ("union", "intersection"),
    "data.crowd_per_uploader": lambda f: "uploader_cap" in _crowd_filters(f),
    "data.el2n_epochs": lambda f: "el2n" in _crowd_filters(f),
    "data.el2n_drop": lambda f: "el2n" in _crowd_filters(f),
    "data.two_stage": lambda f: f["data.crowd"] != "none",
    "data.pseudo_dir": lambda f: f["data.crowd"] == "pseudo",
    "data.pseudo_lambda": lambda f: f["data.crowd"] == "pseudo",
    "data.pseudo_min_p": lambda f: f["data.crowd"] == "pseudo",
    "data.pretrain_epochs": lambda f: f["data.crowd"] != "none" and bool(f["data.two_stage"]),
    "post.knn_k": lambda f: f["post.knn_alpha"] > 0,
    "post.knn_tau": lambda f: f["post.knn_alpha"] > 0,
}


def active_keys(cfg: dict[str, Any]) -> dict[str, Any]:
    """The flat {dotted key: value} of a resolved configuration without the keys it does not
    use (``model.fusion`` of a ``hatr`` model, ``train.step_size`` without the step schedule,
    a loss term's settings at weight 0). MLflow params and per-option comparisons use this, so
    grouping trials by an option never mixes in trials that have no such option."""
    flat = flatten(cfg)
    missing = sorted(set(ACTIVE_WHEN) - set(flat))
    if missing:
        raise ConfigError(f"active_keys needs a resolved configuration; missing {', '.join(missing)}")
    return {k: v for k, v in flat.items() if k not in ACTIVE_WHEN or ACTIVE_WHEN[k](flat)}


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


def check_value(key: str, value: Any) -> Any:
    """One key's value, coerced and checked on its own (no cross-key rules)."""
    if key not in SCHEMA:
        raise ConfigError(f"unknown configuration key {key!r}")
    return _coerce(key, value, SCHEMA[key])


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
    check_consistency(out)
    return unflatten(out)


LOSS_WEIGHTS = ("loss.ce", "loss.alpha", "loss.top", "loss.focal", "loss.proxy",
                "loss.proxy_anchor", "loss.supcon", "loss.top_penalty", "loss.knn_distill")
TOP_HEADS = ("gc", "lcl", "proxy")  # heads with their own top-level output
# Every key check_consistency reads: a search space enumerates these to tell whether any of
# its combinations is valid (search_space.py); a test checks that the rules read no other key.
RULE_KEYS = ("model.name", "model.head", "model.fusion", "model.encoder", "model.hidden",
             "model.heads", *LOSS_WEIGHTS, "data.crowd", "data.crowd_a", "data.crowd_b",
             "data.two_stage")


def check_consistency(flat: dict[str, Any]) -> None:
    """Rules that involve more than one key; each error names the keys and the fix."""
    late = flat["model.name"] == "late_fusion"
    head = flat["model.head"] if late else "flat"
    if not late:
        moved = [k for k in ("model.head", "model.fusion", "model.encoder")
                 if flat[k] != SCHEMA[k].default]
        if moved:
            raise ConfigError(f"{', '.join(moved)}: only model.name=late_fusion is built from "
                              f"encoder, fusion and head; hatr has the official fixed layout")
    if not any(flat[k] > 0 for k in LOSS_WEIGHTS):
        raise ConfigError(f"every loss weight is 0 ({', '.join(LOSS_WEIGHTS)}): nothing to train")
    if flat["loss.top"] > 0 and head not in TOP_HEADS:
        raise ConfigError(f"loss.top={flat['loss.top']} needs a head with a top-level output "
                          f"(model.head: {', '.join(TOP_HEADS)}); the head is {head}")
    if head in ("gc", "lcl") and flat["loss.top"] <= 0:
        raise ConfigError(f"model.head={head} trains its top-level classifier through loss.top; "
                          f"set loss.top > 0 (the multi-branch system uses 1.0)")
    for k in ("loss.proxy", "loss.proxy_anchor"):
        if flat[k] > 0 and head != "proxy":
            raise ConfigError(f"{k}={flat[k]} needs model.head=proxy (the head is {head})")
    if flat["model.fusion"] == "transformer" and flat["model.hidden"] % flat["model.heads"]:
        raise ConfigError(f"model.hidden={flat['model.hidden']} is not divisible by "
                          f"model.heads={flat['model.heads']} (transformer fusion)")
    if flat["data.crowd"] in ("union", "intersection") and flat["data.crowd_a"] == flat["data.crowd_b"]:
        raise ConfigError(f"data.crowd={flat['data.crowd']} combines two different filters; "
                          f"data.crowd_a and data.crowd_b are both {flat['data.crowd_a']!r}")
    if flat["data.two_stage"] and flat["data.crowd"] == "none":
        raise ConfigError("data.two_stage=true pre-trains on crowd rows; set data.crowd too")


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
