"""Dataset loading: the contract, every bad input's message, missing policies and the cache."""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bst_search import taxonomy as tx
from bst_search.data import (
    DataError,
    Dataset,
    DataWarning,
    discover_backbones,
    fingerprint,
    is_text_backbone,
    load_dataset,
)
from bst_search.data import features as features_mod
from bst_search.synth import BACKBONE_DIMS, make_synthetic

META = "BSD10k_metadata.csv"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """A very small release that tests copy and then damage."""
    return make_synthetic(tmp_path_factory.mktemp("small"), n=60, eval_n=12, seed=3)


@pytest.fixture
def dev(small, tmp_path) -> Path:
    """A private copy of the small dev set."""
    return Path(shutil.copytree(small["dev"], tmp_path / "dev"))


def _meta_path(root: Path) -> Path:
    return root / "metadata" / META


def _read(root: Path) -> pd.DataFrame:
    return pd.read_csv(_meta_path(root), dtype=str, keep_default_na=False)


def _write(root: Path, df: pd.DataFrame) -> None:
    df.to_csv(_meta_path(root), index=False)


def _task_ids(root: Path) -> list[str]:
    df = _read(root)
    return df.loc[df["class"].isin(tx.CODES), "sound_id"].tolist()


def _npy(root: Path, backbone: str, sid: str) -> Path:
    return root / "features" / f"{backbone}_embeddings" / f"{sid}.npy"


def _error(root: Path, **kw) -> str:
    with pytest.raises(DataError) as e:
        load_dataset(root, **kw)
    return str(e.value)


# --- the contract ---------------------------------------------------------------------------

def test_loads_the_dev_set(tiny_data):
    ds = load_dataset(tiny_data["dev"])
    df = pd.read_csv(tiny_data["dev"] / "metadata" / META, dtype=str, keep_default_na=False)
    keep = df["class"].isin(tx.CODES)
    assert ds.name == "BSD10k" and ds.labelled and ds.root == tiny_data["dev"]
    assert ds.n_excluded == int((~keep).sum()) > 0
    assert ds.ids.dtype == object and ds.ids.tolist() == df.loc[keep, "sound_id"].tolist()
    assert ds.y.dtype == np.int64 and ds.y.tolist() == tx.encode(df.loc[keep, "class"]).tolist()
    assert ds.confidence.dtype == np.float64 and np.nanmin(ds.confidence) >= 1
    assert ds.uploader.tolist() == df.loc[keep, "uploader"].tolist()
    assert ds.backbones == sorted(BACKBONE_DIMS) == discover_backbones(tiny_data["dev"])
    for b, m in ds.features.items():
        assert m.dtype == np.float32 and m.flags.c_contiguous
        assert m.shape == (len(ds), BACKBONE_DIMS[b])
        sid = ds.ids[5]
        np.testing.assert_array_equal(m[5], np.load(_npy(tiny_data["dev"], b, sid)))
    assert len(ds.fingerprint) == 16 and int(ds.fingerprint, 16) >= 0
    assert ds.dropped == [] and all(v == [] for v in ds.zeroed.values())
    assert ds.codes.tolist() == df.loc[keep, "class"].tolist()
    assert "BSD10k" in repr(ds)


def test_loads_eval_and_crowd(tiny_data):
    ev = load_dataset(tiny_data["eval"])
    assert ev.name == "eval" and not ev.labelled
    assert ev.y is None and ev.confidence is None and ev.uploader is None
    labels = pd.read_csv(tiny_data["eval_labels"], dtype=str)
    assert ev.ids.tolist() == labels["id"].tolist()
    crowd = load_dataset(tiny_data["crowd"], backbones=["clap_text"])
    assert crowd.name == "BSD35k-CS" and crowd.labelled and crowd.backbones == ["clap_text"]
    assert np.isnan(crowd.confidence).all()  # empty confidence on crowd data


