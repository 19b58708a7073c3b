"""The errors of extraction: their messages name the file, the id and the problem."""

from __future__ import annotations

import signal


class ExtractError(RuntimeError):
    """Extraction cannot go on as asked (bad option, missing audio under ``error``, refused checkpoint)."""


class ExtractInterrupted(Exception):
    """SIGTERM or SIGINT stopped extraction cleanly; the message says how to resume.

    ``exit_code`` is what a shell reports for the signal (130 for SIGINT, 143 for SIGTERM), so
    a scheduler that sent SIGTERM sees its own signal.
    """

    def __init__(self, signum: int, where: str) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"{signal.Signals(signum).name}: extraction stopped cleanly, {where}; "
                         f"the manifest and journal are saved. Run the same command again to "
                         f"resume: the ids already written are not redone")
