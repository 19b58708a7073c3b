"""The checks of one prediction table: what a trial's oof, eval and holdout parquets must hold.

Each ``validate_*`` returns the reason a table breaks the trial contract, or None; the
candidate set (:mod:`~bst_search.ensemble.candidates`) turns a reason into a left-out run.
Nothing here compares two runs: that is the candidate set's job, once every table has
passed these checks on its own.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bst_search.taxonomy import CODES, PROBA_COLUMNS
from bst_search.tracking.schema import EVAL_FILE, HOLDOUT_FILE, OOF_FILE

SUM_TOLERANCE = 1e-3  # |row sum - 1| allowed in probability rows


def read_eval_ids(eval_root: str | os.PathLike[str]) -> np.ndarray:
    """``anonymous_id`` of ``<eval_root>/metadata/<NAME>_metadata.csv``, in metadata order."""
    meta = Path(eval_root) / "metadata"
    files = sorted(meta.glob("*_metadata.csv"))
    if len(files) != 1:
        raise FileNotFoundError(f"{meta}: expected exactly one *_metadata.csv, found "
                                f"{[f.name for f in files] or 'none'}")
    frame = pd.read_csv(files[0], dtype=str, keep_default_na=False)
    if "anonymous_id" not in frame.columns:
        raise ValueError(f"{files[0]}: no anonymous_id column (columns: {list(frame.columns)})")
    ids = frame["anonymous_id"].to_numpy(dtype=object)
    dup = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(dup):
        raise ValueError(f"{files[0]}: {len(dup)} duplicated anonymous_id, e.g. {list(dup[:5])}")
    return ids


def ids_hash(ids: np.ndarray) -> str:
    """Hash of an id set (order ignored): equal hashes, same rows."""
    return hashlib.sha1("\n".join(sorted(map(str, ids))).encode()).hexdigest()


def first_few(values: Sequence[object] | np.ndarray | pd.Index, k: int = 5) -> str:
    """The first ``k`` values, for a reason that names examples."""
    return ", ".join(map(str, list(values)[:k]))


def _check_proba(frame: pd.DataFrame, what: str) -> str | None:
    """Reason why the p_<code> columns are not probability rows, or None."""
    p_cols = [c for c in frame.columns if str(c).startswith("p_")]
    unknown = sorted(set(p_cols) - set(PROBA_COLUMNS))
    missing = [c for c in PROBA_COLUMNS if c not in frame.columns]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {first_few(missing)}{' ...' if len(missing) > 5 else ''}")
        if unknown:
            parts.append(f"unknown {first_few(unknown)}")
        return f"{what}: wrong probability columns ({'; '.join(parts)})"
    try:
        values = frame[list(PROBA_COLUMNS)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return f"{what}: non-numeric probabilities ({exc})"
    bad = ~np.isfinite(values)
    if bad.any():
        return f"{what}: {int(bad.sum())} NaN/Inf probabilities in {int(bad.any(axis=1).sum())} rows"
    if (values < 0).any():
        return f"{what}: {int((values < 0).sum())} negative probabilities"
    dev = np.abs(values.sum(axis=1) - 1.0)
    if (dev > SUM_TOLERANCE).any():
        return (f"{what}: {int((dev > SUM_TOLERANCE).sum())} rows do not sum to 1 "
                f"(max deviation {dev.max():.3g})")
    return None


def _check_ids(ids: pd.Series, what: str, column: str) -> str | None:
    if ids.isna().any() or (ids.astype(str) == "").any():
        return f"{what}: empty {column} values"
    dup = ids[ids.duplicated()]
    if len(dup):
        return f"{what}: {len(dup)} duplicated {column}, e.g. {first_few(dup.unique())}"
    return None


def read_table(path: Path, what: str, id_column: str) -> tuple[pd.DataFrame | None, str | None]:
    """(table with its id column as str, None), or (None, the reason it cannot be used)."""
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a reason, not a crash
        return None, f"{what} unreadable: {type(exc).__name__}: {exc}"
    if id_column not in frame.columns:
        return None, f"{what}: no {id_column} column"
    frame[id_column] = frame[id_column].astype(str)
    if len(frame) == 0:
        return None, f"{what}: no rows"
    return frame, None


def validate_oof(frame: pd.DataFrame) -> str | None:
    """Reason why an OOF table breaks the trial contract, or None."""
    missing = [c for c in ("sound_id", "fold", "label") if c not in frame.columns]
    if missing:
        return f"{OOF_FILE}: missing columns {missing}"
    reason = _check_ids(frame["sound_id"], OOF_FILE, "sound_id")
    if reason:
        return reason
    bad_labels = sorted(set(frame["label"].astype(str)) - set(CODES))
    if bad_labels:
        return f"{OOF_FILE}: labels that are not task codes: {first_few(bad_labels)}"
    folds = pd.to_numeric(frame["fold"], errors="coerce")
    if folds.isna().any() or (folds != folds.round()).any() or folds.min() < 0:
        return f"{OOF_FILE}: fold must hold non-negative integers"
    return _check_proba(frame, OOF_FILE)


def validate_holdout(frame: pd.DataFrame) -> str | None:
    """Reason why a holdout prediction table breaks the trial contract, or None.

    Same columns as oof.parquet; ``fold`` names the fold model, and every (sound, fold
    model) pair appears once, for the same sounds under every fold model.
    """
    missing = [c for c in ("sound_id", "fold", "label") if c not in frame.columns]
    if missing:
        return f"{HOLDOUT_FILE}: missing columns {missing}"
    pairs = frame["sound_id"].astype(str) + "@" + frame["fold"].astype(str)
    reason = _check_ids(pairs, HOLDOUT_FILE, "(sound_id, fold)")
    if reason:
        return reason
    per_fold = frame.groupby("fold")["sound_id"].apply(lambda s: frozenset(s.astype(str)))
    if per_fold.nunique() != 1:
        return f"{HOLDOUT_FILE}: the fold models predicted different sounds"
    return _check_proba(frame, HOLDOUT_FILE)


def holdout_key(frame: pd.DataFrame) -> str:
    """Hash of the holdout's (sound, label) pairs and fold models."""
    pairs = sorted(set(zip(frame["sound_id"].astype(str), frame["label"].astype(str), strict=True)))
    folds = sorted(set(frame["fold"].astype(int)))
    return hashlib.sha1(repr((pairs, folds)).encode()).hexdigest()


