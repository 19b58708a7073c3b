"""Search spaces: shipped files load, sampling respects conditions and the backbone rules,
and every kind of invalid space is refused at load time with the offending key named."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml

from bst_search import config
from bst_search.search.space import (
    SPACE_DIR,
    InvalidSample,
    SearchSpace,
    SpaceError,
    is_text_backbone,
    load_space,
    space_from_dict,
)

SPACES = SPACE_DIR
SHIPPED = ("smoke", "baseline", "mesh")

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run(space: SearchSpace, n: int, seed: int) -> tuple[list[dict[str, Any]], optuna.Study]:
    """Sample n trials the way the driver does (ask, define-by-run, tell) with seeded TPE."""
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
    )
    out = []
    for _ in range(n):
        trial = study.ask()
        sampled = space.sample(trial)
        # a dummy objective with structure, so TPE actually leaves its random start-up phase
        score = -abs(sampled["train.lr"] - 1e-3) * 100 + len(sampled["backbones"]) * 0.1
        score += 0.2 if sampled.get("model.name") == "hatr" else 0.0
        study.tell(trial, score)
        out.append(sampled)
    return out, study


def _condition_holds(when: dict[str, Any], sampled: dict[str, Any]) -> bool:
    """The test's own reading of a `when` block from the raw YAML (not the module's)."""
    for parent, values in when.items():
        values = values if isinstance(values, list) else [values]
        if parent not in sampled or sampled[parent] not in values:
            return False
    return True


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads(name: str) -> None:
    space = load_space(SPACES / f"{name}.yaml")
    cfg = space.config({})
    assert cfg == config.validate(cfg)
    text = space.describe()
    for p in space.params:
        assert p in text
    needed = space.backbones_needed()
    assert needed and set(cfg["backbones"]) <= set(needed)
    assert any(not is_text_backbone(b) for b in needed)


def test_baseline_space_only_moves_seed_and_lr() -> None:
    space = load_space(SPACES / "baseline.yaml")
    assert set(space.params) == {"seed", "train.lr"}
    sampled = {"seed": 7, "train.lr": 2e-3}
    cfg = config.flatten(space.config(sampled))
    ref = config.flatten(config.load("baseline_hatr"))
    assert {k for k in ref if ref[k] != cfg[k]} == {"seed", "train.lr"}


def test_mesh_covers_every_searchable_key() -> None:
    space = load_space(SPACES / "mesh.yaml")
    single_valued = {k for k, s in config.SCHEMA.items() if s.choices and len(s.choices) == 1}
    budget = {"train.max_epochs", "train.patience", "train.drop_last"}
    stage2 = {"data.pseudo_dir", "data.pseudo_lambda", "data.pseudo_min_p"}  # the stage2 space's
    assert set(config.SCHEMA) - set(space.params) - single_valued == budget | stage2
    assert budget <= set(space.fixed)
    second = load_space("stage2")
    assert second.fixed["data.crowd"] == "pseudo" and "data.pseudo_lambda" in second.params


def test_mesh_sampling_respects_conditions_and_backbones() -> None:
    path = SPACES / "mesh.yaml"
    raw = yaml.safe_load(path.read_text())["params"]
    whens = {k: v["when"] for k, v in raw.items() if "when" in v}
    bb = raw["backbones"]
    space = load_space(path)
    samples, study = _run(space, 200, seed=0)
    seen_on = dict.fromkeys(whens, 0)
    seen_off = dict.fromkeys(whens, 0)
    for sampled, frozen in zip(samples, study.trials, strict=True):
        # Optuna recorded exactly what was sampled: conditionals absent there too
        assert set(frozen.params) == set(sampled)
        flat = config.flatten(space.config(sampled))  # validates
        for k, v in sampled.items():
            assert flat[k] == v
        for key, when in whens.items():
            if _condition_holds(when, sampled):
                assert key in sampled, f"{key} missing although {when} holds: {sampled}"
                seen_on[key] += 1
            else:
                assert key not in sampled, f"{key} present although {when} is false"
                seen_off[key] += 1
        unconditional = set(raw) - set(whens)
        assert unconditional <= set(sampled)
        b = sampled["backbones"]
        assert isinstance(b, list) and len(set(b)) == len(b)
        assert set(b) <= set(bb["choices"]) and len(b) >= bb.get("min_size", 1)
        assert any(not is_text_backbone(x) for x in b)
        assert b == [c for c in bb["choices"] if c in b]  # canonical order
    # the checks above were not vacuous: every conditional was seen both ways
    assert all(seen_on.values()) and all(seen_off.values()), (seen_on, seen_off)
    subsets = {tuple(s["backbones"]) for s in samples}
    assert len(subsets) == len(space.params["backbones"].subsets) == 12  # 4 backbones, 1 audio+


def test_sampling_is_deterministic() -> None:
    space = load_space(SPACES / "mesh.yaml")
    a, _ = _run(space, 40, seed=3)
    b, _ = _run(space, 40, seed=3)
    c, _ = _run(space, 40, seed=4)
    assert a == b
    assert a != c


def test_smoke_space_samples_valid_configs() -> None:
    space = load_space(SPACES / "smoke.yaml")
    samples, _ = _run(space, 30, seed=1)
    for s in samples:
        cfg = space.config(s)
        assert cfg["model"]["hidden"] == 32 and cfg["train"]["max_epochs"] <= 4
        assert ("train.mask_p" in s) == (s["train.mask_mode"] == "count")


def test_ray_optuna_search_accepts_define_by_run() -> None:
    """Ray's OptunaSearch wraps the trial and merges our returned dict over raw suggestions:
    backbones must come back as a list, conditionals absent."""
    from ray.tune.search.optuna import OptunaSearch

    space = load_space(SPACES / "smoke.yaml")
    searcher = OptunaSearch(
        space=space.sample, metric=space.metric, mode=space.mode,
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    for i in range(5):
        cfg = searcher.suggest(f"t{i}")
        assert isinstance(cfg["backbones"], list)
        assert ("train.mask_p" in cfg) == (cfg["train.mask_mode"] == "count")
        space.config(cfg)
        searcher.on_trial_complete(f"t{i}", {space.metric: 0.5, "training_iteration": 1})


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_conditions_nested_lists_and_ints(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, """
        fixed: {train: {max_epochs: 7}}
        params:
          train.schedule: {type: categorical, choices: [step, plateau, none]}
          train.gamma: {type: float, low: 0.1, high: 0.9, when: {train.schedule: [step, plateau]}}
          train.plateau_patience: {type: int, low: 1, high: 4, when: {train.schedule: plateau}}
          train.warmup_epochs: {type: int, low: 0, high: 4, step: 2, when: {train.plateau_patience: 2}}
          data.confidence_weighting: {type: categorical, choices: [true, false]}
          data.min_confidence: {type: int, low: 1, high: 3, when: {data.confidence_weighting: true}}
    """))
    assert space.fixed == {"train.max_epochs": 7}
    assert space.backbones_needed() == config.SCHEMA["backbones"].default
    samples, _ = _run_plain(space, 150)
    for s in samples:
        assert ("train.gamma" in s) == (s["train.schedule"] in ("step", "plateau"))
        assert ("train.plateau_patience" in s) == (s["train.schedule"] == "plateau")
        # a child of a conditional parameter disappears with its parent
        assert ("train.warmup_epochs" in s) == (s.get("train.plateau_patience") == 2)
        assert ("data.min_confidence" in s) == (s["data.confidence_weighting"] is True)
        assert s.get("train.warmup_epochs", 0) in (0, 2, 4)
        assert space.config(s)["train"]["max_epochs"] == 7
    assert any("train.warmup_epochs" in s for s in samples)


def _run_plain(space: SearchSpace, n: int) -> tuple[list[dict[str, Any]], optuna.Study]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        t = study.ask()
        out.append(space.sample(t))
        study.tell(t, 0.0)
    return out, study


def test_subset_sizes_and_relative_base(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("model: {hidden: 16}\n")
    space = load_space(_write(tmp_path, """
        base: mine.yaml
        params:
          backbones: {type: subset, choices: [clap_text, clap_audio, panns, mert], min_size: 2, max_size: 3}
    """))
    subsets = space.params["backbones"].subsets
    assert all(2 <= len(s) <= 3 and set(s) != {"clap_text"} for s in subsets)
    assert len(subsets) == 6 + 4  # C(4,2) + C(4,3), none text-only
    assert space.backbones_needed() == ["clap_text", "clap_audio", "panns", "mert"]
    assert space.config({"backbones": ["clap_text", "mert"]})["model"]["hidden"] == 16


def test_base_file_is_resolved_into_the_space_that_travels_to_workers(tmp_path: Path) -> None:
    import pickle

    (tmp_path / "mine.yaml").write_text("model: {hidden: 24}\n")
    space = load_space(_write(tmp_path, f"base: mine.yaml\nparams: {{{LR}}}\n"))
    (tmp_path / "mine.yaml").unlink()  # a worker on another node has no such file
    remote = pickle.loads(pickle.dumps(space))
    assert remote.config({"train.lr": 1e-3})["model"]["hidden"] == 24


LR = "train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}"
NAME = "model.name: {type: categorical, choices: [hatr, late_fusion]}"

INVALID = [
    ("top_level", "paramz: {}", "paramz"),
    ("top_not_mapping", "- a\n- b\n", "top level"),
    ("unknown_param", "params: {model.nope: {type: int, low: 1, high: 2}}", "model.nope"),
    ("bad_type", "params: {train.lr: {type: uniform, low: 0.1, high: 0.2}}", "train.lr.type"),
    ("unknown_param_field", "params: {model.name: {type: categorical, chioces: [hatr]}}", "model.name.chioces"),
    ("choice_outside_schema", "params: {model.name: {type: categorical, choices: [hatr, resnet]}}", "model.name.choices[1]"),
    ("choice_wrong_type", "params: {model.heads: {type: categorical, choices: [4, eight]}}", "model.heads.choices[1]"),
    ("duplicate_choice", "params: {model.heads: {type: categorical, choices: [4, 4]}}", "model.heads.choices[1]"),
    ("high_outside_schema", "params: {model.dropout: {type: float, low: 0.0, high: 0.95}}", "model.dropout.high"),
    ("low_outside_schema", "params: {model.res_blocks: {type: int, low: -1, high: 3}}", "model.res_blocks.low"),
    ("missing_bound", "params: {model.dropout: {type: float, low: 0.0}}", "model.dropout.high"),
    ("low_ge_high", "params: {train.lr: {type: float, low: 1.0e-2, high: 1.0e-3}}", "train.lr"),
    ("low_eq_high", "params: {model.layers: {type: int, low: 2, high: 2}}", "model.layers"),
    ("log_low_zero", "params: {train.weight_decay: {type: float, low: 0.0, high: 1.0e-3, log: true}}", "train.weight_decay.low"),
    ("log_with_step", "params: {train.lr: {type: float, low: 0.001, high: 0.01, log: true, step: 0.001}}", "train.lr.step"),
    ("int_on_float_key", "params: {train.grad_clip: {type: int, low: 0, high: 5}}", "train.grad_clip.type"),
    ("float_on_int_key", "params: {model.layers: {type: float, low: 1, high: 3}}", "model.layers.type"),
    ("categorical_backbones", "params: {backbones: {type: categorical, choices: [clap_audio]}}", "backbones.type"),
    ("subset_not_list_key", "params: {model.name: {type: subset, choices: [hatr]}}", "model.name.type"),
    ("when_undefined", "params: {model.heads: {type: categorical, choices: [4, 8], when: {model.name: late_fusion}}}", "model.heads.when.model.name"),
    ("when_defined_later", f"params:\n  model.heads: {{type: categorical, choices: [4, 8], when: {{model.name: late_fusion}}}}\n  {NAME}\n", "model.heads.when.model.name"),
    ("when_self", "params: {model.name: {type: categorical, choices: [hatr], when: {model.name: hatr}}}", "model.name.when.model.name"),
    ("when_bad_value", f"params:\n  {NAME}\n  model.heads: {{type: categorical, choices: [4, 8], when: {{model.name: resnet}}}}\n", "model.heads.when.model.name"),
    ("when_value_in_schema_not_choices", "params:\n  model.name: {type: categorical, choices: [hatr]}\n  model.heads: {type: categorical, choices: [4], when: {model.name: late_fusion}}\n", "model.heads.when.model.name"),
    ("when_int_out_of_range", "params:\n  model.layers: {type: int, low: 1, high: 3}\n  model.heads: {type: int, low: 1, high: 8, when: {model.layers: 5}}\n", "model.heads.when.model.layers"),
    ("when_on_float", f"params:\n  {LR}\n  model.heads: {{type: int, low: 1, high: 8, when: {{train.lr: 0.001}}}}\n", "model.heads.when.train.lr"),
    ("subset_no_audio", "params: {backbones: {type: subset, choices: [clap_text, other_text]}}", "backbones.choices"),
    ("subset_min_size", "params: {backbones: {type: subset, choices: [clap_audio, panns], min_size: 3}}", "backbones.min_size"),
    ("subset_min_gt_max", "params: {backbones: {type: subset, choices: [clap_audio, panns], min_size: 2, max_size: 1}}", "backbones.min_size"),
    ("subset_duplicate", "params: {backbones: {type: subset, choices: [clap_audio, clap_audio]}}", "backbones"),
    ("unknown_metric", "objective: {metric: accuracy}", "objective.metric"),
    ("bad_mode", "objective: {metric: oof_hF, mode: maximize}", "objective.mode"),
    ("objective_field", "objective: {metrc: oof_hF}", "objective.metrc"),
    ("resource_unknown", "resources: {gpus: 1}", "resources.gpus"),
    ("resource_negative", "resources: {cpu: 1, gpu: -0.5}", "resources.gpu"),
    ("fixed_bad_value", "fixed: {train.max_epochs: 0}", "fixed.train.max_epochs"),
    ("fixed_bad_choice_on_base", "base: baseline_hatr\nfixed: {model.name: resnet}", "fixed.model.name"),
    ("fixed_unknown_key", "fixed: {train.nope: 1}", "fixed.train.nope"),
    ("fixed_and_param", f"fixed: {{train.lr: 0.001}}\nparams:\n  {LR}\n", "params.train.lr"),
    ("fixed_text_only", "fixed: {backbones: [clap_text]}", "backbones"),
    ("unknown_base", "base: no_such_preset", "base"),
]


@pytest.mark.parametrize(("text", "key"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_space_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(SpaceError, match=re.escape(key)):
        load_space(_write(tmp_path, text))


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="no such"):
        load_space(tmp_path / "absent.yaml")
    with pytest.raises(SpaceError, match="YAML"):
        load_space(_write(tmp_path, "params: {a: [1,\n"))


def test_invalid_base_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("model: {name: resnet}\n")
    with pytest.raises(SpaceError, match=r"base .*broken\.yaml.*model\.name"):
        load_space(_write(tmp_path, "base: broken.yaml\n"))


def test_can_take() -> None:
    mesh = load_space(SPACES / "mesh.yaml")
    base = load_space(SPACES / "baseline.yaml")
    assert mesh.can_take("data.crowd", "teacher") and not base.can_take("data.crowd", "teacher")
    assert base.can_take("data.crowd", "none") and base.can_take("model.name", "hatr")
    # a conditional parameter keeps its base value in trials where it is absent
    assert mesh.can_take("model.heads", 8) and mesh.can_take("model.heads", 2)
    assert not mesh.can_take("model.heads", 16)
    assert mesh.can_take("train.lr", 1e-3) and not mesh.can_take("train.lr", 0.5)
    assert mesh.can_take("backbones", ["clap_audio", "panns"])
    assert not mesh.can_take("backbones", ["clap_text"])
    no_crowd, _ = mesh.restricted_to(["clap_audio", "clap_text", "panns"], has_crowd=False)
    assert not no_crowd.can_take("data.crowd", "teacher")
    with pytest.raises(SpaceError, match="model.nope"):
        mesh.can_take("model.nope", 1)


# ------------------------------------------------------- cross-key rules and data at hand

MIXED_HEADS = """
    base: late_fusion
    params:
      model.head: {type: categorical, choices: [flat, gc, lcl, proxy]}
      loss.top: {type: categorical, choices: [0.0, 1.0]}
      loss.proxy: {type: categorical, choices: [0.0, 0.5]}
      train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""


