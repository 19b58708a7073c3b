"""The sweep's MLflow record: one run per Tune trial, written outside the driver process.

:class:`MlflowTrialLogger` is a Ray Tune callback in the driver. It reads the sweep's MLflow
state once, at start (which trials already have a FINISHED run; which runs a dead driver left
open), keeps it in memory, and never searches MLflow per result. Its hooks only decide what to
write and queue it: :class:`Writers` is a child process, the only writer of trial runs (a
SQLite store then has one writer), where :class:`RunBook` performs the writes, a few threads
in order per trial, retrying through a locked store or a restarting tracking server
(:func:`bst_search.tracking.with_retry`). :meth:`MlflowTrialLogger.drain` waits for all of
them before the driver exits.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

from bst_search import tracking
from bst_search.config import SCHEMA
from bst_search.search.stopping import GROUP_SIGNALS, STOPS, ignored_by_children

if TYPE_CHECKING:
    from bst_search.search.space import SearchSpace
    from bst_search.search.state import LeaseFence

log = logging.getLogger(__name__)
_LIVE: dict[str, MlflowTrialLogger] = {}  # the driver's logger per sweep (see __setstate__)
FOLD_WRITE_ENV = "BST_MLFLOW_FOLD_S"  # seconds between two writes of one trial's fold metrics


class RunBook:
    """A sweep's trial runs in MLflow: the writes, and the run each trial has open. It lives in
    the writer process (:class:`Writers`); each method gets that process's client and plain
    values (configs, fold results, a Tune checkpoint), never the driver's objects."""

    def __init__(self, experiment_id: str, sweep: str, fingerprints: dict[str, str], space: SearchSpace,
                 n_folds: int, resources: dict[str, float] | None = None,
                 fence: LeaseFence | None = None) -> None:
        self.experiment_id, self.sweep, self.fingerprints = experiment_id, sweep, fingerprints
        self.space, self.n_folds, self.resources = space, n_folds, resources
        self.runs: dict[str, str] = {}  # trial id -> its open run
        self.fence = fence  # a run is closed only while the driver holds the lease (LeaseFence)

    def _may_close(self, trial_id: str) -> bool:
        """A driver stalled past its lease must not close a run that the driver which took
        over runs again."""
        if self.fence is None or self.fence.holds():
            return True
        log.warning("trial %s: not closed, the sweep's lease is another driver's now", trial_id)
        return False

    def _config(self, config: dict[str, Any] | None) -> dict[str, Any]:
        return self.space.config({k: v for k, v in (config or {}).items() if k in SCHEMA})

    def open(self, cl: Any, trial_id: str, config: dict[str, Any] | None, node: str = "") -> str:
        """The trial's open run, created when it has none."""
        if trial_id not in self.runs:
            self.runs[trial_id] = tracking.start_trial_run(
                cl, self.experiment_id, sweep=self.sweep, trial_id=trial_id, cfg=self._config(config),
                fingerprints=self.fingerprints, node=node, resources=self.resources)
        return self.runs[trial_id]

    def log_folds(self, cl: Any, trial_id: str, config: dict[str, Any] | None, node: str,
                  folds: list[dict[str, Any]], tags: dict[str, str]) -> None:
        """Fold metrics and tags (either may be empty) in one batch."""
        tracking.log_folds(cl, self.open(cl, trial_id, config, node), folds, tags)

    def complete(self, cl: Any, trial_id: str, config: dict[str, Any] | None, node: str,
                 folds: list[dict[str, Any]], tags: dict[str, str], result: dict[str, Any],
                 checkpoint: Any, logged: set[int]) -> None:
        """Close the run FINISHED/complete with the checkpoint's artifacts and measurements."""
        if not self._may_close(trial_id):
            return
        run_id = self.open(cl, trial_id, config, node)
        with checkpoint.as_directory() as d:
            # the trial's full measurements: its last report carries only what Tune needs
            path = Path(d) / "metrics.json"
            measured = json.loads(path.read_text()) if path.exists() else {}
            # folds finished before a restart, into this run too
            folds = folds + [{"fold": r["fold"], "fold_hF": r["hF"], "fold_hF_strict": r["hF_strict"]}
                             for r in measured.get("folds", []) if r["fold"] not in logged]
            tracking.finish_trial_run(cl, run_id, metrics={**measured, **result}, artifacts_dir=d,
                                      folds=folds, tags=tags, status="FINISHED", bst_status="complete",
                                      objective=self.space.metric,  # the name open() gave the run:
                                      name=tracking.run_name(trial_id, self._config(config)))
        self.runs.pop(trial_id, None)

    def stop_early(self, cl: Any, trial_id: str, config: dict[str, Any] | None, node: str,
                   folds: list[dict[str, Any]], tags: dict[str, str], folds_done: int) -> None:
        """Close the run FINISHED/early_stopped: the scheduler stopped the trial."""
        if not self._may_close(trial_id):
            return
        tracking.finish_trial_run(
            cl, self.open(cl, trial_id, config, node), metrics=None, artifacts_dir=None, folds=folds,
            tags=tags, status="FINISHED", bst_status="early_stopped",
            note=f"stopped by the scheduler after {folds_done}/{self.n_folds} folds")
        self.runs.pop(trial_id, None)

    def fail(self, cl: Any, trial_id: str, config: dict[str, Any] | None, node: str,
             folds: list[dict[str, Any]], tags: dict[str, str], note: str) -> None:
        """Close the attempt's run FAILED (Tune may retry the trial: a new run)."""
        if not self._may_close(trial_id):
            return
        tracking.finish_trial_run(cl, self.open(cl, trial_id, config, node), metrics=None,
                                  artifacts_dir=None, folds=folds, tags=tags, status="FAILED",
                                  bst_status="failed", note=note)
        self.runs.pop(trial_id, None)

    def kill(self, cl: Any, trial_id: str, folds: list[dict[str, Any]], tags: dict[str, str]) -> None:
        """Close an open run KILLED/interrupted (Ctrl-C); no run is created for it."""
        run_id = self.runs.pop(trial_id, None)
        if run_id is not None:
            tracking.log_folds(cl, run_id, folds, {**tags, tracking.STATUS: "interrupted"})
            tracking.with_retry(cl.set_terminated, run_id, status="KILLED")


