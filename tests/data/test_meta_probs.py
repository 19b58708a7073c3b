"""meta_probs: text-model class probabilities, cross-fitted inside each fold, cached per fold.

The leak tests follow tests/data/test_strategies.py: they plant something in the rows that
must stay unseen (fold k's held-out rows, the validation split, the holdout, the evaluation
set) and check that nothing moves, or spy on every text-model fit and check what reached it.
The planted label is the class code written in runes: no training text has a rune, so unless a
fit sees a planted row its n-grams are out of vocabulary and the row's features do not change.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bst_search import config
from bst_search.data import DataError, Dataset, load_dataset
from bst_search.data import meta_probs as mp
from bst_search.data.text_models import TEXT_MODELS, TextModel
from bst_search.data.texts import TEXT_FIELDS
from bst_search.folds import assign_folds, holdout_mask, train_val_split
from bst_search.taxonomy import CODES, N_CLASSES
from bst_search.trial import run_fold, run_trial

FAST = {"model.hidden": 16, "model.heads": 2, "train.max_epochs": 2, "train.patience": 2,
        "train.batch_size": 64, "train.warmup_epochs": 0}
RUNES = dict(zip("abcdefghijklmnopqrstuvwxyz-", "ᚠᚢᚦᚨᚱᚲᚷᚹᚺᚾᛁᛃᛇᛈᛉᛊᛏᛒᛖᛗᛚᛜᛞᛟᚪᚫᚣ", strict=True))


def _cfg(**extra: object) -> dict:
    return config.load("late_fusion", {**FAST, "backbones": ["clap_audio", "meta_probs"], **extra})


def _loaded(name: str) -> Any:
    """A module-wide fixture: the tiny synthetic release's ``name`` set, loaded once."""

    @pytest.fixture(scope="module")
    def fixture(tiny_data) -> Dataset:
        return load_dataset(tiny_data[name])

    return fixture


dev, ev, crowd = _loaded("dev"), _loaded("eval"), _loaded("crowd")


def _planted(ds: Dataset, rows: np.ndarray, word: list[str] | str) -> Dataset:
    """A copy whose ``rows`` carry ``word`` (one per row, or the same) at the end of the title."""
    texts = ds.texts.copy()
    ids = [str(i) for i in ds.ids[rows]]
    words = [word] * len(ids) if isinstance(word, str) else word
    texts.loc[ids, "title"] = [f"{t} {w}" for t, w in zip(texts.loc[ids, "title"], words, strict=True)]
    return dataclasses.replace(ds, texts=texts)


def _label_words(ds: Dataset, rows: np.ndarray) -> list[str]:
    return ["".join(RUNES[c] for c in CODES[y]) for y in ds.y[rows]]


def test_registry_matches_schema() -> None:
    assert set(TEXT_MODELS) == set(config.SCHEMA["meta.model"].choices)


def test_texts_are_read_by_id_beside_an_unchanged_fingerprint(dev: Dataset, tiny_data) -> None:
    raw = pd.read_csv(tiny_data["dev"] / "metadata" / "BSD10k_metadata.csv", dtype=str,
                      keep_default_na=False).set_index("sound_id")
    rows = dev.text_rows()
    assert list(rows.columns) == list(TEXT_FIELDS) and len(rows) == len(dev.ids)
    assert rows.loc[3, "tags"] == raw.loc[dev.ids[3], "tags"].strip()
    changed = _planted(dev, np.arange(1), "x")
    assert changed.fingerprint == dev.fingerprint and changed.text_fp != dev.text_fp
    # rows keep their text through a subset, and an id the table lacks has none
    sub = dataclasses.replace(dev, ids=np.concatenate([dev.ids[5:7], ["nope"]]), y=dev.y[:3],
                              confidence=None, uploader=None, fingerprint="",
                              features={b: m[:3] for b, m in dev.features.items()})
    assert sub.text_rows()["title"].tolist()[:2] == rows["title"].tolist()[5:7]
    assert sub.text_rows().iloc[2].tolist() == ["", "", ""]


