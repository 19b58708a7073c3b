"""The synthetic release: official layout, determinism, realistic proportions and noise."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bst_search import taxonomy as tx
from bst_search.data import load_dataset
from bst_search.synth import BACKBONE_DIMS, PRIORS, make_synthetic

DEV_COLUMNS = ["sound_id", "class", "class_idx", "class_top", "confidence", "title", "tags",
               "description", "uploader", "license"]


def _meta(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / "metadata" / f"{name}_metadata.csv", dtype=str,
                       keep_default_na=False)


def test_layout_is_the_official_one(tiny_data):
    assert set(tiny_data) == {"dev", "crowd", "crowd_clean_labels", "eval", "eval_labels"}
    dev, crowd, ev = tiny_data["dev"], tiny_data["crowd"], tiny_data["eval"]
    assert sorted(p.name for p in (dev / "metadata").iterdir()) == [
        "BSD10k_metadata.csv", "BST_description.csv"]
    assert sorted(p.name for p in (crowd / "metadata").iterdir()) == [
        "BSD35k-CS_metadata.csv", "BST_description.csv"]
    assert [p.name for p in (ev / "metadata").iterdir()] == ["eval_metadata.csv"]
    assert list(_meta(dev, "BSD10k").columns) == DEV_COLUMNS
    assert list(_meta(crowd, "BSD35k-CS").columns) == DEV_COLUMNS
    assert list(_meta(ev, "eval").columns) == ["anonymous_id", "title", "tags", "description"]
    desc = pd.read_csv(dev / "metadata" / "BST_description.csv", keep_default_na=False)
    assert desc["class_key"].tolist() == [r["class_key"] for r in tx.description_table()]
    assert tiny_data["eval_labels"].parent == ev.parent  # labels live outside the eval folder
    for root, n, id_col, name in ((dev, 800, "sound_id", "BSD10k"),
                                  (crowd, 300, "sound_id", "BSD35k-CS"),
                                  (ev, 200, "anonymous_id", "eval")):
        ids = _meta(root, name)[id_col]
        assert len(ids) == n and ids.is_unique
        feats = root / "features"
        assert sorted(p.name for p in feats.iterdir()) == sorted(
            f"{b}_embeddings" for b in BACKBONE_DIMS)
        for b, dim in BACKBONE_DIMS.items():
            files = sorted(p.name for p in (feats / f"{b}_embeddings").iterdir())
            assert files == sorted(f"{i}.npy" for i in ids)
            v = np.load(feats / f"{b}_embeddings" / files[0])
            assert v.shape == (dim,) and v.dtype == np.float32


def test_dev_columns_are_consistent(tiny_data):
    df = _meta(tiny_data["dev"], "BSD10k")
    assert df["sound_id"].str.fullmatch(r"\d+").all()
    assert (df["class_idx"].astype(int) == df["class"].map(tx.CLASS_IDX)).all()
    assert (df["class_top"] == df["class"].map(tx.top_of)).all()
    assert set(df["confidence"].astype(int)) <= {1, 2, 3, 4, 5}
    assert (df["title"] != "").all()
    assert df["uploader"].nunique() > 50
    crowd = _meta(tiny_data["crowd"], "BSD35k-CS")
    assert (crowd["confidence"] == "").all()
    assert not set(crowd["sound_id"]) & set(df["sound_id"])


def test_proportions_are_bsd10k_like(tiny_data):
    df = _meta(tiny_data["dev"], "BSD10k")
    n = len(df)
    excluded = df["class"].map(tx.is_excluded_code)
    assert 0.01 <= excluded.mean() <= 0.06
    conf = df["confidence"].astype(int).value_counts(normalize=True)
    assert abs(conf.get(4, 0) - 0.55) < 0.06
    assert abs(conf.get(3, 0) - 0.30) < 0.06
    assert conf.get(1, 0) < 0.04 and conf.get(5, 0) < 0.13 and conf.get(2, 0) < 0.13
    counts = df.loc[~excluded, "class"].value_counts()
    assert set(counts.index) == set(tx.CODES)  # every class present even in 800 rows
    assert counts["fx-o"] > 4 * counts["sp-p"]
    assert max(PRIORS.values()) / min(PRIORS.values()) == pytest.approx(10, rel=0.1)
    # heavy-tailed uploaders: the top 10 % of uploaders hold far more than 10 % of sounds
    up = df["uploader"].value_counts()
    assert up.iloc[: max(1, len(up) // 10)].sum() > 0.35 * n


def test_eval_ids_and_labels(tiny_data):
    ev = _meta(tiny_data["eval"], "eval")
    assert ev["anonymous_id"].map(lambda s: bool(re.fullmatch(r"[0-9a-f]{32}", s))).all()
    labels = pd.read_csv(tiny_data["eval_labels"], dtype=str)
    assert list(labels.columns) == ["id", "class"]
    assert labels["id"].tolist() == ev["anonymous_id"].tolist()
    assert labels["class"].isin(tx.CODES).all()


def test_crowd_has_uploader_clustered_label_noise(tiny_data):
    clean = pd.read_csv(tiny_data["crowd_clean_labels"], dtype=str)
    meta = _meta(tiny_data["crowd"], "BSD35k-CS")
    assert clean["sound_id"].tolist() == meta["sound_id"].tolist()
    assert (clean["class"] == meta["class"]).all()
    task = clean["true_class"].isin(tx.CODES)
    flipped = task & (clean["class"] != clean["true_class"])
    assert 0.08 <= flipped.sum() / task.sum() <= 0.28
    sib = (clean.loc[flipped, "class"].map(tx.top_of)
           == clean.loc[flipped, "true_class"].map(tx.top_of))
    assert sib.mean() > 0.55  # flips go mostly to siblings
    # uploaders concentrate on one or two classes
    frame = meta.assign(true=clean["true_class"])[task]
    big = frame["uploader"].value_counts()
    big = big[big >= 10].index
    share = [frame.loc[frame["uploader"] == u, "true"].value_counts().iloc[:2].sum()
             / (frame["uploader"] == u).sum() for u in big]
    assert len(share) >= 3 and np.mean(share) > 0.6


def test_siblings_are_closer_than_other_top_levels(tiny_data):
    ds = load_dataset(tiny_data["dev"], backbones=["clap_audio"])
    x = ds.features["clap_audio"]
    means = np.stack([x[ds.y == c].mean(axis=0) for c in range(tx.N_CLASSES)])
    d = np.linalg.norm(means[:, None] - means[None], axis=-1)
    same = tx.PARENT[:, None] == tx.PARENT[None, :]
    off = ~np.eye(tx.N_CLASSES, dtype=bool)
    assert d[same & off].mean() < 0.85 * d[~same].mean()


def test_low_confidence_sounds_are_more_ambiguous(tiny_data):
    ds = load_dataset(tiny_data["dev"], backbones=["clap_audio"])
    x = ds.features["clap_audio"]
    means = np.stack([x[ds.y == c].mean(axis=0) for c in range(tx.N_CLASSES)])
    dist = np.linalg.norm(x[:, None] - means[None], axis=-1)
    own = dist[np.arange(len(x)), ds.y]
    dist[np.arange(len(x)), ds.y] = np.inf
    gap = dist.min(axis=1) - own  # > 0: nearer its own class centre than any other
    assert gap[ds.confidence >= 4].mean() > gap[ds.confidence <= 3].mean()


def test_deterministic_per_seed(tmp_path):
    kw = dict(n=60, crowd_n=20, eval_n=10)
    a = make_synthetic(tmp_path / "a", seed=7, **kw)
    b = make_synthetic(tmp_path / "b", seed=7, **kw)
    c = make_synthetic(tmp_path / "c", seed=8, **kw)
    rel = ["dev/metadata/BSD10k_metadata.csv", "crowd/metadata/BSD35k-CS_metadata.csv",
           "eval/metadata/eval_metadata.csv", "eval_labels.csv", "crowd_clean_labels.csv"]
    ids = _meta(a["dev"], "BSD10k")["sound_id"].tolist()
    rel += [f"dev/features/{bb}_embeddings/{ids[k]}.npy" for bb in BACKBONE_DIMS for k in (0, -1)]
    for r in rel:
        assert (tmp_path / "a" / r).read_bytes() == (tmp_path / "b" / r).read_bytes(), r
    assert (a["dev"] / "metadata" / "BSD10k_metadata.csv").read_bytes() != (
        c["dev"] / "metadata" / "BSD10k_metadata.csv").read_bytes()
    assert set(b) == set(a)


def test_refuses_non_empty_target_unless_overwrite(tmp_path):
    make_synthetic(tmp_path, n=30, eval_n=5, seed=0)
    with pytest.raises(FileExistsError, match="dev"):
        make_synthetic(tmp_path, n=30, eval_n=5, seed=0)
    stale = tmp_path / "dev" / "features" / "clap_audio_embeddings" / "999999999.npy"
    stale.write_bytes(b"")
    paths = make_synthetic(tmp_path, n=30, eval_n=0, seed=1, overwrite=True)
    assert not stale.exists()  # replaced, not merged
    assert set(paths) == {"dev"} and not (tmp_path / "eval").exists()
    (tmp_path / "other").mkdir()
    make_synthetic(tmp_path / "other", n=10, eval_n=0)  # an empty existing folder is fine


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n >= 1"):
        make_synthetic(tmp_path, n=0)
