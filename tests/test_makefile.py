"""``make clean``: what the Makefile built goes, a user's sweeps under bst-runs/ stay."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_clean_removes_only_what_make_built(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    built = [".venv/bin/python", "bst-runs/site/index.html", "bst-runs/demo/mlflow.db"]
    mine = ["bst-runs/my-sweep/mlflow.db", "bst-runs/ensembles/mine/submission.csv"]
    for rel in built + mine:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    r = subprocess.run(["make", "clean"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not any((tmp_path / d).exists() for d in (".venv", "bst-runs/site", "bst-runs/demo"))
    assert all((tmp_path / rel).read_text() == "x" for rel in mine)
    # an empty bst-runs/ goes too, and a second clean is harmless
    shutil.rmtree(tmp_path / "bst-runs" / "my-sweep")
    shutil.rmtree(tmp_path / "bst-runs" / "ensembles")
    r = subprocess.run(["make", "clean"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (tmp_path / "bst-runs").exists()
    (tmp_path / "elsewhere" / "demo").mkdir(parents=True)
    r = subprocess.run(["make", "clean", "DEMO_DIR=elsewhere/demo"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (tmp_path / "elsewhere" / "demo").exists()
    assert (tmp_path / "elsewhere").is_dir()
