"""The Broad Sound Taxonomy (BST): 5 top levels, 23 second-level codes, in one fixed order.

Everything in bst-search that indexes classes (label vectors, probability columns
``p_<code>``, confusion matrices) uses the order of :data:`CODES`, which is the order of the
official colour map and of ascending ``class_idx``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

TOP_LEVELS: tuple[str, ...] = ("m", "is", "sp", "fx", "ss")

TOP_NAMES: dict[str, str] = {
    "m": "Music",
    "is": "Instrument samples",
    "sp": "Speech",
    "fx": "Sound effects",
    "ss": "Soundscapes",
}

NAMES: dict[str, str] = {
    "m-sp": "Solo percussion",
    "m-si": "Solo instrument",
    "m-m": "Multiple instruments",
    "is-p": "Percussion",
    "is-s": "String",
    "is-w": "Wind",
    "is-k": "Piano / Keyboard instruments",
    "is-e": "Synths / Electronic",
    "sp-s": "Solo speech",
    "sp-c": "Conversation / Crowd",
    "sp-p": "Processed / Synthetic",
    "fx-o": "Objects / House appliances",
    "fx-v": "Vehicles",
    "fx-m": "Other mechanisms, engines, machines",
    "fx-h": "Human sounds and actions",
    "fx-a": "Animals",
    "fx-n": "Natural elements and explosions",
    "fx-ex": "Experimental",
    "fx-el": "Electronic / Design",
    "ss-n": "Nature",
    "ss-i": "Indoors",
    "ss-u": "Urban",
    "ss-s": "Synthetic / Artificial",
}

CODES: tuple[str, ...] = tuple(NAMES)
N_CLASSES = len(CODES)
N_TOP = len(TOP_LEVELS)
INDEX: dict[str, int] = {c: i for i, c in enumerate(CODES)}
PROBA_COLUMNS: tuple[str, ...] = tuple(f"p_{c}" for c in CODES)


def top_of(code: str) -> str:
    """Top level of a code: the part before the first dash (``fx-el`` -> ``fx``)."""
    return code.split("-", 1)[0]


# PARENT[i] is the top-level index of CODES[i]; used by coarse losses and the metric.
PARENT: np.ndarray = np.array([TOP_LEVELS.index(top_of(c)) for c in CODES], dtype=np.int64)

# class_idx as in BST_description.csv: top level t -> (t+1)*100, children numbered from 1,
# "<top>-other" -> (t+1)*100 + 99.
CLASS_IDX: dict[str, int] = {}
for _t, _top in enumerate(TOP_LEVELS):
    CLASS_IDX[_top] = (_t + 1) * 100
    for _k, _c in enumerate(c for c in CODES if top_of(c) == _top):
        CLASS_IDX[_c] = (_t + 1) * 100 + _k + 1
    CLASS_IDX[f"{_top}-other"] = (_t + 1) * 100 + 99
KNOWN_CODES: frozenset[str] = frozenset(CLASS_IDX)


def is_task_code(code: str) -> bool:
    """True for the 23 codes of the task; False for top-level-only (``fx``) and ``*-other``."""
    return code in INDEX


def is_excluded_code(code: str) -> bool:
    """True for codes that are valid BST but not part of the 23-class task."""
    return code in KNOWN_CODES and code not in INDEX


def encode(codes: Iterable[str]) -> np.ndarray:
    """Codes -> int64 indices in taxonomy order; raises ``KeyError`` naming the bad code."""
    out = []
    for c in codes:
        try:
            out.append(INDEX[c])
        except KeyError:
            raise KeyError(f"unknown BST class code {c!r}; expected one of {', '.join(CODES)}") from None
    return np.asarray(out, dtype=np.int64)


def decode(indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Indices in taxonomy order -> array of codes."""
    return np.asarray(CODES, dtype=object)[np.asarray(indices, dtype=np.int64)]


def description_table() -> list[dict[str, object]]:
    """Rows of ``BST_description.csv`` as the official release lays it out."""
    rows: list[dict[str, object]] = []
    for top in TOP_LEVELS:
        rows.append({"class_key": top, "class_idx": CLASS_IDX[top], "class_key_long": TOP_NAMES[top],
                     "top_level": TOP_NAMES[top], "second_level": ""})
        for c in (c for c in CODES if top_of(c) == top):
            rows.append({"class_key": c, "class_idx": CLASS_IDX[c],
                         "class_key_long": f"{TOP_NAMES[top]} / {NAMES[c]}",
                         "top_level": TOP_NAMES[top], "second_level": NAMES[c]})
        rows.append({"class_key": f"{top}-other", "class_idx": CLASS_IDX[f"{top}-other"],
                     "class_key_long": f"{TOP_NAMES[top]} / Other", "top_level": TOP_NAMES[top],
                     "second_level": "Other"})
    return rows
