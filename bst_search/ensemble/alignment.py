"""The references every candidate is aligned to, and pass 2 of loading the candidates.

After pass 1 (each table checked alone), the references are chosen by majority: the
development rows, the evaluation ids (when evaluation is on) and the holdout (when most
candidates predicted one). Pass 2 compares each run with them and writes the rows of every
run that agrees, in the reference orders, straight into the on-disk prediction stores.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bst_search.ensemble.store import PredictionStore
from bst_search.ensemble.tables import first_few, ids_hash
from bst_search.taxonomy import PROBA_COLUMNS
from bst_search.tracking.schema import EVAL_FILE, EVAL_FP, FOLD_FP, HOLDOUT_FILE, OOF_FILE, TRIAL_ID

if TYPE_CHECKING:
    from mlflow.entities import Run


def run_trial_id(run: Run) -> str:
    return run.data.tags.get(TRIAL_ID, "")


@dataclass
class CheckedRun:
    """A run whose tables each passed their own checks, with the keys pass 2 compares."""

    run: Run
    paths: dict[str, Path | None]  # artifact name -> local file (None: the run has none)
    ids_hash: str  # of its OOF sound ids
    eval_hash: str | None  # of its evaluation ids; None without eval.parquet
    hold_key: str | None  # of its holdout sounds, labels and fold models; None without one

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def trial_id(self) -> str:
        return run_trial_id(self.run)


# ---------------------------------------------------------------------------------------
# the references every candidate must match


@dataclass
class DevReference:
    """The development rows: the id set most candidates cover (they share a data
    fingerprint), in the order of the first run that covers it."""

    trial_id: str  # the run whose rows are the reference, named in reasons
    ids_hash: str
    ids: pd.Index
    labels: np.ndarray  # (N,) task codes
    folds: np.ndarray  # (N,) int64


@dataclass
class EvalReference:
    """The evaluation ids, when evaluation is on (metadata given, or most candidates have one)."""

    on: bool = False
    given: bool = False  # the ids come from the evaluation metadata (--eval-data)
    ids: np.ndarray | None = None
    ids_hash: str | None = None
    order: str = ""  # where the id order comes from
    fp: str = ""  # the majority's eval fingerprint tag


@dataclass
class HoldoutReference:
    """The holdout (``--holdout-fraction``), when most candidates predicted one."""

    key: str | None = None  # None: holdout off
    ids: np.ndarray | None = None  # (H,) in the first fold model's order
    labels: np.ndarray | None = None  # (H,) task codes
    folds: list[int] = field(default_factory=list)  # fold model ids, sorted


@dataclass
class References:
    dev: DevReference
    eval: EvalReference
    hold: HoldoutReference


def references(checked: list[CheckedRun], eval_ids: np.ndarray | None,
               notes: list[str]) -> References:
    """The references chosen among the checked runs; what is ignored is noted in ``notes``."""
    return References(dev=_dev_reference(checked), eval=_eval_reference(checked, eval_ids, notes),
                      hold=_holdout_reference(checked, notes))


def _dev_reference(checked: list[CheckedRun]) -> DevReference:
    ref_hash = Counter(c.ids_hash for c in checked).most_common(1)[0][0]
    first = next(c for c in checked if c.ids_hash == ref_hash)
    ref = pd.read_parquet(first.paths[OOF_FILE])
    ref["sound_id"] = ref["sound_id"].astype(str)
    return DevReference(trial_id=first.trial_id, ids_hash=ref_hash, ids=pd.Index(ref["sound_id"]),
                         labels=ref["label"].astype(str).to_numpy(),
                         folds=ref["fold"].to_numpy(dtype=np.int64))


def _eval_reference(checked: list[CheckedRun], eval_ids: np.ndarray | None,
                    notes: list[str]) -> EvalReference:
    with_eval = [c for c in checked if c.eval_hash is not None]
    if eval_ids is None and 2 * len(with_eval) <= len(checked):
        if with_eval:
            notes.append(f"only {len(with_eval)} of {len(checked)} candidates have {EVAL_FILE}: "
                         "evaluation predictions ignored, no submission")
        return EvalReference()
    if eval_ids is not None:
        ids = np.asarray(eval_ids, dtype=object)
        order = "evaluation metadata"
    else:
        ref_hash = Counter(c.eval_hash for c in with_eval).most_common(1)[0][0]
        first = next(c for c in with_eval if c.eval_hash == ref_hash)
        ids = (pd.read_parquet(first.paths[EVAL_FILE], columns=["id"])["id"].astype(str)
               .to_numpy(dtype=object))
        order = f"{EVAL_FILE} of trial {first.trial_id or first.run_id} (no --eval-data given)"
    votes = [c.run.data.tags.get(EVAL_FP, "") for c in with_eval]
    fp = Counter(v for v in votes if v).most_common(1)[0][0] if any(votes) else ""
    return EvalReference(on=True, given=eval_ids is not None, ids=ids, ids_hash=ids_hash(ids),
                          order=order, fp=fp)


def _holdout_reference(checked: list[CheckedRun], notes: list[str]) -> HoldoutReference:
    with_hold = [c for c in checked if c.hold_key is not None]
    if 2 * len(with_hold) <= len(checked):
        if with_hold:
            notes.append(f"only {len(with_hold)} of {len(checked)} candidates have "
                         f"{HOLDOUT_FILE}: holdout ignored")
        return HoldoutReference()
    key = Counter(c.hold_key for c in with_hold).most_common(1)[0][0]
    first = next(c for c in checked if c.hold_key == key)
    ho = pd.read_parquet(first.paths[HOLDOUT_FILE], columns=["sound_id", "fold", "label"])
    folds = sorted(int(f) for f in ho["fold"].unique())
    block = ho[ho["fold"] == folds[0]]
    return HoldoutReference(key=key, ids=block["sound_id"].astype(str).to_numpy(dtype=object),
                             labels=block["label"].astype(str).to_numpy(), folds=folds)


# ---------------------------------------------------------------------------------------
# pass 2: each run against the references, aligned into the stores


@dataclass
class Stores:
    """The on-disk prediction tensors pass 2 fills, one candidate at a time."""

    oof: PredictionStore  # (C, N, 23)
    eval: PredictionStore | None  # (C, M, 23) when evaluation is on
    holdout: PredictionStore | None  # (C, F * H, 23) when the holdout is on


@dataclass
class _Aligned:
    """One run's OOF rows in the reference order."""

    labels: np.ndarray
    folds: np.ndarray
    proba: np.ndarray  # (N, 23) float32


