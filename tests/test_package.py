"""The package as a user installs it: the wheel, outside the source tree, and the image's pip lines.

Every other test runs in the editable install, which reads files beside the package. Here the
wheel is built from a copy of the sources, installed with ``--no-deps`` into a folder of its
own (the environment's dependencies stay, the checkout's ``bst_search`` does not), and run
from another working directory.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip"]
# the store and work-dir variables a developer may have set would point the commands elsewhere
STORE_ENV = ("PYTHONPATH", "MLFLOW_TRACKING_URI", "BST_OPTUNA_STORAGE", "BST_WORKDIR")


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (f"{' '.join(cmd)} exited {p.returncode}:\n"
                               f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def package_data(pkg: Path) -> set[str]:
    """Every file of the package that is not Python source: what the wheel must carry."""
    return {str(p.relative_to(pkg.parent)) for p in pkg.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy (a build in the checkout would leave build/ there)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "bst_search", src / "bst_search",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    # the environment's setuptools builds it: no index needed
    _run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
         cwd=src)
    (whl,) = out.glob("bst_search-*.whl")
    return whl


def test_wheel_carries_every_package_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    data = package_data(ROOT / "bst_search")
    assert {"bst_search/search_spaces/demo.yaml", "bst_search/presets/late_fusion.yaml",
            "bst_search/report/templates/report.html.j2",
            "bst_search/report/templates/report.css"} <= data
    missing = sorted(data - names)
    assert not missing, f"{wheel.name}: package files left out of the wheel: {missing}"
    py = {str(p.relative_to(ROOT)) for p in (ROOT / "bst_search").rglob("*.py")}
    assert not sorted(py - names), f"{wheel.name}: modules left out: {sorted(py - names)[:5]}"


def test_installed_wheel_runs_demo_and_report(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    _run([*PIP, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
         cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in STORE_ENV}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install's finder on sys.path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([sys.executable, "-c", "import bst_search, bst_search.search.space.parse as p; "
                  "print(bst_search.__file__); print(p.SPACE_DIR)"], cwd=elsewhere, env=env)
    for line in where.stdout.split():
        assert Path(line).is_relative_to(site), f"resolved to {line}, not the installed wheel"

    cli = str(site / "bin" / "bst-search")
    work = tmp_path / "work"
    demo = _run([cli, "demo", "--trials", "2", "--workdir", str(work)], cwd=elsewhere, env=env)
    assert "report:" in demo.stdout.splitlines()[-1]
    assert (work / "ensembles" / "demo" / "submission.csv").is_file()

    out = tmp_path / "report.html"
    _run([cli, "report", "--experiment", "demo", "--workdir", str(work), "--out", str(out),
          "--no-log"], cwd=elsewhere, env=env)
    html = out.read_text()
    css = (ROOT / "bst_search" / "report" / "templates" / "report.css").read_text()
    assert css.splitlines()[1] in html  # the packaged stylesheet, inlined
    assert str(ROOT / "bst_search") not in demo.stdout + demo.stderr + html, "the checkout was used"


# --- the image's pip lines, replayed without a Docker daemon -------------------------------

def dockerfile_steps(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` per instruction: continuations joined, comments dropped."""
    steps, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not buf and not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        instr, _, rest = (buf + line).strip().partition(" ")
        steps.append((instr.upper(), rest.strip()))
        buf = ""
    return steps


def overlay_of(site: Path, dest: Path, leave_out: tuple[str, ...]) -> Path:
    """A folder of links to ``site``'s packages, minus ``leave_out``: the packages the image's
    earlier layers already hold (torch above all, a large download), without the ones under test."""
    dest.mkdir()
    for p in site.iterdir():
        if not p.name.startswith(leave_out) and p.suffix != ".pth":
            (dest / p.name).symlink_to(p)
    return dest


def replay(dockerfile: Path, image: Path, env: dict[str, str]) -> list[str]:
    """Run the Dockerfile's ARG, ENV, WORKDIR, COPY and every RUN that installs with pip,
    with ``image`` as the image's root; the RUN lines run, in order, with /bin/sh as Docker's."""
    args: dict[str, str] = {}
    workdir, ran = image, []
    image.mkdir()
    for instr, rest in dockerfile_steps(dockerfile.read_text()):
        if instr == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        elif instr == "ENV":
            env.update(kv.split("=", 1) for kv in shlex.split(rest))
        elif instr == "WORKDIR":
            workdir = image / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instr == "COPY":
            *srcs, dest = shlex.split(rest)
            for s in srcs:
                src, to = ROOT / s, workdir / dest
                if src.is_dir():
                    shutil.copytree(src, to, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(src, to / src.name if dest.endswith("/") else to)
        elif instr == "RUN" and "pip install" in rest:
            _run(["/bin/sh", "-c", rest], cwd=workdir, env={**env, **args}, timeout=900)
            ran.append(rest)
    return ran


def test_dockerfile_pip_lines_install_extraction_in_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    vpy = venv / "bin" / "python"
    vsite = Path(_run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                      cwd=tmp_path).stdout.strip())
    here = Path(sysconfig.get_path("purelib"))  # this environment's packages
    overlay = overlay_of(here, tmp_path / "overlay", (
        "bst_search", "__editable__", "laion_clap", "pip", "setuptools", "_distutils_hack"))
    (vsite / "zz_overlay.pth").write_text(f"{overlay}\n")  # after the venv's own packages

    env = {k: v for k, v in os.environ.items() if k not in STORE_ENV and k != "VIRTUAL_ENV"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"  # `pip`, `python`, `bst-search`
    ran = replay(ROOT / "docker" / "Dockerfile", tmp_path / "image", env)
    assert any(".[extract,auth]" in r and "--no-deps laion-clap==" in r for r in ran), ran

    probe = ("import importlib.util, bst_search, numpy\n"
             "from bst_search.extract.compat import laion_clap_environment\n"
             "with laion_clap_environment(None) as lc:\n"
             "    print(bst_search.__file__, lc.__file__, numpy.__version__)\n")
    out = _run([str(vpy), "-c", probe], cwd=tmp_path, env=env).stdout.split()
    pkg, clap, np_version = out[-3:]
    assert Path(pkg).is_relative_to(vsite) and Path(clap).is_relative_to(vsite), out
    assert int(np_version.split(".")[0]) >= 2, f"numpy {np_version}: laion-clap's pin won"