class _Recording(dict):
    """A flat configuration that remembers which keys were read."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)


def test_rule_keys_are_every_key_the_rules_read() -> None:
    """satisfiable() enumerates only config.RULE_KEYS: the rules must read no other key."""
    rng = np.random.default_rng(0)
    read: set[str] = set()
    for _ in range(3000):
        flat = config.flatten(config.defaults())
        for k in config.RULE_KEYS:
            spec = config.SCHEMA[k]
            if spec.choices:
                flat[k] = spec.choices[rng.integers(len(spec.choices))]
            elif spec.type is float:
                flat[k] = float(rng.choice([0.0, 0.5]))
            elif spec.type is int:
                flat[k] = int(rng.choice([2, 3, 4, 8, 12, 64]))
            elif spec.type is bool:
                flat[k] = bool(rng.integers(2))
        rec = _Recording(flat)
        try:
            config.check_consistency(rec)
        except config.ConfigError:
            pass
        read |= rec.read
    assert read == set(config.RULE_KEYS)


def test_sampling_never_returns_a_combination_that_breaks_a_rule(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, MIXED_HEADS))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    valid, invalid = 0, []
    for _ in range(60):
        trial = study.ask()
        try:
            sampled = space.sample(trial)
        except InvalidSample as e:
            invalid.append(str(e))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        space.config(sampled)  # would raise ConfigError for a broken rule
        valid += 1
        study.tell(trial, 0.0)
    assert valid and invalid
    assert any("loss.top" in m for m in invalid) and any("loss.proxy" in m for m in invalid)


def test_optuna_search_tells_fail_and_asks_again(tmp_path: Path) -> None:
    from bst_search.search.searcher import ValidOptunaSearch

    space = load_space(_write(tmp_path, MIXED_HEADS))
    searcher = ValidOptunaSearch(space=space.sample, metric=space.metric, mode=space.mode,
                                 sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4))
    for i in range(20):
        cfg = searcher.suggest(f"t{i}")
        space.config(cfg)  # every suggestion is a valid configuration
        searcher.on_trial_complete(f"t{i}", {space.metric: cfg["train.lr"], "training_iteration": 1})
    trials = searcher._ot_study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(trials) - len(failed) == 20 and failed
    assert all(space.violation(t.params | {"backbones": ["clap_audio"]}) for t in failed)
    assert all(t.user_attrs["bst.invalid"] for t in failed)


@pytest.mark.parametrize(("text", "keys"), [
    ("""
     base: late_fusion
     fixed: {loss.top: 0.0}
     params:
       model.head: {type: categorical, choices: [gc, lcl]}
     """, "loss.top"),
    ("""
     base: late_fusion
     params:
       data.crowd: {type: categorical, choices: [union, intersection]}
       data.crowd_a: {type: categorical, choices: [el2n]}
       data.crowd_b: {type: categorical, choices: [el2n]}
     """, "data.crowd_a"),
    ("""
     base: late_fusion
     params:
       model.hidden: {type: int, low: 33, high: 35, step: 2}
       model.heads: {type: categorical, choices: [2, 4]}
     """, "model.heads"),
], ids=["head-without-top", "same-filter-twice", "indivisible-heads"])
def test_a_space_no_combination_of_which_is_valid_is_refused(tmp_path: Path, text: str,
                                                             keys: str) -> None:
    with pytest.raises(SpaceError, match=f"every combination.*{re.escape(keys)}"):
        load_space(_write(tmp_path, text))


def test_mesh_without_crowd_data_and_panns_drops_what_needs_them() -> None:
    mesh = load_space(SPACES / "mesh.yaml")
    # minilm_text: what meta.model=minilm_lr reads (without it, that value leaves the space)
    space, dropped = mesh.restricted_to(["clap_audio", "clap_text", "minilm_text"], has_crowd=False)
    assert dropped[0] == "backbones=panns (no embeddings)"
    assert dropped[1].startswith("data.crowd=all|teacher|el2n|uploader_cap|union|intersection")
    assert {"data.two_stage", "data.pretrain_epochs", "data.crowd_a", "data.el2n_drop"} <= set(dropped)
    assert "data.min_confidence" in space.params and "data.two_stage" not in space.params
    samples, _ = _run(space, 60, seed=0)
    for s in samples:
        cfg = space.config(s)
        assert "panns" not in cfg["backbones"] and cfg["data"]["crowd"] == "none"
        assert not cfg["data"]["two_stage"]
    same, nothing = mesh.restricted_to(["clap_audio", "clap_text", "panns", "minilm_text"],
                                       has_crowd=True)
    assert nothing == [] and same.params.keys() == mesh.params.keys()


def test_restriction_keeps_rules_for_data_it_cannot_drop(tmp_path: Path) -> None:
    mesh = load_space(SPACES / "mesh.yaml")
    space, dropped = mesh.restricted_to(["clap_audio", "panns"], has_crowd=True, has_confidence=False)
    assert "data.min_confidence=2|3|4 (no confidences)" in dropped
    assert "data.confidence_weighting=True (no confidences)" in dropped
    # crowd data without confidences: a confidence key never comes with a crowd strategy
    space, _ = mesh.restricted_to(["clap_audio", "panns"], has_crowd=True, crowd_confidence=False)
    samples = []
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    while len(samples) < 40:
        trial = study.ask()
        try:
            samples.append(space.sample(trial))
        except InvalidSample as e:
            assert "no confidences" in str(e) or "crowd" in str(e)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, 0.0)
    assert not any(s["data.crowd"] != "none" and (s["data.min_confidence"] or s["data.confidence_weighting"])
                   for s in samples)
    with pytest.raises(SpaceError, match=r"data\.crowd=all \(base/fixed\) needs crowd data"):
        load_space(_write(tmp_path, "base: late_fusion\nfixed: {data.crowd: all}\n")).restricted_to(
            ["clap_audio", "clap_text", "panns"], has_crowd=False)
    with pytest.raises(SpaceError, match="backbones: no valid subset.*clap_audio"):
        load_space(SPACES / "smoke.yaml").restricted_to(["clap_text"], has_crowd=False)
    with pytest.raises(SpaceError, match="every combination.*min_confidence=3 with data.crowd"):
        load_space(_write(tmp_path, """
            base: late_fusion
            fixed: {data.min_confidence: 3}
            params:
              data.crowd: {type: categorical, choices: [all, teacher]}
        """)).restricted_to(["clap_audio", "clap_text", "panns"], has_crowd=True,
                            crowd_confidence=False)


def test_data_available_reads_the_layout(tiny_data: dict) -> None:
    from bst_search.search.space import data_available

    got = data_available(tiny_data["dev"], tiny_data["eval"], tiny_data["crowd"])
    assert got == {"available_backbones": ["clap_audio", "clap_text", "panns"], "has_crowd": True,
                   "has_confidence": True, "crowd_confidence": False, "has_text": True}
    assert data_available(tiny_data["dev"], None, None)["has_crowd"] is False


def test_conditional_backbones_fall_back_to_base(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, """
        base: late_fusion
        params:
          model.name: {type: categorical, choices: [hatr, late_fusion]}
          backbones: {type: subset, choices: [clap_audio, clap_text], when: {model.name: hatr}}
    """))
    assert space.backbones_needed() == ["clap_audio", "clap_text", "panns"]
    (tmp_path / "text_only.yaml").write_text("backbones: [clap_text]\n")
    with pytest.raises(SpaceError, match="no audio backbone"):
        load_space(_write(tmp_path, """
            base: text_only.yaml
            params:
              model.name: {type: categorical, choices: [hatr, late_fusion]}
              backbones: {type: subset, choices: [clap_audio, clap_text], when: {model.name: hatr}}
        """))


def test_data_without_text_drop_meta_probs_and_its_keys() -> None:
    mesh = load_space(SPACES / "mesh.yaml")
    available = ["clap_audio", "clap_text", "panns", "minilm_text"]
    space, dropped = mesh.restricted_to(available, has_crowd=True, has_text=False)
    assert dropped[0] == "backbones=meta_probs (no metadata text)"
    assert {"meta.model (no metadata text)", "meta.C (no metadata text)",
            "model.meta_encoder (no metadata text)"} <= set(dropped)
    assert not any("meta_probs" in s for s in space.params["backbones"].subsets)
    assert not {"meta.model", "meta.C", "model.meta_encoder"} & set(space.params)
    # without minilm_text embeddings, only the text model that needs them leaves
    space, dropped = mesh.restricted_to(available[:3], has_crowd=True)
    assert dropped == ["meta.model=minilm_lr (no minilm_text embeddings)"]
    assert space.params["meta.model"].choices == ("tfidf_lr",)
    # nothing to drop: base/fixed values needing text are an error
    fixed = space_from_dict({"base": "late_fusion",
                             "fixed": {"backbones": ["clap_audio", "meta_probs"]}}, "x.yaml")
    with pytest.raises(SpaceError, match=r"needs metadata text \(for meta_probs\)"):
        fixed.restricted_to(["clap_audio"], has_crowd=False, has_text=False)


def test_data_available_sees_metadata_text(tiny_data: dict, tmp_path: Path) -> None:
    import shutil

    from bst_search.search.space import data_available

    root = tmp_path / "eval"
    shutil.copytree(tiny_data["eval"] / "metadata", root / "metadata")
    csv = root / "metadata" / "eval_metadata.csv"
    csv.write_text("anonymous_id\n" + "\n".join(f"e{i}" for i in range(3)) + "\n")
    assert data_available(tiny_data["dev"], None, None)["has_text"] is True
    assert data_available(tiny_data["dev"], root, None)["has_text"] is False
