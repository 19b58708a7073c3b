"""Checkpoint files: their identity (name, size, sha256) and a safe load with clear errors.

Every checkpoint is loaded with ``torch.load(weights_only=True)``: a file that needs arbitrary
unpickling is refused with a message, not a traceback. Test checkpoints with random weights
carry :data:`RANDOM_KEY`; loading one needs ``allow_random_weights=True``, so a run can never
silently produce embeddings from an untrained model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from bst_search.extract.errors import ExtractError

RANDOM_KEY = "bst_search_random_weights"


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file (a folder: of its files' names and contents, in sorted order);
    remembered per (path, size, mtime) for this process, since checkpoints are large."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = _sha256(path, chunk)
    return _SHA_CACHE[key]


def _sha256(path: Path, chunk: int) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def identity(path: Path | None, *, random_seed: int | None = None) -> dict[str, Any]:
    """What the manifest records about a checkpoint."""
    if path is None:
        return {"file": None, "sha256": None, "random_weights": random_seed is not None}
    path = Path(path)
    size = (sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir()
            else path.stat().st_size)
    return {"file": path.name, "bytes": size, "sha256": sha256(path),
            "random_weights": random_seed is not None,
            **({"random_seed": random_seed} if random_seed is not None else {})}


def load(path: Path, *, mmap: bool = True) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU, memory-mapped when the format allows."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ExtractError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise ExtractError(f"{path}: checkpoint file is empty (0 bytes); an interrupted download?")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not mmap or "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExtractError(f"{path}: torch refused to load it with weights_only=True ({first}). "
                           f"bst-search only loads checkpoints in that safe mode: re-save the "
                           f"weights with torch.save({{'model' or 'state_dict': state_dict}}, path)"
                           ) from None
    except Exception as e:
        raise ExtractError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    if not isinstance(obj, dict):
        raise ExtractError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def random_seed_of(ckpt: dict[str, Any]) -> int | None:
    seed = ckpt.get(RANDOM_KEY)
    return int(seed) if seed is not None else None


def check_random(path: Path, ckpt: dict[str, Any], allow: bool) -> int | None:
    """Refuse a random-weight test checkpoint unless the caller asked for it explicitly."""
    seed = random_seed_of(ckpt)
    if seed is not None and not allow:
        raise ExtractError(f"{path}: this checkpoint holds random test weights (seed {seed}), not "
                           f"a trained model; pass --allow-random-weights to use it anyway")
    return seed
