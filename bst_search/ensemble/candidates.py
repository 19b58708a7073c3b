"""Ensemble candidates: the FINISHED trial runs of one experiment whose OOF can be combined.

A candidate must predict the same development rows, under the same fold assignment, as all
the others; anything else would make the averaged OOF meaningless (or leak). Every run that
is left out is listed with its reason, so nothing disappears silently. Artifacts are fetched
once into ``<workdir>/ensemble-cache/<run_id>/``: a FINISHED run's artifacts never change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bst_search.ensemble.store import PredictionStore
from bst_search.taxonomy import CODES, PROBA_COLUMNS

KIND_TAG = "bst.kind"
OOF_FILE = "oof.parquet"
EVAL_FILE = "eval.parquet"
CONFIG_FILE = "config.yaml"
HOLDOUT_FILE = "holdout.parquet"
ARTIFACTS: tuple[str, ...] = (OOF_FILE, EVAL_FILE, HOLDOUT_FILE, CONFIG_FILE)
FETCH_THREADS = 8  # artifact downloads in flight at once
SUM_TOLERANCE = 1e-3  # |row sum - 1| allowed in probability rows
_MANIFEST = "manifest.json"


class CandidateError(RuntimeError):
    """No usable candidate set (unknown experiment, ambiguous fingerprints, nothing left)."""


@dataclass
class CandidateInfo:
    """What the coordinator knows about one candidate run besides its predictions."""

    run_id: str
    trial_id: str
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    backbones_tag: list[str]
    backbones_config: list[str] | None
    eval_fp: str
    has_eval: bool = False


@dataclass
class LeftOut:
    run_id: str
    trial_id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"run_id": self.run_id, "trial_id": self.trial_id, "reason": self.reason}


@dataclass
class CandidateSet:
    """Aligned predictions of the accepted candidates (rows in the reference order)."""

    infos: list[CandidateInfo]
    store: PredictionStore  # (C, N, 23) OOF predictions, on disk
    labels: np.ndarray  # (N,) int64 taxonomy indices
    folds: np.ndarray  # (N,) int64
    sound_ids: np.ndarray  # (N,) str
    left_out: list[LeftOut]
    data_fp: str
    fold_fp: str
    eval_fp: str = ""
    eval_store: PredictionStore | None = None  # (C, M, 23) when every candidate has eval
    eval_ids: np.ndarray | None = None
    eval_order: str = ""  # where the eval id order comes from
    notes: list[str] = field(default_factory=list)
    n_total: int = 0  # accepted candidates before narrowing to a working set (0: not narrowed)
    index: np.ndarray | None = None  # store index of each info after narrowing (None: identity)
    # --holdout-fraction: (C, F * H, 23) predictions of the H holdout rows by each of the F fold
    # models (fold-major), their ids and labels in that order, and the fold model ids
    holdout_store: PredictionStore | None = None
    holdout_ids: np.ndarray | None = None
    holdout_labels: np.ndarray | None = None
    holdout_folds: list[int] = field(default_factory=list)

    def store_index(self, members: np.ndarray) -> np.ndarray:
        """Store indices of the given candidates (positions in ``infos``)."""
        members = np.asarray(members, dtype=np.int64)
        return members if self.index is None else self.index[members]

    @property
    def proba(self) -> np.ndarray:
        """All candidates' OOF predictions, (C, N, 23) float32, in memory: small sets only."""
        return self.store.take(range(self.store.n))

    @property
    def eval_proba(self) -> np.ndarray | None:
        """All candidates' evaluation predictions, (C, M, 23) float32, or None."""
        return None if self.eval_store is None else self.eval_store.take(range(self.eval_store.n))


# ---------------------------------------------------------------------------------------
# tracking and cache


