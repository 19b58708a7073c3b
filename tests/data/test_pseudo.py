"""Soft pseudo-labels: crowd predictions of every fold model, per-fold labels that never carry
fold k's held-out labels into fold k, the folder's checks, the pseudo crowd filter and its
soft targets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bst_search import config, training
from bst_search.data import DataError, Dataset
from bst_search.data import pseudo as pl
from bst_search.data.strategies import FoldContext, crowd_candidates, crowd_targets, select_crowd
from bst_search.ensemble.pseudo_label import fold_labels
from bst_search.folds import assign_folds
from bst_search.taxonomy import N_CLASSES, PROBA_COLUMNS
from bst_search.trial import run_fold, run_trial

FAST = {"model.hidden": 16, "model.heads": 2, "train.max_epochs": 3, "train.patience": 3,
        "train.batch_size": 64, "train.warmup_epochs": 0, "train.drop_last": False,
        "data.pretrain_epochs": 2, "backbones": ["clap_audio", "panns"]}


def _cfg(**extra: object) -> dict:
    return config.load("late_fusion", {**FAST, **extra})


def _crowd_frame(ids: np.ndarray, rng: np.random.Generator, n_folds: int = 5) -> pd.DataFrame:
    blocks = []
    for k in range(n_folds):
        p = rng.dirichlet(np.ones(N_CLASSES), len(ids)).astype(np.float16)
        blocks.append(pd.concat([pd.DataFrame({"sound_id": ids, "fold": k}),
                                 pd.DataFrame(p, columns=list(PROBA_COLUMNS))], axis=1))
    return pd.concat(blocks, ignore_index=True)


def test_fold_k_labels_come_from_the_members_fold_k_models_only() -> None:
    rng = np.random.default_rng(0)
    ids = np.array([f"c{i}" for i in range(50)])
    frames = [_crowd_frame(ids, rng), _crowd_frame(ids, rng)]
    weights = np.array([0.75, 0.25])
    _, labels = fold_labels(frames, weights, 5, "prob", 1.0)
    k = 2
    want = sum(w * f[f["fold"] == k][list(PROBA_COLUMNS)].to_numpy(np.float64)
               for w, f in zip(weights, frames, strict=True))
    assert np.allclose(labels[k], want / want.sum(axis=1, keepdims=True), atol=1e-6)

    other = [f.copy() for f in frames]  # every other fold's predictions replaced
    for f in other:
        f.loc[f["fold"] != k, list(PROBA_COLUMNS)] = rng.dirichlet(
            np.ones(N_CLASSES), int((f["fold"] != k).sum())).astype(np.float16)
    _, again = fold_labels(other, weights, 5, "prob", 1.0)
    assert np.array_equal(again[k], labels[k])
    assert not np.allclose(again[(k + 1) % 5], labels[(k + 1) % 5])

    shuffled = [f.sample(frac=1.0, random_state=1) for f in frames]  # rows aligned by id
    ids2, same = fold_labels(shuffled, weights, 5, "prob", 1.0)
    order = pd.Index(ids2).get_indexer(ids)
    assert np.allclose(same[k][order], labels[k], atol=1e-6)

    _, sharp = fold_labels(frames, weights, 5, "prob", 0.5)  # T < 1 sharpens
    assert (sharp[k].max(axis=1) >= labels[k].max(axis=1) - 1e-6).all()
    assert np.array_equal(sharp[k].argmax(axis=1), labels[k].argmax(axis=1))


def test_fold_labels_refuse_members_with_other_crowd_sounds() -> None:
    rng = np.random.default_rng(1)
    a = _crowd_frame(np.array(["a", "b", "c"]), rng)
    b = _crowd_frame(np.array(["a", "b", "x"]), rng)
    with pytest.raises(DataError, match="other crowd sounds in fold 0"):
        fold_labels([a, b], np.array([1.0, 1.0]), 5, "prob", 1.0)


def _permuted(dev: Dataset, rows: np.ndarray, seed: int) -> Dataset:
    y = dev.y.copy()
    rng = np.random.default_rng(seed)
    y[rows] = y[rng.permutation(rows)]
    y[rows] = (y[rows] + rng.integers(1, N_CLASSES, len(rows))) % N_CLASSES  # every label moves
    return dataclasses.replace(dev, y=y, fingerprint="")


def test_permuted_held_out_labels_leave_fold_k_crowd_predictions_unchanged(
        dev: Dataset, crowd: Dataset) -> None:
    """The labels of fold k's held-out rows cannot reach fold k's crowd predictions, so
    neither fold k's pseudo-labels; the labels of another fold's rows do (the check can fail)."""
    cfg, k = _cfg(), 1
    fold = assign_folds(dev.y)
    base = run_fold(cfg, dev, fold, k, crowd=crowd)["crowd_proba"]
    held = run_fold(cfg, _permuted(dev, np.flatnonzero(fold == k), 0), fold, k, crowd=crowd)
    assert np.array_equal(held["crowd_proba"], base)
    other = run_fold(cfg, _permuted(dev, np.flatnonzero(fold == 3), 0), fold, k, crowd=crowd)
    assert not np.array_equal(other["crowd_proba"], base)
    assert base.dtype == np.float16 and base.shape == (len(crowd_candidates(crowd, dev)), N_CLASSES)


def test_a_trial_writes_every_fold_models_crowd_predictions(dev: Dataset, crowd: Dataset,
                                                            tmp_path: Path) -> None:
    both = dev.ids[:5]  # a crowd sound that is also a development sound is never predicted
    crowd = dataclasses.replace(
        crowd, ids=np.concatenate([crowd.ids, both]), y=np.concatenate([crowd.y, dev.y[:5]]),
        confidence=None, uploader=None, fingerprint="",
        features={b: np.concatenate([m, dev.features[b][:5]]) for b, m in crowd.features.items()})
    run_trial(_cfg(), dev, tmp_path, crowd=crowd, n_folds=5)
    frame = pd.read_parquet(tmp_path / "crowd.parquet")
    cand = crowd.ids[crowd_candidates(crowd, dev)].astype(str)
    assert len(cand) == len(crowd.ids) - 5 and not np.isin(both, frame["sound_id"]).any()
    assert sorted(frame["fold"].unique()) == [0, 1, 2, 3, 4]
    for _, block in frame.groupby("fold"):
        assert list(block["sound_id"]) == list(cand)
    p = frame[list(PROBA_COLUMNS)]
    assert (p.dtypes == np.float16).all()
    assert np.allclose(p.to_numpy(np.float64).sum(axis=1), 1.0, atol=2e-2)


def _folder(tmp_path: Path, ids: np.ndarray, fps: dict[str, str], n_folds: int = 5) -> Path:
    rng = np.random.default_rng(0)
    folds = [pl.label_frame(ids, rng.dirichlet(np.ones(N_CLASSES), len(ids))) for _ in range(n_folds)]
    out = tmp_path / "labels"
    pl.write_folder(out, folds, folds[0], {"experiment": "s1", "n_folds": n_folds, **fps})
    return out


FPS = {"dev_labels_fp": "d1", "fold_fp": "f1", "crowd_fp": "c1"}


def test_a_folder_made_for_other_data_is_refused_naming_what_differs(tmp_path: Path) -> None:
    root = _folder(tmp_path, np.array(["a", "b"]), FPS)
    assert pl.load_folder(root, FPS, 5).manifest["experiment"] == "s1"
    with pytest.raises(DataError, match=r"experiment 's1' for other data: fold assignment .*"
                                        r"fold_fp f1 there, f2 here"):
        pl.load_folder(root, {**FPS, "fold_fp": "f2"}, 5)
    with pytest.raises(DataError, match="development sounds and labels.*crowd set"):
        pl.load_folder(root, {**FPS, "dev_labels_fp": "x", "crowd_fp": "y"}, 5)
    with pytest.raises(DataError, match="number of folds"):
        pl.load_folder(root, FPS, 4)
    with pytest.raises(DataError, match="not a pseudo-label folder"):
        pl.load_folder(tmp_path, FPS, 5)
    (root / "fold_3.parquet").unlink()
    with pytest.raises(DataError, match="fold_3.parquet is missing"):
        pl.load_folder(root, FPS, 5)


def test_writing_replaces_a_pseudo_label_folder_and_nothing_else(tmp_path: Path) -> None:
    root = _folder(tmp_path, np.array(["a"]), FPS)
    _folder(tmp_path, np.array(["a", "b", "c"]), FPS)  # replaced whole
    assert len(pd.read_parquet(root / "final.parquet")) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="not a pseudo-label folder"):
        pl.write_folder(foreign, [], pl.label_frame(np.array([]), np.zeros((0, N_CLASSES))), {})
    assert (foreign / "notes.txt").read_text() == "keep"


def test_labels_of_a_fold_align_to_the_crowd_rows_and_bad_rows_are_named(tmp_path: Path) -> None:
    root = _folder(tmp_path, np.array(["a", "b", "c"]), FPS)
    labels = pl.load_folder(root, FPS, 5)
    q = labels.fold(2, np.array(["c", "zz", "a"]))
    want = pd.read_parquet(root / "fold_2.parquet").set_index("sound_id")
    assert np.allclose(q[0], want.loc["c"].to_numpy()) and np.allclose(q[2], want.loc["a"].to_numpy())
    assert np.isnan(q[1]).all()  # a sound without a label
    bad = pd.read_parquet(root / "fold_0.parquet")
    bad.loc[1, PROBA_COLUMNS[0]] = 5.0
    bad.to_parquet(root / "fold_0.parquet", index=False)
    with pytest.raises(DataError, match=r"fold_0.parquet: 1 rows are not probability vectors, "
                                        r"e.g. sound_id b"):
        labels.fold(0, np.array(["a"]))


def test_the_pseudo_filter_keeps_confident_labelled_rows_and_mixes_in_the_crowd_label(
        crowd: Dataset) -> None:
    n = len(crowd.ids)
    q = np.full((n, N_CLASSES), 0.5 / (N_CLASSES - 1), dtype=np.float32)
    q[np.arange(n), (crowd.y + 1) % N_CLASSES] = 0.5  # the pseudo-label disagrees with the crowd
    q[:10] = np.nan  # unlabelled
    q[10:20] = 1.0 / N_CLASSES  # not confident
    cfg = _cfg(**{"data.crowd": "pseudo", "data.pseudo_dir": "x", "data.pseudo_min_p": 0.2,
                  "data.pseudo_lambda": 0.5})
    ctx = FoldContext(cfg, [], np.array([]), None, crowd, np.arange(n), [], fit=None,
                      predict=None, pseudo=q)
    rows = select_crowd(cfg, ctx)
    assert np.array_equal(rows, np.arange(20, n))
    y, target = crowd_targets(ctx, rows)
    assert np.allclose(target.sum(axis=1), 1.0, atol=1e-6)
    assert np.allclose(target[np.arange(len(rows)), crowd.y[rows]], 0.5 + 0.5 * 0.5 / (N_CLASSES - 1))
    assert np.array_equal(y, crowd.y[rows])  # 0.5 + a little beats the pseudo-label's 0.25
    cfg["data"]["pseudo_lambda"] = 1.0
    y1, t1 = crowd_targets(ctx, rows)
    assert np.allclose(t1, q[rows]) and np.array_equal(y1, (crowd.y[rows] + 1) % N_CLASSES)
    with pytest.raises(DataError, match="needs pseudo-labels"):
        select_crowd(cfg, dataclasses.replace(ctx, pseudo=None))


def test_a_stage_2_fold_trains_on_soft_targets(dev: Dataset, crowd: Dataset,
                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fold k reads fold k's labels; the fit gets one-hot development targets beside the crowd
    rows' soft ones (and stage 1 of two_stage the soft ones alone)."""
    fold = assign_folds(dev.y)
    cand = crowd.ids[crowd_candidates(crowd, dev)]
    root = _folder(tmp_path, cand.astype(str), FPS)
    labels = pl.load_folder(root, FPS, 5)
    seen: list[np.ndarray | None] = []
    real_fit = training.fit

    def spy(*a, target_proba=None, **kw):
        seen.append(target_proba)
        return real_fit(*a, target_proba=target_proba, **kw)

    monkeypatch.setattr(training, "fit", spy)
    k = 2
    cfg = _cfg(**{"data.crowd": "pseudo", "data.pseudo_dir": str(root), "data.pseudo_lambda": 1.0})
    res = run_fold(cfg, dev, fold, k, crowd=crowd, pseudo_labels=labels)
    target = seen[-1]
    assert res["n_crowd"] == len(cand) and target.shape == (res["n_train"], N_CLASSES)
    q = labels.fold(k, crowd.ids)[crowd_candidates(crowd, dev)]
    assert np.allclose(target[-len(cand):], q)
    assert set(np.unique(target[:-len(cand)])) == {0.0, 1.0}
    seen.clear()
    run_fold({**cfg, "data": {**cfg["data"], "two_stage": True}}, dev, fold, k, crowd=crowd,
             pseudo_labels=labels)
    assert np.allclose(seen[0], q) and seen[1] is None


