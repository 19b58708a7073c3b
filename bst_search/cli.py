"""``bst-search``: the command line, one subcommand per step of a run (see :data:`DESCRIPTION`).

Each subcommand imports torch, Ray or MLflow only when it runs, so ``--help`` and the data
commands start at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from bst_search.search import add_search_arguments


def _cmd_synth(args: argparse.Namespace) -> int:
    import time

    from bst_search.synth import make_synthetic

    t0 = time.perf_counter()
    paths = make_synthetic(Path(args.out), n=args.n, crowd_n=args.crowd_n, eval_n=args.eval_n,
                           seed=args.seed, progress=True, overwrite=args.overwrite,
                           audio_n=args.audio_n)
    print(f"synthetic BST data written in {time.perf_counter() - t0:.1f}s:")
    for k, v in paths.items():
        print(f"  {k:12s} {v}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from bst_search.data import load_dataset

    ds = load_dataset(Path(args.data), missing=args.missing, progress=True)
    print(f"{ds.name}: {len(ds.ids)} sounds ({'labelled' if ds.labelled else 'unlabelled'}), "
          f"{ds.n_excluded} excluded (top-level-only or *-other), fingerprint {ds.fingerprint}")
    for b, x in ds.features.items():
        print(f"  {b:16s} dim {x.shape[1]}")
    if ds.texts is not None:  # what the meta_probs backbone reads
        from bst_search.data.texts import has_text

        print(f"  {'text':16s} title, tags, description: {int(has_text(ds.text_rows()).sum())} of "
              f"{len(ds.ids)} sounds have some, hash {ds.text_fp}")
    if ds.labelled:
        import numpy as np

        from bst_search.taxonomy import CODES
        counts = np.bincount(ds.y, minlength=len(CODES))
        print("  classes: " + " ".join(f"{c}={n}" for c, n in zip(CODES, counts, strict=True)))
    return 0


def _cmd_trial(args: argparse.Namespace) -> int:
    from bst_search import config
    from bst_search.data import load_dataset
    from bst_search.data.meta_probs import loadable_backbones
    from bst_search.trial import run_trial

    cfg = config.load(args.config, args.set)
    backbones = cfg["backbones"]
    folders = loadable_backbones(backbones, [cfg["meta"]["model"]])  # meta_probs is computed
    dev = load_dataset(Path(args.data), backbones=folders, missing=args.missing, progress=True)
    ev = (load_dataset(Path(args.eval_data), backbones=folders, missing=args.missing, progress=True)
          if args.eval_data else None)
    crowd = (load_dataset(Path(args.crowd_data), backbones=folders, missing=args.missing, progress=True)
             if args.crowd_data else None)
    print(f"trial {cfg['model']['name']} on {', '.join(backbones)}: {len(dev.ids)} sounds, "
          f"{args.folds} folds -> {args.out}")
    m = run_trial(cfg, dev, Path(args.out), eval_data=ev, crowd=crowd, n_folds=args.folds,
                  device=args.device if args.device != "auto" else None, log=print,
                  overwrite=args.overwrite)
    print(f"OOF hF {m['oof_hF']:.4f} (official)  {m['oof_hF_strict']:.4f} (strict)  "
          f"acc {m['oof_acc']:.4f}  top acc {m['oof_top_acc']:.4f}  "
          f"folds {m['fold_hF_mean']:.4f} ± {m['fold_hF_std']:.4f}  wall {m['wall_seconds']:.1f}s")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from bst_search.search import run_search_from_args

    return run_search_from_args(args)


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from bst_search.ensemble import execute

    return execute(args)


def _cmd_pseudo_label(args: argparse.Namespace) -> int:
    from bst_search.ensemble import pseudo_label

    return pseudo_label.main(args)


def _cmd_score(args: argparse.Namespace) -> int:
    from bst_search.ensemble import score_execute

    return score_execute(args)


def _cmd_extract(args: argparse.Namespace) -> int:
    from bst_search.extract.cli import execute

    return execute(args)


def _cmd_report(args: argparse.Namespace) -> int:
    from bst_search.report import run

    return run(args)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from bst_search.dashboard import serve

    return serve(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from bst_search.demo import run_demo

    return run_demo(Path(args.workdir), trials=args.trials)


DESCRIPTION = """Experiment search for DCASE 2026 Task 1 (Broad Sound Taxonomy): Ray Tune runs
Optuna-suggested trials, each a 5-fold cross-validated classifier on frozen embeddings that
logs its out-of-fold predictions to MLflow; an ensemble of the logged trials, with an honest
estimate of its score, becomes the challenge submission.

