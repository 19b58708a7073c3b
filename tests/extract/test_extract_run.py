"""``bst-search extract`` end to end: bad audio, policies, manifest, resume after a kill, the
Ray Data path, and ``bst-search trial`` on what it wrote."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from extract_helpers import GUARDED_CLI, subprocess_env, tone, write_clip

from bst_search import taxonomy as tx
from bst_search.cli import main
from bst_search.extract.backbones import BackboneOptions
from bst_search.extract.run import ExtractJob, run_extract

# (id, extension, subtype, rate, seconds, channels): good clips of every format and layout
GOOD = [(f"{100 + i}", ext, sub, rate, sec, ch) for i, (ext, sub, rate, sec, ch) in enumerate([
    ("wav", "PCM_16", 16_000, 0.8, 1), ("flac", "PCM_24", 44_100, 1.2, 2),
    ("ogg", "VORBIS", 48_000, 0.6, 1), ("mp3", "MPEG_LAYER_III", 22_050, 1.0, 1),
    ("wav", "FLOAT", 96_000, 0.5, 2), ("flac", "PCM_16", 8_000, 1.5, 1),
    ("wav", "PCM_16", 32_000, 0.9, 1), ("ogg", "VORBIS", 16_000, 1.1, 2),
    ("mp3", "MPEG_LAYER_III", 44_100, 0.7, 2), ("wav", "PCM_24", 11_025, 1.3, 1),
])]
BAD = {"200": "zero_byte", "201": "undecodable", "202": "truncated", "203": "silent", "204": "short"}
CODES = ("m-si", "is-p")


def _write_dataset(root: Path) -> Path:
    ids = [g[0] for g in GOOD] + list(BAD)
    for k, (sid, ext, sub, rate, sec, ch) in enumerate(GOOD):
        x = tone(sec, rate, 150.0 + 70 * k)
        write_clip(root / "audio" / ("sub" if k % 3 else "") / f"{sid}.{ext}",
                   np.stack([x, 0.3 * x], 1) if ch == 2 else x, rate, sub)
    (root / "audio" / "200.wav").write_bytes(b"")
    (root / "audio" / "201.flac").write_bytes(b"fLaC" + bytes(300))
    full = write_clip(root / "tmp.wav", tone(2.0, 16_000), 16_000)
    (root / "audio" / "202.wav").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    write_clip(root / "audio" / "203.wav", np.zeros(16_000, np.float32), 16_000)
    write_clip(root / "audio" / "204.ogg", tone(0.05, 48_000), 48_000, "VORBIS")
    codes = [CODES[i % 2] for i in range(len(ids))]
    meta = pd.DataFrame({"sound_id": ids, "class": codes, "class_idx": [tx.CLASS_IDX[c] for c in codes],
                         "class_top": [tx.top_of(c) for c in codes], "confidence": 4,
                         "title": [f"Clip {i}" for i in ids], "tags": "tone,test",
                         "description": ["" if i % 4 == 0 else f"sine number {i}" for i in range(len(ids))],
                         "uploader": "u", "license": "CC0"})
    (root / "metadata").mkdir(parents=True)
    meta.to_csv(root / "metadata" / "tiny_metadata.csv", index=False)
    pd.DataFrame(tx.description_table()).to_csv(root / "metadata" / "BST_description.csv", index=False)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("ds") / "tiny")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("features"))
    return dst


def _vectors(root: Path, backbone: str) -> dict[str, np.ndarray]:
    folder = root / "features" / f"{backbone}_embeddings"
    return {p.stem: np.load(p) for p in folder.glob("*.npy")}


def _manifest(root: Path, backbone: str) -> dict[str, Any]:
    return json.loads((root / "features" / f"{backbone}_embeddings" / "manifest.json").read_text())


def _panns_args(root: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["extract", "--data", str(root), "--backbone", "panns", "--checkpoint", str(ckpt),
            "--allow-random-weights", "--device", "cpu", "--batch-size", "4", "--quiet", *extra]


@pytest.fixture(scope="module")
def reference(dataset: Path, panns_ref: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, dict[str, np.ndarray], str]:
    """One uninterrupted in-process run of panns + minilm_text with the default policy."""
    root = _copy(dataset, tmp_path_factory.mktemp("ref") / "tiny")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(_panns_args(root, panns_ref[1], "--backbone", "minilm_text")) == 0
    return root, _vectors(root, "panns"), out.getvalue()


def test_every_id_written_and_every_problem_reported(reference: tuple[Path, dict[str, np.ndarray], str],
                                                     panns_ref: tuple[Any, Path]) -> None:
    root, vecs, out = reference
    ids = [g[0] for g in GOOD] + list(BAD)
    assert sorted(vecs) == sorted(ids)
    assert all(v.shape == (2048,) and v.dtype == np.float32 and np.isfinite(v).all() for v in vecs.values())
    man = _manifest(root, "panns")
    assert man["status"] == "complete" and man["counts"]["written"] == len(ids)
    assert man["checkpoint"]["file"] == panns_ref[1].name and len(man["checkpoint"]["sha256"]) == 64
    assert man["sample_rate"] == 32_000 and man["on_bad_audio"] == "silence"
    for sid, kind in BAD.items():
        assert kind in man["problems"][sid], (sid, man["problems"].get(sid))
    for sid in ("200", "201"):
        assert man["problems"][sid]["action"].startswith("silence")
        np.testing.assert_array_equal(vecs[sid], vecs["200"])  # the same zero waveform
    multi = {g[0] for g in GOOD if g[5] == 2}
    assert {s for s, p in man["problems"].items() if "multichannel" in p} == multi
    text = _manifest(root, "minilm_text")
    assert text["text_fields"] == ["title", "tags", "description"] and text["counts"]["written"] == len(ids)
    assert "panns: 15/15 ids written" in out and "zero_byte=1" in out and "silence=2" in out


def test_trial_runs_unchanged_on_extracted_embeddings(reference: tuple[Path, dict[str, np.ndarray], str],
                                                      tmp_path: Path) -> None:
    root = reference[0]
    rc = main(["trial", "--data", str(root), "--config", "late_fusion", "--folds", "2",
               "--set", "backbones=[panns,minilm_text]", "--set", "train.max_epochs=2",
               "--out", str(tmp_path / "trial")])
    assert rc == 0
    oof = pd.read_parquet(tmp_path / "trial" / "oof.parquet")
    assert len(oof) == 15 and set(oof["label"]) == set(CODES)


def test_policies_refusals_and_overwrite(dataset: Path, panns_ref: tuple[Any, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = _copy(dataset, tmp_path / "tiny")
    ckpt = panns_ref[1]
    folder = root / "features" / "panns_embeddings"
    # error: stops before writing anything, naming the bad files
    assert main(_panns_args(root, ckpt, "--on-bad-audio", "error")) == 2
    err = capsys.readouterr().err
    assert "200" in err and "zero_byte" in err and "201" in err and "undecodable" in err
    assert not list(folder.glob("*.npy"))
    # zero: a zero vector for each bad file (only the first ids, to keep it short)
    assert main(_panns_args(root, ckpt, "--on-bad-audio", "zero", "--overwrite")) == 0
    vecs = _vectors(root, "panns")
    assert not vecs["200"].any() and not vecs["201"].any() and vecs["100"].any()
    # different settings on the same folder are refused; --overwrite replaces
    assert main(_panns_args(root, ckpt, "--on-bad-audio", "skip")) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(_panns_args(root, ckpt, "--on-bad-audio", "skip", "--overwrite")) == 0
    vecs = _vectors(root, "panns")
    assert "200" not in vecs and "201" not in vecs and len(vecs) == 13
    assert _manifest(root, "panns")["problems"]["200"]["action"].startswith("skip")
    # a missing file is an error naming the id, unless skip
    (root / "audio" / "sub" / "101.flac").unlink()
    assert main(_panns_args(root, ckpt, "--on-bad-audio", "zero", "--overwrite")) == 2
    assert "101" in capsys.readouterr().err
    # foreign files without a manifest are not mixed with ours
    (folder / "manifest.json").unlink()
    assert main(_panns_args(root, ckpt, "--on-bad-audio", "skip")) == 2
    assert "no manifest.json" in capsys.readouterr().err


def _start_and_wait(args: list[str], home: Path, folder: Path, at: int | str) -> subprocess.Popen[bytes]:
    """A child ``bst-search extract``, returned once ``at`` vectors (or ``<at>.npy``) are on disk."""
    proc = subprocess.Popen([sys.executable, "-c", GUARDED_CLI, *args], env=subprocess_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (folder / f"{at}.npy").exists() if isinstance(at, str) else \
                len(list(folder.glob("*.npy"))) >= at:
            break
        time.sleep(0.005)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    return proc


def test_resume_after_kill_gives_the_uninterrupted_vectors_and_records(
        dataset: Path, panns_ref: tuple[Any, Path], reference: tuple[Path, dict[str, np.ndarray], str],
        tmp_path: Path, offline_home: Path) -> None:
    """SIGKILL at a random point: just after one of the clips that has a problem record (a
    multichannel good clip or a bad one, placed last) is written, up to 40 ms into the next.
    The resumed folder equals an uninterrupted run's, vectors and problem records alike."""
    seed = random.randrange(2**31)
    rng = random.Random(seed)
    with_record = [g[0] for g in GOOD if g[5] == 2] + list(BAD)[:-1]
    root = _copy(dataset, tmp_path / "tiny")
    folder = root / "features" / "panns_embeddings"
    args = _panns_args(root, panns_ref[1])
    args[args.index("--batch-size") + 1] = "1"
    proc = _start_and_wait(args, offline_home, folder, rng.choice(with_record))
    time.sleep(rng.uniform(0, 0.04))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(list(folder.glob("*.npy")))
    assert 2 <= before < 15, seed
    job = ExtractJob(root=root, backbones=["panns"], progress=False, log=lambda _m: None,
                     options=BackboneOptions(checkpoint=panns_ref[1], device="cpu", batch_size=4,
                                             allow_random_weights=True))
    man = run_extract(job)["panns"]
    assert man["last_run"]["written"] == 15 - before, seed  # nothing written twice
    assert man["counts"]["written"] == 15 and not list(folder.glob(".*.tmp"))
    assert not (folder / "journal.jsonl").exists()
    got, want = _vectors(root, "panns"), reference[1]
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=0, err_msg=k)
    assert _manifest(root, "panns")["problems"] == _manifest(reference[0], "panns")["problems"], \
        f"problem records differ from the uninterrupted run's (seed {seed}, killed after {before})"
    assert man["counts"] == _manifest(reference[0], "panns")["counts"]


