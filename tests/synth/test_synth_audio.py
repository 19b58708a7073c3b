"""The generated audio set of ``make demo`` / ``bst-search synth --audio-n``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bst_search.extract.audio import decode, index_audio
from bst_search.extract.inputs import read_items
from bst_search.synth import make_synthetic


def test_synth_writes_a_decodable_audio_demo_set(tmp_path: Path) -> None:
    paths = make_synthetic(tmp_path / "s", n=40, eval_n=0, seed=1, audio_n=10)
    root = paths["audio_demo"]
    items = read_items(root)
    assert items.name == "audio_demo" and len(items.ids) == 10 and all(items.texts)
    idx = index_audio(root / "audio")
    assert sorted(idx) == sorted(items.ids)
    assert {p.suffix for p in idx.values()} == {".wav", ".flac", ".ogg"}
    clips = [decode(i, idx[i], 32_000) for i in items.ids]
    assert not any(c.bad for c in clips)
    assert max(len(c.wave) for c in clips) > 10 * 32_000  # one clip is longer than a window
    assert sum("multichannel" in c.problems for c in clips) == 2
    meta = pd.read_csv(root / "metadata" / "audio_demo_metadata.csv")
    assert list(meta.columns[:5]) == ["sound_id", "class", "class_idx", "class_top", "confidence"]
    assert not (root / "features").exists()  # embeddings are what extract is for
    # the other sets are the same as without audio
    again = make_synthetic(tmp_path / "t", n=40, eval_n=0, seed=1)
    a = (paths["dev"] / "metadata" / "BSD10k_metadata.csv").read_bytes()
    assert a == (again["dev"] / "metadata" / "BSD10k_metadata.csv").read_bytes()