def validate_eval(frame: pd.DataFrame) -> str | None:
    """Reason why an evaluation prediction table breaks the trial contract, or None."""
    return _check_ids(frame["id"], EVAL_FILE, "id") or _check_proba(frame, EVAL_FILE)


def _eval_key(frame: pd.DataFrame) -> str:
    return ids_hash(frame["id"].to_numpy())


def check_optional_tables(paths: dict[str, Path | None]) -> tuple[str | None, str | None,
                                                                   str | None]:
    """(reason, eval id hash, holdout key) of eval.parquet and holdout.parquet when present."""
    keys: dict[str, str | None] = {EVAL_FILE: None, HOLDOUT_FILE: None}
    for name, id_column, check, key in ((EVAL_FILE, "id", validate_eval, _eval_key),
                                        (HOLDOUT_FILE, "sound_id", validate_holdout, holdout_key)):
        path = paths[name]
        if path is None:
            continue
        frame, reason = read_table(path, name, id_column)
        reason = reason or check(frame)
        if reason:
            return reason, None, None
        keys[name] = key(frame)
    return None, keys[EVAL_FILE], keys[HOLDOUT_FILE]


def config_backbones(path: Path | None) -> list[str] | None:
    """The backbones a trial's config.yaml names, or None when it cannot tell."""
    if path is None:
        return None
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    bb = cfg.get("backbones") if isinstance(cfg, dict) else None
    if isinstance(bb, str):
        return [b.strip() for b in bb.split(",") if b.strip()]
    if isinstance(bb, list):
        return [str(b) for b in bb]
    return None
