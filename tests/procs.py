"""Helpers for tests that start servers: a free loopback port, waiting on a process's output.

A plain module (not conftest): tests/ and tests/extract/ both have a conftest, so
``from conftest import ...`` is ambiguous.
"""

from __future__ import annotations


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_lines(proc, needle: str, timeout: float) -> str:
    """Read a subprocess's stdout until a line contains ``needle``; all text read so far.

    A reader thread owns the pipe (select() on a buffered pipe misses lines already read
    into the buffer); the lines read stay in ``proc.lines`` for a later call.
    """
    import queue
    import threading
    import time

    if not hasattr(proc, "lines"):
        proc.lines = queue.Queue()

        def pump() -> None:
            for line in proc.stdout:
                proc.lines.put(line)
            proc.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
    text, deadline = "", time.time() + timeout
    while time.time() < deadline:
        try:
            line = proc.lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            break
        text += line
        if needle in line:
            return text
    raise AssertionError(f"no line with {needle!r} within {timeout:.0f} s; output:\n{text[-3000:]}")
