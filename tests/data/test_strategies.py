"""Data strategies: dev-row rules, every crowd filter, two-stage training, and no leak.

The leak test marks fold k's held-out rows with a sentinel embedding (e0 in every backbone)
and adds copies of them, under their development ids, to the crowd set; then it runs the
fold under every strategy and checks that no array handed to a fit (the model, a teacher,
EL2N, stage 1; so no training batch and no distillation bank) and no KNN bank holds one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import bst_search.knn as knn_mod
from bst_search import config, training
from bst_search.data import DataError, Dataset, pseudo
from bst_search.data.strategies import (
    CROWD_FILTERS,
    FoldContext,
    confident_rows,
    crowd_candidates,
    select_crowd,
)
from bst_search.folds import assign_folds, train_val_split
from bst_search.trial import run_fold

FAST = {"model.hidden": 16, "model.heads": 2, "train.max_epochs": 2, "train.patience": 2,
        "train.batch_size": 64, "train.warmup_epochs": 0, "train.drop_last": False,
        "data.el2n_epochs": 1, "data.pretrain_epochs": 1}


def _cfg(**extra: object) -> dict:
    return config.load("late_fusion", {**FAST, **extra})


def test_registry_matches_schema() -> None:
    assert set(CROWD_FILTERS) == set(config.SCHEMA["data.crowd"].choices)


def test_confidence_rules_touch_only_the_given_rows(dev: Dataset) -> None:
    cfg = _cfg(**{"data.min_confidence": 4, "data.confidence_weighting": True})
    rows = np.arange(0, len(dev.ids), 2)
    kept, w = confident_rows(cfg, dev, rows)
    assert np.isin(kept, rows).all() and len(kept) < len(rows)
    assert (dev.confidence[kept] >= 4).all()
    assert np.allclose(w, dev.confidence[kept] / 5)


def test_confidence_filter_and_weights_apply_to_crowd_rows(dev: Dataset, crowd: Dataset,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Crowd rows are filtered and weighted like development rows; an empty cell keeps weight 1."""
    conf = np.random.default_rng(0).integers(1, 6, len(crowd.ids)).astype(float)
    conf[:3] = np.nan  # crowd data may leave the confidence empty (the synthetic set leaves all)
    crowd = dataclasses.replace(crowd, confidence=conf)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real_fit = training.fit

    def spy_fit(cfg, X_train, y_train, X_val, y_val, **kw):
        seen.append((y_train, kw["sample_weight"]))
        return real_fit(cfg, X_train, y_train, X_val, y_val, **kw)

    monkeypatch.setattr(training, "fit", spy_fit)
    cfg = _cfg(**{"data.crowd": "all", "data.min_confidence": 4, "data.confidence_weighting": True})
    fold = assign_folds(dev.y)
    res = run_fold(cfg, dev, fold, 0, crowd=crowd)
    cand = crowd_candidates(crowd, dev)
    c = crowd.confidence[cand]
    confident = cand[~(c < 4)]
    assert 0 < res["n_crowd"] == len(confident) < len(cand)
    (y, w), = seen
    dev_rows, dev_w = confident_rows(cfg, dev, train_val_split(dev.y, fold, 0)[0])
    assert len(y) == len(dev_rows) + len(confident)
    expected = np.where(np.isnan(crowd.confidence[confident]), 1.0, crowd.confidence[confident] / 5)
    assert np.allclose(w, np.concatenate([dev_w, expected]))
    assert np.isnan(crowd.confidence[confident]).sum() == 3 and w.min() >= 0.8


@pytest.mark.parametrize("key", [{"data.min_confidence": 3}, {"data.confidence_weighting": True}])
def test_confidence_keys_without_confidences_are_an_error(dev: Dataset, crowd: Dataset,
                                                          key: dict) -> None:
    blank_dev = dataclasses.replace(dev, confidence=np.full(len(dev.ids), np.nan))
    with pytest.raises(DataError, match=f"{dev.root}.*{next(iter(key))}"):
        run_fold(_cfg(**key), blank_dev, assign_folds(dev.y), 0)
    blank_crowd = dataclasses.replace(crowd, confidence=None)
    with pytest.raises(DataError, match=f"{crowd.root}.*{next(iter(key))}"):
        run_fold(_cfg(**key, **{"data.crowd": "all"}), dev, assign_folds(dev.y), 0, crowd=blank_crowd)
    rows = np.arange(10)  # the keys off: nothing is asked of the data
    assert confident_rows(_cfg(), blank_dev, rows)[1] is None


