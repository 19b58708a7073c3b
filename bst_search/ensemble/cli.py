"""``python -m bst_search.ensemble`` / ``bst-search ensemble``: arguments and entry points.

The coordinator's steps are in :mod:`bst_search.ensemble.run`, what it writes and prints in
:mod:`bst_search.ensemble.summary`; this module only parses and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import sys

from bst_search.ensemble.candidates import CandidateError
from bst_search.ensemble.methods import DEFAULT_METHOD, METHODS
from bst_search.ensemble.submission import DEFAULT_MAX_SHIFT
from bst_search.tracking.stores import add_store_arguments


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of the ensemble coordinator (reused by ``bst-search ensemble``)."""
    add_store_arguments(parser, optuna=False)  # the coordinator reads MLflow only
    parser.add_argument("--out", default=None,
                        help="output dir (default <workdir>/ensembles/<experiment>)")
    parser.add_argument("--eval-data", default=None,
                        help="evaluation dataset root; its metadata fixes the submission id order")
    parser.add_argument("--metric", choices=["strict", "official"], default="strict",
                        help="hF variant to maximise (default strict: cannot be gamed by never "
                             "predicting a class)")
    parser.add_argument("--init-size", type=int, default=0,
                        help="start from the N best single candidates (default 0)")
    parser.add_argument("--max-size", type=int, default=50, help="ensemble size limit (default 50)")
    parser.add_argument("--top-k", type=int, default=1000,
                        help="pre-select the K best single candidates before the greedy steps, "
                             "inside every selection (default 1000; 0 = all); only they are "
                             "read into memory")
    parser.add_argument("--diversity", type=float, default=0.01,
                        help="with --top-k: skip a candidate whose right/wrong pattern differs "
                             "from a better kept one's on fewer than this fraction of the rows "
                             "(default 0.01; 0 = plain top-k)")
    parser.add_argument("--store-dtype", choices=["auto", "float16", "float32"], default="auto",
                        help="precision of the on-disk candidate store (default auto: float32 "
                             "up to --top-k candidates, float16 above; 10,000 candidates x "
                             "11,000 rows = 5 GB of disk, not of memory)")
    parser.add_argument("--bags", type=int, default=1,
                        help="bagged selection over random candidate subsets (default 1: off)")
    parser.add_argument("--bag-fraction", type=float, default=0.5,
                        help="fraction of the candidates in each bag (default 0.5)")
    parser.add_argument("--weights", choices=["none", "nelder-mead"], default="none",
                        help="optimise the members' weights with Nelder-Mead after each step")
    parser.add_argument("--nm-maxfev", type=int, default=100,
                        help="Nelder-Mead evaluations per step (default 100)")
    parser.add_argument("--combine", choices=["prob", "logit"], default="prob",
                        help="average probabilities (default) or log-probabilities")
    parser.add_argument("--max-shift", type=float, default=DEFAULT_MAX_SHIFT,
                        help="largest eval-vs-OOF total variation distance of predicted classes "
                             f"allowed in a submission (default {DEFAULT_MAX_SHIFT})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the bagging and of the SK fusers (default 0)")
    parser.add_argument("--method", choices=list(METHODS), default=DEFAULT_METHOD,
                        help="what the submission, oof/eval parquets and ensemble.json members "
                             f"come from, one of the registered methods ({', '.join(METHODS)}; "
                             "greedy: greedy forward selection, the default; sk: cross-fitted "
                             "selective-kernel fusion, from MESH; exhaustive: the best "
                             "equal-weight subset of the top candidates); all are scored "
                             "either way")
    parser.add_argument("--exhaustive-top", type=int, default=12,
                        help="exhaustive: subsets of the N best single candidates, ranked on "
                             "the training folds inside the honest estimate (default 12)")
    parser.add_argument("--exhaustive-max-size", type=int, default=4,
                        help="exhaustive: every subset of 1..S of them is scored with equal "
                             "weights (default 4: 793 subsets of 12); --combine applies")
    parser.add_argument("--sk-top", type=int, default=10,
                        help="SK fuses the N best single candidates, ranked on the training "
                             "folds of each cross-fit fold (default 10); bounds its cost")
    parser.add_argument("--sk-epochs", type=int, default=30,
                        help="SK fuser training epochs (default 30)")
    parser.add_argument("--sk-device", default="auto",
                        help="SK fuser device: auto (CUDA when present), cpu, cuda[:N] "
                             "(default auto; CPU runs are bit-for-bit repeatable)")
    parser.add_argument("--no-honest", action="store_true",
                        help="skip the nested-CV honest estimate (not recommended)")
    parser.add_argument("--data-fp", default=None,
                        help="use this data fingerprint (default: the majority's)")
    parser.add_argument("--fold-fp", default=None,
                        help="use this fold fingerprint (default: the majority's)")
    parser.add_argument("--no-log", action="store_true", help="do not log an MLflow run")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; 0 on success, 1 when the submission was refused, 2 on errors."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m bst_search.ensemble",
        description="Ensemble selection (greedy, exhaustive, SK fusion) over the trials "
                    "of one experiment."))
    return execute(parser.parse_args(argv))


def execute(args: argparse.Namespace) -> int:
    """Run on arguments parsed with :func:`add_arguments` (e.g. by a ``bst-search`` subparser)."""
    from bst_search.ensemble.run import run

    try:
        return run(args)
    except (CandidateError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
