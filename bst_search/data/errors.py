"""Errors and warnings of the data layer, and the one way they list offending ids."""

from __future__ import annotations

from collections.abc import Sequence

MAX_LISTED = 5


class DataError(ValueError):
    """A dataset folder is not usable as it is; the message names the file, ids and problem."""


class DataWarning(UserWarning):
    """Data was repaired under an explicit policy (rows dropped, vectors zero-filled)."""


def list_ids(ids: Sequence[object], noun: str = "id") -> str:
    """``'3 ids: a, b, c'`` or ``'120 ids, first 5: a, b, c, d, e'``, so messages stay short."""
    n = len(ids)
    shown = ", ".join(str(i) for i in list(ids)[:MAX_LISTED])
    plural = noun if n == 1 else f"{noun}s"
    if n <= MAX_LISTED:
        return f"{n} {plural}: {shown}"
    return f"{n} {plural}, first {MAX_LISTED}: {shown}"
