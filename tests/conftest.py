"""Shared fixtures: one small synthetic release for the whole session, and a private cache.

Every test gets its own ``BST_CACHE_DIR`` so that no test reads or writes
``~/.cache/bst-search`` and no test sees another's cache entries. Session- and module-scoped
fixtures that load data run before the per-test fixture, so a session-wide temporary cache
directory is set first as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bst_search.synth import make_synthetic

CACHE_ENV = "BST_CACHE_DIR"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tests train many tiny models: one intra-op thread is faster and steadier on a shared
    2-core machine than two threads contending with the other processes."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache directory for fixtures wider than one test (module or session scope)."""
    path = tmp_path_factory.mktemp("bst-cache-session")
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own feature cache directory (also exported as ``BST_CACHE_DIR``)."""
    path = tmp_path / "bst-cache"
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small synthetic release: dev (800), crowd (300) and eval (200) sets, seed 0.

    Read-only by convention: a test that wants to damage data copies it first.
    """
    out = tmp_path_factory.mktemp("tiny-data")
    return make_synthetic(out, n=800, crowd_n=300, eval_n=200, seed=0)