class Writers:
    """A child process that performs the sweep's MLflow writes, so that their cost (SQLAlchemy
    and SQLite or HTTP, artifact download and upload) is not the Tune driver's: measured at
    1,000 trials, in-process writes were about 38 % of the driver's busy time.

    A write is a method of ``book`` (a :class:`RunBook`, or any picklable object whose methods
    take a client first) and its arguments; the driver only pickles it into a pipe. In the
    child, ``n`` threads each drain their own bounded queue in order, and a key's writes always
    go to the same thread: a trial's writes keep their order. When the child's queues are full
    it stops reading, the pipe fills and :meth:`submit` waits (bounded memory). If the driver
    dies, the child still performs what it received, then exits. Ctrl-C, SIGTERM and SIGHUP
    reach the whole process group (a terminal, ``timeout``): the child ignores them, the driver
    decides, drains the queued writes and closes the child."""

    def __init__(self, uri: str, book: RunBook, n: int = 4, maxsize: int = 256) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs Ray's threads
        child_commands, self._commands = ctx.Pipe(duplex=False)
        self._replies, child_replies = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_serve, name="bst-mlflow-writer", daemon=True,
                                   args=(uri, book, n, maxsize, child_commands, child_replies))
        with ignored_by_children(GROUP_SIGNALS):  # one sent while it imports must not kill it
            self.process.start()
        child_commands.close()  # the child's ends: a dead peer is then an EOF on either side
        child_replies.close()
        self._failed: list[str] = []  # writes that failed for good, as the child last told
        self._gone: list[str] = []  # the child died: what was sent after it is lost

    @property
    def errors(self) -> list[str]:
        return self._failed + self._gone

    def submit(self, key: str, op: str, *args: Any) -> None:
        """Queue ``book.op(client, *args)``; writes with the same ``key`` run in submission order."""
        self._send(("write", zlib.crc32(key.encode()), op, args))

    def _send(self, message: tuple) -> bool:
        try:
            self._commands.send(message)
            return True
        except (BrokenPipeError, EOFError, OSError) as e:
            self._lost(e)
            return False

    def _lost(self, e: BaseException) -> None:
        if not self._gone:
            self._gone.append(f"the MLflow writer process is gone ({type(e).__name__}, exit code "
                              f"{self.process.exitcode}): later writes are lost; --resume closes their runs")
            log.error(self._gone[0])

    def _reply(self, message: tuple, timeout: float | None = None) -> bool:
        """Send ``message`` and take the child's answer: every write before it is done.
        False when the answer did not come within ``timeout`` seconds (None: no limit)."""
        if self._send(message):
            try:
                if timeout is not None and not self._replies.poll(timeout):
                    self._gone.append(f"the MLflow writer process did not finish its queued writes "
                                      f"within {timeout:g}s: they are lost; --resume closes their runs")
                    log.error(self._gone[-1])
                    return False
                self._failed = self._replies.recv()
            except (EOFError, OSError) as e:
                self._lost(e)
        return True

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every write queued so far is done (or failed for good: ``errors``), for
        at most ``timeout`` seconds; False when they were not done by then."""
        return self._reply(("drain",), timeout)

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop the child, after the queued writes (at most ``timeout`` seconds) unless ``wait``
        is false (they are lost; ``--resume`` closes what they would have closed)."""
        if wait and self.process.is_alive() and self._reply(("close",), timeout):
            self.process.join(30)
        if self.process.is_alive():
            self.process.kill()  # it ignores SIGTERM (see the class docstring)
            self.process.join(10)
        self._commands.close()
        self._replies.close()