A run, in order:
  1. extract   audio and metadata text -> embeddings (CLAP, PANNs, MiniLM), once per dataset
               (no data yet? `synth` writes a synthetic dataset in the official layout)
  2. data      check a dataset and cache its embeddings
  3. trial     one configuration, cross-validated (to try a preset or an idea)
  4. search    a sweep over a search space; Ctrl-C or --time-budget stops it resumably
  5. ensemble  greedy selection over the sweep's trials -> submission.csv
  6. report    one self-contained HTML page of the sweep; `dashboard` serves the live views
`demo` does 1 to 6 on synthetic data in a few minutes; `score` checks a submission against
labels."""


def _formatter() -> type[argparse.HelpFormatter]:
    try:
        from rich_argparse import RawDescriptionRichHelpFormatter
    except ImportError:  # the plain one is as complete
        return argparse.RawDescriptionHelpFormatter

    class Formatter(RawDescriptionRichHelpFormatter):
        group_name_formatter = str  # "usage:", "options:" as argparse writes them

    return Formatter


def build_parser() -> argparse.ArgumentParser:
    fmt = _formatter()
    p = argparse.ArgumentParser(prog="bst-search", description=DESCRIPTION, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func: Callable[[argparse.Namespace], int]
                ) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help, formatter_class=fmt)
        s.set_defaults(func=func)
        return s

    from bst_search.extract.cli import add_arguments as add_extract_arguments

    s = command("extract", "audio + metadata text -> backbone embeddings (CLAP, PANNs, MiniLM)",
                _cmd_extract)
    add_extract_arguments(s)

    s = command("synth", "write a synthetic dataset in the official layout", _cmd_synth)
    s.add_argument("--out", required=True, help="folder to write dev/, eval/, crowd/ into")
    s.add_argument("--n", type=int, default=11000, help="development sounds (default 11000)")
    s.add_argument("--crowd-n", type=int, default=0, help="crowd sounds (default 0: none)")
    s.add_argument("--eval-n", type=int, default=3246, help="evaluation sounds (default 3246)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    s.add_argument("--audio-n", type=int, default=0,
                   help="also write audio_demo/: generated clips to try bst-search extract on")

    s = command("data", "load, validate and cache a dataset; print a summary", _cmd_data)
    s.add_argument("--data", required=True, help="dataset root (official layout)")
    s.add_argument("--missing", choices=("error", "drop", "zero"), default="error",
                   help="a sound without an embedding file: error (default), drop it, or zeros")

    s = command("trial", "run one cross-validated trial", _cmd_trial)
    s.add_argument("--data", required=True, help="development dataset root")
    s.add_argument("--config", default="baseline_hatr", help="YAML file or preset name")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key (repeatable)")
    s.add_argument("--out", required=True, help="folder for the trial's outputs")
    s.add_argument("--overwrite", action="store_true", help="replace another trial's outputs")
    s.add_argument("--eval-data", help="evaluation dataset root: the trial also predicts it")
    s.add_argument("--crowd-data", help="crowd dataset root, for data.crowd other than none")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--missing", choices=("error", "drop", "zero"), default="error")
    s.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")

    s = command("search", "run (or resume) a Ray Tune + Optuna sweep", _cmd_search)
    add_search_arguments(s)  # the parser lives with its command (bst_search.search.cli)

    from bst_search.ensemble.cli import add_arguments
    from bst_search.ensemble.submission import add_score_arguments

    s = command("ensemble", "ensemble selection over an experiment's trials -> submission",
                _cmd_ensemble)
    add_arguments(s)

    from bst_search.ensemble import pseudo_label

    s = command("pseudo-label", "soft labels of the crowd set from a stage-1 ensemble, per fold",
                _cmd_pseudo_label)
    pseudo_label.add_arguments(s)

    from bst_search import dashboard, report

    s = command("report", "self-contained HTML report of a sweep (MLflow + Optuna)", _cmd_report)
    report.add_arguments(s)

    s = command("dashboard", "MLflow UI + optuna-dashboard on a (running) sweep", _cmd_dashboard)
    dashboard.add_arguments(s)

    s = command("score", "score a submission CSV against a label file (official metric)",
                _cmd_score)
    add_score_arguments(s)

    s = command("demo", "synthetic data -> small sweep -> ensemble -> report", _cmd_demo)
    s.add_argument("--workdir", default="bst-runs/demo")
    s.add_argument("--trials", type=int, default=8)
    return p


def main(argv: list[str] | None = None) -> int:
    from bst_search.config import ConfigError
    from bst_search.data import DataError
    from bst_search.search.space import SpaceError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, SpaceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
