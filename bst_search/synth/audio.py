"""A small generated audio set in the official layout, for trying ``bst-search extract``.

``write_audio_demo(out)`` writes ``out/metadata/audio_demo_metadata.csv`` (labelled rows with
synthetic titles, tags and descriptions) and ``out/audio/<id>.<ext>``: tones and chords
(music), decaying plucks (instrument samples), amplitude-modulated noise bursts (speech-like),
chirps and clicks (effects) and filtered noise (soundscapes), at 16 to 48 kHz, in wav, flac and
ogg, mono and stereo, 0.5 to 12 s (one clip is longer than CLAP's and PANNs' 10 s window).
No embeddings are written: that is what ``extract`` is for. It takes well under a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bst_search import taxonomy as tx
from bst_search.synth.texts import sound_texts

RATES = (16_000, 22_050, 32_000, 44_100, 48_000)
FORMATS = (("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS"))


def _clip(rng: np.random.Generator, top: str, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    if top == "m":      # a chord of harmonics
        f0 = rng.uniform(110, 440)
        x = sum(np.sin(2 * np.pi * f0 * r * t) / (i + 1) for i, r in enumerate((1, 1.25, 1.5, 2)))
    elif top == "is":   # plucked notes, exponential decay
        x = np.zeros_like(t)
        for start in np.arange(0, seconds, rng.uniform(0.25, 0.6)):
            f, env = rng.uniform(200, 1200), np.exp(-np.clip(t - start, 0, None) * 8) * (t >= start)
            x += env * np.sin(2 * np.pi * f * t)
    elif top == "sp":   # noise shaped by a 4 Hz syllable envelope
        x = rng.standard_normal(len(t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    elif top == "fx":   # a chirp and clicks
        f = rng.uniform(100, 500) + rng.uniform(500, 4000) * t / max(seconds, 1e-3)
        x = np.sin(2 * np.pi * np.cumsum(f) / rate)
        x[:: max(1, int(rate * 0.3))] += 3.0
    else:               # a soundscape: smoothed noise
        x = np.convolve(rng.standard_normal(len(t)), np.ones(32) / 32, mode="same") * 4
    x = np.asarray(x, np.float64)
    return (0.5 * x / (np.max(np.abs(x)) + 1e-9)).astype(np.float32)


def write_audio_demo(out: Path, n: int = 24, seed: int = 0) -> Path:
    """Write the set described above under ``out`` and return ``out``."""
    import soundfile as sf

    rng = np.random.default_rng(seed + 7_919)  # its own stream: the other synthetic sets are unchanged
    out = Path(out)
    codes = np.asarray(tx.CODES, dtype=object)[np.arange(n) % len(tx.CODES)]
    titles, tags, descs = sound_texts(rng, codes)
    ids = [str(900_000 + i) for i in range(n)]
    for i, (sid, code) in enumerate(zip(ids, codes, strict=True)):
        rate = RATES[i % len(RATES)]
        ext, subtype = FORMATS[i % len(FORMATS)]
        seconds = 12.0 if i == 0 else float(rng.uniform(0.5, 4.0))
        x = _clip(rng, tx.top_of(code), seconds, rate)
        if i % 5 == 3:
            x = np.stack([x, np.roll(x, 17)], axis=1)  # stereo
        path = out / "audio" / f"{sid}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x, rate, subtype=subtype)
    meta = pd.DataFrame({"sound_id": ids, "class": list(codes),
                         "class_idx": [tx.CLASS_IDX[c] for c in codes],
                         "class_top": [tx.top_of(c) for c in codes], "confidence": 4,
                         "title": titles, "tags": tags, "description": descs,
                         "uploader": "demo", "license": "CC0"})
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    meta.to_csv(out / "metadata" / "audio_demo_metadata.csv", index=False, lineterminator="\n")
    pd.DataFrame(tx.description_table()).to_csv(out / "metadata" / "BST_description.csv",
                                                 index=False, lineterminator="\n")
    return out
