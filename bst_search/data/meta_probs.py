"""The ``meta_probs`` backbone: a text classifier's class probabilities, cross-fitted per fold.

The challenge's winning system had a language model read each clip's title, tags and
description and return 23 class probabilities q, fed to the classifier beside the audio
embedding. Here a scikit-learn text model (``meta.model``, :mod:`.text_models`) plays that
part, and the probabilities become one more input of the trial: 23 probabilities and a flag
(:data:`META_DIM` = 24) that says "this sound has no text; the row is the class prior".

Honesty. The text model of fold k learns only from fold k's training part ``T``: the
development rows the fold's network trains on (the early-stopping validation split excluded;
before any confidence filter) and, when the trial uses crowd data, every crowd row eligible at
all (:func:`~bst_search.data.strategies.crowd_candidates`, before any crowd filter), so that
the probabilities do not depend on the trial's data strategy. A row of ``T`` gets its probabilities
from an inner 5-fold cross-fit over ``T`` (a model that never saw it); fold k's held-out rows,
its validation rows, the evaluation rows and the holdout rows get those of a model fitted on
all of ``T``. So no label of fold k's held-out rows, of the validation split or of the holdout
reaches a text model that scores a row of fold k, and no training row is scored by a model that
learnt its own label (``tests/data/test_meta_probs.py`` plants the label in the text to check).

Cost. The probabilities depend only on the data (ids, labels, texts, the model's own input
backbones), the fold, the holdout and the ``meta.*`` keys, never on the rest of the trial, so
each fold's result is cached on disk beside the consolidated features, keyed by a content hash
of exactly that; a sweep fits each text model once per fold.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bst_search.config import META_BACKBONE
from bst_search.data.cache import atomic_savez, default_cache_dir, entry_lock, read_entry
from bst_search.data.errors import DataError
from bst_search.data.loading import Dataset
from bst_search.data.metadata import find_metadata
from bst_search.data.strategies import crowd_candidates
from bst_search.data.text_models import TEXT_MODELS, Inputs, TextModel, stack, take
from bst_search.data.texts import TEXT_FIELDS, has_text
from bst_search.folds import FOLD_SEED, train_val_split
from bst_search.taxonomy import N_CLASSES

META_DIM = N_CLASSES + 1  # the 23 probabilities, then the no-text flag
INNER_FOLDS = 5
CACHE_VERSION = "bst-meta-probs-v1"
SETS = ("dev", "eval", "crowd", "holdout")


@dataclass
class FoldMetaProbs:
    """One fold's ``meta_probs`` matrices, (n, 24) float32 per set (None for a set not given)."""

    dev: np.ndarray
    eval: np.ndarray | None = None
    crowd: np.ndarray | None = None
    holdout: np.ndarray | None = None
    fits: int = 0  # text models fitted to compute them (inner folds + the full one)
    cpu_seconds: float = 0.0  # of that computation, however long ago it ran
    cache_hit: bool = False


def loadable_backbones(backbones: list[str], meta_models: list[str]) -> list[str]:
    """The embedding folders to load for these backbones: ``meta_probs`` is computed, not
    loaded, and brings the backbones its possible text models read (``minilm_text``)."""
    out = [b for b in backbones if b != META_BACKBONE]
    if META_BACKBONE in backbones:
        for m in meta_models:
            out += [b for b in TEXT_MODELS.lookup(m).needs if b not in out]
    return out


def _metadata_file(ds: Dataset) -> str:
    try:
        return str(find_metadata(ds.root)[1])
    except DataError:
        return f"{ds.root} ({ds.name})"


def check_inputs(cfg: dict[str, Any], *datasets: Dataset | None) -> None:
    """Every given dataset can feed ``meta_probs``: a text column, text somewhere in the
    development set, and the text model's own backbones; else an error naming the file."""
    model = TEXT_MODELS.lookup(cfg["meta"]["model"]).from_config(cfg)
    for ds in datasets:
        if ds is None:
            continue
        if ds.texts is None:
            raise DataError(f"{_metadata_file(ds)}: backbones has {META_BACKBONE}, which reads each "
                            f"sound's {', '.join(TEXT_FIELDS)}; this metadata has none of these "
                            f"columns")
        model.inputs(ds)  # the model's own inputs (minilm_text) are loaded
    dev = datasets[0]
    if dev is not None and not has_text(dev.text_rows()).any():
        raise DataError(f"{_metadata_file(dev)}: backbones has {META_BACKBONE}, but every "
                        f"{', '.join(TEXT_FIELDS)} cell is empty: no text to learn from")