def _serve(uri: str, book: RunBook, n: int, maxsize: int, commands: Any, replies: Any) -> None:
    """The writer process: read the driver's messages until it says close or is gone."""
    for s in GROUP_SIGNALS:  # sent to the group: the driver decides
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)
    tracking.write_ahead_sqlite()
    queues: list[queue.Queue] = [queue.Queue(maxsize=maxsize) for _ in range(n)]
    errors: list[str] = []

    def work(q: queue.Queue) -> None:
        cl = None
        while (item := q.get()) is not None:
            op, args = item
            try:
                cl = cl or tracking.client(uri)
                getattr(book, op)(cl, *args)
            except Exception as e:  # reported by drain(); the other writes go on
                log.exception("MLflow write %s failed", op)
                errors.append(f"{op}: {type(e).__name__}: {e}")
            finally:
                q.task_done()
        q.task_done()

    threads = [threading.Thread(target=work, args=(q,), name=f"bst-mlflow-{i}") for i, q in enumerate(queues)]
    for t in threads:
        t.start()
    while True:
        try:
            message = commands.recv()
        except (EOFError, OSError):  # the driver is gone: finish what it sent
            message = ("close",)
        if message[0] == "write":
            _, h, op, args = message
            queues[h % n].put((op, args))
            continue
        for q in queues:
            q.join()
        if message[0] == "close":
            for q in queues:
                q.put(None)
            for t in threads:
                t.join()
        try:
            replies.send(list(errors))
        except (BrokenPipeError, OSError):
            pass
        if message[0] == "close":
            return


def forget_statistics(trial: Any) -> None:
    """Clear a finished trial's running statistics in Tune (min, max, mean and last-5/10 means
    of every reported number: Tune's best-trial bookkeeping; the sweep's record is MLflow).
    Tune writes every trial's state at every experiment-state save (every 2 s), so a finished
    trial's weight is paid again and again: these statistics (about 9 KB a trial) and full
    checkpoint records (``TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE``, set by the driver) would
    make each save cost more per trial as the sweep grows. Called before Tune re-encodes the
    trial as TERMINATED; a Ray without these fields is left alone."""
    meta = getattr(trial, "run_metadata", None)
    if meta is not None and hasattr(meta, "metric_analysis") and hasattr(meta, "metric_n_steps"):
        meta.metric_analysis, meta.metric_n_steps = {}, {}