def test_backbone_selection_and_X(tiny_data):
    ds = load_dataset(tiny_data["dev"], backbones=["clap_text", "clap_audio"])
    assert ds.backbones == ["clap_text", "clap_audio"]
    xa, xt = ds.X(["clap_audio", "clap_text"])
    assert xa is ds.features["clap_audio"] and xt is ds.features["clap_text"]
    with pytest.raises(DataError, match=r"'panns'.*available: clap_text, clap_audio"):
        ds.X(["panns"])
    msg = _error(tiny_data["dev"], backbones=["clap_audio", "beats"])
    assert "'beats'" in msg and "clap_audio, clap_text, panns" in msg
    assert is_text_backbone("clap_text") and not is_text_backbone("clap_audio")
    meta_only = load_dataset(tiny_data["dev"], backbones=[])
    assert meta_only.features == {} and len(meta_only) == len(ds)


def test_fingerprint_is_content_based(tiny_data, dev):
    a = load_dataset(tiny_data["dev"], use_cache=False)
    b = load_dataset(tiny_data["dev"])
    c = load_dataset(dev)
    d = load_dataset(tiny_data["dev"], backbones=["panns", "clap_text", "clap_audio"])
    assert a.fingerprint == b.fingerprint == d.fingerprint
    assert c.fingerprint != a.fingerprint  # another dataset
    first = c.fingerprint
    sid = _task_ids(dev)[0]
    v = np.load(_npy(dev, "clap_audio", sid))
    np.save(_npy(dev, "clap_audio", sid), v + 1)
    assert load_dataset(dev).fingerprint != first
    np.save(_npy(dev, "clap_audio", sid), v)
    assert load_dataset(dev).fingerprint == first
    df = _read(dev)
    row = df.index[df["sound_id"] == sid][0]
    new = "ss-s" if df.loc[row, "class"] != "ss-s" else "m-sp"
    df.loc[row, ["class", "class_idx"]] = [new, str(tx.CLASS_IDX[new])]
    _write(dev, df)
    assert load_dataset(dev).fingerprint != first  # a label change is a content change


def test_hand_built_dataset_obeys_the_contract():
    ids = np.array(["a", "b"], dtype=object)
    ds = Dataset(name="x", root=Path("."), labelled=True, ids=ids, y=np.array([0, 3]),
                 confidence=None, uploader=None,
                 features={"f": np.ones((2, 4), dtype=np.float64)})
    assert ds.features["f"].dtype == np.float32
    assert ds.fingerprint == fingerprint(ids, np.array([0, 3]), {"f": np.ones((2, 4))})
    back = pickle.loads(pickle.dumps(ds))  # Ray's object store pickles it
    assert back.fingerprint == ds.fingerprint and back.ids.tolist() == ["a", "b"]
    with pytest.raises(DataError, match="shape"):
        Dataset(name="x", root=Path("."), labelled=False, ids=ids, y=None, confidence=None,
                uploader=None, features={"f": np.ones((3, 4))})


# --- metadata problems ----------------------------------------------------------------------

def test_metadata_folder_must_hold_exactly_one_table(dev, tmp_path):
    shutil.copy(_meta_path(dev), dev / "metadata" / "other_metadata.csv")
    msg = _error(dev)
    assert "2 *_metadata.csv" in msg and "BSD10k_metadata.csv" in msg and "other_metadata.csv" in msg
    (dev / "metadata" / "other_metadata.csv").unlink()
    _meta_path(dev).unlink()
    assert "no *_metadata.csv" in _error(dev)
    shutil.rmtree(dev / "metadata")
    assert "no metadata folder" in _error(dev)
    assert "not a directory" in _error(tmp_path / "nowhere")


def test_missing_columns(dev):
    _write(dev, _read(dev).drop(columns=["class"]))
    msg = _error(dev)
    assert META in msg and "missing column 'class'" in msg
    _write(dev, _read(dev).drop(columns=["sound_id"]))
    msg = _error(dev)
    assert "'sound_id' and 'class'" in msg and "anonymous_id" in msg


def test_empty_and_malformed_tables(dev):
    _meta_path(dev).write_text("")
    assert "file is empty" in _error(dev)
    _meta_path(dev).write_text(",".join(_read_header(dev)) + "\n")
    assert "empty table" in _error(dev)


def _read_header(dev: Path) -> list[str]:
    return ["sound_id", "class", "class_idx", "class_top", "confidence", "title", "tags",
            "description", "uploader", "license"]