def test_probabilities_prior_and_flag(dev: Dataset, ev: Dataset) -> None:
    """23 probabilities and a flag; a sound without text gets the training part's prior."""
    fold = assign_folds(dev.y)
    train_idx, _ = train_val_split(dev.y, fold, 0)
    held = np.flatnonzero(fold == 0)
    quiet = np.concatenate([held[:3], train_idx[:3]])
    silent = dev.texts.copy()
    silent.loc[[str(i) for i in dev.ids[quiet]], list(TEXT_FIELDS)] = ""
    out = mp.compute(_cfg(), dataclasses.replace(dev, texts=silent), fold, 0, eval_data=ev)
    assert out.dev.shape == (len(dev.ids), mp.META_DIM) and out.eval.shape == (len(ev.ids), 24)
    assert out.dev.dtype == np.float32 and out.fits == 6
    assert np.allclose(out.dev[:, :N_CLASSES].sum(axis=1), 1, atol=1e-5)
    flag = out.dev[:, N_CLASSES]
    assert (flag[quiet] == 1).all() and flag.sum() == len(quiet)
    prior = np.bincount(dev.y[train_idx], minlength=N_CLASSES) / len(train_idx)
    assert np.allclose(out.dev[held[:3], :N_CLASSES], prior)
    acc = (out.dev[held, :N_CLASSES].argmax(axis=1) == dev.y[held]).mean()
    assert acc > 0.45  # most synthetic texts use the true class's words (chance: 1/23)


def test_a_label_planted_in_held_out_text_does_not_move_their_scores(dev: Dataset,
                                                                      ev: Dataset) -> None:
    """The heart of it: fold k's held-out rows say their label; their scores stay the same.
    So do the evaluation rows', and planting in the validation split moves no held-out row."""
    fold, k = assign_folds(dev.y), 2
    held = np.flatnonzero(fold == k)
    _, val = train_val_split(dev.y, fold, k)
    clean = mp.compute(_cfg(), dev, fold, k, eval_data=ev)
    leaky = mp.compute(_cfg(), _planted(dev, held, _label_words(dev, held)), fold, k, eval_data=ev)
    assert np.array_equal(clean.dev, leaky.dev) and np.array_equal(clean.eval, leaky.eval)
    both = np.concatenate([held, val])
    leaky = mp.compute(_cfg(), _planted(dev, both, _label_words(dev, both)), fold, k)
    assert np.array_equal(clean.dev[held], leaky.dev[held])
    # the control: planted in every row, the word is learnt and the held-out scores move
    every = np.arange(len(dev.ids))
    taught = mp.compute(_cfg(), _planted(dev, every, _label_words(dev, every)), fold, k)
    p_true = lambda m: m[held, dev.y[held]].mean()  # noqa: E731
    assert not np.array_equal(clean.dev[held], taught.dev[held])
    assert p_true(taught.dev) > p_true(clean.dev)


def test_planted_held_out_labels_leave_the_trials_oof_rows_as_they_were(dev: Dataset) -> None:
    fold, k = assign_folds(dev.y), 1
    held = np.flatnonzero(fold == k)
    cfg = _cfg(**{"model.meta_encoder": "class_embedding"})
    a = run_fold(cfg, dev, fold, k)
    b = run_fold(cfg, _planted(dev, held, _label_words(dev, held)), fold, k)
    assert np.array_equal(a["test_idx"], held) and np.array_equal(a["proba"], b["proba"])


def test_the_holdout_never_reaches_a_text_model(dev: Dataset, tmp_path: Path) -> None:
    """Holdout rows that say their label change no development row's probabilities, in any
    fold, and the trial's OOF is the same."""
    hold = np.flatnonzero(holdout_mask(dev.y, 0.2))
    planted = _planted(dev, hold, _label_words(dev, hold))
    cfg = _cfg(**{"train.max_epochs": 1})
    a = run_trial(cfg, dev, tmp_path / "a", holdout_fraction=0.2, n_folds=2)
    b = run_trial(cfg, planted, tmp_path / "b", holdout_fraction=0.2, n_folds=2)
    oof_a, oof_b = (pd.read_parquet(tmp_path / x / "oof.parquet") for x in "ab")
    pd.testing.assert_frame_equal(oof_a, oof_b)
    assert a["n_holdout"] == len(hold) and a["text_fp"] != b["text_fp"]


