"""Ensemble candidates: the FINISHED trial runs of one experiment whose OOF can be combined.

A candidate must predict the same development rows, under the same fold assignment, as all
the others; anything else would make the averaged OOF meaningless (or leak). Every run that
is left out is listed with its reason, so nothing disappears silently. Artifacts are fetched
once into ``<workdir>/ensemble-cache/<run_id>/`` (:mod:`~bst_search.ensemble.cache`).

:func:`load_candidates` is a pipeline, one function a step:

1. the experiment's trial runs (:func:`_list_trial_runs`), FINISHED ones only;
2. one data fingerprint, then one fold fingerprint (the majority's, or the one given);
3. pass 1: fetch each run's artifacts and check each of its tables alone
   (:mod:`~bst_search.ensemble.tables`);
4. the references every candidate must match: the development rows, the evaluation ids
   (when evaluation is on) and the holdout (when most candidates predicted one);
5. pass 2: each run compared with the references, its rows aligned to them, straight into
   the on-disk prediction stores (4 and 5: :mod:`~bst_search.ensemble.alignment`).
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bst_search.ensemble.alignment import (
    CheckedRun,
    align,
    open_stores,
    references,
    run_trial_id,
)
from bst_search.ensemble.cache import fetch_artifacts
from bst_search.ensemble.store import PredictionStore
from bst_search.ensemble.tables import (
    check_optional_tables,
    config_backbones,
    ids_hash,
    read_eval_ids,
    read_table,
    validate_oof,
)
from bst_search.taxonomy import encode
from bst_search.tracking.schema import (
    BACKBONES,
    CONFIG_FILE,
    DATA_FP,
    EVAL_FP,
    FOLD_FP,
    KIND,
    KIND_TRIAL,
    OOF_FILE,
    RUN_NOTE,
    STATUS,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = ["CandidateError", "CandidateInfo", "CandidateSet", "LeftOut", "fetch_artifacts",
           "load_candidates", "read_eval_ids"]

FETCH_THREADS = 8  # artifact downloads in flight at once


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


def load_candidates(experiment: str, *, tracking_uri: str, cache_dir: str | os.PathLike[str],
                    data_fp: str | None = None, fold_fp: str | None = None,
                    eval_ids: np.ndarray | None = None, client: MlflowClient | None = None,
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

    client = client or MlflowClient(tracking_uri)
    cache_root = Path(cache_dir)
    left: list[LeftOut] = []  # every step appends the runs it leaves out, with the reason
    runs = _list_trial_runs(client, _experiment_id(client, experiment, tracking_uri))
    finished = _keep_finished(runs, experiment, left)
    dfp, same_data = _same_fingerprint(finished, DATA_FP, "data fingerprint", data_fp,
                                       "--data-fp", left)
    if not same_data:
        raise CandidateError(f"no FINISHED trial run has data fingerprint {dfp}")
    ffp, pending = _same_fingerprint(same_data, FOLD_FP, "fold fingerprint", fold_fp,
                                     "--fold-fp", left)
    fetch = partial(fetch_artifacts, client, cache_root=cache_root, tracking_uri=tracking_uri)
    checked = _fetch_and_check(pending, fetch, left, progress)
    if not checked:
        raise CandidateError(_nothing_left(experiment, left))

    notes: list[str] = []
    refs = references(checked, eval_ids, notes)
    if store_dtype == "auto":
        store_dtype = "float32" if len(checked) <= float32_up_to else "float16"
    stores = open_stores(len(checked), refs, store_dtype, cache_root)
    infos: list[CandidateInfo] = []
    for c, reason in zip(checked, align(checked, refs, stores, progress), strict=True):
        if reason is None:
            infos.append(_candidate_info(c, has_eval=stores.eval is not None))
        else:
            left.append(LeftOut(c.run_id, c.trial_id, reason))
    if not infos:
        raise CandidateError(_nothing_left(experiment, left))
    dev, ev, hold = refs.dev, refs.eval, refs.hold
    return CandidateSet(
        infos=infos, store=stores.oof, labels=encode(dev.labels), folds=dev.folds,
        sound_ids=dev.ids.to_numpy(dtype=object), left_out=left, data_fp=dfp, fold_fp=ffp,
        eval_fp=ev.fp, eval_store=stores.eval, holdout_store=stores.holdout,
        holdout_ids=hold.ids, holdout_labels=None if hold.labels is None else encode(hold.labels),
        holdout_folds=hold.folds, eval_ids=ev.ids, eval_order=ev.order, notes=notes)


# ---------------------------------------------------------------------------------------
# steps 1-2: the runs, their status and fingerprints


def _experiment_id(client: MlflowClient, experiment: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise CandidateError(f"no experiment {experiment!r} at {tracking_uri}; "
                             f"experiments there: {names or 'none'}")
    return exp.experiment_id


def _list_trial_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every trial run of the experiment (not the ensemble runs), oldest first."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{KIND}` = '{KIND_TRIAL}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _keep_finished(runs: list[Run], experiment: str, left: list[LeftOut]) -> list[Run]:
    """The FINISHED runs; a running, failed or killed run's artifacts may be partial."""
    finished = []
    for run in runs:
        if run.info.status != "FINISHED":
            left.append(LeftOut(run.info.run_id, run_trial_id(run),
                                f"status {run.info.status}, not FINISHED"))
        else:
            finished.append(run)
    if not finished:
        raise CandidateError(f"experiment {experiment!r} has no FINISHED trial run "
                             f"({len(runs)} trial runs in all)")
    return finished


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


