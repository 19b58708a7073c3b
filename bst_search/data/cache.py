"""Consolidation cache: one ``.npz`` per (dataset, backbone set, missing policy).

A sweep loads the same dataset in every trial process; reading ~33,000 small files each time
would dominate short trials. The cache key is cheap on purpose (metadata bytes plus the
name/size/mtime of every feature file, no file content), so checking it costs a directory
scan. What the cache stores is the validated result, including the *content* fingerprint,
so a hit returns exactly what a fresh load would.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

CACHE_VERSION = "bst-features-v1"
T = TypeVar("T")
ENV_CACHE_DIR = "BST_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$BST_CACHE_DIR`` if set, else ``~/.cache/bst-search/features``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bst-search" / "features"


def cache_key(root: Path, metadata_raw: bytes, backbones: list[str], missing: str,
              listings: dict[str, dict[str, tuple[int, int]]]) -> str:
    """sha256 of the metadata bytes, the policy, and each backbone's (name, size, mtime_ns)."""
    h = hashlib.sha256()
    h.update(f"{CACHE_VERSION}\0{Path(root).resolve()}\0{missing}\0".encode())
    h.update(hashlib.sha256(metadata_raw).digest())
    for b in backbones:
        h.update(f"\0backbone\0{b}\0".encode())
        listing = listings[b]
        h.update("\n".join(f"{n}\t{s}\t{m}" for n, (s, m) in sorted(listing.items())).encode())
    return h.hexdigest()


def cache_path(cache_dir: Path, name: str, backbones: list[str], missing: str, key: str) -> Path:
    """A readable file name (dataset, backbones, policy) plus the key."""
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{name}-{'+'.join(backbones) or 'none'}-{missing}")
    return Path(cache_dir) / f"{safe[:120]}-{key[:24]}.npz"


def read_entry(path: Path, version: str, parse: Callable[[Any], T | None]) -> T | None:
    """``parse`` of a cache entry (an open ``.npz``), or None when the entry is absent, of
    another version, damaged or refused by ``parse``: a cache is rebuilt, never trusted."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["version"]) != version:
                return None
            return parse(z)
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
        return None


def read_cache(path: Path, backbones: list[str]) -> dict[str, object] | None:
    """The stored payload, or None when absent, unreadable or not what we expect."""

    def parse(z: Any) -> dict[str, object] | None:
        if list(z["backbones"]) != backbones:
            return None
        return {
            "ids": z["ids"].astype(object),
            "dropped": [str(s) for s in z["dropped"]],
            "fingerprint": str(z["fingerprint"]),
            "features": {b: np.ascontiguousarray(z[f"feat__{b}"], dtype=np.float32)
                         for b in backbones},
            "zeroed": {b: [str(s) for s in z[f"zeroed__{b}"]] for b in backbones},
        }

    return read_entry(path, CACHE_VERSION, parse)


def write_cache(path: Path, *, ids: np.ndarray, dropped: list[str], fingerprint: str,
                features: dict[str, np.ndarray], zeroed: dict[str, list[str]]) -> None:
    """Write atomically (:func:`atomic_savez`)."""
    arrays: dict[str, np.ndarray] = {
        "version": np.array(CACHE_VERSION),
        "backbones": np.array(list(features), dtype=str),
        "ids": np.array([str(i) for i in ids], dtype=str),
        "dropped": np.array(dropped, dtype=str),
        "fingerprint": np.array(fingerprint),
    }
    for b, m in features.items():
        arrays[f"feat__{b}"] = m
        arrays[f"zeroed__{b}"] = np.array(zeroed.get(b, []), dtype=str)
    atomic_savez(path, arrays)


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` through a temporary file in the same folder, then ``os.replace``, so that a
    reader never sees half a file and concurrent writers of the same entry do not clash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (``flock``), so that trials that start together
    compute a cache entry once: the others wait, then read it. Where no lock can be had (no
    ``fcntl``, a read-only cache folder, a file system that refuses locks) it does not lock:
    each process then computes the same entry, which costs time but not correctness."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None
    with contextlib.ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = stack.enter_context(open(path.with_name(path.name + ".lock"), "a+b"))
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file is closed
        except OSError:
            pass
        yield