class MlflowTrialLogger(tune.Callback):
    """Writes one MLflow run per Tune trial, through the sweep's writer process (the only writer
    of trial runs); the Tune hooks only decide what to write and queue it."""

    def __init__(self, uri: str, workdir: str, experiment: str, sweep: str,
                 fingerprints: dict[str, str], space: SearchSpace, n_folds: int, *, writers: int = 4,
                 on_setup: Callable[[], None] | None = None,
                 resources: dict[str, float] | None = None,
                 fence: LeaseFence | None = None) -> None:
        self.uri, self.workdir, self.experiment, self.sweep = uri, workdir, experiment, sweep
        self.fingerprints, self.space, self.n_folds = fingerprints, space, n_folds
        self.n_writers, self.on_setup = writers, on_setup
        self.resources = resources  # per trial {"cpu": .., "gpu": ..}: tagged bst.cpus/bst.gpus
        self.fence = fence  # the driver's lease, checked before a run is closed (RunBook)
        self.client: Any = None
        self.experiment_id: str | None = None
        self.writers: Writers | None = None
        self._done: set[str] = set()  # trials with a FINISHED run, or whose closing is queued
        self._open: set[str] = set()  # trials whose run is open (or queued to open)
        self._folds: dict[str, set[int]] = {}  # folds a trial reported to this driver
        self._nodes: dict[str, list[str]] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        # fold results not yet queued, per trial. A trial's folds are written at most every
        # fold_interval seconds (counted from its start), the rest with the run's final write:
        # a write per fold would cost a transaction per result
        self.fold_interval = float(os.environ.get(FOLD_WRITE_ENV, "10"))
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._pending_tags: dict[str, dict[str, str]] = {}
        self._last_fold_write: dict[str, float] = {}
        self._last_sweep = 0.0
        self.trials: list[Any] = []  # Tune's trials at the end of the last fit
        # trials that ran in the current fit, and those Tune ended (complete, stopped, error):
        # at Ctrl-C, Tune marks the running ones TERMINATED too, so only these tell them apart
        self.active: set[str] = set()
        self.ended: set[str] = set()

    # -- pickling: Tune keeps its callbacks in tuner.pkl; a restored Tuner must drive *this*
    # -- logger (writer process, in-memory state), so the pickle is only the sweep id
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
        ``interrupted``); returns their ids. Starts the writer process."""
        self.client = tracking.client(self.uri)
        self.experiment_id = tracking.ensure_experiment(self.client, self.experiment, self.workdir, self.uri)
        tracking.describe_experiment(self.client, self.experiment_id, sweep=self.sweep,
                                     space=self.space, fingerprints=self.fingerprints)
        runs = tracking.find_runs(self.client, self.experiment_id, sweep=self.sweep)
        self._done = {r.data.tags.get(tracking.TRIAL_ID) for r in runs if r.info.status == "FINISHED"}
        closed = []
        for r in runs:
            if r.info.status == "RUNNING":
                tracking.with_retry(self.client.set_tag, r.info.run_id, tracking.STATUS, "interrupted")
                tracking.with_retry(self.client.set_terminated, r.info.run_id, status="KILLED")
                closed.append(r.info.run_id)
        book = RunBook(self.experiment_id, self.sweep, self.fingerprints, self.space, self.n_folds,
                       self.resources, self.fence)
        self.writers = Writers(self.uri, book, self.n_writers)
        _LIVE[self.sweep] = self
        return closed

    def drain(self, timeout: float | None = None) -> list[str]:
        """Wait for every queued write (at most ``timeout`` seconds); returns the errors of
        writes that failed for good or were not done in time."""
        if self.writers is not None:
            self.writers.drain(timeout)
            return list(self.writers.errors)
        return []

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        if self.writers is not None:
            self.writers.close(wait, timeout)
            self.writers = None
        _LIVE.pop(self.sweep, None)

    # -- queueing writes (the event loop) --------------------------------------------------
    def _submit(self, trial_id: str, op: str, *args: Any) -> None:
        assert self.writers is not None, "MlflowTrialLogger.start() was not called"
        if STOPS.may_write():  # a driver that lost its lease writes nothing more
            self.writers.submit(trial_id, op, trial_id, *args)

    def _node(self, trial_id: str) -> str:
        nodes = self._nodes.get(trial_id)
        return nodes[-1] if nodes else ""

    def _take_folds(self, trial_id: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The fold results (and node tags) of ``trial_id`` not queued yet; now the caller's."""
        return self._pending.pop(trial_id, []), self._pending_tags.pop(trial_id, {})

    def _queue_folds(self, trial_id: str) -> None:
        folds, tags = self._take_folds(trial_id)
        self._last_fold_write[trial_id] = time.monotonic()
        if folds or tags:
            self._submit(trial_id, "log_folds", self._configs.get(trial_id), self._node(trial_id), folds, tags)

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
        self._configs[tid] = dict(trial.config)
        self._last_fold_write[tid] = time.monotonic()
        self._submit(tid, "open", self._configs[tid], self._node(tid))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid = trial.trial_id
        self.active.add(tid)
        if tid in self._done:
            return
        self._open.add(tid)
        if tid not in self._configs:  # a trial's config does not change: copied once
            self._configs[tid] = dict(trial.config)
        node = result.get("node")
        seen = self._nodes.setdefault(tid, [])
        tags: dict[str, str] = {}
        if node and (not seen or seen[-1] != node):
            seen.append(node)
            tags = {tracking.NODE: node, "bst.nodes": ",".join(dict.fromkeys(seen))}
        if "fold" in result:
            self._folds.setdefault(tid, set()).add(int(result["fold"]))
            self._pending.setdefault(tid, []).append(dict(result))
            self._pending_tags.setdefault(tid, {}).update(tags)
            if time.monotonic() - self._last_fold_write.get(tid, -math.inf) >= self.fold_interval:
                self._queue_folds(tid)
        elif tags:
            self._submit(tid, "log_folds", self._configs[tid], self._node(tid), [], tags)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Once a second: queue the folds that have waited ``fold_interval`` seconds."""
        now = time.monotonic()
        if now - self._last_sweep < 1.0:
            return
        self._last_sweep = now
        for tid in list(self._pending):
            if now - self._last_fold_write.get(tid, -math.inf) >= self.fold_interval:
                self._queue_folds(tid)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)
        self.finish(trial.trial_id, trial.last_result or {}, trial.checkpoint, dict(trial.config))
        forget_statistics(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        self.ended.add(tid)
        self._open.discard(tid)
        folds, tags = self._take_folds(tid)
        self._submit(tid, "fail", dict(trial.config), self._node(tid), folds, tags,
                     str(getattr(trial, "error_file", "") or ""))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.trials = list(trials)

    @property
    def finished(self) -> set[str]:
        """Trials whose run is FINISHED in MLflow, or whose closing write is queued."""
        return set(self._done)

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
        self._configs.pop(trial_id, None)
        self._last_fold_write.pop(trial_id, None)
        folds, tags = self._take_folds(trial_id)
        node = self._node(trial_id)
        if node:
            tags[tracking.NODE] = node
        if result.get("trial_status") == "complete" and checkpoint is not None:
            self._submit(trial_id, "complete", config, node, folds, tags, dict(result), checkpoint, logged)
        else:
            self._submit(trial_id, "stop_early", config, node, folds, tags, int(result.get("folds_done", 0)))

    def interrupt(self, trial_ids: set[str]) -> None:
        """Close the open runs of trials cut off by Ctrl-C: KILLED, ``interrupted``; the
        trials themselves continue from their last finished fold on ``--resume``."""
        for tid in sorted(trial_ids & self._open):
            self._open.discard(tid)
            self._submit(tid, "kill", *self._take_folds(tid))