def _row_keys(X: object) -> list[str]:
    """Which rows a text model is given: the marker word of each title, or the minilm row code."""
    if isinstance(X, pd.DataFrame):
        return [t.rsplit(" ", 1)[-1] for t in X["title"]]
    return [f"r{int(v)}" for v in np.asarray(X)[:, 0]]


def _marked_sets(dev: Dataset, ev: Dataset, crowd: Dataset, minilm: bool
                 ) -> dict[str, Dataset]:
    """Every row of every set carries a key naming it (set, row) in its text or its minilm
    vector; crowd copies of fold 0's held-out sounds are planted too, under their dev ids."""
    held = np.flatnonzero(assign_folds(dev.y) == 0)
    crowd = dataclasses.replace(crowd, ids=np.concatenate([crowd.ids, dev.ids[held]]),
                                y=np.concatenate([crowd.y, dev.y[held]]), confidence=None,
                                uploader=None, fingerprint="",
                                features={b: np.concatenate([m, dev.features[b][held]])
                                          for b, m in crowd.features.items()},
                                texts=pd.concat([crowd.texts, dev.texts.loc[dev.ids[held]]]))
    out = {}
    for base, (name, ds) in enumerate({"dev": dev, "eval": ev, "crowd": crowd}.items()):
        codes = base * 100_000 + np.arange(len(ds.ids))
        if minilm:
            x = np.array(ds.features["clap_text"], dtype=np.float32)
            x[:, 0] = codes
            out[name] = dataclasses.replace(ds, features={**ds.features, "minilm_text": x})
        else:
            out[name] = _planted(ds, np.arange(len(ds.ids)), [f"r{c}" for c in codes])
    return out


@pytest.mark.parametrize("model", ["tfidf_lr", "minilm_lr"])
def test_no_text_model_scores_a_row_it_learnt_or_sees_an_unseen_row(dev: Dataset, ev: Dataset,
                                                                    crowd: Dataset, model: str,
                                                                    monkeypatch) -> None:
    """Spy on every fit and every prediction of fold 0, crowd rows included: no fit holds a
    held-out, validation, evaluation or planted-copy row, and no model scores a row it was
    fitted on (the training rows' probabilities come from the inner cross-fit)."""
    sets = _marked_sets(dev, ev, crowd, minilm=model == "minilm_lr")
    fold = assign_folds(dev.y)
    train_idx, val_idx = train_val_split(dev.y, fold, 0)
    crowd_cand = np.flatnonzero(~np.isin(sets["crowd"].ids, dev.ids))
    allowed = {f"r{i}" for i in train_idx} | {f"r{200_000 + i}" for i in crowd_cand}
    fitted: list[set[str]] = []
    scored: list[str] = []
    real_fit, real_predict = TextModel.fit, TextModel.predict_proba

    def spy_fit(self, X, y):
        self.spy_rows = set(_row_keys(X))
        fitted.append(self.spy_rows)
        return real_fit(self, X, y)

    def spy_predict(self, X):
        keys = _row_keys(X)
        assert not self.spy_rows & set(keys), "a text model scored a row it was fitted on"
        scored.extend(keys)
        return real_predict(self, X)

    monkeypatch.setattr(TextModel, "fit", spy_fit)
    monkeypatch.setattr(TextModel, "predict_proba", spy_predict)
    cfg = _cfg(**{"meta.model": model, "data.crowd": "all"})
    out = mp.compute(cfg, sets["dev"], fold, 0, eval_data=sets["eval"], crowd=sets["crowd"])
    assert len(fitted) == 6 and all(keys <= allowed for keys in fitted)
    assert set().union(*fitted) == allowed  # every training row reaches the full fit
    assert len(scored) == len(set(scored)) == sum(len(ds.ids) for ds in sets.values())
    assert out.crowd.shape == (len(sets["crowd"].ids), mp.META_DIM)
    assert not {f"r{i}" for i in val_idx} & set().union(*fitted)