def test_manifest_counts_and_schema(tmp_path: Path) -> None:
    root = _folder(tmp_path, np.array(["a", "b"]), FPS)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["schema"] == pl.SCHEMA
    counts = pl.class_counts(np.eye(N_CLASSES)[[0, 0, 3]])
    assert sum(counts.values()) == 3 and list(counts.values())[0] == 2


def test_a_meta_probs_trial_without_a_crowd_strategy_only_scores_the_crowd(
        dev: Dataset, crowd: Dataset, isolated_cache: Path) -> None:
    """Its crowd rows get text-model probabilities to be predicted on, and their labels train
    nothing: other crowd labels leave every prediction as it was."""
    cfg, k = _cfg(backbones=["clap_audio", "meta_probs"]), 0
    fold = assign_folds(dev.y)
    res = run_fold(cfg, dev, fold, k, crowd=crowd)
    relabelled = dataclasses.replace(crowd, y=(crowd.y + 1) % N_CLASSES, fingerprint="")
    again = run_fold(cfg, dev, fold, k, crowd=relabelled)
    assert np.array_equal(again["proba"], res["proba"])
    assert np.array_equal(again["crowd_proba"], res["crowd_proba"])
    assert res["crowd_proba"].shape == (len(crowd_candidates(crowd, dev)), N_CLASSES)