@pytest.mark.system
def test_sigterm_stops_cleanly_with_143_and_resumes(
        dataset: Path, panns_ref: tuple[Any, Path], reference: tuple[Path, dict[str, np.ndarray], str],
        tmp_path: Path, offline_home: Path) -> None:
    """SIGTERM (what ``timeout`` and schedulers send) is Ctrl-C: the batch being written is
    finished, the manifest holds every written id's record, exit code 143, a resume hint."""
    root = _copy(dataset, tmp_path / "tiny")
    folder = root / "features" / "panns_embeddings"
    args = _panns_args(root, panns_ref[1])
    args[args.index("--batch-size") + 1] = "1"
    proc = _start_and_wait(args, offline_home, folder, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert "SIGTERM" in err.decode() and "Run the same command again to resume" in err.decode()
    man, ref = _manifest(root, "panns"), _manifest(reference[0], "panns")
    written = {p.stem for p in folder.glob("*.npy")}
    assert man["status"] == "interrupted" and man["counts"]["written"] == len(written) < 15
    assert man["problems"] == {i: p for i, p in ref["problems"].items() if i in written}
    assert not (folder / "journal.jsonl").exists() and not list(folder.glob(".*.tmp"))
    assert main(_panns_args(root, panns_ref[1])) == 0
    assert _manifest(root, "panns")["problems"] == ref["problems"]
    assert _manifest(root, "panns")["last_run"]["written"] == 15 - len(written)


def test_sigint_in_process_stops_with_130(dataset: Path, panns_ref: tuple[Any, Path],
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C: the same clean stop, exit code 130, and the previous SIGINT handler restored."""
    import threading

    root = _copy(dataset, tmp_path / "tiny")
    folder = root / "features" / "panns_embeddings"

    def interrupt() -> None:
        deadline = time.monotonic() + 120
        while len(list(folder.glob("*.npy"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGINT)

    args = _panns_args(root, panns_ref[1])
    args[args.index("--batch-size") + 1] = "1"
    before = signal.getsignal(signal.SIGINT)
    sender = threading.Thread(target=interrupt)
    sender.start()
    try:
        assert main(args) == 130
    finally:
        sender.join()
    assert signal.getsignal(signal.SIGINT) is before
    assert "SIGINT: extraction stopped cleanly" in capsys.readouterr().err
    man = _manifest(root, "panns")
    assert man["status"] == "interrupted" and 2 <= man["counts"]["written"] < 15


def test_ray_data_path_matches_in_process(dataset: Path, panns_ref: tuple[Any, Path],
                                          reference: tuple[Path, dict[str, np.ndarray], str],
                                          tmp_path: Path) -> None:
    import ray

    root = _copy(dataset, tmp_path / "tiny")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        job = ExtractJob(root=root, backbones=["panns"], address="local", workers=2,
                         progress=False, log=lambda _m: None,
                         options=BackboneOptions(checkpoint=panns_ref[1], device="cpu", batch_size=4,
                                                 allow_random_weights=True))
        res = run_extract(job)
    finally:
        ray.shutdown()
    assert res["panns"]["last_run"]["path"] == "ray" and res["panns"]["counts"]["written"] == 15
    got, want = _vectors(root, "panns"), reference[1]
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=0, err_msg=k)
    assert _manifest(root, "panns")["problems"] == _manifest(reference[0], "panns")["problems"]


def test_checkpoint_arguments_plain_and_per_backbone() -> None:
    from bst_search.extract.cli import _checkpoints
    from bst_search.extract.errors import ExtractError

    default, named = _checkpoints(["ckpt/Cnn14_mAP=0.431.pth", "clap_text=c.pt"])
    assert default == Path("ckpt/Cnn14_mAP=0.431.pth")  # '=' in a file name is not a backbone
    assert named == {"clap_text": Path("c.pt")}
    assert _checkpoints(["panns=ckpt/Cnn14_mAP=0.431.pth"])[1] == {"panns": Path("ckpt/Cnn14_mAP=0.431.pth")}
    with pytest.raises(ExtractError, match="second plain path"):
        _checkpoints(["a.pt", "b.pt"])