def _ctx(cfg: dict, dev: Dataset, crowd: Dataset, fits: list | None = None) -> FoldContext:
    fold = assign_folds(dev.y)
    train_idx, val_idx = train_val_split(dev.y, fold, 0)
    backbones = cfg["backbones"]
    mods = ["text" if b.endswith("text") else "audio" for b in backbones]
    X_dev = dev.X(backbones)

    def fit(X, y, w, epochs):
        if fits is not None:
            fits.append(len(y))
        return training.fit(cfg, X, y, [x[val_idx] for x in X_dev], dev.y[val_idx],
                            modalities=mods, seed=0, sample_weight=w, max_epochs=epochs,
                            average_top=1).model

    return FoldContext(cfg, [x[train_idx] for x in X_dev], dev.y[train_idx], None, crowd,
                       crowd_candidates(crowd, dev), backbones, fit=fit,
                       predict=lambda m, X: training.predict_proba(m, X))


def test_uploader_cap(dev: Dataset, crowd: Dataset) -> None:
    cfg = _cfg(**{"data.crowd": "uploader_cap", "data.crowd_per_uploader": 2})
    kept = select_crowd(cfg, _ctx(cfg, dev, crowd))
    frame = pd.DataFrame({"u": crowd.uploader[kept], "y": crowd.y[kept]})
    assert frame.groupby(["u", "y"]).size().max() == 2
    assert len(kept) < len(crowd.ids)


def test_teacher_keeps_rows_the_teacher_agrees_with(dev: Dataset, crowd: Dataset) -> None:
    cfg = _cfg(**{"data.crowd": "teacher", "train.max_epochs": 4})
    fits: list = []
    ctx = _ctx(cfg, dev, crowd, fits)
    kept = select_crowd(cfg, ctx)
    assert fits == [len(ctx.y_train)]  # one teacher, on the dev training part only
    assert 0 < len(kept) < len(ctx.candidates)
    assert np.isin(kept, ctx.candidates).all()


def test_el2n_drops_the_requested_fraction(dev: Dataset, crowd: Dataset) -> None:
    cfg = _cfg(**{"data.crowd": "el2n", "data.el2n_drop": 0.25})
    fits: list = []
    ctx = _ctx(cfg, dev, crowd, fits)
    kept = select_crowd(cfg, ctx)
    n = len(ctx.candidates)
    assert len(kept) == n - round(0.25 * n)
    assert fits == [len(ctx.y_train) + n]  # scored after training on dev + crowd


def test_union_and_intersection_combine_two_filters(dev: Dataset, crowd: Dataset) -> None:
    sets = {}
    for name in ("el2n", "uploader_cap", "union", "intersection"):
        cfg = _cfg(**{"data.crowd": name, "data.crowd_a": "el2n", "data.crowd_b": "uploader_cap",
                      "data.crowd_per_uploader": 1, "data.el2n_drop": 0.5})
        sets[name] = set(select_crowd(cfg, _ctx(cfg, dev, crowd)).tolist())
    assert sets["union"] == sets["el2n"] | sets["uploader_cap"]
    assert sets["intersection"] == sets["el2n"] & sets["uploader_cap"]
    assert sets["intersection"] < sets["union"]


def test_same_filter_twice_is_refused() -> None:
    with pytest.raises(config.ConfigError, match="crowd_a"):
        _cfg(**{"data.crowd": "union", "data.crowd_a": "el2n", "data.crowd_b": "el2n"})
    with pytest.raises(config.ConfigError, match="two_stage"):
        _cfg(**{"data.two_stage": True})


def test_crowd_strategy_without_crowd_data_names_the_flag(dev: Dataset, tmp_path) -> None:
    from bst_search.trial import run_trial

    with pytest.raises(DataError, match="--crowd-data"):
        run_trial(_cfg(**{"data.crowd": "all"}), dev, tmp_path)


# ------------------------------------------------------------------------------ leak test

def _sentinel_rows(X: np.ndarray) -> np.ndarray:
    return (X[:, 0] == 1.0) & (np.abs(X[:, 1:]).sum(axis=1) == 0)


def _marked(dev: Dataset, crowd: Dataset, k: int) -> tuple[Dataset, Dataset, np.ndarray]:
    """Copies where fold k's held-out dev rows are sentinels, and the crowd set also holds
    them (same ids, same sentinel features)."""
    held = np.flatnonzero(assign_folds(dev.y) == k)
    feats = {}
    for b, x in dev.features.items():
        x = np.array(x, dtype=np.float32)
        x[held] = 0.0
        x[held, 0] = 1.0
        feats[b] = x
    mdev = dataclasses.replace(dev, features=feats)
    cfeats = {b: np.concatenate([np.asarray(crowd.features[b]), feats[b][held]])
              for b in crowd.features}
    mcrowd = dataclasses.replace(
        crowd, ids=np.concatenate([crowd.ids, dev.ids[held]]),
        y=np.concatenate([crowd.y, dev.y[held]]),
        confidence=None if crowd.confidence is None else np.concatenate(
            [crowd.confidence, dev.confidence[held]]),
        uploader=None if crowd.uploader is None else np.concatenate(
            [crowd.uploader, np.array(["leaker"] * len(held), dtype=crowd.uploader.dtype)]),
        features=cfeats)
    return mdev, mcrowd, held


