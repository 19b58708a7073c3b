"""Reading and validating ``<root>/metadata/<NAME>_metadata.csv``.

The metadata decides which rows exist, in which order, with which label; the feature files
only have to follow. Every problem is reported with the file and the first offending ids,
because a silent fix here (a dropped row, a guessed label) changes every score downstream.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bst_search import taxonomy as tx
from bst_search.data.errors import DataError, list_ids
from bst_search.data.texts import read_texts

LABELLED_ID = "sound_id"
UNLABELLED_ID = "anonymous_id"


@dataclass
class Metadata:
    """The validated table: rows after exclusion of non-task codes, in file order."""

    name: str
    path: Path
    raw: bytes
    labelled: bool
    ids: np.ndarray
    y: np.ndarray | None
    confidence: np.ndarray | None
    uploader: np.ndarray | None
    n_excluded: int
    texts: pd.DataFrame | None = None  # title, tags, description by id (None: no such column)


def find_metadata(root: Path) -> tuple[str, Path]:
    """The single ``*_metadata.csv`` of ``root/metadata`` and the dataset name it gives."""
    folder = root / "metadata"
    if not folder.is_dir():
        raise DataError(f"{folder}: no metadata folder; expected <root>/metadata/<NAME>_metadata.csv"
                        f" (is {root} a dataset in the official layout?)")
    found = sorted(p for p in folder.glob("*_metadata.csv") if p.is_file())
    if not found:
        raise DataError(f"{folder}: no *_metadata.csv file; expected exactly one "
                        f"<NAME>_metadata.csv (e.g. BSD10k_metadata.csv)")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(f"{folder}: {len(found)} *_metadata.csv files ({names}); expected exactly "
                        f"one, so that the dataset is unambiguous")
    path = found[0]
    return path.name[: -len("_metadata.csv")], path


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    """A column as an object array of stripped strings ('' for missing cells)."""
    return np.asarray([("" if not isinstance(v, str) else v.strip()) for v in df[name].tolist()],
                      dtype=object)


def _read_table(path: Path, raw: bytes) -> pd.DataFrame:
    if not raw.strip():
        raise DataError(f"{path}: the file is empty (no header, no rows)")
    try:
        df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, na_filter=False,
                         encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise DataError(f"{path}: malformed CSV ({str(e).strip()})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _check_ids(path: Path, ids: np.ndarray, id_col: str) -> None:
    empty = np.flatnonzero(ids == "")
    if empty.size:
        rows = [str(i + 1) for i in empty]
        raise DataError(f"{path}: empty {id_col} in {list_ids(rows, 'data row')} "
                        f"(rows counted from 1 after the header)")
    unsafe = [i for i in ids if "/" in i or "\\" in i or "\0" in i or i in (".", "..")]
    if unsafe:  # an id names a file <id>.npy inside the backbone folder, nothing else
        raise DataError(f"{path}: {id_col} values that are not plain file names, "
                        f"{list_ids([repr(i) for i in unsafe])}")
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    dup = uniq[counts > 1]
    if dup.size:
        # report in file order, which is how a person will look for them
        dup_set = set(dup.tolist())
        first = list(dict.fromkeys(i for i in ids if i in dup_set))
        raise DataError(f"{path}: duplicate {id_col} values, {list_ids(first)} "
                        f"({int(counts[counts > 1].sum())} rows in all)")


def _parse_class_idx(path: Path, ids: np.ndarray, raw_idx: np.ndarray) -> np.ndarray:
    """class_idx as int64, -1 where empty; DataError naming ids with a non-integer value."""
    out = np.full(len(raw_idx), -1, dtype=np.int64)
    bad = []
    for i, v in enumerate(raw_idx):
        if v == "":
            continue
        try:
            f = float(v)
        except ValueError:
            bad.append(i)
            continue
        if not np.isfinite(f) or f != int(f):
            bad.append(i)
        else:
            out[i] = int(f)
    if bad:
        shown = [f"{ids[i]} ({raw_idx[i]!r})" for i in bad]
        raise DataError(f"{path}: class_idx is not an integer for {list_ids(shown)}")
    return out


def _parse_confidence(path: Path, ids: np.ndarray, raw_conf: np.ndarray) -> np.ndarray:
    conf = pd.to_numeric(pd.Series(raw_conf.tolist(), dtype=object).replace("", np.nan),
                         errors="coerce").to_numpy(dtype=np.float64)
    bad = (np.isnan(conf) & (raw_conf != "")) | (~np.isnan(conf) & ((conf < 1) | (conf > 5)))
    if bad.any():
        shown = [f"{ids[i]} ({raw_conf[i]!r})" for i in np.flatnonzero(bad)]
        raise DataError(f"{path}: confidence must be empty or a number in 1..5; "
                        f"bad values for {list_ids(shown)}")
    return conf


def read_metadata(root: Path) -> Metadata:
    """Find, parse and validate the metadata table; drop (and count) non-task codes."""
    name, path = find_metadata(root)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    df = _read_table(path, raw)
    cols = set(df.columns)
    if {LABELLED_ID, "class"} <= cols:
        labelled, id_col = True, LABELLED_ID
    elif UNLABELLED_ID in cols:
        labelled, id_col = False, UNLABELLED_ID
    else:
        if LABELLED_ID in cols:
            need = "'class' (a labelled set needs sound_id and class)"
        else:
            need = ("'sound_id' and 'class' (labelled set) or 'anonymous_id' (evaluation set)")
        raise DataError(f"{path}: missing column {need}; found columns: "
                        f"{', '.join(df.columns) or '(none)'}")
    if len(df) == 0:
        raise DataError(f"{path}: empty table (a header but no rows)")
    ids = _column(df, id_col)
    _check_ids(path, ids, id_col)
    uploader = _column(df, "uploader") if "uploader" in cols else None
    texts = read_texts(df, ids)
    if not labelled:
        return Metadata(name=name, path=path, raw=raw, labelled=False, ids=ids, y=None,
                        confidence=None, uploader=uploader, n_excluded=0, texts=texts)

    codes = _column(df, "class")
    unknown = np.array([c not in tx.KNOWN_CODES for c in codes], dtype=bool)
    if unknown.any():
        shown = [f"{ids[i]} ({codes[i]!r})" for i in np.flatnonzero(unknown)]
        raise DataError(f"{path}: unknown class codes, {list_ids(shown)}; a code must be one of "
                        f"the 23 BST codes, a top level ({', '.join(tx.TOP_LEVELS)}) or <top>-other")
    excluded = np.array([tx.is_excluded_code(c) for c in codes], dtype=bool)
    if "class_idx" in cols:
        idx = _parse_class_idx(path, ids, _column(df, "class_idx"))
        has = idx >= 0
        expected = np.array([tx.CLASS_IDX[c] for c in codes], dtype=np.int64)
        mismatch = has & (idx != expected)
        if mismatch.any():
            shown = [f"{ids[i]} ({codes[i]} vs {idx[i]}, expected {expected[i]})"
                     for i in np.flatnonzero(mismatch)]
            raise DataError(f"{path}: class and class_idx disagree for {list_ids(shown)}")
        excluded |= has & np.isin(idx % 100, (0, 99))
    keep = ~excluded
    if not keep.any():
        raise DataError(f"{path}: empty table after excluding top-level-only and *-other codes "
                        f"(all {len(ids)} rows excluded)")
    conf_raw = _column(df, "confidence") if "confidence" in cols else None
    conf = (_parse_confidence(path, ids, conf_raw) if conf_raw is not None
            else np.full(len(ids), np.nan))
    return Metadata(
        name=name, path=path, raw=raw, labelled=True, ids=ids[keep],
        y=tx.encode(codes[keep]), confidence=conf[keep],
        uploader=uploader[keep] if uploader is not None else None,
        n_excluded=int(excluded.sum()), texts=None if texts is None else texts[keep])
