"""Backbones: shape, finiteness, determinism, checkpoint round trips and parity with the
libraries' own inference (same weights), plus the refusals."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from extract_helpers import tone

from bst_search.extract import checkpoint as ckpt_io
from bst_search.extract.backbones import (
    BACKBONES,
    BackboneOptions,
    ClapAudio,
    ClapText,
    MiniLMText,
    Panns,
    minilm_dir,
)
from bst_search.extract.errors import ExtractError

TEXTS = ["Dog barking in the park field recording", "Piano note C4 sustained", ""]


def test_registry_names() -> None:
    assert {"clap_audio", "clap_text", "panns", "minilm_text"} <= set(BACKBONES)


def _opts(ckpt: Path | None, **kw: Any) -> BackboneOptions:
    return BackboneOptions(checkpoint=ckpt, device="cpu", batch_size=4, allow_random_weights=True, **kw)


def test_panns_round_trip_and_parity_with_cnn14(panns_ref: tuple[Any, Path]) -> None:
    model, path = panns_ref
    pb = Panns.from_config(_opts(path))
    assert pb.spec["checkpoint"]["sha256"] == ckpt_io.sha256(path)
    assert pb.spec["checkpoint"]["random_weights"] is True
    for k, v in model.state_dict().items():  # the file round trip is exact
        assert torch.equal(v, pb.model.state_dict()[k]), k
    waves = [tone(2.0, 32_000, 300.0), tone(0.7, 32_000, 900.0)]
    got = pb.embed(waves)
    assert got.shape == (2, 2048) and got.dtype == np.float32 and np.isfinite(got).all()
    with torch.no_grad():
        for w, g in zip(waves, got, strict=True):
            padded = np.pad(w, (0, max(0, 32_000 - len(w))))
            ref = model(torch.from_numpy(padded)[None], None)["embedding"][0].numpy()
            np.testing.assert_allclose(g, ref, atol=1e-5, rtol=0)
        # longer than the 10 s window: the mean of the windows' embeddings
        long = tone(13.0, 32_000, 220.0)
        parts = [long[:320_000], long[-320_000:]]
        ref = np.mean([model(torch.from_numpy(p)[None], None)["embedding"][0].numpy() for p in parts], 0)
    np.testing.assert_allclose(pb.embed([long])[0], ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(pb.embed(waves), got)  # deterministic


def _clap_parity(ref: tuple[Any, Path], text_model_dir: Path) -> None:
    module, path = ref
    ca = ClapAudio.from_config(_opts(path))
    assert ca.spec["settings"]["fusion"] == module.enable_fusion
    waves = [tone(3.0, 48_000, 440.0), tone(0.3, 48_000, 1200.0)]
    got = ca.embed(waves)
    assert got.shape == (2, 512) and np.isfinite(got).all()
    want = module.get_audio_embedding_from_data([w.copy() for w in waves])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(ca.embed(waves[1:]), got[1:])
    long = tone(12.5, 48_000, 330.0)
    parts = [long[:480_000], long[-480_000:]]
    want_long = module.get_audio_embedding_from_data(parts).mean(axis=0)
    np.testing.assert_allclose(ca.embed([long])[0], want_long, atol=1e-5, rtol=0)


def test_clap_audio_parity_non_fusion(clap_ref: tuple[Any, Path], text_model_dir: Path) -> None:
    _clap_parity(clap_ref, text_model_dir)


def test_clap_audio_parity_fusion(clap_fusion_ref: tuple[Any, Path], text_model_dir: Path) -> None:
    _clap_parity(clap_fusion_ref, text_model_dir)


def test_clap_text_parity_and_round_trip(clap_ref: tuple[Any, Path], text_model_dir: Path) -> None:
    module, path = clap_ref
    ct = ClapText.from_config(_opts(path, text_model_dir=text_model_dir))
    own = ct.module.model.state_dict()
    for k, v in module.model.state_dict().items():
        assert torch.equal(v, own[k]), k
    got = ct.embed(TEXTS)
    assert got.shape == (3, 512) and np.isfinite(got).all()
    np.testing.assert_allclose(got, module.get_text_embedding(TEXTS), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(ct.embed(TEXTS), got)


def test_clap_settings_are_checked_against_the_checkpoint(clap_ref: tuple[Any, Path],
                                                          text_model_dir: Path) -> None:
    _m, path = clap_ref
    with pytest.raises(ExtractError, match="non-fusion checkpoint"):
        ClapAudio.resolve(_opts(path, settings={"fusion": "true"}))
    with pytest.raises(ExtractError, match="HTSAT-tiny"):
        ClapAudio.resolve(_opts(path, settings={"amodel": "HTSAT-base"}))
    with pytest.raises(ExtractError, match="not a setting"):
        ClapAudio.resolve(_opts(path, settings={"window": "5"}))
    with pytest.raises(ExtractError, match="--text-model-dir"):
        ClapText.resolve(_opts(path))
    with pytest.raises(ExtractError, match="needs --checkpoint"):
        ClapAudio.resolve(_opts(None))


def test_minilm_text_equals_sentence_transformers_encode() -> None:
    from sentence_transformers import SentenceTransformer

    mb = MiniLMText.from_config(BackboneOptions(device="cpu", batch_size=2))
    got = mb.embed(TEXTS)
    assert got.shape == (3, 384) and np.isfinite(got).all()
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got[:2], axis=1), 1.0, atol=1e-5)  # real weights
    assert float(got[0] @ got[1]) < 0.5  # unrelated sentences are not near-duplicates


def test_random_weights_are_refused_unless_asked(panns_ref: tuple[Any, Path]) -> None:
    _m, path = panns_ref
    with pytest.raises(ExtractError, match="random test weights.*--allow-random-weights"):
        Panns.resolve(BackboneOptions(checkpoint=path))


def test_unsafe_and_broken_checkpoints_fail_with_a_message(tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, unsafe)
    with pytest.raises(ExtractError, match="weights_only=True"):
        Panns.resolve(BackboneOptions(checkpoint=unsafe))
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ExtractError, match="empty"):
        Panns.resolve(BackboneOptions(checkpoint=tmp_path / "empty.pth"))
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ExtractError, match="expected a PANNs checkpoint"):
        Panns.resolve(BackboneOptions(checkpoint=tmp_path / "other.pth"))