# ------------------------------------------------------------------------------ cross-fit

Target = tuple[Inputs, np.ndarray]  # rows to score: the model's inputs and their has-text mask


def _prior_rows(prior: np.ndarray, n: int) -> np.ndarray:
    out = np.empty((n, META_DIM))
    out[:, :N_CLASSES] = prior
    out[:, N_CLASSES] = 1.0
    return out


def _fit_and_score(make: Callable[[], TextModel], X: Inputs, y: np.ndarray, has: np.ndarray,
                   rows: np.ndarray, targets: list[Target]) -> list[np.ndarray]:
    """Fit on ``rows`` (those with text), score each target: probabilities where a target row
    has text, the class prior of ``rows`` and the flag where it has none (or where no model
    could be fitted: fewer than two classes with text)."""
    prior = np.bincount(y[rows], minlength=N_CLASSES) / max(len(rows), 1)
    fit_rows = rows[has[rows]]
    model = make().fit(take(X, fit_rows), y[fit_rows]) if len(np.unique(y[fit_rows])) > 1 else None
    out = []
    for Xs, hs in targets:
        block = _prior_rows(prior, len(hs))
        idx = np.flatnonzero(hs)
        if model is not None and idx.size:
            block[idx, :N_CLASSES] = model.predict_proba(take(Xs, idx))
            block[idx, N_CLASSES] = 0.0
        out.append(block.astype(np.float32))
    return out


def cross_fit(make: Callable[[], TextModel], X: Inputs, y: np.ndarray, has: np.ndarray,
              targets: list[Target]) -> tuple[np.ndarray, list[np.ndarray], int]:
    """(out-of-fold probabilities of every row of ``X`` from an inner stratified 5-fold
    cross-fit, the targets' probabilities from a model fitted on all of ``X``, fits made)."""
    from sklearn.model_selection import StratifiedKFold

    n_inner = min(INNER_FOLDS, len(y))
    oof = np.empty((len(y), META_DIM), dtype=np.float32)
    if n_inner < 2:
        oof[:] = _prior_rows(np.full(N_CLASSES, 1.0 / N_CLASSES), len(y))
        splits: list[tuple[np.ndarray, np.ndarray]] = []
    else:
        with warnings.catch_warnings():  # a class rarer than 5 rows is fine here
            warnings.filterwarnings("ignore", message="The least populated class")
            splits = list(StratifiedKFold(n_inner, shuffle=True, random_state=FOLD_SEED)
                          .split(np.zeros(len(y)), y))
    for tr, te in splits:
        oof[te] = _fit_and_score(make, X, y, has, tr, [(take(X, te), has[te])])[0]
    full = _fit_and_score(make, X, y, has, np.arange(len(y)), targets)
    return oof, full, len(splits) + 1


