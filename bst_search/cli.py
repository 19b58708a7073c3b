"""``bst-search`` command line: synth, data, trial, search, ensemble, score, extract, report,
dashboard, demo.

Heavy imports (torch, ray, mlflow) happen inside the subcommands so that ``--help`` and
data-only commands start quickly.
"""

from __future__ import annotations

import argparse
import sys
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
    if ds.labelled:
        import numpy as np

        from bst_search.taxonomy import CODES
        counts = np.bincount(ds.y, minlength=len(CODES))
        print("  classes: " + " ".join(f"{c}={n}" for c, n in zip(CODES, counts, strict=True)))
    return 0


def _cmd_trial(args: argparse.Namespace) -> int:
    from bst_search import config
    from bst_search.data import load_dataset
    from bst_search.trial import run_trial

    cfg = config.load(args.config, args.set)
    backbones = cfg["backbones"]
    dev = load_dataset(Path(args.data), backbones=backbones, missing=args.missing, progress=True)
    ev = (load_dataset(Path(args.eval_data), backbones=backbones, missing=args.missing, progress=True)
          if args.eval_data else None)
    crowd = (load_dataset(Path(args.crowd_data), backbones=backbones, missing=args.missing, progress=True)
             if args.crowd_data else None)
    print(f"trial {cfg['model']['name']} on {', '.join(backbones)}: {len(dev.ids)} sounds, "
          f"{args.folds} folds -> {args.out}")
    m = run_trial(cfg, dev, Path(args.out), eval_data=ev, crowd=crowd, n_folds=args.folds,
                  device=args.device if args.device != "auto" else None, log=print)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bst-search", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic dataset in the official layout")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=11000)
    s.add_argument("--crowd-n", type=int, default=0)
    s.add_argument("--eval-n", type=int, default=3246)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--audio-n", type=int, default=0,
                   help="also write audio_demo/: generated clips to try bst-search extract on")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("data", help="load, validate and cache a dataset; print a summary")
    s.add_argument("--data", required=True)
    s.add_argument("--missing", choices=("error", "drop", "zero"), default="error")
    s.set_defaults(func=_cmd_data)

    s = sub.add_parser("trial", help="run one cross-validated trial")
    s.add_argument("--data", required=True, help="development dataset root")
    s.add_argument("--config", default="baseline_hatr", help="YAML file or preset name")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key (repeatable)")
    s.add_argument("--out", required=True)
    s.add_argument("--eval-data")
    s.add_argument("--crowd-data")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--missing", choices=("error", "drop", "zero"), default="error")
    s.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    s.set_defaults(func=_cmd_trial)

    s = sub.add_parser("search", help="run a Ray Tune + Optuna sweep")
    add_search_arguments(s)  # the parser lives with its command (bst_search.search)
    s.set_defaults(func=_cmd_search)

    from bst_search.ensemble.cli import add_arguments
    from bst_search.ensemble.submission import add_score_arguments

    s = sub.add_parser("ensemble", help="greedy ensemble selection over an experiment's trials")
    add_arguments(s)
    s.set_defaults(func=_cmd_ensemble)

    s = sub.add_parser("score", help="score a submission CSV against a label file (official metric)")
    add_score_arguments(s)
    s.set_defaults(func=_cmd_score)

    from bst_search.extract.cli import add_arguments as add_extract_arguments

    s = sub.add_parser("extract", help="audio + metadata text -> backbone embeddings (CLAP, PANNs, MiniLM)")
    add_extract_arguments(s)
    s.set_defaults(func=_cmd_extract)


    from bst_search import dashboard, report

    s = sub.add_parser("report", help="self-contained HTML report of a sweep (MLflow + Optuna)")
    report.add_arguments(s)
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("dashboard", help="MLflow UI + optuna-dashboard on a (running) sweep")
    dashboard.add_arguments(s)
    s.set_defaults(func=_cmd_dashboard)

    s = sub.add_parser("demo", help="synthetic data -> small sweep -> ensemble -> report")
    s.add_argument("--workdir", default="bst-runs/demo")
    s.add_argument("--trials", type=int, default=8)
    s.set_defaults(func=_cmd_demo)
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