def open_stores(n: int, refs: References, dtype: str, directory: Path) -> Stores:
    ev, hold = refs.eval, refs.hold
    return Stores(
        oof=PredictionStore(n, len(refs.dev.ids), dtype=dtype, directory=directory),
        eval=(PredictionStore(n, len(ev.ids), dtype=dtype, directory=directory)
              if ev.ids is not None else None),
        holdout=(PredictionStore(n, len(hold.folds) * len(hold.ids), dtype=dtype,
                                 directory=directory) if hold.ids is not None else None))


def align(checked: list[CheckedRun], refs: References, stores: Stores,
          progress: bool) -> list[str | None]:
    """Pass 2: per run, the reason it disagrees with a reference, or None when its rows were
    written to the stores (in the order of ``checked``)."""
    from tqdm.auto import tqdm

    reasons: list[str | None] = []
    for c in tqdm(checked, desc="candidates: align", unit="run", disable=not progress):
        reason = _dev_ids_reason(c, refs.dev) or _eval_reason(c, refs.eval)
        if reason is None:
            rows = _read_aligned(c, refs.dev)
            reason = _rows_reason(rows, refs.dev) or _holdout_reason(c, refs.hold)
            if reason is None:
                _append(c, rows, refs, stores)
        reasons.append(reason)
    return reasons


