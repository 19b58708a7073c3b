"""``features/<backbone>_embeddings/manifest.json``: what made these vectors, and what went wrong.

The *identity* (backbone, checkpoint sha256, resolved settings, sample rate, text fields, bad
audio policy) decides whether a later run may add to the folder: the same identity resumes,
a different one is refused unless ``--overwrite``. Writes are atomic (temporary file, fsync,
rename), so a kill leaves the previous manifest, never half of one.

``journal.jsonl`` beside it holds the problem records written since the manifest was, one JSON
line per id, appended and fsync'd before the id's vector is renamed into place
(:mod:`bst_search.extract.writer`): a vector on disk always has its record, in the manifest or
in the journal. :func:`recorded_problems` replays the journal over the manifest's problems.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bst_search.extract.errors import ExtractError

MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"
FORMAT = "bst-search-extract-v1"


def identity(spec: dict[str, Any], text_fields: list[str] | None, policy: str | None) -> dict[str, Any]:
    """The part of the manifest a resumed run must match exactly."""
    ck = spec["checkpoint"]
    return {"format": FORMAT, "backbone": spec["backbone"], "dim": spec["dim"],
            "checkpoint_sha256": ck.get("sha256"), "random_weights": ck.get("random_weights", False),
            "settings": spec["settings"], "sample_rate": spec["sample_rate"],
            "text_fields": text_fields, "on_bad_audio": policy}


def read(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExtractError(f"{path}: unreadable manifest ({e}); pass --overwrite to start over") from None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically and durably: the journal may be emptied after this."""
    folder = Path(folder)
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(folder)


class Journal:
    """``journal.jsonl``, append-only: one ``{"id": ..., "problems": {...}}`` line per result."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / JOURNAL
        self._f = open(self.path, "ab")  # noqa: SIM115 (held open for the whole run)

    def append(self, records: list[tuple[str, dict[str, str]]]) -> None:
        """Append one batch's records and fsync them: they are on disk when this returns."""
        lines = "".join(json.dumps({"id": i, "problems": p}, sort_keys=True) + "\n"
                        for i, p in records)
        self._f.write(lines.encode())
        self._f.flush()
        os.fsync(self._f.fileno())

    def reset(self) -> None:
        """Empty the journal, once a manifest holding its records has been written."""
        self._f.truncate(0)
        os.fsync(self._f.fileno())

    def close(self, remove: bool = False) -> None:
        self._f.close()
        if remove:
            self.path.unlink(missing_ok=True)


def replay(folder: Path, problems: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """``problems`` with the journal's records applied in order (an id with none is fine now).

    A last line cut short by a kill is the record of a vector that was never renamed into
    place, so it is dropped; a bad line before the last is an error naming the file and line.
    """
    path = Path(folder) / JOURNAL
    if not path.exists():
        return problems
    out = dict(problems)
    lines = path.read_bytes().split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            clip_id, probs = str(rec["id"]), dict(rec["problems"])
        except (ValueError, KeyError, TypeError):
            if n == len(lines):  # no newline after it: the write was cut short
                break
            raise ExtractError(f"{path}: line {n} is not a problem record; pass --overwrite to "
                               f"start over") from None
        if probs:
            out[clip_id] = probs
        else:
            out.pop(clip_id, None)
    return out


def recorded_problems(folder: Path, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Every problem recorded so far: the manifest's, then the journal's after it."""
    return replay(folder, dict(manifest.get("problems", {})))


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every identity field that differs (nested settings flattened)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{d}" for d in differences(a, b)]
        elif a != b:
            out.append(f"{k}: {a!r} -> {b!r}")
    return out
