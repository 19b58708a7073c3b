"""What to extract: the ids (and metadata text) of a dataset in the official layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bst_search.data.errors import list_ids
from bst_search.data.metadata import LABELLED_ID, UNLABELLED_ID, find_metadata
from bst_search.extract.errors import ExtractError

TEXT_FIELDS: tuple[str, ...] = ("title", "tags", "description")  # in this order (the HATR baseline, 3.1)
TEXT_JOINER = " "


@dataclass
class Items:
    """The dataset's name, its metadata file, its ids in metadata order and one text per id."""

    name: str
    path: Path
    ids: list[str]
    texts: list[str]


def join_text(fields: list[str]) -> str:
    """Title, tags and description as one string: the non-empty fields, stripped, in order."""
    return TEXT_JOINER.join(f.strip() for f in fields if f and f.strip())


def read_items(root: Path, limit: int | None = None) -> Items:
    """Every row of ``<root>/metadata/<NAME>_metadata.csv`` (excluded classes too: the release
    ships an embedding for every sound). ``limit`` keeps the first rows."""
    name, path = find_metadata(Path(root))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise ExtractError(f"{path}: cannot read the metadata table ({e})") from None
    id_col = LABELLED_ID if LABELLED_ID in df.columns else UNLABELLED_ID
    if id_col not in df.columns:
        raise ExtractError(f"{path}: no {LABELLED_ID} or {UNLABELLED_ID} column")
    ids = [s.strip() for s in df[id_col].tolist()]
    empty = [str(i + 2) for i, s in enumerate(ids) if not s]
    if empty:
        raise ExtractError(f"{path}: empty {id_col} on {list_ids(empty, 'line')}")
    uniq, counts = np.unique(np.asarray(ids, dtype=object), return_counts=True)
    if (counts > 1).any():
        raise ExtractError(f"{path}: duplicate {id_col}: {list_ids(list(uniq[counts > 1]))}")
    bad = [s for s in ids if "/" in s or s.startswith(".")]
    if bad:
        raise ExtractError(f"{path}: {id_col} values that cannot be file names: {list_ids(bad)}")
    cols = [df[c].tolist() if c in df.columns else [""] * len(df) for c in TEXT_FIELDS]
    texts = [join_text(list(row)) for row in zip(*cols, strict=True)]
    if limit is not None:
        if limit < 1:
            raise ExtractError(f"--limit {limit}: expected a positive number")
        ids, texts = ids[:limit], texts[:limit]
    return Items(name, path, ids, texts)