def test_malformed_csv(dev):
    text = _meta_path(dev).read_text().splitlines()
    n_columns = len(text[0].split(","))  # a last record with three fields too many
    text.append(",".join(["1"] * (n_columns + 3)))
    _meta_path(dev).write_text("\n".join(text) + "\n")
    msg = _error(dev)
    assert META in msg and "malformed CSV" in msg
    _meta_path(dev).write_bytes(b"sound_id,class\n1,\xff\xfe\n")
    assert "not UTF-8" in _error(dev)


def test_duplicate_ids(dev):
    df = _read(dev)
    ids = df["sound_id"].tolist()
    df.loc[7, "sound_id"] = ids[2]
    df.loc[9, "sound_id"] = ids[4]
    _write(dev, df)
    msg = _error(dev)
    assert META in msg and "duplicate sound_id" in msg and f"2 ids: {ids[2]}, {ids[4]}" in msg
    df.loc[9, "sound_id"] = ""
    _write(dev, df)
    assert "empty sound_id in 1 data row: 10" in _error(dev)
    df.loc[9, "sound_id"] = "../../etc/passwd"
    _write(dev, df)
    assert "not plain file names" in _error(dev)


def test_unknown_class_codes(dev):
    df = _read(dev)
    df.loc[3, "class"], df.loc[5, "class"] = "fx-zz", "Music"
    _write(dev, df)
    msg = _error(dev)
    assert META in msg and "unknown class codes" in msg
    assert f"{df.loc[3, 'sound_id']} ('fx-zz')" in msg and "'Music'" in msg


def test_class_idx_must_agree_and_confidence_must_be_valid(dev):
    df = _read(dev)
    sid = df.loc[2, "sound_id"]
    good = df.copy()
    df.loc[2, "class_idx"] = "999"
    _write(dev, df)
    msg = _error(dev)
    assert "class and class_idx disagree" in msg and sid in msg
    df = good.copy()
    df.loc[2, "class_idx"] = "abc"
    _write(dev, df)
    assert "class_idx is not an integer" in _error(dev)
    df = good.copy()
    df.loc[2, "confidence"] = "7"
    _write(dev, df)
    msg = _error(dev)
    assert "confidence" in msg and f"{sid} ('7')" in msg
    df = good.copy()
    df.loc[2, "confidence"] = ""
    _write(dev, df)
    ds = load_dataset(dev)
    if sid in set(ds.ids):
        assert np.isnan(ds.confidence[list(ds.ids).index(sid)])


def test_excluded_codes_are_dropped_and_counted(dev):
    df = _read(dev)
    df.loc[0, ["class", "class_idx"]] = ["fx", "400"]
    df.loc[1, ["class", "class_idx"]] = ["ss-other", "599"]
    df.loc[2, ["class", "class_idx"]] = ["is-other", ""]  # code alone decides too
    _write(dev, df)
    ds = load_dataset(dev)
    excluded = ~df["class"].isin(tx.CODES)
    assert ds.n_excluded == int(excluded.sum()) >= 3
    assert not set(df.loc[excluded, "sound_id"]) & set(ds.ids)
    # an excluded row needs no embedding file
    os.unlink(_npy(dev, "clap_audio", df.loc[0, "sound_id"]))
    assert load_dataset(dev).n_excluded == ds.n_excluded
    df["class"] = "fx-other"
    df["class_idx"] = "499"
    _write(dev, df)
    assert "all 60 rows excluded" in _error(dev)


# --- feature problems -----------------------------------------------------------------------

def test_missing_files_error_by_default(dev):
    ids = _task_ids(dev)
    for sid in ids[:7]:
        os.unlink(_npy(dev, "clap_text", sid))
    msg = _error(dev)
    assert "clap_text_embeddings" in msg and "missing .npy files" in msg
    assert "7 ids, first 5: " + ", ".join(ids[:5]) in msg
    assert "missing='drop'" in msg


