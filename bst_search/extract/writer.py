"""Writing one backbone's results so that a vector and its problem record are durable together.

For every batch: each vector goes to a temporary file, the batch's problem records are
appended to ``journal.jsonl`` and fsync'd, and only then are the vectors renamed into place.
So an ``<id>.npy`` on disk always has its record, in ``manifest.json`` or in the journal after
it, whatever moment a kill lands on; a resumed run replays the journal over the manifest
(:func:`~bst_search.extract.manifest.recorded_problems`). A clip replaced by silence is
therefore never mistaken for real audio later. Every few seconds the manifest is written
(fsync'd, atomic) and the journal emptied, so the journal stays short.

The vectors themselves are not fsync'd one by one (writing a 2048-float vector took 3.3 ms,
9.3 ms with an fsync of it and of its record, on an ext4 disk): after a power cut, as opposed
to a kill, a vector the system had not yet written can be empty, and ``load_dataset`` names
it as not a ``.npy`` file. One fsync per batch pays for the records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bst_search.extract import manifest as mf

MANIFEST_EVERY_S = 2.0

Result = tuple[str, "np.ndarray | None", dict[str, str]]  # id, vector (None: no file), problems
OnBatch = Callable[[Sequence[Result]], None]


def _temp_vector(folder: Path, clip_id: str, vec: np.ndarray) -> Path:
    tmp = folder / f".{clip_id}.npy.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(vec, dtype=np.float32))
    return tmp


class Writer:
    """One backbone folder's vectors, journal and manifest (``manifest["problems"]`` is kept
    up to date in place)."""

    def __init__(self, folder: Path, manifest: dict[str, Any],
                 every_s: float = MANIFEST_EVERY_S) -> None:
        self.folder, self.manifest, self.every_s = Path(folder), manifest, every_s
        self.problems: dict[str, dict[str, str]] = manifest["problems"]
        self.written = 0
        self._pending = False  # a batch between its journal lines and its in-memory records
        self._last = time.monotonic()
        mf.write(self.folder, manifest)
        self.journal = mf.Journal(self.folder)
        self.journal.reset()  # what it held is in the manifest just written

    def add(self, results: Sequence[Result]) -> None:
        """Write one batch: temporary vectors, the journal (fsync'd), then the renames."""
        self._pending = True
        temps: list[tuple[Path, str]] = []
        try:
            for clip_id, vec, _ in results:
                if vec is not None:
                    temps.append((_temp_vector(self.folder, clip_id, vec), clip_id))
            self.journal.append([(clip_id, probs) for clip_id, _, probs in results])
        except BaseException:
            for tmp, _ in temps:
                tmp.unlink(missing_ok=True)
            raise
        for tmp, clip_id in temps:
            os.replace(tmp, self.folder / f"{clip_id}.npy")
        self.written += len(temps)
        for clip_id, _, probs in results:
            if probs:
                self.problems[clip_id] = probs
            else:
                self.problems.pop(clip_id, None)  # a retried id that is fine now
        self._pending = False
        if time.monotonic() - self._last > self.every_s:
            self.save()

    def save(self, **update: Any) -> None:
        """Write the manifest; empty the journal unless a batch was cut off half-way (then
        the journal still holds records the manifest lacks, and a resume replays them)."""
        self.manifest.update(update)
        mf.write(self.folder, self.manifest)
        if not self._pending:
            self.journal.reset()
        self._last = time.monotonic()

    def close(self, **update: Any) -> None:
        self.save(**update)
        self.journal.close(remove=not self._pending)