def fetch_artifacts(client: Any, run_id: str, cache_root: Path,
                    tracking_uri: str) -> dict[str, Path | None]:
    """Local paths of a run's artifacts, downloading them only on the first call.

    The cache entry is written under a temporary name and renamed when complete, with a
    manifest of which artifacts the run has, so a crash never leaves a half entry that
    looks whole and a second invocation touches neither the store nor the network.
    """
    import mlflow.artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # ours counts runs
    entry = cache_root / run_id
    manifest = entry / _MANIFEST
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if set(saved.get("looked_for", ARTIFACTS[:2] + ARTIFACTS[3:])) >= set(ARTIFACTS):
            present = set(saved["present"])
            return {name: (entry / name if name in present else None) for name in ARTIFACTS}
        # an entry from before an artifact was added to ARTIFACTS: fetched again below
    cache_root.mkdir(parents=True, exist_ok=True)
    names = {f.path for f in client.list_artifacts(run_id)}
    tmp = cache_root / f".{run_id}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    present = []
    for name in ARTIFACTS:
        if name in names:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name,
                                                dst_path=str(tmp), tracking_uri=tracking_uri)
            present.append(name)
    (tmp / _MANIFEST).write_text(json.dumps({"run_id": run_id, "present": present,
                                             "looked_for": list(ARTIFACTS)}))
    shutil.rmtree(entry, ignore_errors=True)  # a half entry left by a crash
    try:
        os.replace(tmp, entry)
    except OSError:  # another coordinator finished the same entry first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not manifest.is_file():
            raise
    return {name: (entry / name if name in present else None) for name in ARTIFACTS}


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


# ---------------------------------------------------------------------------------------
# validation of one prediction table


def _ids_hash(ids: np.ndarray) -> str:
    return hashlib.sha1("\n".join(sorted(map(str, ids))).encode()).hexdigest()


def _first(values: Sequence[object] | np.ndarray | pd.Index, k: int = 5) -> str:
    return ", ".join(map(str, list(values)[:k]))


def _check_proba(frame: pd.DataFrame, what: str) -> str | None:
    """Reason why the p_<code> columns are not probability rows, or None."""
    p_cols = [c for c in frame.columns if str(c).startswith("p_")]
    unknown = sorted(set(p_cols) - set(PROBA_COLUMNS))
    missing = [c for c in PROBA_COLUMNS if c not in frame.columns]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {_first(missing)}{' ...' if len(missing) > 5 else ''}")
        if unknown:
            parts.append(f"unknown {_first(unknown)}")
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
        return f"{what}: {len(dup)} duplicated {column}, e.g. {_first(dup.unique())}"
    return None


def _read_table(path: Path, what: str, id_column: str) -> tuple[pd.DataFrame | None, str | None]:
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
        return f"{OOF_FILE}: labels that are not task codes: {_first(bad_labels)}"
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


def _holdout_key(frame: pd.DataFrame) -> str:
    """Hash of the holdout's (sound, label) pairs and fold models."""
    pairs = sorted(set(zip(frame["sound_id"].astype(str), frame["label"].astype(str), strict=True)))
    folds = sorted(set(frame["fold"].astype(int)))
    return hashlib.sha1(repr((pairs, folds)).encode()).hexdigest()


def validate_eval(frame: pd.DataFrame) -> str | None:
    """Reason why an evaluation prediction table breaks the trial contract, or None."""
    return _check_ids(frame["id"], EVAL_FILE, "id") or _check_proba(frame, EVAL_FILE)


def _check_optional_tables(paths: dict[str, Path | None]) -> tuple[str | None, str | None,
                                                                    str | None]:
    """(reason, eval id hash, holdout key) of eval.parquet and holdout.parquet when present."""
    keys: dict[str, str | None] = {EVAL_FILE: None, HOLDOUT_FILE: None}
    for name, id_column, check, key in (
            (EVAL_FILE, "id", validate_eval, lambda f: _ids_hash(f["id"].to_numpy())),
            (HOLDOUT_FILE, "sound_id", validate_holdout, _holdout_key)):
        if paths[name] is None:
            continue
        frame, reason = _read_table(paths[name], name, id_column)
        reason = reason or check(frame)
        if reason:
            return reason, None, None
        keys[name] = key(frame)
    return None, keys[EVAL_FILE], keys[HOLDOUT_FILE]


def _config_backbones(path: Path | None) -> list[str] | None:
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


# ---------------------------------------------------------------------------------------
# the candidate set


def _majority(values: list[str], what: str, given: str | None, flag: str) -> str:
    if given:
        return given
    counts = Counter(v for v in values if v)
    if not counts:
        raise CandidateError(f"no FINISHED trial run has a {what} tag")
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        raise CandidateError(
            f"ambiguous {what}: " + ", ".join(f"{fp} ({n} runs)" for fp, n in ranked)
            + f"; choose one with {flag}")
    return ranked[0][0]


