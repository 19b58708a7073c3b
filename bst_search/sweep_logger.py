"""The driver's MLflow writer: one run per Tune trial, written outside the Tune event loop.

:class:`MlflowTrialLogger` is a Ray Tune callback in the driver process, the only writer of
trial runs (a SQLite store then has one writer). It reads the sweep's MLflow state once, at
start (which trials already have a FINISHED run; which runs a dead driver left open), keeps it
in memory, and never searches MLflow per result. Its hooks only queue writes: a few writer
threads, each with a bounded queue, perform them in order per trial (a trial always goes to
the same thread), retrying through a locked store or a restarting tracking server
(:func:`bst_search.tracking._with_retry`). :meth:`MlflowTrialLogger.drain` waits for all of
them before the driver exits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from bst_search import tracking
from bst_search.config import SCHEMA

log = logging.getLogger(__name__)
_LIVE: dict[str, MlflowTrialLogger] = {}  # the driver's logger per sweep (see __setstate__)
Write = Callable[[Any], None]  # a write, given the writer thread's MlflowClient
FOLD_WRITE_ENV = "BST_MLFLOW_FOLD_S"  # seconds between two writes of one trial's fold metrics


class Writers:
    """``n`` threads, each draining its own bounded queue of writes in order."""

    def __init__(self, uri: str, n: int = 4, maxsize: int = 256) -> None:
        self.uri = uri
        self.queues: list[queue.Queue] = [queue.Queue(maxsize=maxsize) for _ in range(n)]
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._loop, args=(q,), daemon=True,
                                         name=f"bst-mlflow-{i}") for i, q in enumerate(self.queues)]
        for t in self.threads:
            t.start()

    def _loop(self, q: queue.Queue) -> None:
        cl = tracking.client(self.uri)
        while True:
            item = q.get()
            try:
                if item is None:
                    return
                item(cl)
            except Exception as e:  # reported by drain(); the other writes go on
                log.exception("MLflow write failed")
                self.errors.append(f"{type(e).__name__}: {e}")
            finally:
                q.task_done()

    def submit(self, key: str, write: Write) -> None:
        """Queue ``write``; writes with the same ``key`` run in submission order."""
        self.queues[zlib.crc32(key.encode()) % len(self.queues)].put(write)

    def drain(self) -> None:
        for q in self.queues:
            q.join()

    def close(self, wait: bool = True) -> None:
        """Stop the threads, after the queued writes unless ``wait`` is false (they are lost;
        ``--resume`` closes what they would have closed)."""
        if wait:
            self.drain()
            for q in self.queues:
                q.put(None)
            for t in self.threads:
                t.join(10)


def forget_statistics(trial: Any) -> None:
    """Clear a finished trial's running statistics in Tune (min, max, mean and last-5/10 means
    of every reported number: Tune's best-trial bookkeeping; the sweep's record is MLflow).
    Tune writes every trial's state at every experiment-state save (every 2 s), so a finished
    trial's weight is paid again and again: with them (8.8 KB) and full checkpoint records
    (``TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE`` in search.py) a finished trial took 24.5 KB
    of the file, now 9.3 KB, and the save's cost per trial grew with the sweep. Called
    before Tune re-encodes the trial as TERMINATED; a Ray without these fields is left alone."""
    meta = getattr(trial, "run_metadata", None)
    if meta is not None and hasattr(meta, "metric_analysis") and hasattr(meta, "metric_n_steps"):
        meta.metric_analysis, meta.metric_n_steps = {}, {}


class MlflowTrialLogger(tune.Callback):
    """Writes one MLflow run per Tune trial from the driver process (the only writer)."""

    def __init__(self, uri: str, workdir: str, experiment: str, sweep: str,
                 fingerprints: dict[str, str], space: Any, n_folds: int, *, writers: int = 4,
                 on_setup: Callable[[], None] | None = None,
                 resources: dict[str, float] | None = None) -> None:
        self.uri, self.workdir, self.experiment, self.sweep = uri, workdir, experiment, sweep
        self.fingerprints, self.space, self.n_folds = fingerprints, space, n_folds
        self.n_writers, self.on_setup = writers, on_setup
        self.resources = resources  # per trial {"cpu": .., "gpu": ..}: tagged bst.cpus/bst.gpus
        self.client: Any = None
        self.experiment_id: str | None = None
        self.writers: Writers | None = None
        self._runs: dict[str, str] = {}  # trial id -> its open run (set by the writer threads)
        self._done: set[str] = set()  # trials with a FINISHED run, or whose closing is queued
        self._open: set[str] = set()  # trials whose run is open (or queued to open)
        self._folds: dict[str, set[int]] = {}
        self._nodes: dict[str, list[str]] = {}
        # fold results not yet in MLflow, per trial. A trial's folds are written at most every
        # fold_interval seconds (counted from its start), the rest with the run's final write:
        # a write per fold would cost the driver a transaction per result
        self.fold_interval = float(os.environ.get(FOLD_WRITE_ENV, "10"))
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._pending_tags: dict[str, dict[str, str]] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._last_fold_write: dict[str, float] = {}
        self._flush_queued: set[str] = set()
        self._last_sweep = 0.0
        self._lock = threading.Lock()
        self.trials: list[Any] = []  # Tune's trials at the end of the last fit
        # trials that ran in the current fit, and those Tune ended (complete, stopped, error):
        # at Ctrl-C, Tune marks the running ones TERMINATED too, so only these tell them apart
        self.active: set[str] = set()
        self.ended: set[str] = set()

    # -- pickling: Tune keeps its callbacks in tuner.pkl; a restored Tuner must drive *this*
    # -- logger (threads, in-memory state), so the pickle is only the sweep id
    def __getstate__(self) -> dict[str, Any]:
        return {"sweep": self.sweep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        live = _LIVE.get(state["sweep"])
        if live is None:
            raise RuntimeError(f"sweep {state['sweep']}: restore the Tuner through bst-search search "
                               "--resume (its MLflow logger lives in the driver)")
        self.__dict__ = live.__dict__  # the same state as the driver's live logger

    # -- start and end -----------------------------------------------------------------
    def start(self) -> list[str]:
        """Connect, read the sweep's runs once, close runs a dead driver left open (KILLED,
        ``interrupted``); returns their ids. Starts the writer threads."""
        self.client = tracking.client(self.uri)
        self.experiment_id = tracking.ensure_experiment(self.client, self.experiment, self.workdir, self.uri)
        tracking.describe_experiment(self.client, self.experiment_id, sweep=self.sweep,
                                     space=self.space, fingerprints=self.fingerprints)
        runs = tracking.find_runs(self.client, self.experiment_id, sweep=self.sweep)
        self._done = {r.data.tags.get(tracking.TRIAL_ID) for r in runs if r.info.status == "FINISHED"}
        closed = []
        for r in runs:
            if r.info.status == "RUNNING":
                tracking._with_retry(self.client.set_tag, r.info.run_id, tracking.STATUS, "interrupted")
                tracking._with_retry(self.client.set_terminated, r.info.run_id, status="KILLED")
                closed.append(r.info.run_id)
        self.writers = Writers(self.uri, self.n_writers)
        _LIVE[self.sweep] = self
        return closed

    def drain(self) -> list[str]:
        """Wait for every queued write; returns the errors of writes that failed for good."""
        if self.writers is not None:
            self.writers.drain()
            return list(self.writers.errors)
        return []

    def close(self, wait: bool = True) -> None:
        if self.writers is not None:
            self.writers.close(wait)
            self.writers = None
        _LIVE.pop(self.sweep, None)

    # -- writes, run by the writer threads -------------------------------------------------
    def _config(self, config: dict[str, Any] | None) -> dict[str, Any]:
        return self.space.config({k: v for k, v in (config or {}).items() if k in SCHEMA})

    def _ensure_run(self, cl: Any, trial_id: str, config: dict[str, Any] | None) -> str:
        if trial_id not in self._runs:
            nodes = self._nodes.get(trial_id, [])
            self._runs[trial_id] = tracking.start_trial_run(
                cl, self.experiment_id, sweep=self.sweep, trial_id=trial_id,
                cfg=self._config(config), fingerprints=self.fingerprints,
                node=nodes[-1] if nodes else "", resources=self.resources)
        return self._runs[trial_id]

    def _take_folds(self, trial_id: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The fold results (and node tags) of ``trial_id`` not written yet; they are now
        the caller's to write."""
        with self._lock:
            self._flush_queued.discard(trial_id)
            return self._pending.pop(trial_id, []), self._pending_tags.pop(trial_id, {})

    def _write_folds(self, cl: Any, trial_id: str, config: dict[str, Any] | None) -> None:
        folds, tags = self._take_folds(trial_id)
        if folds or tags:
            tracking.log_folds(cl, self._ensure_run(cl, trial_id, config), folds, tags)

    def _queue_folds(self, trial_id: str) -> None:
        """Queue one write of the trial's pending folds (the event loop)."""
        with self._lock:
            if trial_id in self._flush_queued or trial_id not in self._pending:
                return
            self._flush_queued.add(trial_id)
        self._last_fold_write[trial_id] = time.monotonic()
        config = self._configs.get(trial_id)
        self._submit(trial_id, lambda cl: self._write_folds(cl, trial_id, config))

    def _submit(self, trial_id: str, write: Write) -> None:
        assert self.writers is not None, "MlflowTrialLogger.start() was not called"
        self.writers.submit(trial_id, write)

    # -- Tune hooks (the event loop: queue only) -----------------------------------------
    def setup(self, **info: Any) -> None:
        self.active, self.ended, self.trials = set(), set(), []
        if self.on_setup is not None:  # the Tuner runs: the sweep has started
            self.on_setup()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        self.active.add(tid)
        if tid in self._done or tid in self._open:
            return
        self._open.add(tid)
        config = dict(trial.config)
        self._last_fold_write[tid] = time.monotonic()
        self._submit(tid, lambda cl: self._ensure_run(cl, tid, config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid = trial.trial_id
        self.active.add(tid)
        if tid in self._done:
            return
        self._open.add(tid)
        config = dict(trial.config)
        node = result.get("node")
        seen = self._nodes.setdefault(tid, [])
        tags: dict[str, str] = {}
        if node and (not seen or seen[-1] != node):
            seen.append(node)
            tags = {tracking.NODE: node, "bst.nodes": ",".join(dict.fromkeys(seen))}
        if "fold" in result:
            self._folds.setdefault(tid, set()).add(int(result["fold"]))
            self._configs[tid] = config
            with self._lock:
                self._pending.setdefault(tid, []).append(dict(result))
                self._pending_tags.setdefault(tid, {}).update(tags)
            if time.monotonic() - self._last_fold_write.get(tid, -math.inf) >= self.fold_interval:
                self._queue_folds(tid)
        elif tags:
            self._submit(tid, lambda cl: tracking.set_tags(cl, self._ensure_run(cl, tid, config), tags))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Once a second: queue the folds that have waited ``fold_interval`` seconds."""
        now = time.monotonic()
        if now - self._last_sweep < 1.0:
            return
        self._last_sweep = now
        with self._lock:
            waiting = list(self._pending)
        for tid in waiting:
            if now - self._last_fold_write.get(tid, -math.inf) >= self.fold_interval:
                self._queue_folds(tid)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)
        self.finish(trial.trial_id, trial.last_result or {}, trial.checkpoint, dict(trial.config))
        forget_statistics(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid, config = trial.trial_id, dict(trial.config)
        self.ended.add(tid)
        note = str(getattr(trial, "error_file", "") or "")
        self._open.discard(tid)

        def fail(cl: Any) -> None:
            run_id = self._ensure_run(cl, tid, config)
            folds, tags = self._take_folds(tid)
            tracking.finish_trial_run(cl, run_id, metrics=None, artifacts_dir=None, folds=folds,
                                      tags=tags, status="FAILED", bst_status="failed", note=note)
            self._runs.pop(tid, None)

        self._submit(tid, fail)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.trials = list(trials)

    def cut_off(self) -> set[str]:
        """Trials the last fit left unfinished (Ctrl-C): they ran but Tune never ended them,
        or never started."""
        waiting = {t.trial_id for t in self.trials if t.status in ("PENDING", "PAUSED", "RUNNING")}
        return (self.active - self.ended) | waiting

    def finish_restored(self) -> None:
        """Close the runs of trials Tune had already ended before this driver restored the
        experiment (the dead driver saved Tune's state but not MLflow's)."""
        for t in self.trials:
            if t.status == "TERMINATED" and t.trial_id not in self.active:
                self.finish(t.trial_id, t.last_result or {}, t.checkpoint, dict(t.config))

    # -- closing runs ------------------------------------------------------------------
    def finish(self, trial_id: str, result: dict[str, Any], checkpoint: Any,
               config: dict[str, Any] | None = None) -> None:
        """Close a trial's run as FINISHED, once: complete with artifacts, or early-stopped."""
        if trial_id in self._done:
            return
        self._done.add(trial_id)
        self._open.discard(trial_id)
        config = config if config is not None else result.get("config")
        logged = self._folds.pop(trial_id, set())
        node = self._nodes.get(trial_id, [])
        self._configs.pop(trial_id, None)
        self._last_fold_write.pop(trial_id, None)

        def close(cl: Any) -> None:
            run_id = self._ensure_run(cl, trial_id, config)
            folds, tags = self._take_folds(trial_id)
            if node:
                tags[tracking.NODE] = node[-1]
            if result.get("trial_status") == "complete" and checkpoint is not None:
                with checkpoint.as_directory() as d:
                    # the trial's full measurements: its last report carries only what Tune needs
                    path = Path(d) / "metrics.json"
                    measured = json.loads(path.read_text()) if path.exists() else {}
                    # folds finished before a restart, into this run too
                    folds += [{"fold": r["fold"], "fold_hF": r["hF"], "fold_hF_strict": r["hF_strict"]}
                              for r in measured.get("folds", []) if r["fold"] not in logged]
                    tracking.finish_trial_run(cl, run_id, metrics={**measured, **result}, artifacts_dir=d,
                                              folds=folds, tags=tags, status="FINISHED",
                                              bst_status="complete", objective=self.space.metric,
                                              # the name _ensure_run gave the run
                                              name=tracking.run_name(trial_id, self._config(config)))
            else:
                done = int(result.get("folds_done", 0))
                tracking.finish_trial_run(
                    cl, run_id, metrics=None, artifacts_dir=None, folds=folds, tags=tags,
                    status="FINISHED", bst_status="early_stopped",
                    note=f"stopped by the scheduler after {done}/{self.n_folds} folds")
            self._runs.pop(trial_id, None)

        self._submit(trial_id, close)

    def interrupt(self, trial_ids: set[str]) -> None:
        """Close the open runs of trials cut off by Ctrl-C: KILLED, ``interrupted``; the
        trials themselves continue from their last finished fold on ``--resume``."""
        for tid in sorted(trial_ids & self._open):
            self._open.discard(tid)

            def kill(cl: Any, tid: str = tid) -> None:
                run_id = self._runs.pop(tid, None)
                folds, tags = self._take_folds(tid)
                if run_id is not None:
                    tracking.log_folds(cl, run_id, folds, {**tags, tracking.STATUS: "interrupted"})
                    tracking._with_retry(cl.set_terminated, run_id, status="KILLED")

            self._submit(tid, kill)
