"""Finding, decoding and resampling audio clips, and classifying what is wrong with them.

Decoding never raises for a bad file: it returns a :class:`Clip` whose ``problems`` say what
happened. A problem is either *bad* (nothing usable was decoded: the ``--on-bad-audio`` policy
decides) or a *note* (the clip was repaired in a fixed way and goes through the model: it is
only reported). Everything here is deterministic, so a cache of embeddings is reproducible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bst_search.extract.errors import ExtractError

AUDIO_EXTS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")
MIN_RATE, MAX_RATE = 8_000, 96_000  # Hz: a header outside this range is treated as corrupt
MIN_SECONDS = 0.1                  # shorter clips are padded by the backbone, and reported
MAX_SECONDS = 600.0                # longer clips are cut at 10 minutes, and reported
SILENT_PEAK = 1e-6                 # |x| below this everywhere counts as a silent file
_BLOCK = 1 << 13                   # frames per decoded block (so a truncated file keeps its head)

# problem kinds: "bad" ones leave no usable waveform; the policy decides what is written
BAD = ("missing", "zero_byte", "undecodable", "empty", "bad_rate")
NOTES = ("truncated", "silent", "short", "long", "multichannel")
POLICIES = ("silence", "zero", "skip", "error")


@dataclass
class Clip:
    """One decoded clip: mono float32 at ``rate`` (None when the file is bad), and its problems."""

    id: str
    path: str | None
    wave: np.ndarray | None
    rate: int
    source_rate: int = 0
    channels: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # kind -> human-readable detail

    @property
    def bad(self) -> bool:
        return any(k in BAD for k in self.problems)


def index_audio(audio_dir: Path) -> dict[str, Path]:
    """``{id: path}`` for every ``<id>.<wav|flac|ogg|mp3>`` under ``audio_dir`` (one recursive scan).

    Two files for the same id (``12.wav`` and ``sub/12.flac``) are an error naming both, because
    which one was meant cannot be guessed.
    """
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise ExtractError(f"{audio_dir}: no audio folder (give --audio-dir, or put the clips in "
                           f"<root>/audio/<id>.wav|flac|ogg|mp3)")
    found: dict[str, Path] = {}
    clashes: list[str] = []
    for dirpath, _dirs, files in os.walk(audio_dir):
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() not in AUDIO_EXTS or stem.startswith("."):
                continue
            p = Path(dirpath) / name
            if stem in found:
                clashes.append(f"{stem}: {found[stem]} and {p}")
            else:
                found[stem] = p
    if clashes:
        raise ExtractError(f"{audio_dir}: {len(clashes)} ids have more than one audio file, e.g. "
                           + "; ".join(clashes[:3]))
    return found


def _read(path: str, max_seconds: float) -> tuple[np.ndarray, int, int, dict[str, str]]:
    """Decode block by block up to ``max_seconds``; a decoder error after some blocks is a
    truncation (the head is kept), before any block an undecodable file."""
    import soundfile as sf

    problems: dict[str, str] = {}
    with sf.SoundFile(path) as f:
        rate, channels, declared = int(f.samplerate), int(f.channels), int(f.frames)
        if not MIN_RATE <= rate <= MAX_RATE:
            raise _BadRate(rate)
        limit = int(max_seconds * rate)
        blocks: list[np.ndarray] = []
        got = 0
        while got < limit:
            try:
                b = f.read(min(_BLOCK, limit - got), dtype="float32", always_2d=True)
            except Exception as e:  # libsndfile's decoder error mid-stream
                if got == 0:
                    raise
                problems["truncated"] = f"decoder stopped after {got / rate:.2f} s: {e}"
                break
            if len(b) == 0:
                break
            blocks.append(b)
            got += len(b)
        if got >= limit and declared > limit:
            problems["long"] = f"{declared / rate:.1f} s; only the first {max_seconds:.0f} s are used"
        elif 0 < declared and got < declared and "truncated" not in problems and declared < (1 << 62):
            problems["truncated"] = f"header says {declared / rate:.2f} s, decoded {got / rate:.2f} s"
    data = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    if "truncated" not in problems and path.lower().endswith(".wav"):
        short = _wav_shortfall(path)
        if short:
            problems["truncated"] = short
    return data, rate, channels, problems


def _wav_shortfall(path: str) -> str | None:
    """libsndfile quietly shortens a WAV whose data chunk runs past the end of the file; the
    RIFF header still says how long it was meant to be."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, clen = struct.unpack("<4sI", f.read(8))
            if cid == b"data":
                have = size - pos - 8
                if clen != 0xFFFFFFFF and clen > have:
                    return f"data chunk declares {clen} bytes, the file holds {have}"
                return None
            pos += 8 + clen + (clen & 1)
    return None


class _BadRate(Exception):
    def __init__(self, rate: int) -> None:
        super().__init__(rate)
        self.rate = rate


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """soxr's high-quality resampler (deterministic, no random dithering); ``target <= 0``
    keeps the file's own rate."""
    if target <= 0 or rate == target or len(x) == 0:
        return x.astype(np.float32, copy=False)
    import soxr

    return np.ascontiguousarray(soxr.resample(x, rate, target, quality="HQ"), dtype=np.float32)


def decode(clip_id: str, path: str | Path | None, rate: int, *,
           max_seconds: float = MAX_SECONDS) -> Clip:
    """Decode one file to mono float32 at ``rate``, recording every problem instead of raising."""
    if path is None:
        return Clip(clip_id, None, None, rate, problems={"missing": "no audio file for this id"})
    path = str(path)
    clip = Clip(clip_id, path, None, rate)
    try:
        if os.path.getsize(path) == 0:
            clip.problems["zero_byte"] = "the file is empty (0 bytes)"
            return clip
        data, src_rate, channels, notes = _read(path, max_seconds)
    except _BadRate as e:
        clip.problems["bad_rate"] = f"sample rate {e.rate} Hz outside {MIN_RATE}..{MAX_RATE} Hz"
        return clip
    except Exception as e:  # the manifest names the id; keep the message free of the path
        msg = str(e).replace(f"'{path}'", "the file").replace(path, "the file")
        clip.problems["undecodable"] = f"{type(e).__name__}: {msg}".strip()
        return clip
    clip.source_rate, clip.channels = src_rate, channels
    clip.problems.update(notes)
    if len(data) == 0:
        clip.problems["empty"] = "no audio samples"
        return clip
    if channels > 1:
        clip.problems["multichannel"] = f"{channels} channels, averaged to mono"
    mono = data.mean(axis=1) if channels > 1 else data[:, 0]
    seconds = len(mono) / src_rate
    if seconds < MIN_SECONDS:
        clip.problems["short"] = f"{seconds * 1000:.0f} ms, padded by the backbone"
    if float(np.max(np.abs(mono))) < SILENT_PEAK:
        clip.problems["silent"] = "all samples are (near) zero"
    clip.wave = resample(mono, src_rate, rate)
    return clip


def windows(n: int, size: int) -> list[tuple[int, int]]:
    """Consecutive ``size``-sample windows covering ``n`` samples, the last one aligned to the end.

    A clip no longer than one window is one window ``(0, n)``; longer clips get
    ``ceil(n / size)`` full windows, so no window is padded and the split is deterministic.
    """
    if n <= size:
        return [(0, n)]
    k = -(-n // size)
    starts = [i * size for i in range(k - 1)] + [n - size]
    return [(s, s + size) for s in starts]
