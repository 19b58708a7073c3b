"""``features/<backbone>_embeddings/manifest.json``: what made these vectors, and what went wrong.

The *identity* (backbone, checkpoint sha256, resolved settings, sample rate, text fields, bad
audio policy) decides whether a later run may add to the folder: the same identity resumes,
a different one is refused unless ``--overwrite``. Writes are atomic (temporary file + rename),
so a kill leaves the previous manifest, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bst_search.extract.errors import ExtractError

MANIFEST = "manifest.json"
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


def write(folder: Path, manifest: dict[str, Any]) -> None:
    folder = Path(folder)
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, folder / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
