"""What a person watching a sweep reads: one live progress view and a line per ended trial.

:class:`Console` is a Ray Tune callback in the driver. While the sweep runs it shows trials
done / running / pending, the best objective so far with its trial, the elapsed time and an
ETA; when a trial ends it prints one record (objective, folds, wall time, node). On a terminal
the view is a rich live line under the records; when output goes to a file (CI, ``ray
submit``, a log) it is a plain line every :data:`PLAIN_EVERY_S` seconds. It also enforces
``--time-budget``: at the budget it stops the Tune run the way Ctrl-C does (SIGUSR1, which
Tune handles like SIGINT), so the trials it cut off resume with ``--resume``.

Tune's own table replaces all of this with ``--verbose``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
import warnings
from typing import IO, Any

from ray import tune

PLAIN_EVERY_S = 30.0  # a plain progress line at most this often when output is not a terminal
LIVE_EVERY_S = 0.5  # the live view's refresh period on a terminal
_LIVE: list[Console] = []  # the driver's console (a restored Tuner unpickles to it)


def quiet_known_warnings(verbose: bool = False) -> None:
    """Silence the known harmless messages of a sweep where they start; real warnings stay.

    * Optuna's ExperimentalWarning for TPE's ``group`` option, which the sweep chose;
    * MLflow's INFO lines while it creates or migrates its database tables (alembic);
    * without ``--verbose``, the INFO lines of Optuna (a study created) and Tune (state saved),
      which the progress view replaces.
    """
    import optuna
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", message=r"Argument ``group`` is an experimental feature",
                            category=ExperimentalWarning)
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.getLogger("ray.tune").setLevel(logging.WARNING)


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Console(tune.Callback):
    """The sweep's progress view and trial records; see the module docstring."""

    def __init__(self, metric: str, mode: str, n_folds: int, trials: int, *,
                 budget_s: float | None = None, live: bool = True,
                 stream: IO[str] | None = None, t0: float | None = None,
                 register: bool = True) -> None:
        self.metric, self.mode, self.n_folds, self.trials = metric, mode, n_folds, trials
        self.budget_s, self.budget_hit = budget_s, False
        self.stream = stream or sys.stdout
        self.t0 = time.monotonic() if t0 is None else t0
        self.started: dict[str, float] = {}  # trial id -> when this driver saw it start
        self.last: dict[str, dict[str, Any]] = {}  # trial id -> its last result
        self.ended: set[str] = set()
        self.counts = {"done": 0, "running": 0, "pending": 0}
        self.best: tuple[float, str] | None = None
        self.restarts = 0  # trials Tune started again after a failure
        self.enabled = live
        self._live: Any = None
        if live and self.stream.isatty():
            from rich.console import Console as RichConsole
            from rich.live import Live

            self._live = Live(console=RichConsole(file=self.stream), auto_refresh=False,
                              transient=True)
            self._live.start()
        self._last_view = 0.0
        if register:
            _LIVE[:] = [self]

    # -- pickling: Tune keeps its callbacks in tuner.pkl; a restored Tuner reports to the
    # -- driver's live console
    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if _LIVE:
            self.__dict__ = _LIVE[0].__dict__
        else:  # restored outside a driver: an inert console
            self.__init__("oof_hF_strict", "max", 0, 0, live=False, register=False)

    # -- Tune hooks ------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.monotonic())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.last[trial.trial_id] = result
        if result.get("trial_status") == "complete":
            self._record(trial, result, "complete")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = self.last.get(trial.trial_id) or trial.last_result or {}
        self._record(trial, result, "complete" if result.get("trial_status") == "complete"
                     else "stopped early")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial, self.last.get(trial.trial_id) or {}, "error")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A failed trial Tune starts again (up to --max-failures), from its last checkpoint."""
        self.restarts += 1
        last = self.last.get(trial.trial_id) or {}
        node = str(last.get("node") or "")[:8] or "?"
        self._print(f"trial {trial.trial_id}  restarted     after a failure (last on node {node}, "
                    f"{last.get('folds_done', 0)}/{self.n_folds} folds kept)")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._check_budget()
        if self._view_due():  # Tune steps many times a second: count only what is shown
            self._count(trials)
            self._view()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._count(trials)

    def _count(self, trials: list) -> None:
        status = [t.status for t in trials]
        done = sum(s in ("TERMINATED", "ERROR") for s in status)
        running = sum(s == "RUNNING" for s in status)
        waiting = sum(s in ("PENDING", "PAUSED") for s in status)
        pending = waiting if self.trials < 0 else max(waiting, self.trials - done - running)
        self.counts = {"done": done, "running": running, "pending": pending}

    # -- what is shown ---------------------------------------------------------------------
    def _record(self, trial: Any, result: dict[str, Any], outcome: str) -> None:
        tid = trial.trial_id
        if tid in self.ended:
            return
        self.ended.add(tid)
        value = result.get(self.metric)
        if outcome == "complete" and isinstance(value, (int, float)) and math.isfinite(value):
            better = self.best is None or (value > self.best[0] if self.mode == "max"
                                           else value < self.best[0])
            if better:
                self.best = (float(value), tid)
        wall = result.get("time_total_s") or time.monotonic() - self.started.get(tid, self.t0)
        score = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) else "no score"
        folds = f"{result.get('folds_done', 0)}/{self.n_folds} folds"
        node = str(result.get("node") or "")[:8] or "?"
        star = "  best so far" if self.best and self.best[1] == tid else ""
        self._print(f"trial {tid}  {outcome:13s} {score}  {folds}  {wall:6.1f} s  node {node}{star}")

    def view_line(self) -> str:
        """The progress view as one line of text."""
        c = self.counts
        elapsed = time.monotonic() - self.t0
        total = "" if self.trials < 0 else f"/{self.trials}"
        best = (f"best {self.metric} {self.best[0]:.4f} (trial {self.best[1]})" if self.best
                else "no complete trial yet")
        line = (f"{c['done']}{total} done, {c['running']} running, {c['pending']} pending; "
                f"{best}; elapsed {_clock(elapsed)}")
        eta = self._eta(elapsed)
        return line + (f", ETA {_clock(eta)}" if eta is not None else "")

    def _eta(self, elapsed: float) -> float | None:
        left = self.budget_s - elapsed if self.budget_s else None
        done = self.counts["done"]
        if self.trials >= 0 and done:
            by_rate = elapsed / done * max(0, self.trials - done)
            return by_rate if left is None else min(by_rate, left)
        return left

    def _view_due(self) -> bool:
        every = LIVE_EVERY_S if self._live is not None else PLAIN_EVERY_S
        return self.enabled and time.monotonic() - self._last_view >= every

    def _view(self) -> None:
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(self.view_line(), style="bold"), refresh=True)
        else:
            self._print(f"[{time.strftime('%H:%M:%S')}] {self.view_line()}")
        self._last_view = time.monotonic()

    def _print(self, line: str, always: bool = False) -> None:
        if not (self.enabled or always):
            return
        if self._live is not None:
            self._live.console.print(line, highlight=False, markup=False)
        else:
            print(line, file=self.stream, flush=True)

    def _check_budget(self) -> None:
        if self.budget_s is None or self.budget_hit:
            return
        if time.monotonic() - self.t0 >= self.budget_s:
            self.budget_hit = True
            self._print(f"time budget of {_clock(self.budget_s)} reached: stopping the sweep; "
                        f"running trials stop resumable", always=True)
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune ends the run as on Ctrl-C

    def close(self) -> None:
        if self.enabled and self.counts["done"]:
            self._print(self.view_line())
        if self.enabled and self.restarts:
            self._print(f"{self.restarts} trial restart(s) after failures")
        if self._live is not None:
            self._live.stop()
            self._live = None
        if _LIVE and _LIVE[0] is self:
            _LIVE.clear()
