"""The one error type of extraction: its message names the file, the id and the problem."""

from __future__ import annotations


class ExtractError(RuntimeError):
    """Extraction cannot go on as asked (bad option, missing audio under ``error``, refused checkpoint)."""