def test_missing_policy_drop(dev):
    ids = _task_ids(dev)
    os.unlink(_npy(dev, "clap_text", ids[0]))
    os.unlink(_npy(dev, "panns", ids[3]))
    with pytest.warns(DataWarning, match=rf"dropped 2 ids: {ids[0]}, {ids[3]}"):
        ds = load_dataset(dev, missing="drop")
    assert ds.dropped == [ids[0], ids[3]]
    assert ids[0] not in set(ds.ids) and len(ds) == len(ids) - 2
    assert all(m.shape[0] == len(ds) for m in ds.features.values())
    assert ds.y.shape == ds.confidence.shape == ds.uploader.shape == (len(ds),)
    with pytest.warns(DataWarning, match="dropped"):  # a cache hit warns just the same
        again = load_dataset(dev, missing="drop")
    assert again.cache_hit and again.dropped == ds.dropped


def test_missing_policy_zero(dev):
    ids = _task_ids(dev)
    os.unlink(_npy(dev, "clap_audio", ids[1]))
    with pytest.warns(DataWarning, match=rf"zero-filled the clap_audio vector of 1 id: {ids[1]}"):
        ds = load_dataset(dev, missing="zero")
    row = list(ds.ids).index(ids[1])
    assert len(ds) == len(ids) and ds.zeroed["clap_audio"] == [ids[1]]
    assert not ds.features["clap_audio"][row].any()
    assert ds.features["clap_text"][row].any()  # the other modality is kept (the official HATR baseline)
    with pytest.raises(ValueError, match="missing='skip'"):
        load_dataset(dev, missing="skip")


def test_zero_byte_and_unreadable_files(dev):
    ids = _task_ids(dev)
    _npy(dev, "clap_audio", ids[0]).write_bytes(b"")
    _npy(dev, "clap_text", ids[1]).write_bytes(b"not a numpy file at all")
    full = _npy(dev, "panns", ids[2]).read_bytes()
    _npy(dev, "panns", ids[2]).write_bytes(full[:200])  # truncated
    msg = _error(dev, missing="zero")  # a broken file is never "missing"
    assert f"zero-byte .npy files (empty embeddings), 1 file: {ids[0]}.npy" in msg
    assert f"unreadable .npy files, 1 file: {ids[1]}.npy (not a .npy file" in msg
    assert "panns_embeddings" in msg and f"{ids[2]}.npy (" in msg
    assert "3 problem(s)" in msg


def test_nan_inf_and_bad_shapes(dev):
    ids = _task_ids(dev)
    v = np.load(_npy(dev, "clap_audio", ids[0]))
    np.save(_npy(dev, "clap_audio", ids[0]), np.where(np.arange(v.size) == 3, np.nan, v))
    np.save(_npy(dev, "clap_audio", ids[1]), np.full_like(v, np.inf))
    np.save(_npy(dev, "clap_text", ids[2]), np.ones((4, 128), dtype=np.float32))
    np.save(_npy(dev, "panns", ids[3]), np.array(["a", "b"]))
    msg = _error(dev)
    assert f"clap_audio_embeddings: NaN or Inf values (after conversion to float32) in 2 ids: " \
           f"{ids[0]}, {ids[1]}" in msg
    assert f"{ids[2]} (not a vector (shape (4, 128)))" in msg
    assert f"{ids[3]} (not a real numeric array" in msg or "unreadable" in msg


def test_inconsistent_dimension_names_ids_and_both_dims(dev):
    ids = _task_ids(dev)
    np.save(_npy(dev, "clap_text", ids[4]), np.ones(256, dtype=np.float32))
    msg = _error(dev)
    assert "clap_text_embeddings: inconsistent embedding dimension" in msg
    assert "have dim 512" in msg and f"1 id: {ids[4]} (dim 256)" in msg


def test_row_vectors_other_dtypes_and_extra_files_are_accepted(dev):
    ids = _task_ids(dev)
    v = np.load(_npy(dev, "clap_audio", ids[0]))
    np.save(_npy(dev, "clap_audio", ids[0]), v.astype(np.float64)[None, :])  # (1, 512) float64
    np.save(_npy(dev, "clap_audio", "123456789"), v)  # not in the metadata: ignored
    (dev / "features" / "clap_audio_embeddings" / "README.txt").write_text("x")
    ds = load_dataset(dev)
    np.testing.assert_array_equal(ds.features["clap_audio"][0], v)
    assert "123456789" not in set(ds.ids)


