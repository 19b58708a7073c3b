"""A sound's metadata text: title, tags and description, as the metadata CSV gives them.

The text is kept as a table indexed by sound id rather than as arrays aligned with the rows,
so that a dataset whose rows are subset, reordered or extended (the holdout split, crowd
copies planted by a test) still finds each sound's own text, and a row whose id the table
lacks simply has none. Only the ``meta_probs`` backbone reads it; the data fingerprint does
not include it, so existing fingerprints stay what they were, and :func:`text_fingerprint`
is the hash beside it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

TEXT_FIELDS: tuple[str, ...] = ("title", "tags", "description")


def read_texts(df: pd.DataFrame, ids: np.ndarray) -> pd.DataFrame | None:
    """The text table of a metadata frame (all rows, file order, indexed by id), or None when
    the file has none of the :data:`TEXT_FIELDS` columns. A missing column or cell is ''."""
    present = [f for f in TEXT_FIELDS if f in df.columns]
    if not present:
        return None
    table = pd.DataFrame(index=pd.Index([str(i) for i in ids], name="id"))
    for f in TEXT_FIELDS:
        col = df[f].tolist() if f in present else [""] * len(ids)
        table[f] = [v.strip() if isinstance(v, str) else "" for v in col]
    return table


def check_table(texts: pd.DataFrame, where: str) -> None:
    """A table handed to a dataset: the text fields as columns, unique ids (cheap: pandas
    caches uniqueness, so copies made by ``dataclasses.replace`` cost nothing here)."""
    missing = [f for f in TEXT_FIELDS if f not in texts.columns]
    if missing:
        raise ValueError(f"{where}: texts lacks column(s) {', '.join(missing)}")
    if not texts.index.is_unique:
        raise ValueError(f"{where}: texts has duplicate ids")


def aligned(texts: pd.DataFrame, ids: np.ndarray) -> pd.DataFrame:
    """The text of each id, in the order given, as strings ('' for an id the table does not
    have and for an empty cell)."""
    rows = texts.reindex(pd.Index([str(i) for i in ids]))[list(TEXT_FIELDS)]
    return rows.fillna("").astype(str).reset_index(drop=True)


def has_text(rows: pd.DataFrame) -> np.ndarray:
    """Per row: whether any of title, tags and description is non-empty."""
    return (rows[list(TEXT_FIELDS)].to_numpy(dtype=object) != "").any(axis=1)


def text_fingerprint(texts: pd.DataFrame) -> str:
    """16 hex chars of sha256 over the ids and every text cell, in table order."""
    h = hashlib.sha256()
    for col in (texts.index, *(texts[f] for f in TEXT_FIELDS)):
        h.update("\x1f".join(map(str, col)).encode())
        h.update(b"\x1e")
    return h.hexdigest()[:16]
