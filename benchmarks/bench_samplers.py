"""TPE against random search and a Gaussian process at equal budgets, on the synthetic testbed.

Each sampler runs ``--seeds`` independent sweeps of ``--trials`` trials over the demo space
(the packaged ``demo`` space: late fusion over backbone subsets, learning rate, dropout,
hierarchical loss weight, label smoothing, class weights). It prints the best-so-far
objective (mean and spread over seeds) after 8, 16 and 24 trials and saves the curves as
a PNG.

The objective is the real one: :func:`bst_search.trial.run_trial`, 5-fold OOF strict hF,
on a small synthetic set with a cheap budget (``--n`` sounds, ``--epochs`` epochs, hidden
64). The samplers are driven through Optuna's ask/tell directly, sequentially, without Ray:
on 2 shared cores, Ray's scheduling would add nothing to a comparison of *which points*
the samplers propose, and its start-up and per-trial overhead would double the run time.
The proposals come from the same functions the sweep uses
(:func:`bst_search.search.samplers.make_sampler` at concurrency 1, so TPE's and GP's first 10
trials are random, and :meth:`SearchSpace.sample` as define-by-run).

A sampler seeded with s draws its random start-up trials from ``RandomSampler(seed=s)``,
as random search does: for one seed the three samplers share their first 10 trials
(common random numbers), and the curves differ only where the samplers' models act.
Training is deterministic (seeded, CPU), so a configuration proposed a second time, by
another sampler or the same one, is scored from a memo instead of being trained again.

Trials are cached in a JSON file keyed by sampler, seed and trial number, so an
interrupted run resumes where it stopped, and ``--plot-only`` redraws the figure.

    python benchmarks/bench_samplers.py [--seeds 3] [--trials 24] [--n 1500] [--epochs 6]
        [--samplers tpe random gp] [--out benchmarks/figures/samplers.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bst_search.search.samplers import make_sampler
from bst_search.search.space import SPACE_DIR, load_space, space_from_dict

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = (8, 16, 24)


def bench_space(epochs: int):
    """The demo space with a budget that makes one trial take seconds on one core."""
    import yaml

    raw = yaml.safe_load((SPACE_DIR / "demo.yaml").read_text())
    raw["fixed"].update({"model.hidden": 64, "model.heads": 2, "train.max_epochs": epochs,
                         "train.patience": epochs, "train.warmup_epochs": 1})
    load_space("demo")  # the shipped file itself is valid
    return space_from_dict(raw, source="demo.yaml (benchmark budget)")


def run_one(name: str, seed: int, trials: int, space, dev, work: Path, cache: dict,
            memo: dict[str, float], save) -> list[float]:
    """One sweep of ``trials`` trials; returns the objective of each trial, in order."""
    import optuna

    from bst_search.trial import run_trial

    key = f"{name}/{seed}"
    done = cache.setdefault(key, [])
    study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed, 1))
    for rec in done:  # replay the cached trials so the sampler continues from the same state
        trial = study.ask()
        sampled = space.sample(trial)
        if sampled != rec["params"]:
            raise SystemExit(f"cache {key}: trial {len(study.trials) - 1} sampled {sampled}, "
                             f"cached {rec['params']}; delete the cache to start over")
        study.tell(trial, rec["value"])
    while len(done) < trials:
        trial = study.ask()
        sampled = space.sample(trial)
        t0 = time.perf_counter()
        config_key = json.dumps(sampled, sort_keys=True)
        if config_key not in memo:  # a configuration seen before (see the docstring)
            out = work / f"{name}-{seed}-{len(done)}"
            memo[config_key] = float(run_trial(space.config(sampled), dev, out, n_folds=5)[space.metric])
        value = memo[config_key]
        study.tell(trial, value)
        done.append({"params": sampled, "value": value, "seconds": time.perf_counter() - t0})
        save()
        best = max(r["value"] for r in done)
        print(f"  {name:6s} seed {seed} trial {len(done):2d}: {value:.4f} (best {best:.4f}, "
              f"{done[-1]['seconds']:.1f}s)", flush=True)
    return [r["value"] for r in done[:trials]]


def report(curves: dict[str, np.ndarray], png: Path, title: str) -> None:
    """Best-so-far at the checkpoints, and the curves (mean, min..max band over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("\nbest-so-far OOF strict hF, mean ± std over seeds (min..max)")
    print(f"{'sampler':8s}" + "".join(f"{'@' + str(c) + ' trials':>33s}" for c in CHECKPOINTS))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, values in curves.items():
        best = np.maximum.accumulate(values, axis=1)
        cells = []
        for c in CHECKPOINTS:
            if c <= best.shape[1]:
                col = best[:, c - 1]
                cells.append(f"{col.mean():.4f} ± {col.std():.4f} ({col.min():.3f}..{col.max():.3f})")
        print(f"{name:8s}" + "".join(f"{c:>33s}" for c in cells))
        x = np.arange(1, best.shape[1] + 1)
        ax.plot(x, best.mean(axis=0), label=f"{name} (n={best.shape[0]})")
        ax.fill_between(x, best.min(axis=0), best.max(axis=0), alpha=0.15)
    ax.set_xlabel("trials")
    ax.set_ylabel("best OOF strict hF so far")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print(f"\ncurves: {png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samplers", nargs="+", default=["tpe", "random", "gp"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--n", type=int, default=1500, help="synthetic development sounds")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "figures" / "samplers.png")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bst-bench-samplers.json")
    ap.add_argument("--plot-only", action="store_true")
    a = ap.parse_args()

    import optuna
    import torch

    from bst_search.data import load_dataset
    from bst_search.synth import make_synthetic

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    torch.set_num_threads(1)
    setting = {"n": a.n, "epochs": a.epochs, "space": "demo"}
    cache = json.loads(a.cache.read_text()) if a.cache.exists() else {}
    if cache.get("setting", setting) != setting:
        raise SystemExit(f"{a.cache}: made with {cache['setting']}, not {setting}; delete it")
    cache["setting"] = setting
    runs = cache.setdefault("runs", {})

    def save() -> None:
        a.cache.write_text(json.dumps(cache))

    space = bench_space(a.epochs)
    t0 = time.perf_counter()
    if not a.plot_only:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            data = make_synthetic(tmp / "data", n=a.n, eval_n=0, seed=0)
            dev = load_dataset(data["dev"])
            print(f"{len(dev.ids)} sounds, {a.epochs} epochs, hidden 64; "
                  f"{len(a.samplers)} samplers x {a.seeds} seeds x {a.trials} trials")
            for seed in range(a.seeds):  # seed-major: a partial run still compares samplers
                for name in a.samplers:
                    run_one(name, seed, a.trials, space, dev, tmp / "trials", runs,
                            cache.setdefault("memo", {}), save)
    curves = {name: np.array([[r["value"] for r in runs[f"{name}/{s}"][:a.trials]]
                              for s in range(a.seeds)]) for name in a.samplers}
    seconds = sum(r["seconds"] for v in runs.values() for r in v)
    n_trained = len(cache.get("memo", {}))
    report(curves, a.out, f"demo space, {a.n} synthetic sounds, {a.epochs} epochs, "
                          f"{a.seeds} seeds x {a.trials} trials")
    print(f"{n_trained} configurations trained, trial time {seconds:.0f}s in total; "
          f"this run {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
