"""The two stages every execution path shares: decode + policy, then embed.

:func:`prepare` turns one id into a :class:`Record` (a waveform to embed, or what to write
instead under the ``--on-bad-audio`` policy); :func:`embed_records` runs a loaded backbone on
a batch of records. The in-process loop and the Ray Data pipeline both call these two, so
they produce the same vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bst_search.extract.audio import decode
from bst_search.extract.backbones import Backbone
from bst_search.extract.errors import ExtractError

SILENCE_SECONDS = 1.0  # length of the zero waveform that stands in for a bad clip (the multi-branch system)


@dataclass
class Record:
    """One id on its way to the model: ``action`` is embed, zero (a zero vector) or skip (no file)."""

    id: str
    action: str
    item: np.ndarray | str | None = None
    problems: dict[str, str] = field(default_factory=dict)


def prepare(clip_id: str, path: str | None, rate: int, policy: str) -> Record:
    """Decode one clip and apply the bad-audio policy (never raises for bad audio)."""
    clip = decode(clip_id, path, rate)
    problems = dict(clip.problems)
    if not clip.bad:
        return Record(clip_id, "embed", clip.wave, problems)
    if policy == "silence":
        problems["action"] = f"silence: {SILENCE_SECONDS:g} s of zeros embedded instead"
        return Record(clip_id, "embed", np.zeros(int(SILENCE_SECONDS * rate), np.float32), problems)
    if policy == "zero":
        problems["action"] = "zero: a zero vector written"
        return Record(clip_id, "zero", None, problems)
    if policy == "skip":
        problems["action"] = "skip: no file written"
        return Record(clip_id, "skip", None, problems)
    detail = "; ".join(f"{k}: {v}" for k, v in problems.items())
    raise ExtractError(f"id {clip_id} ({path}): {detail} (--on-bad-audio error)")


def prepare_text(clip_id: str, text: str) -> Record:
    problems = {} if text else {"empty_text": "title, tags and description are all empty"}
    return Record(clip_id, "embed", text, problems)


def embed_records(model: Backbone, records: Sequence[Record]) -> list[np.ndarray | None]:
    """One vector (float32, ``model.dim``) per record; None for ``skip``."""
    todo = [r for r in records if r.action == "embed"]
    emb = model.embed([r.item for r in todo]) if todo else np.zeros((0, model.dim), np.float32)
    out: list[np.ndarray | None] = []
    k = 0
    for r in records:
        if r.action == "embed":
            v = np.asarray(emb[k], dtype=np.float32)
            k += 1
            if not np.isfinite(v).all():
                raise ExtractError(f"id {r.id}: backbone {model.spec['backbone']} produced a "
                                   f"non-finite embedding")
            out.append(v)
        elif r.action == "zero":
            out.append(np.zeros(model.dim, np.float32))
        else:
            out.append(None)
    return out