def _list_trial_runs(client: Any, experiment_id: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'trial'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def load_candidates(experiment: str, *, tracking_uri: str, cache_dir: str | os.PathLike[str],
                    data_fp: str | None = None, fold_fp: str | None = None,
                    eval_ids: np.ndarray | None = None, client: Any = None,
                    store_dtype: str = "float16", float32_up_to: int = 0,
                    progress: bool = False) -> CandidateSet:
    """Collect, validate and align the candidates of ``experiment``.

    ``eval_ids`` (from the evaluation metadata) fixes the evaluation id set and order;
    without it the first candidate's eval.parquet order is used. Predictions go to
    :class:`PredictionStore` files in ``cache_dir`` (``store_dtype``), never all in memory;
    ``store_dtype="auto"`` is float32 up to ``float32_up_to`` candidates (a set that will be
    held whole anyway keeps full precision), float16 above;
    ``progress`` shows a bar per pass (10,000 runs take minutes the first time).
    """
    from mlflow.tracking import MlflowClient
    from tqdm.auto import tqdm

    client = client or MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise CandidateError(f"no experiment {experiment!r} at {tracking_uri}; "
                             f"experiments there: {names or 'none'}")
    cache_root = Path(cache_dir)
    left: list[LeftOut] = []
    runs = _list_trial_runs(client, exp.experiment_id)

    def trial_of(run: Any) -> str:
        return run.data.tags.get("bst.trial_id", "")

    finished = []
    for run in runs:
        if run.info.status != "FINISHED":
            left.append(LeftOut(run.info.run_id, trial_of(run), f"status {run.info.status}, not FINISHED"))
        else:
            finished.append(run)
    if not finished:
        raise CandidateError(f"experiment {experiment!r} has no FINISHED trial run "
                             f"({len(runs)} trial runs in all)")

    def same_fingerprint(runs: list, tag: str, what: str, given: str | None, flag: str) -> tuple[str, list]:
        """The majority (or given) value of a fingerprint tag; runs with another are left out."""
        want = _majority([r.data.tags.get(tag, "") for r in runs], f"{what} ({tag})", given, flag)
        kept = []
        for run in runs:
            fp = run.data.tags.get(tag, "")
            if fp != want:
                left.append(LeftOut(run.info.run_id, trial_of(run),
                                    f"{what} {fp or '(none)'} differs from {want}"))
            else:
                kept.append(run)
        return want, kept

    dfp, same_data = same_fingerprint(finished, "bst.data_fp", "data fingerprint", data_fp, "--data-fp")
    if not same_data:
        raise CandidateError(f"no FINISHED trial run has data fingerprint {dfp}")
    ffp, pending = same_fingerprint(same_data, "bst.fold_fp", "fold fingerprint", fold_fp, "--fold-fp")

    # pass 1: fetch and check each table alone; remember id sets for the majority vote
    checked: list[tuple[Any, dict[str, Path | None], str, str | None]] = []
    hold_keys: dict[str, str] = {}  # run id -> holdout key, for runs with holdout.parquet

    def fetch(run: Any) -> dict[str, Path | None]:
        return fetch_artifacts(client, run.info.run_id, cache_root, tracking_uri)

    def check(run: Any, paths: dict[str, Path | None]) -> None:
        if paths[OOF_FILE] is None:
            status = run.data.tags.get("bst.status", "")
            note = run.data.tags.get("bst.note", "")
            why = f" (bst.status {status}{': ' + note if note else ''})" if status not in ("", "complete") else ""
            left.append(LeftOut(run.info.run_id, trial_of(run), f"no {OOF_FILE} artifact{why}"))
            return
        frame, reason = _read_table(paths[OOF_FILE], OOF_FILE, "sound_id")
        reason = reason or validate_oof(frame)
        if not reason:
            reason, eval_hash, hold_key = _check_optional_tables(paths)
        if reason:
            left.append(LeftOut(run.info.run_id, trial_of(run), reason))
            return
        if hold_key is not None:
            hold_keys[run.info.run_id] = hold_key
        checked.append((run, paths, _ids_hash(frame["sound_id"].to_numpy()), eval_hash))

    # downloads overlap in a few threads (a tracking server is network-bound); checks in order
    with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
        fetched = pool.map(fetch, pending)
        for run, paths in tqdm(zip(pending, fetched, strict=True), total=len(pending),
                               desc="candidates: fetch and check", unit="run",
                               disable=not progress):
            check(run, paths)
    if not checked:
        raise CandidateError(_nothing_left(experiment, left))

    # the development id set: the one most candidates cover (they share a data fingerprint)
    id_votes = Counter(h for _, _, h, _ in checked)
    ref_hash = id_votes.most_common(1)[0][0]
    ref_run, ref_paths = next((r, p) for r, p, h, _ in checked if h == ref_hash)
    ref = pd.read_parquet(ref_paths[OOF_FILE])
    ref["sound_id"] = ref["sound_id"].astype(str)
    ref_ids = pd.Index(ref["sound_id"])
    ref_labels = ref["label"].astype(str).to_numpy()
    ref_folds = ref["fold"].to_numpy(dtype=np.int64)

    # evaluation: on when the metadata is given or most candidates carry predictions
    notes: list[str] = []
    with_eval = [c for c in checked if c[3] is not None]
    eval_on = eval_ids is not None or 2 * len(with_eval) > len(checked)
    ref_eval_ids: np.ndarray | None = None
    eval_order = ""
    efp = ""
    if eval_ids is not None:
        ref_eval_ids = np.asarray(eval_ids, dtype=object)
        eval_order = "evaluation metadata"
    elif eval_on:
        eval_votes = Counter(c[3] for c in with_eval)
        eval_ref_hash = eval_votes.most_common(1)[0][0]
        first = next(c for c in with_eval if c[3] == eval_ref_hash)
        ref_eval_ids = pd.read_parquet(first[1][EVAL_FILE], columns=["id"])["id"].astype(str).to_numpy(dtype=object)
        eval_order = (f"{EVAL_FILE} of trial {trial_of(first[0]) or first[0].info.run_id} "
                      "(no --eval-data given)")
    elif with_eval:
        notes.append(f"only {len(with_eval)} of {len(checked)} candidates have {EVAL_FILE}: "
                     "evaluation predictions ignored, no submission")
    if eval_on:
        efp_votes = [c[0].data.tags.get("bst.eval_fp", "") for c in with_eval]
        efp = Counter(v for v in efp_votes if v).most_common(1)[0][0] if any(efp_votes) else ""
    ref_eval_hash = _ids_hash(ref_eval_ids) if ref_eval_ids is not None else None

    # holdout (--holdout-fraction): on when most candidates predicted one
    ref_hold_key: str | None = None
    hold_ids = hold_labels = None
    hold_folds: list[int] = []
    if 2 * len(hold_keys) > len(checked):
        ref_hold_key = Counter(hold_keys.values()).most_common(1)[0][0]
        first = next(c for c in checked if hold_keys.get(c[0].info.run_id) == ref_hold_key)
        ho = pd.read_parquet(first[1][HOLDOUT_FILE], columns=["sound_id", "fold", "label"])
        hold_folds = sorted(int(f) for f in ho["fold"].unique())
        block = ho[ho["fold"] == hold_folds[0]]
        hold_ids = block["sound_id"].astype(str).to_numpy(dtype=object)
        hold_labels = block["label"].astype(str).to_numpy()
    elif hold_keys:
        notes.append(f"only {len(hold_keys)} of {len(checked)} candidates have {HOLDOUT_FILE}: "
                     "holdout ignored")

    # pass 2: align every accepted candidate to the reference rows, straight into the tensor
    if store_dtype == "auto":
        store_dtype = "float32" if len(checked) <= float32_up_to else "float16"
    proba = PredictionStore(len(checked), len(ref_ids), dtype=store_dtype, directory=cache_root)
    eval_proba = (PredictionStore(len(checked), len(ref_eval_ids), dtype=store_dtype,
                                  directory=cache_root) if ref_eval_ids is not None else None)
    holdout = (PredictionStore(len(checked), len(hold_folds) * len(hold_ids), dtype=store_dtype,
                               directory=cache_root) if hold_ids is not None else None)
    infos: list[CandidateInfo] = []
    for run, paths, ids_hash, eval_hash in tqdm(checked, desc="candidates: align", unit="run",
                                                disable=not progress):
        rid, tid = run.info.run_id, trial_of(run)
        if ids_hash != ref_hash:
            frame = pd.read_parquet(paths[OOF_FILE], columns=["sound_id"])
            ids = pd.Index(frame["sound_id"].astype(str))
            miss, extra = ref_ids.difference(ids), ids.difference(ref_ids)
            left.append(LeftOut(rid, tid, (
                f"{OOF_FILE} covers {len(ids) - len(extra)} of {len(ref_ids)} development ids"
                + (f"; {len(miss)} missing, e.g. {_first(miss)}" if len(miss) else "")
                + (f"; {len(extra)} not in the development set, e.g. {_first(extra)}"
                   if len(extra) else ""))))
            continue
        eval_fp_tag = run.data.tags.get("bst.eval_fp", "")
        if eval_on:
            if eval_hash is None:
                why = "--eval-data given" if eval_ids is not None else "most candidates have one"
                left.append(LeftOut(rid, tid, f"no {EVAL_FILE} ({why})"))
                continue
            if eval_hash != ref_eval_hash:
                ev_ids = pd.Index(pd.read_parquet(paths[EVAL_FILE], columns=["id"])["id"].astype(str))
                ref_ev = pd.Index(ref_eval_ids)
                left.append(LeftOut(rid, tid, (
                    f"{EVAL_FILE} ids differ from the {eval_order.split(' (')[0]}: "
                    f"{len(ref_ev.difference(ev_ids))} missing, {len(ev_ids.difference(ref_ev))} extra")))
                continue
            if not eval_fp_tag:
                left.append(LeftOut(rid, tid, f"{EVAL_FILE} present but bst.eval_fp tag empty"))
                continue
            if eval_fp_tag != efp:
                left.append(LeftOut(rid, tid, f"eval fingerprint {eval_fp_tag} differs from {efp}"))
                continue
        frame = pd.read_parquet(paths[OOF_FILE])
        frame["sound_id"] = frame["sound_id"].astype(str)
        order = pd.Index(frame["sound_id"]).get_indexer(ref_ids)
        labels = frame["label"].astype(str).to_numpy()[order]
        folds = frame["fold"].to_numpy(dtype=np.int64)[order]
        if (labels != ref_labels).any():
            n_bad = int((labels != ref_labels).sum())
            left.append(LeftOut(rid, tid, f"labels differ from trial {trial_of(ref_run)} on "
                                          f"{n_bad} ids, e.g. {_first(ref_ids[labels != ref_labels])}"))
            continue
        if (folds != ref_folds).any():
            n_bad = int((folds != ref_folds).sum())
            left.append(LeftOut(rid, tid, f"fold assignment differs from trial {trial_of(ref_run)} "
                                          f"on {n_bad} ids (same bst.fold_fp tag)"))
            continue
        if ref_hold_key is not None and hold_keys.get(rid) != ref_hold_key:
            left.append(LeftOut(rid, tid, f"no {HOLDOUT_FILE} (most candidates have one)"
                                if rid not in hold_keys else
                                f"{HOLDOUT_FILE} differs from the majority's (sounds, labels or "
                                f"fold models)"))
            continue
        proba.append(frame[list(PROBA_COLUMNS)].to_numpy(dtype=np.float32)[order])
        if holdout is not None:
            ho = pd.read_parquet(paths[HOLDOUT_FILE])
            blocks = []
            for f in hold_folds:
                part = ho[ho["fold"] == f]
                at = pd.Index(part["sound_id"].astype(str)).get_indexer(hold_ids)
                blocks.append(part[list(PROBA_COLUMNS)].to_numpy(dtype=np.float32)[at])
            holdout.append(np.concatenate(blocks))
        if eval_proba is not None:
            ev = pd.read_parquet(paths[EVAL_FILE])
            ev_order = pd.Index(ev["id"].astype(str)).get_indexer(ref_eval_ids)
            eval_proba.append(ev[list(PROBA_COLUMNS)].to_numpy(dtype=np.float32)[ev_order])
        infos.append(CandidateInfo(
            run_id=rid, trial_id=tid, start_time=int(run.info.start_time or 0),
            params=dict(run.data.params), tags=dict(run.data.tags), metrics=dict(run.data.metrics),
            backbones_tag=[b for b in run.data.tags.get("bst.backbones", "").split(",") if b],
            backbones_config=_config_backbones(paths[CONFIG_FILE]), eval_fp=eval_fp_tag,
            has_eval=eval_proba is not None))
    if not infos:
        raise CandidateError(_nothing_left(experiment, left))
    from bst_search.taxonomy import encode

    return CandidateSet(
        infos=infos, store=proba, labels=encode(ref_labels), folds=ref_folds,
        sound_ids=ref_ids.to_numpy(dtype=object), left_out=left, data_fp=dfp, fold_fp=ffp,
        eval_fp=efp, eval_store=eval_proba, holdout_store=holdout, holdout_ids=hold_ids,
        holdout_labels=None if hold_labels is None else encode(hold_labels),
        holdout_folds=hold_folds,
        eval_ids=ref_eval_ids, eval_order=eval_order, notes=notes)


def _nothing_left(experiment: str, left: list[LeftOut]) -> str:
    lines = [f"experiment {experiment!r}: no usable candidate; left out:"]
    lines += [f"  run {x.run_id} trial {x.trial_id or '?'}: {x.reason}" for x in left]
    return "\n".join(lines)
