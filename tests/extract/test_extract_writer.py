"""The write order of extraction: whatever moment a process dies at, every vector on disk has
its problem record (the manifest's, with the journal replayed over it)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bst_search.extract import manifest as mf
from bst_search.extract.errors import ExtractError
from bst_search.extract.writer import Writer


class Died(BaseException):
    """Stands for a process killed at one point of a write."""


def _results(start: int, n: int) -> list[tuple[str, np.ndarray | None, dict[str, str]]]:
    out = []
    for k in range(start, start + n):
        probs = {"silent": "peak 0", "action": "silence: ..."} if k % 2 else {}
        out.append((f"{k}", None if k % 5 == 4 else np.full(4, k, np.float32), probs))
    return out


def _on_disk(folder: Path) -> tuple[set[str], dict[str, Any]]:
    man = json.loads((folder / mf.MANIFEST).read_text())
    return {p.stem for p in folder.glob("*.npy")}, mf.recorded_problems(folder, man)


@pytest.mark.parametrize("die_at", range(11))
def test_every_vector_on_disk_has_its_record_wherever_the_write_dies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, die_at: int) -> None:
    """Die at the n-th fsync or rename of the third batch: the journal's fsync, the five
    renames, then the manifest's write and the journal's reset."""
    writer = Writer(tmp_path, {"problems": {}}, every_s=0.0)  # the manifest after every batch
    writer.add(_results(0, 4))
    writer.add(_results(4, 4))
    calls = [0]
    real_replace, real_fsync = os.replace, os.fsync

    def counting(real: Any) -> Any:
        def op(*a: Any) -> Any:
            calls[0] += 1
            if calls[0] > die_at:
                raise Died
            return real(*a)
        return op

    monkeypatch.setattr(os, "replace", counting(real_replace))
    monkeypatch.setattr(os, "fsync", counting(real_fsync))
    try:
        writer.add(_results(8, 6))
    except Died:
        pass
    monkeypatch.undo()
    written, problems = _on_disk(tmp_path)
    expected = {i: p for i, _, p in _results(0, 14) if p}
    for clip_id in written:
        assert problems.get(clip_id) == expected.get(clip_id), (die_at, clip_id)
    assert all(expected[i] == p for i, p in problems.items()), die_at
    assert {i for i, v, _ in _results(0, 8) if v is not None} <= written


def test_a_cut_last_journal_line_is_dropped_a_bad_middle_one_refused(tmp_path: Path) -> None:
    (tmp_path / mf.JOURNAL).write_text('{"id": "1", "problems": {"silent": "x"}}\n'
                                       '{"id": "2", "problems": {}}\n{"id": "3", "prob')
    got = mf.recorded_problems(tmp_path, {"problems": {"2": {"short": "y"}, "9": {"a": "b"}}})
    assert got == {"1": {"silent": "x"}, "9": {"a": "b"}}  # 2 is fine now, 3 never renamed
    (tmp_path / mf.JOURNAL).write_text('{"id": "1"\n{"id": "2", "problems": {}}\n')
    with pytest.raises(ExtractError, match=rf"{mf.JOURNAL}: line 1 .*--overwrite"):
        mf.recorded_problems(tmp_path, {})


def test_close_empties_the_journal_into_the_manifest(tmp_path: Path) -> None:
    writer = Writer(tmp_path, {"problems": {}}, every_s=3600.0)
    writer.add(_results(0, 5))
    assert (tmp_path / mf.JOURNAL).stat().st_size > 0  # the manifest is not written yet
    assert json.loads((tmp_path / mf.MANIFEST).read_text())["problems"] == {}
    writer.close(status="complete")
    assert not (tmp_path / mf.JOURNAL).exists()
    man = json.loads((tmp_path / mf.MANIFEST).read_text())
    assert man["status"] == "complete" and man["problems"] == {"1": _results(1, 1)[0][2],
                                                               "3": _results(3, 1)[0][2]}
