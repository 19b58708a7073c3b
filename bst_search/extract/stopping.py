"""SIGTERM is Ctrl-C for ``bst-search extract``: a stop between batches, never inside one.

``timeout``, Kubernetes, SLURM and most schedulers send SIGTERM before SIGKILL. The first
SIGTERM or SIGINT is only noted; the writer stops once the batch it holds is on disk
(:class:`~bst_search.extract.errors.ExtractInterrupted`, exit code 128 + the signal). A second
one raises ``KeyboardInterrupt`` at once, which the durable write order also survives.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

from bst_search.extract.errors import ExtractInterrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignals:
    """While active (``with``), SIGTERM and SIGINT ask for a stop; ``check`` raises it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        self.ensure()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def ensure(self) -> None:
        """(Re)install the handlers: ``ray.init`` replaces SIGTERM's with one that exits at once."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only; a caller elsewhere keeps its own
        for s in STOP_SIGNALS:
            current = signal.getsignal(s)
            if current != self._on_signal:
                self._previous.setdefault(s, current)
                signal.signal(s, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second: at once
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping once this batch is written "
              f"(again to stop at once)", file=sys.stderr, flush=True)

    def check(self) -> None:
        """Raise :class:`ExtractInterrupted` when a stop was asked for (the caller, who knows
        how far it got, raises the one the user reads)."""
        if self.signum is not None:
            raise ExtractInterrupted(self.signum, "between batches")