def test_no_backbone_folders(dev):
    shutil.rmtree(dev / "features")
    msg = _error(dev)
    assert "no backbone folders" in msg and "features" in msg
    assert discover_backbones(dev) == []


def test_a_backbone_without_any_file(dev):
    shutil.rmtree(dev / "features" / "panns_embeddings")
    (dev / "features" / "panns_embeddings").mkdir()
    assert "panns_embeddings: missing .npy files" in _error(dev)
    assert "no embedding file for any" in _error(dev, missing="zero")


# --- the consolidation cache ----------------------------------------------------------------

def _cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*")) if cache.exists() else []


def test_second_load_reads_no_npy_file(dev, isolated_cache, monkeypatch):
    first = load_dataset(dev)
    assert not first.cache_hit
    files = _cache_files(isolated_cache)
    assert len(files) == 1 and files[0].suffix == ".npz" and files[0].name.startswith("BSD10k-")

    def boom(*a, **k):
        raise AssertionError("a .npy file was read on a cache hit")

    monkeypatch.setattr(features_mod, "read_files", boom)
    monkeypatch.setattr(np, "load", _guard_np_load(np.load))
    second = load_dataset(dev)
    assert second.cache_hit and second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.features["panns"], first.features["panns"])
    np.testing.assert_array_equal(second.y, first.y)
    assert second.ids.tolist() == first.ids.tolist()


def _guard_np_load(real):
    def guarded(file, *a, **k):
        if str(file).endswith(".npy"):
            raise AssertionError(f"np.load({file}) on a cache hit")
        return real(file, *a, **k)
    return guarded


def test_cache_is_per_backbone_set_and_policy(dev, isolated_cache):
    load_dataset(dev)
    load_dataset(dev, backbones=["clap_audio"])
    load_dataset(dev, missing="zero")
    assert len(_cache_files(isolated_cache)) == 3
    assert load_dataset(dev, backbones=["clap_audio"]).cache_hit


def test_cache_invalidation(dev, isolated_cache):
    base = load_dataset(dev)
    sid = _task_ids(dev)[3]
    p = _npy(dev, "clap_text", sid)
    v = np.load(p)
    np.save(p, v * 2)  # same size, new content and mtime
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    changed = load_dataset(dev)
    assert not changed.cache_hit and changed.fingerprint != base.fingerprint
    np.testing.assert_allclose(changed.features["clap_text"][list(changed.ids).index(sid)], v * 2)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))  # touched only
    touched = load_dataset(dev)
    assert not touched.cache_hit and touched.fingerprint == changed.fingerprint
    df = _read(dev)
    df.loc[0, "title"] = "a new title"  # metadata bytes are part of the key
    _write(dev, df)
    assert not load_dataset(dev).cache_hit
    assert load_dataset(dev).cache_hit


def test_nothing_is_cached_when_validation_fails(dev, isolated_cache):
    sid = _task_ids(dev)[0]
    _npy(dev, "clap_audio", sid).write_bytes(b"")
    _error(dev)
    assert _cache_files(isolated_cache) == []


def test_a_damaged_cache_file_is_rebuilt(dev, isolated_cache):
    first = load_dataset(dev)
    (path,) = _cache_files(isolated_cache)
    path.write_bytes(path.read_bytes()[:1000])
    again = load_dataset(dev)
    assert not again.cache_hit and again.fingerprint == first.fingerprint
    assert load_dataset(dev).cache_hit


def test_explicit_cache_dir_and_unwritable_cache(dev, tmp_path, isolated_cache):
    mine = tmp_path / "mine"
    load_dataset(dev, cache_dir=mine, progress=True)
    assert len(_cache_files(mine)) == 1 and _cache_files(isolated_cache) == []
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.warns(DataWarning, match="could not write the feature cache"):
        ds = load_dataset(dev, cache_dir=blocker / "sub")
    assert not ds.cache_hit and len(ds) > 0


def test_no_warning_on_clean_load(tiny_data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(tiny_data["dev"])
