"""``load_dataset``: one validated, consolidated, fingerprinted dataset from a release folder.

Development, crowd and evaluation sets go through this one function, with the same
validation, so that the evaluation path cannot quietly differ from the development path.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bst_search import taxonomy as tx
from bst_search.data.cache import cache_key, cache_path, default_cache_dir, read_cache, write_cache
from bst_search.data.errors import DataError, DataWarning, list_ids
from bst_search.data.features import (
    BackboneResult,
    backbone_dir,
    discover_backbones,
    load_backbone,
    scan,
)
from bst_search.data.metadata import Metadata, read_metadata
from bst_search.data.texts import aligned, check_table, text_fingerprint

log = logging.getLogger("bst_search.data")

MISSING_POLICIES: tuple[str, ...] = ("error", "drop", "zero")


def fingerprint(ids: np.ndarray, y: np.ndarray | None, features: dict[str, np.ndarray]) -> str:
    """16 hex chars of sha256 over ids, labels and every feature matrix (content only).

    Backbones are hashed in sorted order, so the same data gives the same fingerprint
    whatever order the backbones were requested in.
    """
    h = hashlib.sha256()
    h.update(b"ids\0")
    h.update("\n".join(str(i) for i in ids).encode())
    h.update(b"\0labels\0")
    h.update(b"unlabelled" if y is None else np.ascontiguousarray(y, dtype="<i8").tobytes())
    for b in sorted(features):
        m = np.ascontiguousarray(features[b], dtype="<f4")
        h.update(f"\0{b}\0{m.shape}\0".encode())
        h.update(memoryview(m).cast("B"))
    return h.hexdigest()[:16]


@dataclass(eq=False, repr=False)
class Dataset:
    """A dataset in memory: ids in metadata order, labels, one matrix per backbone and the
    metadata text by id (``texts``: title, tags, description; None when the file has none)."""

    name: str
    root: Path
    labelled: bool
    ids: np.ndarray
    y: np.ndarray | None
    confidence: np.ndarray | None
    uploader: np.ndarray | None
    features: dict[str, np.ndarray]
    fingerprint: str = ""
    n_excluded: int = 0
    dropped: list[str] = field(default_factory=list)
    zeroed: dict[str, list[str]] = field(default_factory=dict)
    cache_hit: bool = False  # True when the features came from the consolidation cache
    texts: pd.DataFrame | None = None
    # not an init field: dataclasses.replace (a new texts table) starts it empty again
    _text_fp: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        """Normalise types and check alignment, so hand-built datasets obey the same contract."""
        self.root = Path(self.root)
        self.ids = np.asarray(self.ids, dtype=object)
        n = len(self.ids)
        if self.y is not None:
            self.y = np.asarray(self.y, dtype=np.int64)
            if self.y.shape != (n,):
                raise DataError(f"{self.name}: y has shape {self.y.shape}, expected ({n},)")
            if n and (self.y.min() < 0 or self.y.max() >= tx.N_CLASSES):
                raise DataError(f"{self.name}: y must hold indices 0..{tx.N_CLASSES - 1}")
        if self.confidence is not None:
            self.confidence = np.asarray(self.confidence, dtype=np.float64)
        if self.uploader is not None:
            self.uploader = np.asarray(self.uploader, dtype=object)
        for b, m in list(self.features.items()):
            m = np.ascontiguousarray(m, dtype=np.float32)
            if m.ndim != 2 or m.shape[0] != n:
                raise DataError(f"{self.name}: features[{b!r}] has shape {m.shape}, "
                                f"expected ({n}, dim)")
            self.features[b] = m
        if self.texts is not None:
            check_table(self.texts, self.name)
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.ids, self.y, self.features)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        dims = ", ".join(f"{b}:{m.shape[1]}" for b, m in self.features.items())
        return (f"Dataset({self.name!r}, n={len(self)}, labelled={self.labelled}, "
                f"backbones=[{dims}], fingerprint={self.fingerprint})")

    @property
    def backbones(self) -> list[str]:
        return list(self.features)

    @property
    def text_fp(self) -> str:
        """Hash of the text table ('' without one), beside the data fingerprint, which leaves
        text out so that the fingerprints of existing datasets do not change."""
        if self.texts is not None and not self._text_fp:
            self._text_fp = text_fingerprint(self.texts)
        return self._text_fp

    def text_rows(self) -> pd.DataFrame:
        """Title, tags and description of every row, in row order ('' where a sound has none)."""
        if self.texts is None:
            raise DataError(f"{self.name} ({self.root}): the metadata has no title, tags or "
                            f"description column")
        return aligned(self.texts, self.ids)

    @property
    def codes(self) -> np.ndarray | None:
        """Class codes (``fx-a``) per row, or None when unlabelled."""
        return None if self.y is None else tx.decode(self.y)

    def X(self, backbones: list[str]) -> list[np.ndarray]:
        """The matrices of the given backbones, in that order."""
        unknown = [b for b in backbones if b not in self.features]
        if unknown:
            raise DataError(f"{self.name} ({self.root}): unknown backbone(s) "
                            f"{', '.join(map(repr, unknown))}; available: "
                            f"{', '.join(self.features) or '(none loaded)'}")
        return [self.features[b] for b in backbones]


def _resolve_backbones(root: Path, backbones: list[str] | None) -> list[str]:
    available = discover_backbones(root)
    if backbones is None:
        if not available:
            raise DataError(f"{root / 'features'}: no backbone folders; expected "
                            f"features/<backbone>_embeddings/<id>.npy (e.g. clap_audio_embeddings)")
        return available
    wanted = list(dict.fromkeys(backbones))
    unknown = [b for b in wanted if b not in available]
    if unknown:
        raise DataError(f"{root / 'features'}: backbone(s) {', '.join(map(repr, unknown))} not "
                        f"found (no <name>_embeddings folder); available: "
                        f"{', '.join(available) or '(none)'}")
    return wanted


def load_dataset(root: Path | str, *, backbones: list[str] | None = None, missing: str = "error",
                 cache_dir: Path | None = None, progress: bool = False,
                 use_cache: bool = True) -> Dataset:
    """Load, validate and consolidate a dataset folder in the official layout.

    ``backbones``: which ``features/<name>_embeddings`` to load (default: all found; ``[]``
    loads the metadata only). ``missing``: what to do with a metadata row that has no
    ``.npy`` file: ``"error"`` (default), ``"drop"`` the row, or ``"zero"``-fill the vector;
    the last two warn with the count and the first ids. Raises :class:`DataError` naming the
    file, the ids and the problem for anything else that is wrong.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing={missing!r}; expected one of {', '.join(MISSING_POLICIES)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    meta = read_metadata(root)
    names = _resolve_backbones(root, backbones)
    listings = {b: scan(backbone_dir(root, b)) for b in names}

    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cpath = cache_path(cdir, meta.name, names, missing,
                       cache_key(root, meta.raw, names, missing, listings))
    if use_cache and names:
        hit = read_cache(cpath, names)
        if hit is not None:
            keep = ~np.isin(meta.ids.astype(str), np.asarray(hit["dropped"], dtype=str))
            if np.array_equal(meta.ids[keep].astype(str), hit["ids"].astype(str)):
                log.debug("feature cache hit: %s", cpath)
                _warn_repairs(meta.path, meta.name, hit["dropped"], hit["zeroed"], names)
                return _assemble(meta, root, keep, hit["features"], hit["dropped"],
                                 hit["zeroed"], hit["fingerprint"], cache_hit=True)
            log.warning("feature cache %s does not match the metadata; rebuilding", cpath)

    results = _read_all(root, meta, names, listings, progress)
    problems = [p for r in results for p in r.problems]
    missing_by = {r.name: r.missing for r in results}
    if missing == "error":
        for r in results:
            if r.missing.any():
                problems.insert(0, f"{r.folder}: missing .npy files for {int(r.missing.sum())} "
                                f"of the {len(meta.ids)} rows of {meta.path.name}, "
                                f"{list_ids(list(meta.ids[r.missing]))} (missing='error'; pass "
                                f"missing='drop' or 'zero' to load anyway)")
    for r in results:
        if r.matrix is None and not r.problems:
            problems.append(f"{r.folder}: no embedding file for any of the {len(meta.ids)} "
                            f"ids of {meta.path.name}")
    if problems:
        head = f"{meta.path.parent.parent} ({meta.name}): {len(problems)} problem(s) with features"
        raise DataError(head + "\n  " + "\n  ".join(problems))

    any_missing = np.zeros(len(meta.ids), dtype=bool)
    for m in missing_by.values():
        any_missing |= m
    keep = ~any_missing if missing == "drop" else np.ones(len(meta.ids), dtype=bool)
    dropped = [str(i) for i in meta.ids[~keep]]
    if not keep.any():
        raise DataError(f"{meta.path}: every row lacks an embedding in at least one of "
                        f"{', '.join(names)}; missing='drop' leaves nothing")
    zeroed = ({b: [str(i) for i in meta.ids[m]] for b, m in missing_by.items()}
              if missing == "zero" else {b: [] for b in names})
    features = {r.name: np.ascontiguousarray(r.matrix[keep]) for r in results}
    y = meta.y[keep] if meta.y is not None else None
    fp = fingerprint(meta.ids[keep], y, features)
    _warn_repairs(meta.path, meta.name, dropped, zeroed, names)
    if use_cache and names:
        try:
            write_cache(cpath, ids=meta.ids[keep], dropped=dropped, fingerprint=fp,
                        features=features, zeroed=zeroed)
        except OSError as e:
            warnings.warn(f"could not write the feature cache {cpath} ({e}); the next load will "
                          f"read the .npy files again", DataWarning, stacklevel=2)
    return _assemble(meta, root, keep, features, dropped, zeroed, fp, cache_hit=False)


def _read_all(root: Path, meta: Metadata, names: list[str],
              listings: dict[str, dict[str, tuple[int, int]]],
              progress: bool) -> list[BackboneResult]:
    from tqdm import tqdm

    total = sum(sum(f"{i}.npy" in listings[b] for i in meta.ids) for b in names)
    with tqdm(total=total, desc=f"reading {meta.name} features", unit="file",
              disable=not progress) as bar:
        return [load_backbone(b, backbone_dir(root, b), meta.ids, listings[b],
                              on_progress=bar.update) for b in names]


def _warn_repairs(path: Path, name: str, dropped: list[str], zeroed: dict[str, list[str]],
                  names: list[str]) -> None:
    if dropped:
        warnings.warn(f"{path}: missing='drop' dropped {list_ids(dropped)} lacking an embedding "
                      f"in at least one of {', '.join(names)}", DataWarning, stacklevel=3)
    for b, ids in zeroed.items():
        if ids:
            warnings.warn(f"{path}: missing='zero' zero-filled the {b} vector of {list_ids(ids)} "
                          f"(no .npy file)", DataWarning, stacklevel=3)


def _assemble(meta: Metadata, root: Path, keep: np.ndarray, features: dict[str, np.ndarray],
              dropped: list[str], zeroed: dict[str, list[str]], fp: str,
              cache_hit: bool) -> Dataset:
    return Dataset(
        name=meta.name, root=root, labelled=meta.labelled, ids=meta.ids[keep],
        y=meta.y[keep] if meta.y is not None else None,
        confidence=meta.confidence[keep] if meta.confidence is not None else None,
        uploader=meta.uploader[keep] if meta.uploader is not None else None,
        features=features, fingerprint=fp, n_excluded=meta.n_excluded,
        dropped=list(dropped), zeroed={b: list(v) for b, v in zeroed.items()},
        cache_hit=cache_hit, texts=meta.texts)