def compute(cfg: dict[str, Any], dev: Dataset, fold: np.ndarray, k: int, *,
            eval_data: Dataset | None = None, crowd: Dataset | None = None,
            holdout: Dataset | None = None, crowd_scored: Dataset | None = None) -> FoldMetaProbs:
    """Fold k's probabilities for every given set, as the module docstring describes;
    ``crowd_scored``: a crowd set only predicted (a trial without a crowd strategy), scored by
    the full model like the evaluation set."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small fits: more BLAS threads only spin on a shared machine
        return _compute(cfg, dev, fold, k, eval_data=eval_data, crowd=crowd, holdout=holdout,
                        crowd_scored=crowd_scored)


def _compute(cfg: dict[str, Any], dev: Dataset, fold: np.ndarray, k: int, *,
             eval_data: Dataset | None, crowd: Dataset | None,
             holdout: Dataset | None, crowd_scored: Dataset | None = None) -> FoldMetaProbs:
    t0 = time.process_time()
    make = functools.partial(TEXT_MODELS.lookup(cfg["meta"]["model"]).from_config, cfg)
    proto = make()

    def part(ds: Dataset) -> Target:
        return proto.inputs(ds), has_text(ds.text_rows())

    train_idx, _ = train_val_split(dev.y, fold, k)
    rest = np.setdiff1d(np.arange(len(dev.ids)), train_idx)  # validation and held-out rows
    X_dev, h_dev = part(dev)
    pieces = [(X_dev, h_dev, dev.y, train_idx)]
    if crowd is not None:
        X_c, h_c = part(crowd)
        cand = crowd_candidates(crowd, dev)
        pieces.append((X_c, h_c, crowd.y, cand))
    X_T = stack([take(X, r) for X, _, _, r in pieces])
    h_T = np.concatenate([h[r] for _, h, _, r in pieces])
    y_T = np.concatenate([y[r] for _, _, y, r in pieces])
    targets = [(take(X_dev, rest), h_dev[rest])]
    others = [ds for ds in (eval_data, holdout, crowd_scored) if ds is not None]
    targets += [part(ds) for ds in others]
    if crowd is not None:
        other_c = np.setdiff1d(np.arange(len(crowd.ids)), cand)  # never used; scored for shape
        targets.append((take(X_c, other_c), h_c[other_c]))
    oof, full, fits = cross_fit(make, X_T, y_T, h_T, targets)

    out = FoldMetaProbs(dev=np.empty((len(dev.ids), META_DIM), dtype=np.float32), fits=fits)
    out.dev[train_idx], out.dev[rest] = oof[:len(train_idx)], full[0]
    scored = iter(full[1:])
    out.eval = next(scored) if eval_data is not None else None
    out.holdout = next(scored) if holdout is not None else None
    if crowd_scored is not None:
        out.crowd = next(scored)
    if crowd is not None:
        out.crowd = np.empty((len(crowd.ids), META_DIM), dtype=np.float32)
        out.crowd[cand], out.crowd[other_c] = oof[len(train_idx):], next(scored)
    out.cpu_seconds = time.process_time() - t0
    return out


# --------------------------------------------------------------------------------- cache

def _digest(h: Any, tag: str, ds: Dataset | None, needs: tuple[str, ...],
            labels: bool) -> None:
    h.update(f"\0{tag}\0".encode())
    if ds is None:
        h.update(b"none")
        return
    h.update("\n".join(str(i) for i in ds.ids).encode())
    h.update(f"\0{ds.text_fp}\0".encode())
    if labels:
        h.update(np.ascontiguousarray(ds.y, dtype="<i8").tobytes())
    for b in needs:
        h.update(memoryview(np.ascontiguousarray(ds.features[b], dtype="<f4")).cast("B"))


def cache_key(cfg: dict[str, Any], dev: Dataset, fold: np.ndarray, k: int, *,
              eval_data: Dataset | None, crowd: Dataset | None, holdout: Dataset | None,
              crowd_scored: Dataset | None = None) -> str:
    """sha256 of everything the probabilities depend on and nothing else: the ``meta.*`` keys,
    the fold assignment and k, and per set its ids, text hash, labels (development and crowd:
    the sets the model learns from) and the model's input backbones."""
    meta = cfg["meta"]
    needs = TEXT_MODELS.lookup(meta["model"]).needs
    h = hashlib.sha256()
    h.update(f"{CACHE_VERSION}\0{meta['model']}\0{float(meta['C'])!r}\0{INNER_FOLDS}\0"
             f"{FOLD_SEED}\0{k}\0".encode())
    h.update(np.ascontiguousarray(fold, dtype="<i8").tobytes())
    for tag, ds, labels in (("dev", dev, True), ("eval", eval_data, False),
                            ("crowd", crowd, True), ("holdout", holdout, False)):
        _digest(h, tag, ds, needs, labels)
    if crowd_scored is not None:  # absent from the keys of entries without one
        _digest(h, "crowd_scored", crowd_scored, needs, False)
    return h.hexdigest()