def _dev_ids_reason(c: CheckedRun, dev: DevReference) -> str | None:
    if c.ids_hash == dev.ids_hash:
        return None
    frame = pd.read_parquet(c.paths[OOF_FILE], columns=["sound_id"])
    ids = pd.Index(frame["sound_id"].astype(str))
    miss, extra = dev.ids.difference(ids), ids.difference(dev.ids)
    return (f"{OOF_FILE} covers {len(ids) - len(extra)} of {len(dev.ids)} development ids"
            + (f"; {len(miss)} missing, e.g. {first_few(miss)}" if len(miss) else "")
            + (f"; {len(extra)} not in the development set, e.g. {first_few(extra)}"
               if len(extra) else ""))


def _eval_reason(c: CheckedRun, ev: EvalReference) -> str | None:
    if not ev.on:
        return None
    if c.eval_hash is None:
        why = "--eval-data given" if ev.given else "most candidates have one"
        return f"no {EVAL_FILE} ({why})"
    if c.eval_hash != ev.ids_hash:
        ids = pd.Index(pd.read_parquet(c.paths[EVAL_FILE], columns=["id"])["id"].astype(str))
        ref = pd.Index(ev.ids)
        return (f"{EVAL_FILE} ids differ from the {ev.order.split(' (')[0]}: "
                f"{len(ref.difference(ids))} missing, {len(ids.difference(ref))} extra")
    tag = c.run.data.tags.get(EVAL_FP, "")
    if not tag:
        return f"{EVAL_FILE} present but {EVAL_FP} tag empty"
    if tag != ev.fp:
        return f"eval fingerprint {tag} differs from {ev.fp}"
    return None


def _read_aligned(c: CheckedRun, dev: DevReference) -> _Aligned:
    frame = pd.read_parquet(c.paths[OOF_FILE])
    frame["sound_id"] = frame["sound_id"].astype(str)
    order = pd.Index(frame["sound_id"]).get_indexer(dev.ids)
    return _Aligned(labels=frame["label"].astype(str).to_numpy()[order],
                    folds=frame["fold"].to_numpy(dtype=np.int64)[order],
                    proba=frame[list(PROBA_COLUMNS)].to_numpy(dtype=np.float32)[order])


def _rows_reason(rows: _Aligned, dev: DevReference) -> str | None:
    """Same ids, but other labels or folds: a different dataset or split behind the same tags."""
    bad = rows.labels != dev.labels
    if bad.any():
        return (f"labels differ from trial {dev.trial_id} on {int(bad.sum())} ids, "
                f"e.g. {first_few(dev.ids[bad])}")
    bad = rows.folds != dev.folds
    if bad.any():
        return (f"fold assignment differs from trial {dev.trial_id} on {int(bad.sum())} ids "
                f"(same {FOLD_FP} tag)")
    return None


def _holdout_reason(c: CheckedRun, hold: HoldoutReference) -> str | None:
    if hold.key is None or c.hold_key == hold.key:
        return None
    if c.hold_key is None:
        return f"no {HOLDOUT_FILE} (most candidates have one)"
    return f"{HOLDOUT_FILE} differs from the majority's (sounds, labels or fold models)"


def _append(c: CheckedRun, rows: _Aligned, refs: References, stores: Stores) -> None:
    """Write one accepted run's OOF, holdout and evaluation rows in the reference orders."""
    stores.oof.append(rows.proba)
    if stores.holdout is not None:
        ho = pd.read_parquet(c.paths[HOLDOUT_FILE])
        blocks = []
        for f in refs.hold.folds:
            part = ho[ho["fold"] == f]
            at = pd.Index(part["sound_id"].astype(str)).get_indexer(refs.hold.ids)
            blocks.append(part[list(PROBA_COLUMNS)].to_numpy(dtype=np.float32)[at])
        stores.holdout.append(np.concatenate(blocks))
    if stores.eval is not None:
        ev = pd.read_parquet(c.paths[EVAL_FILE])
        at = pd.Index(ev["id"].astype(str)).get_indexer(refs.eval.ids)
        stores.eval.append(ev[list(PROBA_COLUMNS)].to_numpy(dtype=np.float32)[at])