LEAK_CASES = [
    {"data.crowd": "all"},
    {"data.crowd": "teacher"},
    {"data.crowd": "el2n"},
    {"data.crowd": "uploader_cap"},
    {"data.crowd": "union", "data.crowd_a": "teacher", "data.crowd_b": "el2n"},
    {"data.crowd": "intersection", "data.crowd_a": "teacher", "data.crowd_b": "uploader_cap"},
    {"data.crowd": "all", "data.two_stage": True},
    {"data.crowd": "pseudo", "data.pseudo_lambda": 0.5, "data.two_stage": True},
    {"data.crowd": "pseudo", "data.pseudo_lambda": 1.0, "data.pseudo_min_p": 0.05},
    {"loss.knn_distill": 1.0, "post.knn_alpha": 0.5, "post.ckpt_avg": 2},
    {"data.min_confidence": 3, "data.confidence_weighting": True, "train.mixup_alpha": 0.4},
    {"data.crowd": "el2n", "data.min_confidence": 3, "data.confidence_weighting": True,
     "crowd_confidence": True},
]


@pytest.mark.parametrize("extra", LEAK_CASES, ids=lambda e: "-".join(f"{v}" for v in e.values()))
def test_no_strategy_leaks_held_out_rows(dev: Dataset, crowd: Dataset, extra: dict,
                                         monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    k = 1
    mdev, mcrowd, held = _marked(dev, crowd, k)
    fits: list[int] = []
    banks: list[int] = []
    real_fit, real_knn = training.fit, knn_mod.KnnPrior

    def spy_fit(cfg, X_train, y_train, X_val, y_val, **kw):
        for x in (*X_train, *X_val):
            assert not _sentinel_rows(x).any(), "a held-out row reached a fit"
        fits.append(len(y_train))
        return real_fit(cfg, X_train, y_train, X_val, y_val, **kw)

    class SpyKnn(real_knn):
        def __init__(self, bank, labels, **kw):
            m = len(cfg["backbones"])
            assert not np.isclose(bank[:, 0], 1 / np.sqrt(m)).any(), "a held-out row is in a KNN bank"
            banks.append(len(bank))
            super().__init__(bank, labels, **kw)

    monkeypatch.setattr(training, "fit", spy_fit)
    monkeypatch.setattr(knn_mod, "KnnPrior", SpyKnn)
    extra = dict(extra)
    if extra.pop("crowd_confidence", False):  # the synthetic crowd set has none
        conf = np.random.default_rng(0).integers(1, 6, len(mcrowd.ids)).astype(float)
        mcrowd = dataclasses.replace(mcrowd, confidence=conf)
    labels = None
    if extra.get("data.crowd") == "pseudo":  # labels for every crowd row, the leakers' too
        rng = np.random.default_rng(0)
        frames = [pseudo.label_frame(mcrowd.ids, rng.dirichlet(np.ones(23), len(mcrowd.ids)))
                  for _ in range(5)]
        pseudo.write_folder(tmp_path / "pl", frames, frames[0], {"n_folds": 5})
        labels = pseudo.PseudoLabels(tmp_path / "pl", {})
        extra["data.pseudo_dir"] = str(tmp_path / "pl")
    cfg = _cfg(**extra)
    res = run_fold(cfg, mdev, assign_folds(mdev.y), k, crowd=mcrowd, pseudo_labels=labels)
    assert np.array_equal(res["test_idx"], held)  # the marked rows are exactly those predicted
    assert fits, "no fit ran"
    assert np.allclose(res["proba"].sum(axis=1), 1.0, atol=1e-5)
    if cfg["data"]["crowd"] not in ("none",) and not cfg["data"]["two_stage"]:
        assert res["n_crowd"] > 0 and res["n_train"] > len(held)
    if cfg["post"]["knn_alpha"] > 0:
        assert banks == [res["n_train"]]


def test_two_stage_fine_tunes_from_the_crowd_model(dev: Dataset, crowd: Dataset,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, bool]] = []
    real_fit = training.fit

    def spy_fit(cfg, X_train, y_train, X_val, y_val, **kw):
        seen.append((len(y_train), kw.get("init_state") is not None))
        return real_fit(cfg, X_train, y_train, X_val, y_val, **kw)

    monkeypatch.setattr(training, "fit", spy_fit)
    cfg = _cfg(**{"data.crowd": "all", "data.two_stage": True})
    res = run_fold(cfg, dev, assign_folds(dev.y), 0, crowd=crowd)
    n_crowd = len(crowd_candidates(crowd, dev))
    assert seen[0] == (n_crowd, False)  # stage 1: crowd rows only, from scratch
    assert seen[1][1] and seen[1][0] == res["n_train"] < n_crowd + res["n_train"]  # stage 2
