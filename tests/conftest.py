"""Shared fixtures: one small synthetic release for the whole session, and a private cache.

Every test gets its own ``BST_CACHE_DIR`` so that no test reads or writes
``~/.cache/bst-search`` and no test sees another's cache entries. Session- and module-scoped
fixtures that load data run before the per-test fixture, so a session-wide temporary cache
directory is set first as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from procs import free_port, wait_for_lines  # noqa: F401 - shared with test modules

from bst_search.synth import make_synthetic
from bst_search.taxonomy import N_CLASSES

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


# --------------------------------------------------------------------------- fake predictions


def soft_predictions(y: np.ndarray, rng: np.random.Generator, acc: float,
                     truth_bump: float = 0.0) -> np.ndarray:
    """A fake classifier's (n, 23) softmax outputs: a confident bump on the truth for about
    ``acc`` of the rows and on a random class for the rest, over Gaussian noise (its errors
    differ with the generator); ``truth_bump`` adds evidence for the truth on every row."""
    n = len(y)
    target = np.where(rng.random(n) < acc, y, rng.integers(0, N_CLASSES, n))
    z = rng.normal(0, 0.7, (n, N_CLASSES))
    z[np.arange(n), target] += 3.0
    z[np.arange(n), y] += truth_bump
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture(scope="session")
def fake_proba() -> Callable[..., np.ndarray]:
    """:func:`soft_predictions`, for the tests of everything that reads predictions."""
    return soft_predictions


# --------------------------------------------------------------------------- sweeps and browsers



CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1400,1000")


@pytest.fixture(scope="session")
def browser_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where browser tests save screenshots: $BST_TEST_ARTIFACTS, else a temporary folder."""
    env = os.environ.get("BST_TEST_ARTIFACTS")
    path = Path(env) if env else tmp_path_factory.mktemp("browser-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser test screenshots: {path}")
    return path


@pytest.fixture(scope="session")
def chrome(tmp_path_factory: pytest.TempPathFactory):
    """Debian's headless Chromium driven by selenium through chromium-driver (no download);
    skipped, with the reason, on a machine without them."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"browser checks skipped: {', '.join(missing)} not installed "
                    f"(apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("browser checks skipped: selenium is not installed (pip install -e .[dev])")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def small_sweep(tiny_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real smoke sweep of 4 trials through the CLI, then its ensemble (for the report,
    dashboard and browser tests, and stage 1 of the pseudo-label loop: its trials predict the
    crowd set)."""
    import subprocess
    import sys

    from bst_search.ensemble import main as ensemble_main

    wd = tmp_path_factory.mktemp("small-sweep")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BST_OPTUNA_STORAGE")}
    cmd = [sys.executable, "-m", "bst_search.cli", "search", "--data", str(tiny_data["dev"]),
           "--eval-data", str(tiny_data["eval"]), "--crowd-data", str(tiny_data["crowd"]),
           "--space", "smoke",
           "--experiment", "rep", "--trials", "4", "--workdir", str(wd)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rc = ensemble_main(["--experiment", "rep", "--workdir", str(wd), "--eval-data",
                        str(tiny_data["eval"]), "--sk-epochs", "5", "--max-shift", "0.5"])
    assert rc == 0
    return {"workdir": wd, "uri": f"sqlite:///{wd / 'mlflow.db'}", "experiment": "rep",
            "sweep_output": r.stdout, "eval_labels": tiny_data["eval_labels"]}
