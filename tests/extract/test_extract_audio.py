"""Audio indexing and decoding: every format, channel layout, rate and bad case of the issue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from extract_helpers import tone, write_clip

from bst_search.extract.audio import MAX_SECONDS, decode, index_audio, resample, windows
from bst_search.extract.errors import ExtractError

FORMATS = [("wav", "PCM_16"), ("flac", "PCM_24"), ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")]


@pytest.mark.parametrize(("ext", "subtype", "rate"),
                         [(e, s, r) for e, s in FORMATS for r in (8_000, 44_100, 96_000)
                          if not (e == "mp3" and r == 96_000)])  # MPEG layer III stops at 48 kHz
def test_formats_and_rates_decode_to_mono_at_the_target_rate(tmp_path: Path, ext: str,
                                                             subtype: str, rate: int) -> None:
    x = tone(1.5, rate)
    p = write_clip(tmp_path / f"a.{ext}", np.stack([x, 0.5 * x], 1) if rate == 44_100 else x, rate, subtype)
    c = decode("a", p, 32_000)
    assert not c.bad, c.problems
    assert c.source_rate == rate and c.wave is not None and c.wave.dtype == np.float32
    # mp3 and vorbis add encoder delay / padding; the length is still about 1.5 s at 32 kHz
    assert abs(len(c.wave) - 48_000) <= (3_000 if ext in ("mp3", "ogg") else 1)
    if rate == 44_100:
        assert c.problems == {"multichannel": "2 channels, averaged to mono"}
        assert 0.25 < np.abs(c.wave).max() < 0.4  # (x + x/2) / 2
    else:
        assert "multichannel" not in c.problems and np.abs(c.wave).max() > 0.38


def test_decoding_is_deterministic_and_resampling_preserves_a_tone(tmp_path: Path) -> None:
    p = write_clip(tmp_path / "t.flac", tone(1.0, 44_100, freq=1000.0), 44_100)
    a, b = decode("t", p, 48_000), decode("t", p, 48_000)
    assert np.array_equal(a.wave, b.wave)
    spec = np.abs(np.fft.rfft(a.wave))
    assert abs(np.argmax(spec) * 48_000 / len(a.wave) - 1000.0) < 2.0
    assert resample(a.wave, 48_000, 48_000) is a.wave or np.array_equal(resample(a.wave, 48_000, 48_000), a.wave)


def test_bad_files_are_classified_not_raised(tmp_path: Path) -> None:
    zero = tmp_path / "zero.wav"
    zero.write_bytes(b"")
    junk = tmp_path / "junk.ogg"
    junk.write_bytes(b"OggS" + bytes(range(200)) * 3)
    good = write_clip(tmp_path / "good.wav", tone(2.0, 16_000), 16_000)
    trunc = tmp_path / "trunc.wav"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    gflac = write_clip(tmp_path / "good.flac", tone(3.0, 16_000), 16_000)
    tflac = tmp_path / "tflac.flac"
    tflac.write_bytes(gflac.read_bytes()[: gflac.stat().st_size // 2])
    silent = write_clip(tmp_path / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    short = write_clip(tmp_path / "short.wav", tone(0.05, 16_000), 16_000)
    empty = write_clip(tmp_path / "empty.wav", np.zeros(0, np.float32), 16_000)
    slow = write_clip(tmp_path / "slow.wav", tone(1.0, 4_000), 4_000)
    fast = write_clip(tmp_path / "fast.wav", tone(0.2, 192_000), 192_000)

    got = {p.stem: decode(p.stem, p, 32_000) for p in (zero, junk, trunc, tflac, silent, short, empty, slow, fast)}
    assert list(got["zero"].problems) == ["zero_byte"] and got["zero"].bad
    assert list(got["junk"].problems) == ["undecodable"] and got["junk"].bad
    assert list(got["trunc"].problems) == ["truncated"] and not got["trunc"].bad
    assert abs(len(got["trunc"].wave) - 32_000) < 200  # the first second survives
    assert "truncated" in got["trunc"].problems and not got["trunc"].bad
    assert "truncated" in got["tflac"].problems and 0 < len(got["tflac"].wave) < 96_000
    assert list(got["silent"].problems) == ["silent"] and not got["silent"].bad
    assert list(got["short"].problems) == ["short"] and len(got["short"].wave) == 1_600
    assert "empty" in got["empty"].problems and got["empty"].bad
    assert list(got["slow"].problems) == ["bad_rate"] and list(got["fast"].problems) == ["bad_rate"]
    assert decode("none", None, 32_000).problems == {"missing": "no audio file for this id"}


def test_clips_longer_than_ten_minutes_are_cut(tmp_path: Path) -> None:
    rate = 8_000
    p = write_clip(tmp_path / "long.wav", np.full(int((MAX_SECONDS + 5) * rate), 0.1, np.float32),
                   rate)
    c = decode("long", p, 0)  # 0: keep the file's rate
    assert list(c.problems) == ["long"] and not c.bad
    assert len(c.wave) == int(MAX_SECONDS * rate)


def test_index_finds_every_extension_recursively_and_refuses_ambiguous_ids(tmp_path: Path) -> None:
    for rel in ("a/1.wav", "b/c/2.FLAC", "3.ogg", "4.mp3", "notes.txt", ".hidden.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    idx = index_audio(tmp_path)
    assert sorted(idx) == ["1", "2", "3", "4"] and idx["2"] == tmp_path / "b/c/2.FLAC"
    (tmp_path / "1.flac").write_bytes(b"x")
    with pytest.raises(ExtractError, match="1: .*1.wav and .*1.flac|1: .*1.flac and .*1.wav"):
        index_audio(tmp_path)
    with pytest.raises(ExtractError, match="no audio folder"):
        index_audio(tmp_path / "nope")


def test_windows_cover_the_clip_without_padding() -> None:
    assert windows(5, 10) == [(0, 5)]
    assert windows(10, 10) == [(0, 10)]
    assert windows(25, 10) == [(0, 10), (10, 20), (15, 25)]
    for n in (11, 99, 100, 101):
        w = windows(n, 10)
        assert all(b - a == 10 for a, b in w) and w[0][0] == 0 and w[-1][1] == n
