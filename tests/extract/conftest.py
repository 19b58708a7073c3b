"""Fixtures of the extraction tests: offline by construction, test weights built once.

Every extraction test module runs with sockets blocked (loopback excepted) and ``$HOME`` in a
temporary folder (module scope, undone afterwards so the rest of the suite is unaffected);
the session fixtures that build test weights do the same while they build. Test weights are
the real model classes with seeded random weights, saved in the real checkpoint formats.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # netguard and extract_helpers, also for children
from extract_helpers import offline  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def offline_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    with offline(home):
        yield home
    # nothing may have been downloaded into $HOME (panns_inference's import would leave
    # panns_data/, a hub load .cache/huggingface/)
    leftovers = [str(p.relative_to(home)) for p in home.rglob("*")
                 if p.is_file() and "matplotlib" not in p.parts  # its font cache is no download
                 and ".ray" not in p.parts]  # nor is Ray's local auth token
    assert not leftovers, f"files written to $HOME during extraction tests: {leftovers}"


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def text_model_dir(weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bst_search.extract.testing import write_tiny_roberta

    with offline(tmp_path_factory.mktemp("home-w")):
        return write_tiny_roberta(weights_dir / "roberta-tiny")


@pytest.fixture(scope="session")
def panns_ref(weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """(Cnn14 with seeded random weights, its checkpoint file in the release format)."""
    from bst_search.extract.backbones import random_cnn14, save_panns_checkpoint

    with offline(tmp_path_factory.mktemp("home-w")):
        model = random_cnn14(seed=3)
        return model, save_panns_checkpoint(model, weights_dir / "Cnn14_random.pth", seed=3)


def _clap(weights_dir: Path, text_model_dir: Path, home: Path, fusion: bool) -> tuple[Any, Path]:
    from bst_search.extract.backbones import (
        BackboneOptions,
        random_clap_module,
        save_clap_checkpoint,
    )

    opts = BackboneOptions(text_model_dir=text_model_dir,
                           settings={"amodel": "HTSAT-tiny", "fusion": str(fusion).lower()})
    with offline(home):
        module = random_clap_module(seed=5, opts=opts)
        return module, save_clap_checkpoint(module, weights_dir / f"clap_random_f{int(fusion)}.pt", 5)


@pytest.fixture(scope="session")
def clap_ref(weights_dir: Path, text_model_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """(laion_clap.CLAP_Module, non-fusion HTSAT-tiny with random weights; its checkpoint)."""
    return _clap(weights_dir, text_model_dir, tmp_path_factory.mktemp("home-w"), fusion=False)


@pytest.fixture(scope="session")
def clap_fusion_ref(weights_dir: Path, text_model_dir: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    return _clap(weights_dir, text_model_dir, tmp_path_factory.mktemp("home-w"), fusion=True)
