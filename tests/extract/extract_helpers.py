"""Helpers of the extraction tests (imported by conftest and the test modules)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import netguard
import numpy as np
import pytest

HERE = Path(__file__).parent


@contextlib.contextmanager
def offline(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("HF_HOME", str(home / "hf"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        netguard.install()
        try:
            yield
        finally:
            netguard.uninstall()


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.4) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t) + 0.05 * np.sin(2 * np.pi * 3.1 * freq * t)).astype(np.float32)


def write_clip(path: Path, x: np.ndarray, rate: int, subtype: str | None = None) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, subtype=subtype)
    return path


def subprocess_env(home: Path) -> dict[str, str]:
    """Environment for a child ``bst-search``: offline, private $HOME, this repo importable."""
    env = dict(os.environ)
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parents[1]),
                                           env.get("PYTHONPATH", "")]))
    return env


GUARDED_CLI = ("import sys, netguard; netguard.install(); from bst_search.cli import main; "
               "sys.exit(main(sys.argv[1:]))")