def _read(path: Path, sizes: dict[str, int | None]) -> FoldMetaProbs | None:
    """The cached entry, or None when absent, damaged or not of these sets' sizes."""

    def parse(z: Any) -> FoldMetaProbs | None:
        arrays = {s: (np.array(z[s], dtype=np.float32) if s in z.files else None) for s in SETS}
        for s, n in sizes.items():
            a = arrays[s]
            if (a is None) != (n is None) or (a is not None and a.shape != (n, META_DIM)):
                return None
        return FoldMetaProbs(**arrays, fits=int(z["fits"]), cpu_seconds=float(z["cpu_seconds"]),
                             cache_hit=True)

    return read_entry(path, CACHE_VERSION, parse)


def fold_meta_probs(cfg: dict[str, Any], dev: Dataset, fold: np.ndarray, k: int, *,
                    eval_data: Dataset | None = None, crowd: Dataset | None = None,
                    holdout: Dataset | None = None, crowd_scored: Dataset | None = None,
                    cache_dir: Path | None = None) -> FoldMetaProbs:
    """Fold k's probabilities from the cache, else computed (once, under a lock) and cached.
    ``crowd``: the crowd set the trial trains with; ``crowd_scored``: one it only predicts."""
    sets = {"dev": dev, "eval": eval_data, "crowd": crowd or crowd_scored, "holdout": holdout}
    sizes = {s: None if ds is None else len(ds.ids) for s, ds in sets.items()}
    key = cache_key(cfg, dev, fold, k, eval_data=eval_data, crowd=crowd, holdout=holdout,
                    crowd_scored=crowd_scored)
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cdir / f"{META_BACKBONE}-{cfg['meta']['model']}-fold{k}-{key[:24]}.npz"
    hit = _read(path, sizes)
    if hit is not None:
        return hit
    with entry_lock(path):
        hit = _read(path, sizes)  # another trial may have computed it while we waited
        if hit is not None:
            return hit
        out = compute(cfg, dev, fold, k, eval_data=eval_data, crowd=crowd, holdout=holdout,
                      crowd_scored=crowd_scored)
        arrays = {s: a for s in SETS if (a := getattr(out, s)) is not None}
        try:
            atomic_savez(path, {"version": np.array(CACHE_VERSION), "fits": np.array(out.fits),
                                "cpu_seconds": np.array(out.cpu_seconds), **arrays})
        except OSError as e:
            warnings.warn(f"could not write the meta_probs cache {path} ({e})", stacklevel=2)
    return out


def with_meta_probs(ds: Dataset | None, matrix: np.ndarray | None) -> Dataset | None:
    """``ds`` with one more feature matrix, ``meta_probs`` (its fingerprint unchanged)."""
    if ds is None or matrix is None:
        return ds
    return dataclasses.replace(ds, features={**ds.features, META_BACKBONE: matrix})


def attach(cfg: dict[str, Any], dev: Dataset, fold: np.ndarray, k: int, *,
           eval_data: Dataset | None, crowd: Dataset | None, holdout: Dataset | None,
           log: Callable[[str], None] | None = None
           ) -> tuple[Dataset, Dataset | None, Dataset | None, Dataset | None]:
    """The fold's (development, evaluation, crowd, holdout) sets with their ``meta_probs``;
    the crowd set's labels and text train the text model only when the trial trains with it
    (``data.crowd``); otherwise its rows are only scored, like the evaluation set's."""
    used = crowd if cfg["data"]["crowd"] != "none" else None
    mp = fold_meta_probs(cfg, dev, fold, k, eval_data=eval_data, crowd=used, holdout=holdout,
                         crowd_scored=crowd if used is None else None)
    if log:
        how = "cached" if mp.cache_hit else "computed"
        log(f"  fold {k} meta_probs ({cfg['meta']['model']}): {how}, {mp.fits} text-model fits, "
            f"{mp.cpu_seconds:.1f}s CPU")
    return (with_meta_probs(dev, mp.dev), with_meta_probs(eval_data, mp.eval),
            with_meta_probs(crowd, mp.crowd),
            with_meta_probs(holdout, mp.holdout))
