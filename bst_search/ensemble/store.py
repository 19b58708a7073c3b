"""Candidate predictions on disk in float16, written once and read in chunks.

10,000 trials x 11,000 rows x 23 classes is 10 GB in float32, 5 GB in float16: more than a
coordinator should hold. The tensor lives in an unnamed temporary file (removed when the
store is closed or the process dies) and is read with explicit file reads, not a memory map,
so the pages stay in the OS cache and out of the process's resident memory. What is needed
for every candidate (its argmax, int8: 110 MB for 10,000 x 11,000) is taken as it is
written; only the working set (the candidates a selection can pick) is ever read back whole,
in float32.

float16 keeps 11 bits of mantissa: a probability is off by at most 2^-11 of itself, far
below any difference a selection step acts on.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bst_search.taxonomy import N_CLASSES

STORE_DTYPES = ("float16", "float32")


class PredictionStore:
    """A (candidates, rows, 23) tensor in a temporary file; rows of one candidate are contiguous."""

    def __init__(self, n_candidates: int, n_rows: int, *, dtype: str = "float16",
                 directory: str | os.PathLike[str] | None = None) -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype must be one of {STORE_DTYPES}, got {dtype!r}")
        if n_candidates < 0 or n_rows < 1:
            raise ValueError(f"store shape must be (>= 0, >= 1, 23), got ({n_candidates}, {n_rows})")
        self.dtype = np.dtype(dtype)
        self.capacity, self.n_rows = n_candidates, n_rows
        self.n = 0  # candidates written so far
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=directory, prefix="bst-store-")
        self._block = n_rows * N_CLASSES * self.dtype.itemsize
        self._file.truncate(self._block * n_candidates)  # sparse: no disk until written
        self._pred = np.empty((n_candidates, n_rows), dtype=np.int8)  # argmax, kept on append

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n, self.n_rows, N_CLASSES)

    @property
    def nbytes(self) -> int:
        return self.n * self._block

    def append(self, proba: np.ndarray) -> int:
        """Write the next candidate's (rows, 23) predictions; return its index."""
        if proba.shape != (self.n_rows, N_CLASSES):
            raise ValueError(f"candidate predictions must have shape ({self.n_rows}, {N_CLASSES}), "
                             f"got {proba.shape}")
        if self.n >= self.capacity:
            raise ValueError(f"store is full ({self.capacity} candidates)")
        data = np.ascontiguousarray(proba, dtype=self.dtype)
        os.pwrite(self._file.fileno(), data.tobytes(), self.n * self._block)
        # argmax of the stored values (float16 ties as on read-back), in float32: 3x faster
        self._pred[self.n] = data.astype(np.float32, copy=False).argmax(axis=1)
        self.n += 1
        return self.n - 1

    def take(self, index: np.ndarray | list[int] | range) -> np.ndarray:
        """(len(index), rows, 23) float32 copy of the given candidates, in that order."""
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.n):
            raise IndexError(f"candidate index out of range 0..{self.n - 1}")
        out = np.empty((len(index), self.n_rows, N_CLASSES), dtype=np.float32)
        fd = self._file.fileno()
        for j, c in enumerate(index):
            raw = os.pread(fd, self._block, int(c) * self._block)
            out[j] = np.frombuffer(raw, dtype=self.dtype).reshape(self.n_rows, N_CLASSES)
        return out

    def chunks(self, size: int = 64) -> Iterator[tuple[int, np.ndarray]]:
        """(first index, float32 block of up to ``size`` candidates), over all candidates."""
        for s in range(0, self.n, size):
            yield s, self.take(range(s, min(s + size, self.n)))

    def argmax(self) -> np.ndarray:
        """(candidates, rows) int8: each candidate's predicted class (a view, no pass)."""
        return self._pred[:self.n]

    def close(self) -> None:
        self._file.close()

    def __del__(self) -> None:  # the file is unnamed: closing it frees the disk space
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
