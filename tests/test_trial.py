"""Trial protocol: OOF coverage, determinism, shared folds, resume, data strategies."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from bst_search import config
from bst_search.data import DataError, load_dataset
from bst_search.folds import assign_folds
from bst_search.taxonomy import PROBA_COLUMNS
from bst_search.trial import OutputsError, run_trial

FAST = {"model.hidden": 32, "model.heads": 2, "train.max_epochs": 3, "train.patience": 2,
        "train.batch_size": 64, "train.warmup_epochs": 1}


@pytest.fixture(scope="module")
def dev(tiny_data):
    return load_dataset(tiny_data["dev"])


@pytest.fixture(scope="module")
def ev(tiny_data):
    return load_dataset(tiny_data["eval"])


class Interrupted(Exception):
    """Stands for a process cut off mid-trial."""


def _cfg(**extra):
    return config.load("late_fusion", {**FAST, **extra})


def test_oof_covers_every_sample_once_and_sums_to_one(dev, ev, tmp_path):
    m = run_trial(_cfg(), dev, tmp_path, eval_data=ev)
    oof = pd.read_parquet(tmp_path / "oof.parquet")
    assert list(oof.columns) == ["sound_id", "fold", "label", *PROBA_COLUMNS]
    assert len(oof) == len(dev.ids) and oof["sound_id"].is_unique
    assert list(oof["sound_id"]) == list(dev.ids)
    assert np.allclose(oof[list(PROBA_COLUMNS)].sum(axis=1), 1.0, atol=1e-5)
    assert sorted(oof["fold"].unique()) == [0, 1, 2, 3, 4]
    evp = pd.read_parquet(tmp_path / "eval.parquet")
    assert list(evp.columns) == ["id", *PROBA_COLUMNS] and list(evp["id"]) == list(ev.ids)
    assert np.allclose(evp[list(PROBA_COLUMNS)].sum(axis=1), 1.0, atol=1e-5)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["oof_hF_strict"] == m["oof_hF_strict"] and 0 < m["oof_hF"] <= 1
    assert config.load(tmp_path / "config.yaml") == _cfg()
    assert m["oof_hF"] > 0.3  # learns something in 3 epochs
    assert len(saved["folds"]) == 5 and saved["data_fp"] == dev.fingerprint


def test_same_config_twice_is_identical_and_folds_are_shared(dev, tmp_path):
    run_trial(_cfg(), dev, tmp_path / "a")
    run_trial(_cfg(), dev, tmp_path / "b")
    hatr = config.load("baseline_hatr", {"model.hidden": 16, "model.res_blocks": 0,
                                         "train.max_epochs": 2})
    run_trial(hatr, dev, tmp_path / "c")
    a, b, c = (pd.read_parquet(tmp_path / x / "oof.parquet") for x in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert np.array_equal(a["fold"], c["fold"])
    assert np.array_equal(a["fold"], assign_folds(dev.y))
    assert not np.allclose(a[list(PROBA_COLUMNS)], c[list(PROBA_COLUMNS)])


def test_resume_continues_from_finished_folds(dev, tmp_path, monkeypatch):
    import bst_search.trial as trial_mod

    real = trial_mod.run_fold
    calls = []
    crashed = []

    def crashing(cfg, dev_, fold, k, **kw):
        calls.append(k)
        if k == 2 and not crashed:
            crashed.append(k)
            raise Interrupted  # interrupted during fold 2
        return real(cfg, dev_, fold, k, **kw)

    monkeypatch.setattr(trial_mod, "run_fold", crashing)
    with pytest.raises(Interrupted):
        run_trial(_cfg(), dev, tmp_path)
    assert sorted(p.name for p in (tmp_path / "folds").iterdir()) == ["fold_0.npz", "fold_1.npz"]
    assert not (tmp_path / "oof.parquet").exists()  # nothing half-way
    reported = []
    run_trial(_cfg(), dev, tmp_path, on_fold=reported.append)
    assert calls == [0, 1, 2, 2, 3, 4]  # folds 0 and 1 were not trained again
    assert [r["resumed"] for r in reported] == [True, True, False, False, False]
    # a different configuration does not reuse those folds, nor deletes them unasked
    calls.clear()
    before = {p.name: p.read_bytes() for p in (tmp_path / "folds").iterdir()}
    with pytest.raises(OutputsError, match=rf"{tmp_path}.*seed: 0 -> 5.*--overwrite"):
        run_trial(_cfg(seed=5), dev, tmp_path)
    assert calls == [] and {p.name: p.read_bytes() for p in (tmp_path / "folds").iterdir()} == before
    with pytest.raises(OutputsError, match="the holdout fraction"):
        run_trial(_cfg(), dev, tmp_path, holdout_fraction=0.2)
    run_trial(_cfg(seed=5), dev, tmp_path, overwrite=True)
    assert calls == [0, 1, 2, 3, 4]
    assert config.load(tmp_path / "config.yaml")["seed"] == 5


def test_missing_backbone_is_named(dev, tmp_path):
    with pytest.raises(DataError, match="wav2vec"):
        run_trial(_cfg(backbones=["clap_audio", "wav2vec"]), dev, tmp_path)
    with pytest.raises(DataError, match="audio backbone"):
        run_trial(_cfg(backbones=["clap_text"]), dev, tmp_path)


def test_cli_trial_with_preset_and_overrides(tiny_data, tmp_path):
    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "bst_search.cli", "trial", "--data", str(tiny_data["dev"]),
           "--config", "late_fusion", "--out", str(out), "--folds", "3",
           "--set", "model.hidden=16", "--set", "model.heads=2", "--set", "train.max_epochs=2",
           "--set", "train.warmup_epochs=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "OOF hF" in r.stdout
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["name"] == "late_fusion" and cfg["model"]["hidden"] == 16
    assert pd.read_parquet(out / "oof.parquet")["fold"].nunique() == 3
    bad = subprocess.run(cmd[:-2] + ["--set", "model.fusoin=x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "model.fusoin" in bad.stderr
    folds = {p.name: p.stat().st_mtime_ns for p in (out / "folds").iterdir()}
    other = subprocess.run(cmd + ["--set", "model.hidden=24"], capture_output=True, text=True,
                           timeout=300)
    assert other.returncode == 2 and str(out) in other.stderr
    assert "model.hidden: 16 -> 24" in other.stderr and "--overwrite" in other.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "folds").iterdir()} == folds


def test_holdout_rows_never_reach_a_fit_or_the_oof(dev, ev, tiny_data, tmp_path, monkeypatch):
    """--holdout-fraction: the rows set aside are predicted by every fold model, seen by none."""
    import dataclasses

    from bst_search import training
    from bst_search.folds import holdout_mask

    hold = holdout_mask(dev.y, 0.25)
    assert 0.2 < hold.mean() < 0.3
    crowd = load_dataset(tiny_data["crowd"])
    # the holdout sounds planted in the crowd set too: they must not come back that way
    crowd = dataclasses.replace(
        crowd, ids=np.concatenate([crowd.ids, dev.ids[hold]]), y=np.concatenate([crowd.y, dev.y[hold]]),
        confidence=None, uploader=None, fingerprint="",
        features={b: np.concatenate([crowd.features[b], dev.features[b][hold]]) for b in crowd.features})
    cfg = _cfg(**{"data.crowd": "all"})
    b0 = cfg["backbones"][0]
    held_rows = {r.tobytes() for r in dev.features[b0][hold]}
    fits: list[int] = []
    real_fit = training.fit

    def spy_fit(cfg, X_train, y_train, X_val, y_val, **kw):
        for x in (X_train[0], X_val[0]):
            assert not any(r.tobytes() in held_rows for r in x), "a holdout row reached a fit"
        fits.append(len(y_train))
        return real_fit(cfg, X_train, y_train, X_val, y_val, **kw)

    monkeypatch.setattr(training, "fit", spy_fit)
    m = run_trial(cfg, dev, tmp_path, eval_data=ev, crowd=crowd, holdout_fraction=0.25)
    assert len(fits) == 5
    oof = pd.read_parquet(tmp_path / "oof.parquet")
    held_ids = set(dev.ids[hold])
    assert not held_ids & set(oof["sound_id"]) and len(oof) == int((~hold).sum())
    # the folds are the official protocol on the remaining rows, in metadata order
    assert np.array_equal(oof["fold"].to_numpy(), assign_folds(dev.y[~hold]))
    ho = pd.read_parquet(tmp_path / "holdout.parquet")
    assert list(ho.columns) == ["sound_id", "fold", "label", *PROBA_COLUMNS]
    assert sorted(ho["fold"].unique()) == [0, 1, 2, 3, 4] and len(ho) == 5 * int(hold.sum())
    assert set(ho["sound_id"]) == held_ids
    assert m["n_holdout"] == int(hold.sum()) and m["holdout_fraction"] == 0.25
    assert not any(k.startswith("holdout_hF") for k in m), "no trial scores the holdout"