def test_computed_once_per_fold_and_meta_keys(dev: Dataset, isolated_cache: Path,
                                               monkeypatch) -> None:
    fold = assign_folds(dev.y)
    calls: list[int] = []
    real = mp.compute
    monkeypatch.setattr(mp, "compute", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    first = mp.fold_meta_probs(_cfg(), dev, fold, 0)
    other_trial = _cfg(**{"train.lr": 3e-4, "model.hidden": 32, "seed": 9,
                          "backbones": ["meta_probs", "clap_text", "clap_audio"]})
    again = mp.fold_meta_probs(other_trial, dev, fold, 0)
    assert calls == [1] and not first.cache_hit and again.cache_hit
    assert np.array_equal(first.dev, again.dev)
    assert not mp.fold_meta_probs(_cfg(**{"meta.C": 3.0}), dev, fold, 0).cache_hit
    assert not mp.fold_meta_probs(_cfg(), dev, fold, 1).cache_hit
    for entry in isolated_cache.glob("meta_probs-tfidf_lr-fold0-*.npz"):
        entry.write_bytes(b"damaged")
    assert not mp.fold_meta_probs(_cfg(), dev, fold, 0).cache_hit and len(calls) == 4


def test_loadable_backbones() -> None:
    assert mp.loadable_backbones(["clap_audio", "meta_probs"], ["tfidf_lr"]) == ["clap_audio"]
    assert mp.loadable_backbones(["clap_audio", "meta_probs"], ["tfidf_lr", "minilm_lr"]) == [
        "clap_audio", "minilm_text"]
    assert mp.loadable_backbones(["clap_audio"], ["minilm_lr"]) == ["clap_audio"]


def _without_text(src: Path, dst: Path) -> Path:
    """A copy of a dataset whose metadata has no title, tags or description column."""
    shutil.copytree(src, dst)
    path = next((dst / "metadata").glob("*_metadata.csv"))
    pd.read_csv(path, dtype=str, keep_default_na=False).drop(
        columns=list(TEXT_FIELDS)).to_csv(path, index=False)
    return path


def test_data_without_text_are_a_clear_error(dev: Dataset, tiny_data, tmp_path: Path) -> None:
    csv = _without_text(tiny_data["crowd"], tmp_path / "crowd")
    crowd = load_dataset(tmp_path / "crowd")
    assert crowd.texts is None
    cfg = _cfg(**{"data.crowd": "all"})
    with pytest.raises(DataError, match=rf"{re.escape(str(csv))}: backbones has meta_probs.*none of these columns"):
        run_trial(cfg, dev, tmp_path / "t", crowd=crowd)
    with pytest.raises(DataError, match=rf"{re.escape(str(csv))}: backbones has meta_probs"):
        # without a crowd strategy too: every fold model predicts a crowd set it is given
        run_trial(_cfg(**{"train.max_epochs": 1}), dev, tmp_path / "ok", crowd=crowd, n_folds=2)
    with pytest.raises(DataError, match=rf"{re.escape(str(csv))}: backbones has meta_probs"):
        run_trial(_cfg(), crowd, tmp_path / "t2")
    with pytest.raises(DataError, match="minilm_lr reads the minilm_text"):
        run_trial(_cfg(**{"meta.model": "minilm_lr"}), dev, tmp_path / "t3")
    silent = dev.texts.copy()
    silent[list(TEXT_FIELDS)] = ""
    with pytest.raises(DataError, match="every title, tags, description cell is empty"):
        run_trial(_cfg(), dataclasses.replace(dev, texts=silent), tmp_path / "t4")


def test_cli_trial_with_meta_probs(tiny_data, tmp_path: Path) -> None:
    """`--set backbones=...,meta_probs`: the embedding folders load, meta_probs is computed."""
    import subprocess
    import sys

    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "bst_search.cli", "trial", "--data", str(tiny_data["dev"]),
           "--eval-data", str(tiny_data["eval"]), "--config", "late_fusion", "--out", str(out),
           "--folds", "2", "--set", "backbones=clap_audio,meta_probs", "--set", "model.hidden=16",
           "--set", "model.heads=2", "--set", "train.max_epochs=1", "--set", "train.warmup_epochs=0"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "fold 0 meta_probs (tfidf_lr): computed, 6 text-model fits" in r.stdout
    assert len(pd.read_parquet(out / "eval.parquet")) == len(load_dataset(tiny_data["eval"]).ids)
