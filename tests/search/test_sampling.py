"""Samplers and warm starts: constant-liar TPE scaled to the concurrency, the --sampler
choices, and the best configurations of an earlier experiment as Optuna params."""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna
import pytest

from bst_search import config, tracking
from bst_search.cli import add_search_arguments
from bst_search.search.samplers import SAMPLERS, make_sampler, startup_trials
from bst_search.search.space import SPACE_DIR, load_space
from bst_search.search.warm_start import warm_start_points

SPACES = SPACE_DIR
optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_sampler_option_offers_every_registered_sampler() -> None:
    p = argparse.ArgumentParser()
    add_search_arguments(p)
    action = next(a for a in p._actions if a.dest == "sampler")
    # unset means "tpe" on a fresh sweep and the stored sweep's sampler on --resume
    assert tuple(action.choices) == tuple(SAMPLERS) and action.default is None
    from bst_search.search.plan import fixed_args

    args = p.parse_args(["--data", "d", "--space", "s", "--experiment", "e"])
    space = load_space(SPACES / "smoke.yaml")
    assert fixed_args(args, space, Path("/tmp"), None)[0].sampler == "tpe"
    assert fixed_args(args, space, Path("/tmp"), {"args": {"sampler": "gp"}})[0].sampler == "gp"
    with pytest.raises(ValueError, match="--sampler"):
        make_sampler("annealing", 0, 1)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_tpe_lies_about_running_trials_and_scales_its_start_up() -> None:
    one, many = make_sampler("tpe", 0, 1), make_sampler("tpe", 0, 32)
    assert isinstance(many, optuna.samplers.TPESampler)
    assert one._constant_liar and many._constant_liar
    assert (one._n_startup_trials, many._n_startup_trials) == (10, 64)
    assert startup_trials(8) == 16 and startup_trials(3) == 10


@pytest.mark.parametrize("name", ["random", "gp"])
def test_other_samplers_run_the_smoke_space(name: str) -> None:
    space = load_space(SPACES / "smoke.yaml")
    study = optuna.create_study(direction="maximize", sampler=make_sampler(name, 0, 1))
    for _ in range(12):  # past GP's 10 start-up trials
        trial = study.ask()
        sampled = space.sample(trial)
        space.config(sampled)
        study.tell(trial, -abs(sampled["train.lr"] - 1e-3))
    assert len({t.params["train.lr"] for t in study.trials}) == 12


def _log_trial(cl, exp_id: str, i: int, score: float | None, **values) -> None:
    cfg = config.load("late_fusion", values)
    run = tracking.start_trial_run(cl, exp_id, sweep="prev-1", trial_id=f"t{i}", cfg=cfg,
                                   fingerprints={})
    complete = score is not None
    tracking.finish_trial_run(cl, run, metrics={"oof_hF_strict": score} if complete else None,
                              artifacts_dir=None, status="FINISHED",
                              bst_status="complete" if complete else "early_stopped")


def test_warm_start_points_are_the_best_trials_in_the_new_space(tmp_path: Path) -> None:
    uri = tracking.tracking_uri(tmp_path)
    cl = tracking.client(uri)
    exp_id = tracking.ensure_experiment(cl, "prev", tmp_path, uri)
    _log_trial(cl, exp_id, 0, 0.50, **{"train.lr": 2e-3, "backbones": ["panns", "clap_audio"]})
    _log_trial(cl, exp_id, 1, 0.70, **{"train.lr": 5e-3, "train.mask_mode": "count",
                                       "train.mask_p": 0.3, "model.dropout": 0.1})
    _log_trial(cl, exp_id, 2, None, **{"train.lr": 9e-3})  # early-stopped: not a candidate
    _log_trial(cl, exp_id, 3, 0.60, **{"train.lr": 0.5, "train.mask_mode": "none"})  # lr out of range
    _log_trial(cl, exp_id, 4, 0.69, **{"train.lr": 5e-3, "train.mask_mode": "count",
                                       "train.mask_p": 0.3, "model.dropout": 0.1})  # a duplicate
    space = load_space(SPACES / "smoke.yaml")
    points = warm_start_points(uri, "prev", space, 3)
    assert [p.get("train.lr") for p in points] == [5e-3, None, 2e-3]
    best = points[0]
    assert best["train.mask_mode"] == "count" and best["train.mask_p"] == 0.3
    assert best["backbones"] == "clap_audio,clap_text,panns"  # late_fusion's, as encoded
    assert "train.mask_p" not in points[1]  # mask_mode none: the condition is false
    assert points[2]["backbones"] == "clap_audio,panns"  # in the space's order
    # the points are what the define-by-run function replays
    study = optuna.create_study(direction="maximize")
    for p in points:
        study.enqueue_trial(p)
    for p in points:
        trial = study.ask()
        sampled = space.sample(trial)
        assert {k: v for k, v in trial.params.items() if k in p} == p
        space.config(sampled)
        study.tell(trial, 0.0)
    with pytest.raises(SystemExit, match="no experiment 'absent'"):
        warm_start_points(uri, "absent", space, 3)
