"""``bst-search report``: one self-contained HTML page per sweep, opened instead of logs.

It opens with what a reader came for: the estimate to believe, the best trials and the
ensemble; sweep bookkeeping comes after them. Data come from the sweep's MLflow experiment and
its Optuna study, read-only, so it is safe beside a running sweep.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bst_search.report.load import DEFAULT_UI, load_sweep
from bst_search.report.render import log_to_ensemble_run, write_report
from bst_search.tracking.stores import StoreError, add_store_arguments


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_store_arguments(p)
    p.add_argument("--out", help="output HTML file (default <workdir>/reports/<experiment>.html)")
    p.add_argument("--eval-labels", help="id,class CSV of the evaluation set: scores the "
                                         "ensemble's submission")
    p.add_argument("--ui-url", help=f"MLflow UI address the run links point to (default "
                                    f"{DEFAULT_UI}, or the tracking server)")
    p.add_argument("--no-log", action="store_true",
                   help="do not attach the report to the ensemble's MLflow run")
    return p


def run(args: argparse.Namespace) -> int:
    """Build, write and log the report; 2 with a one-line error when it cannot be built."""
    t0 = time.perf_counter()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        s = load_sweep(args.experiment, tracking_uri=args.tracking_uri, workdir=args.workdir,
                       optuna_storage=args.optuna_storage, ui_base=args.ui_url,
                       eval_labels=args.eval_labels)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.workdir) / "reports" / f"{args.experiment}.html"
    path = write_report(s, out)
    run_id = None if args.no_log else log_to_ensemble_run(s, path)
    for m in s.missing:
        print(f"note: {m}")
    print(f"report of {len(s.trials)} trial runs ({len(s.complete)} complete) written in "
          f"{time.perf_counter() - t0:.1f} s, {path.stat().st_size / 1e6:.1f} MB"
          + (f"; logged to ensemble run {run_id}" if run_id else ""))
    print(f"report: {path.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(add_arguments(argparse.ArgumentParser(prog="bst-search report",
                                                     description=__doc__)).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
