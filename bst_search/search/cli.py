"""``bst-search search`` and ``launch/search.py``: the sweep's arguments, its summary, exit codes.

The parser imports nothing heavy (Ray, Optuna and MLflow load when a sweep runs): its choices
come from the sampler and scheduler registries.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from bst_search.search.driver import run_search
from bst_search.search.plan import FOLDS_DEFAULT, SEED_DEFAULT, TRIALS_DEFAULT
from bst_search.search.samplers import SAMPLERS
from bst_search.search.schedulers import SCHEDULERS
from bst_search.search.summary import exit_code, print_summary
from bst_search.tracking.stores import add_store_arguments

DESCRIPTION = """Run (or resume) a sweep: Ray Tune runs Optuna-suggested trials, each a
cross-validated experiment on frozen embeddings, and logs every trial to MLflow. Ctrl-C or
--time-budget leaves the sweep resumable with --resume; then run the ensemble and the report
the summary names."""
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1.5h``, ``2d`` as seconds (argparse type of --time-budget)."""
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration (90s, 30m, 1h)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``bst-search search`` and ``launch/search.py``.

    Those a sweep fixes (``--folds``, ``--seed``, ``--concurrency``, ``--scheduler``, the
    resources, ``--tracking-uri``, ``--tune-storage``) default to the stored sweep's values on
    ``--resume``; a different explicit value is refused.
    """
    p.add_argument("--data", required=True, help="development dataset root (official layout)")
    p.add_argument("--eval-data", help="evaluation dataset root: trials also predict it")
    p.add_argument("--crowd-data", help="crowd dataset root, for data.crowd other than none; "
                                        "every trial also predicts it (crowd.parquet)")
    p.add_argument("--pseudo-labels", metavar="DIR",
                   help="stage 2: the folder `bst-search pseudo-label` wrote, for data.crowd: "
                        "pseudo (checked against the data and folds before any trial)")
    p.add_argument("--space", required=True, help="search space: a packaged one by name (demo, mesh, baseline, smoke) or a YAML file")
    p.add_argument("--experiment", required=True, help="MLflow experiment = sweep name")
    p.add_argument("--trials", type=int,
                   help=f"trials in the sweep (default {TRIALS_DEFAULT}, or as many as fit in "
                        "--time-budget; with --resume, more than before extends the sweep)")
    p.add_argument("--time-budget", type=duration_s, metavar="DURATION",
                   help="end the sweep cleanly after this long (90s, 30m, 1h): running trials "
                        "stop resumable, as with Ctrl-C, and the command exits 0")
    p.add_argument("--concurrency", type=int, help="trials at once (default: as resources allow)")
    p.add_argument("--cpus-per-trial", type=float, help="override the space's resources.cpu")
    p.add_argument("--gpus-per-trial", type=float, help="override the space's resources.gpu")
    add_store_arguments(p, experiment=False)
    p.add_argument("--tune-storage", help="Ray Tune storage every node writes: s3://BUCKET/PREFIX"
                   "[?endpoint_override=HOST:PORT], gs://BUCKET/PREFIX, or a path / file:// URI "
                   "(with --address only with --shared-fs); default: $BST_TUNE_STORAGE, else "
                   "<workdir>/tune")
    p.add_argument("--shared-fs", action="store_true",
                   help="a path --tune-storage is mounted on every node (NFS, or all nodes on "
                        "one machine): allow it with --address")
    p.add_argument("--address", help="join this Ray cluster ('auto': the one started on this "
                   "machine); default: a private local Ray")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep from the shared state (study, Tune storage)")
    p.add_argument("--scheduler", choices=tuple(SCHEDULERS),
                   help="early stopping on per-fold results (default: the space's, else asha)")
    p.add_argument("--folds", type=int, help=f"cross-validation folds (default {FOLDS_DEFAULT})")
    p.add_argument("--holdout-fraction", type=float, default=0.0, metavar="F",
                   help="set a stratified fraction F of the development rows aside before the "
                        "folds are drawn: no trial trains, validates or is scored on it, no "
                        "ensemble selection sees it; the ensemble scores it once (default 0)")
    p.add_argument("--seed", type=int, help=f"seed of the sampler (default {SEED_DEFAULT})")
    p.add_argument("--sampler", choices=tuple(SAMPLERS),
                   help="Optuna sampler (default tpe: constant-liar TPE)")
    p.add_argument("--warm-start", metavar="EXPERIMENT",
                   help="first evaluate the best configurations of this earlier experiment")
    p.add_argument("--warm-start-n", type=int, default=5, metavar="N",
                   help="how many of them (default 5)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial")
    p.add_argument("--missing", choices=("error", "drop", "zero"), default="error")
    p.add_argument("--verbose", action="store_true",
                   help="Ray Tune's own trial table and Ray's log lines, instead of the "
                        "sweep's progress view")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bst-search search", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_search_arguments(p)
    return p


def run_search_from_args(args: argparse.Namespace) -> int:
    from bst_search.search.state import SweepStateError
    from bst_search.search.storage import StorageError
    from bst_search.tracking.redact import mask_text

    try:
        summary = run_search(args)
    except (SweepStateError, StorageError) as e:
        secrets = (args.optuna_storage, os.environ.get("BST_OPTUNA_STORAGE"), args.tracking_uri)
        print(f"error: {mask_text(str(e), *secrets)}", file=sys.stderr)
        return 2
    print_summary(summary, args.experiment)
    return exit_code(summary)


def main(argv: list[str] | None = None) -> int:
    return run_search_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
