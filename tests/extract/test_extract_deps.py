"""``bst-search extract`` checks its dependencies first and prints the commands that fix them."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bst_search.cli import main
from bst_search.extract import deps
from bst_search.extract.backbones import BACKBONES

ROOT = Path(__file__).resolve().parents[2]
ALL = ["clap_audio", "clap_text", "panns", "minilm_text"]


def _numpy(monkeypatch: pytest.MonkeyPatch, version: str, laion_clap: bool = True) -> None:
    real = metadata.version

    def fake(dist: str) -> str:
        if dist == "numpy":
            return version
        if dist == "laion-clap" and not laion_clap:
            raise metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(metadata, "version", fake)


def _extract(tmp_path: Path, capsys: pytest.CaptureFixture, *backbones: str) -> tuple[int, str]:
    argv = ["extract", "--data", str(tmp_path / "data"), "--quiet"]
    for b in backbones:
        argv += ["--backbone", b]
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_this_environment_has_every_backbones_dependencies() -> None:
    deps.check_dependencies(ALL)  # a module name in NEEDS that no package provides fails here


def test_every_backbone_has_its_needs_and_they_are_in_the_extract_extra() -> None:
    assert set(deps.NEEDS) == set(BACKBONES), "a backbone without its dependencies"
    reqs = [Requirement(r) for r in metadata.requires("bst-search") or []]
    listed = {canonicalize_name(r.name) for r in reqs
              if r.marker is not None and r.marker.evaluate({"extra": "extract"})}
    needed = {dist for needs in deps.NEEDS.values() for dist in needs.values()}
    assert needed - listed == {"laion-clap"}, "pyproject's extract extra lacks a dependency"


def test_missing_laion_clap_stops_extract_with_the_install_commands(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "laion_clap", None)  # find_spec now reports it missing
    rc, err = _extract(tmp_path, capsys, "clap_audio", "panns")
    assert rc == 2
    lines = err.splitlines()
    assert lines[0] == ("error: bst-search extract --backbone clap_audio --backbone panns: "
                        "this environment cannot run it")
    assert "  laion_clap is not installed (distribution laion-clap), needed by clap_audio" in lines
    py = sys.executable
    extra = f"  {py} -m pip install -e '{ROOT}[extract]'"  # a source checkout: editable
    no_deps = f"  {py} -m pip install --no-deps laion-clap==1.1.7"
    assert lines.index(extra) < lines.index(no_deps) == len(lines) - 1
    assert not (tmp_path / "data").exists()  # stopped before touching anything


def test_only_the_requested_backbones_are_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "laion_clap", None)
    monkeypatch.setitem(sys.modules, "panns_inference", None)
    deps.check_dependencies(["minilm_text"])  # needs neither
    rc, err = _extract(tmp_path, capsys, "panns")
    assert rc == 2
    assert "panns_inference is not installed (distribution panns-inference), needed by panns" in err
    assert "laion" not in err  # panns does not need laion-clap: no command for it


def test_numpy_downgraded_by_laion_clap_pin(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    _numpy(monkeypatch, "1.26.4")
    rc, err = _extract(tmp_path, capsys, "clap_text")
    assert rc == 2
    assert "numpy 1.26.4 is installed: laion-clap was installed with its dependencies" in err
    cmds = [line.strip() for line in err.splitlines() if " -m pip install " in line]
    assert cmds[0] == f"{sys.executable} -m pip install --upgrade 'numpy>=2'"
    assert cmds[-1].endswith("-m pip install --no-deps laion-clap==1.1.7")


def test_numpy_1_without_laion_clap_is_no_downgrade(monkeypatch: pytest.MonkeyPatch) -> None:
    _numpy(monkeypatch, "1.26.4", laion_clap=False)
    assert deps.numpy_downgraded() is None
    _numpy(monkeypatch, "2.0.0")
    assert deps.numpy_downgraded() is None


def test_installed_from_a_wheel_the_command_names_the_package(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    monkeypatch.setattr(deps, "__file__", str(site / "bst_search" / "extract" / "deps.py"))
    cmds = deps.install_commands(["clap_audio"], numpy_fix=False)
    assert cmds == [f"{sys.executable} -m pip install 'bst-search[extract]'",
                    f"{sys.executable} -m pip install --no-deps laion-clap==1.1.7"]