def _same_fingerprint(runs: list[Run], tag: str, what: str, given: str | None, flag: str,
                      left: list[LeftOut]) -> tuple[str, list[Run]]:
    """The majority (or given) value of a fingerprint tag; runs with another are left out."""
    want = _majority([r.data.tags.get(tag, "") for r in runs], f"{what} ({tag})", given, flag)
    kept = []
    for run in runs:
        fp = run.data.tags.get(tag, "")
        if fp != want:
            left.append(LeftOut(run.info.run_id, run_trial_id(run),
                                f"{what} {fp or '(none)'} differs from {want}"))
        else:
            kept.append(run)
    return want, kept


# ---------------------------------------------------------------------------------------
# step 3, pass 1: each run's tables checked alone (steps 4 and 5: alignment.py)


def _fetch_and_check(pending: list[Run], fetch: Callable[[str], dict[str, Path | None]],
                     left: list[LeftOut], progress: bool) -> list[CheckedRun]:
    """Pass 1: downloads overlap in a few threads (a tracking server is network-bound); the
    checks run in run order, so the left-out list does not depend on download timing."""
    from tqdm.auto import tqdm

    checked = []
    with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
        fetched = pool.map(fetch, [run.info.run_id for run in pending])
        for run, paths in tqdm(zip(pending, fetched, strict=True), total=len(pending),
                               desc="candidates: fetch and check", unit="run",
                               disable=not progress):
            result = _check_run(run, paths)
            if isinstance(result, str):
                left.append(LeftOut(run.info.run_id, run_trial_id(run), result))
            else:
                checked.append(result)
    return checked


def _check_run(run: Run, paths: dict[str, Path | None]) -> CheckedRun | str:
    """The run with its comparison keys, or the reason one of its tables is unusable."""
    oof_path = paths[OOF_FILE]
    if oof_path is None:
        status = run.data.tags.get(STATUS, "")
        note = run.data.tags.get(RUN_NOTE, "")
        why = (f" ({STATUS} {status}{': ' + note if note else ''})"
               if status not in ("", "complete") else "")
        return f"no {OOF_FILE} artifact{why}"
    frame, reason = read_table(oof_path, OOF_FILE, "sound_id")
    reason = reason or validate_oof(frame)
    if reason:
        return reason
    reason, eval_hash, hold_key = check_optional_tables(paths)
    if reason:
        return reason
    return CheckedRun(run, paths, ids_hash(frame["sound_id"].to_numpy()), eval_hash, hold_key)


def _candidate_info(c: CheckedRun, *, has_eval: bool) -> CandidateInfo:
    run = c.run
    return CandidateInfo(
        run_id=c.run_id, trial_id=c.trial_id, start_time=int(run.info.start_time or 0),
        params=dict(run.data.params), tags=dict(run.data.tags), metrics=dict(run.data.metrics),
        backbones_tag=[b for b in run.data.tags.get(BACKBONES, "").split(",") if b],
        backbones_config=config_backbones(c.paths[CONFIG_FILE]),
        eval_fp=run.data.tags.get(EVAL_FP, ""), has_eval=has_eval)


def _nothing_left(experiment: str, left: list[LeftOut]) -> str:
    lines = [f"experiment {experiment!r}: no usable candidate; left out:"]
    lines += [f"  run {x.run_id} trial {x.trial_id or '?'}: {x.reason}" for x in left]
    return "\n".join(lines)
