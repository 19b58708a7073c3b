"""Why a sweep stops before its end, and stopping it the way Ctrl-C does.

Schedulers and terminals stop a driver in more ways than Ctrl-C: ``timeout``, SLURM and
Kubernetes send SIGTERM (``timeout`` to the whole process group), a closed ``ray submit``
session sends SIGHUP, and a driver stalled past its lease finds that another driver took the
sweep over. :class:`Stops` turns each into what Ctrl-C does: Tune ends the run, running trials
stop resumable (runs KILLED, ``bst.status=interrupted``), queued MLflow writes are drained
within :data:`DRAIN_ENV` seconds, and the exit code says why (:func:`exit_code_of`).

A lost lease differs in one way: another driver owns the sweep now, so this one writes nothing
more (:meth:`Stops.may_write`, checked by the MLflow logger and the Optuna searcher) and exits
with :data:`LEASE_LOST_RC`.

The driver's private local Ray is started in a session of its own
(:func:`own_session_for_ray`), so a signal sent to the driver's process group (``timeout``,
a terminal's hang-up) reaches the driver, which stops Ray itself, and not Ray's GCS and
raylet, which would die under the running trials.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
GROUP_SIGNALS = {signal.SIGINT, *STOP_SIGNALS}  # what a terminal or `timeout` sends a whole group
LEASE_LOST_RC = 3  # another driver took the sweep over: do not --resume this one
DRAIN_ENV = "BST_STOP_DRAIN_S"  # seconds a stopped driver waits for its queued MLflow writes
DRAIN_DEFAULT_S = 25.0  # within the 30 s that SLURM and Kubernetes leave before SIGKILL


class Stops:
    """The stop requests of this driver process; one instance, :data:`STOPS`."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first SIGTERM / SIGHUP received
        self.lease: Any = None  # the driver's Lease, once it holds one
        self.fitting = False  # a Tune run is in progress (its SIGUSR1 handler is installed)
        self.hangup_log: str | None = None  # where output goes once the terminal hung up

    def reset(self) -> None:
        self.__init__()

    @property
    def lease_lost(self) -> bool:
        return self.lease is not None and self.lease.lost

    @property
    def requested(self) -> bool:
        """Whether the sweep must end now: a stop signal came or the lease is lost."""
        return self.signum is not None or self.lease_lost

    def may_write(self) -> bool:
        """Whether this driver may still write the sweep's state (MLflow, Optuna): it holds
        its lease (checked against the database when the last renewal is old)."""
        return self.lease is None or self.lease.held()

    def drain_s(self) -> float | None:
        """How long the queued MLflow writes may take at the end: bounded after a stop."""
        return float(os.environ.get(DRAIN_ENV, DRAIN_DEFAULT_S)) if self.requested else None

    # -- triggers -----------------------------------------------------------------------
    def install(self, workdir: str | None = None) -> None:
        """Handle SIGTERM and SIGHUP like SIGINT (after Ray installed its own handlers, which
        exit the driver at once); a lost lease stops the Tune run."""
        if threading.current_thread() is not threading.main_thread():
            return
        self.hangup_log = os.path.join(workdir, "driver-after-hangup.log") if workdir else None
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)
        if self.lease is not None:
            self.lease.on_lost = lambda lease: self.interrupt_tune()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._detach_output()
        if self.signum is None:
            self.signum = signum
            with contextlib.suppress(OSError):
                print(f"{signal.Signals(signum).name} received: stopping the sweep as on Ctrl-C; "
                      f"running trials stop resumable", file=sys.stderr, flush=True)
        handler = signal.getsignal(signal.SIGINT)  # Tune's during a run, else KeyboardInterrupt
        if callable(handler):
            handler(signal.SIGINT, frame)
        elif handler != signal.SIG_IGN:
            raise KeyboardInterrupt

    def interrupt_tune(self) -> None:
        """End the running Tune run as Ctrl-C does (SIGUSR1, which Tune handles like SIGINT;
        any thread may call this). Outside a run there is nothing to interrupt: the driver
        checks :attr:`requested` before it starts another."""
        if self.fitting:
            os.kill(os.getpid(), signal.SIGUSR1)

    @contextlib.contextmanager
    def tune_run(self) -> Iterator[None]:
        """Around ``tuner.fit()``: a stop that came just before it ends it at once."""
        self.fitting = True
        try:
            if self.requested:
                self.interrupt_tune()
            yield
        finally:
            self.fitting = False

    def _detach_output(self) -> None:
        """After a hang-up, stdout and stderr that were a terminal, a pipe or a socket go to a
        file in the work dir: writing to the closed session would fail the driver."""
        if not self.hangup_log:
            return
        try:
            fd = os.open(self.hangup_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            for out in (1, 2):
                mode = os.fstat(out).st_mode
                if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                    os.dup2(fd, out)
            os.close(fd)
        except OSError:
            pass


STOPS = Stops()


def exit_code_of(signum: int | None, lease_lost: bool) -> int | None:
    """The exit code a stop gives the command: :data:`LEASE_LOST_RC` for a lost lease,
    128 + the signal for SIGTERM (143) and SIGHUP (129), as a shell reports them; None when
    nothing stopped the sweep."""
    if lease_lost:
        return LEASE_LOST_RC
    return 128 + signum if signum else None


@contextlib.contextmanager
def ignored_by_children(signals: set[int]) -> Iterator[None]:
    """A child started here ignores ``signals`` from its first instruction (an ignored
    signal stays ignored across exec), not only once it has imported MLflow (seconds): the
    driver's own signals wait, blocked, and reach its handlers afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    handlers = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@contextlib.contextmanager
def own_session_for_ray() -> Iterator[None]:
    """While a private local Ray starts: its processes (GCS, raylet and their helpers) start
    in a new session, out of the driver's process group. They still die with the driver
    (Ray's kernel fate sharing, PR_SET_PDEATHSIG), so this is done only where Ray has that."""
    try:
        from ray._private import services, utils
    except ImportError:  # a Ray without these internals: its processes share the group
        yield
        return
    popen = getattr(services, "ConsolePopen", None)
    if popen is None or not utils.detect_fate_sharing_support() or not sys.platform.startswith("linux"):
        yield
        return

    class _OwnSession(popen):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = _OwnSession
    try:
        yield
    finally:
        services.ConsolePopen = popen
