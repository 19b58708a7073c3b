"""The offline compatibility layer: stand-ins match their references, and stay scoped."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from netguard import NetworkBlocked

from bst_search.extract.compat import (
    AmplitudeToDB,
    MelSpectrogram,
    OfflineError,
    laion_clap_environment,
    mel_filterbank,
    panns_models,
)


def test_network_is_blocked_during_extraction_tests() -> None:
    with pytest.raises(NetworkBlocked):
        urllib.request.urlopen("http://example.org/model.bin", timeout=2)


def test_mel_stand_in_matches_librosa_htk_melspectrogram() -> None:
    """laion_clap's fusion front end (torchaudio MelSpectrogram + AmplitudeToDB with its
    settings) against librosa, which laion_clap names as the reference it aligns to."""
    import librosa

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(48_000) * 0.1).astype(np.float32)
    cfg = {"sample_rate": 48_000, "window_size": 1024, "hop_size": 480, "mel_bins": 64,
           "fmin": 50, "fmax": 14_000}
    mel = MelSpectrogram(sample_rate=cfg["sample_rate"], n_fft=1024, win_length=1024, hop_length=480,
                         center=True, pad_mode="reflect", power=2.0, norm=None, onesided=True,
                         n_mels=64, f_min=50, f_max=14_000)(torch.from_numpy(x))
    ref = librosa.feature.melspectrogram(y=x, sr=48_000, n_fft=1024, hop_length=480,
                                         win_length=1024, center=True, pad_mode="reflect",
                                         power=2.0, n_mels=64, norm=None, htk=True,
                                         fmin=50, fmax=14_000)
    assert mel.shape == ref.shape
    np.testing.assert_allclose(mel.numpy(), ref, rtol=1e-3, atol=1e-6)
    db = AmplitudeToDB(top_db=None)(mel)
    np.testing.assert_allclose(db.numpy(), 10 * np.log10(np.maximum(ref, 1e-10)), atol=2e-3)
    fb = mel_filterbank(513, 50, 14_000, 64, 48_000)
    assert fb.shape == (513, 64) and (fb >= 0).all()


def test_laion_clap_imports_offline_and_its_stand_ins_do_not_leak(offline_home: Path) -> None:
    with laion_clap_environment() as lc:
        assert hasattr(lc, "CLAP_Module")
        import torchvision.transforms
        with pytest.raises(OfflineError):
            torchvision.transforms.Resize(size=[10, 10])
        from transformers import RobertaModel
        with pytest.raises(OfflineError, match="only 'roberta-base'"):
            RobertaModel.from_pretrained("some-org/other-model")
    assert "torchvision" not in sys.modules and "torchaudio" not in sys.modules
    assert "wget" not in sys.modules
    assert not any("laion_clap" in p for p in sys.path)
    from transformers import RobertaModel
    assert "bst_search" not in getattr(RobertaModel.from_pretrained, "__module__", "")


def test_panns_models_import_without_the_package_side_effects(offline_home: Path) -> None:
    mod = panns_models()
    assert hasattr(mod, "Cnn14")
    assert "panns_inference" not in sys.modules  # its __init__ (wget at import) never ran
    assert not (offline_home / "panns_data").exists()
