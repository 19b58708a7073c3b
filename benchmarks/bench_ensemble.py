"""Scale check of the ensemble coordinator: 1,000 and 10,000 candidates x 11,000 samples x 23.

Candidates are noisy copies of the one-hot truth with varying strength and a shared
"hard sample" component, so that members differ in quality and in the errors they share and
greedy selection has real choices to make. Targets: selection with Nelder-Mead weights and 50
steps over 1,000 candidates in under 60 s on 2 cores and under 4 GB peak; 10,000 candidates
under 8 GB peak.

Two paths: ``--path store`` is what ``python -m bst_search.ensemble`` does (candidates
written to the float16 on-disk store one by one (argmax kept as written), the working set of
every selection's diverse top-k pool read back in float32, then selection); ``--path
memory`` holds the whole float32 tensor, for comparison. ``--mlflow R``
instead times loading R logged trial runs from a local MLflow store, cold and cached.
``--exhaustive`` instead times exhaustive subset selection (every subset of up to
``--exhaustive-max-size`` of the ``--exhaustive-top`` best, 793 at 12 and 4; target under
10 s of CPU on 11,000 rows) and greedy selection on the same candidates, as a ratio.

    .venv/bin/python benchmarks/bench_ensemble.py [--candidates 1000] [--samples 11000]
        [--steps 50] [--weights nelder-mead] [--honest] [--path store|memory]
        [--top-k 1000] [--diversity 0.01] [--mlflow R]
        [--exhaustive [--exhaustive-top 12] [--exhaustive-max-size 4]]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bst_search.ensemble.exhaustive import (
    ExhaustiveOptions,
    exhaustive_honest,
    exhaustive_select,
    n_subsets,
)
from bst_search.ensemble.honest import honest_estimate
from bst_search.ensemble.run import read_working_set
from bst_search.ensemble.selection import (
    SelectionOptions,
    candidate_stats,
    select_ensemble,
    to_combine_space,
)
from bst_search.ensemble.store import PredictionStore
from bst_search.taxonomy import N_CLASSES


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def make_candidates(n_cand: int, n: int, seed: int = 0) -> tuple[Iterator[np.ndarray], np.ndarray,
                                                                  np.ndarray]:
    """Labels, 5 folds and a generator of (N, 23) float32 softmax outputs, one per candidate.

    Like a real sweep: every candidate sees the truth with its own strength, all share a
    per-sample "hard" component (the errors every model makes), candidates of one family
    (think backbone subset) share a second one, and each adds its own smaller noise.
    """
    rng = np.random.default_rng(seed)
    freq = rng.dirichlet(np.full(N_CLASSES, 2.0))
    y = rng.choice(N_CLASSES, size=n, p=freq)
    folds = rng.permutation(np.arange(n) % 5)
    onehot = np.zeros((n, N_CLASSES), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0
    hard = 1.6 * rng.standard_normal((n, N_CLASSES), dtype=np.float32)
    n_fam = 12
    family = rng.integers(0, n_fam, size=n_cand)
    fam_noise = [0.8 * rng.standard_normal((n, N_CLASSES), dtype=np.float32)
                 for _ in range(n_fam)]
    strength = rng.uniform(3.5, 5.5, size=n_cand).astype(np.float32)
    own = rng.uniform(0.3, 0.7, size=n_cand).astype(np.float32)
    temp = rng.uniform(0.7, 1.5, size=n_cand).astype(np.float32)

    def gen() -> Iterator[np.ndarray]:
        Z = np.empty((n, N_CLASSES), dtype=np.float32)
        for c in range(n_cand):
            rng.standard_normal((n, N_CLASSES), dtype=np.float32, out=Z)
            Z *= own[c]
            Z += strength[c] * onehot
            Z += hard
            Z += fam_noise[family[c]]
            Z *= temp[c]
            Z -= Z.max(axis=1, keepdims=True)
            np.exp(Z, out=Z)
            Z /= Z.sum(axis=1, keepdims=True)
            yield Z

    return gen(), y, folds


class Clock:
    """Named phases, wall and CPU seconds, printed as they end (on a shared machine the CPU
    seconds are the figure that does not depend on the other jobs)."""

    def __init__(self) -> None:
        self.t, self.c = time.perf_counter(), time.process_time()
        self.phases: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def lap(self, name: str) -> float:
        now, cpu = time.perf_counter(), time.process_time()
        self.phases[name], self.cpu[name] = now - self.t, cpu - self.c
        self.t, self.c = now, cpu
        print(f"  {name}: {self.phases[name]:.1f} s wall, {self.cpu[name]:.1f} s CPU "
              f"(peak RSS so far {peak_rss_gb():.2f} GiB)", flush=True)
        return self.phases[name]


def bench_selection(args: argparse.Namespace) -> int:
    opts = SelectionOptions(max_size=args.steps, weights=args.weights, combine=args.combine,
                            top_k=args.top_k or None, diversity=args.diversity)
    gen, y, folds = make_candidates(args.candidates, args.samples)
    clock = Clock()
    shape = (args.candidates, args.samples, N_CLASSES)
    if args.path == "memory":
        X = np.empty(shape, dtype=np.float32)
        for c, z in enumerate(gen):
            X[c] = z
        print(f"data: {shape} float32 = {X.nbytes / 2**30:.2f} GiB in memory", flush=True)
        t_gen = clock.lap("generate")
        n_mem = args.candidates
    else:
        dtype = args.store_dtype
        if dtype == "auto":  # as the coordinator: float32 when every candidate is in the pool
            dtype = "float32" if not args.top_k or args.candidates <= args.top_k else "float16"
        store = PredictionStore(args.candidates, args.samples, dtype=dtype,
                                directory=args.store_dir)
        for z in gen:
            store.append(z)
        print(f"data: {shape} {dtype} = {store.nbytes / 2**30:.2f} GiB on disk", flush=True)
        t_gen = clock.lap("generate + write the store")
        keep, X, _ = read_working_set(store, None, y, folds, opts, sk_top=10, honest=args.honest)
        n_mem = len(keep)
        print(f"  working set: {n_mem} of {args.candidates} candidates = "
              f"{X.nbytes / 2**30:.2f} GiB float32 in memory")
        clock.lap("pre-selection on all rows and each fold's training rows, read the working set")
    stats = candidate_stats(X, opts.combine)
    clock.lap("candidate stats")
    c1 = time.process_time()
    res = select_ensemble(X, y, options=opts, stats=stats)
    cpu = time.process_time() - c1
    t_sel = clock.lap("selection")
    first = next(iter(clock.phases))
    total = sum(clock.phases.values()) - t_gen
    total_cpu = sum(clock.cpu.values()) - clock.cpu[first]
    print(f"selection: {t_sel:.1f} s wall, {cpu:.1f} s CPU; coordinator total without data "
          f"generation {total:.1f} s wall, {total_cpu:.1f} s CPU", flush=True)
    print(f"best single {res.singles.max():.4f}  selected {res.score:.4f} at size "
          f"{res.best_step} ({'Nelder-Mead weights' if res.weighted else 'uniform counts'}), "
          f"{int((res.counts > 0).sum())} distinct members, pool {len(res.pool)} of {n_mem}")
    print("curve head (size: greedy / Nelder-Mead):")
    for e in res.curve[:10]:
        nm = "-" if e["score_nm"] is None else f"{e['score_nm']:.4f}"
        print(f"  {e['size']:3d}: {e['score']:.4f} / {nm}")
    if args.honest:
        hon = honest_estimate(X, y, folds, opts, stats=stats)
        t_hon = clock.lap("honest estimate (5 nested selections)")
        print(f"honest estimate: {hon.mean:.4f} (per fold "
              f"{', '.join(f'{s:.4f}' for s in hon.per_fold)}) in {t_hon:.1f} s wall, "
              f"{clock.cpu[next(reversed(clock.cpu))]:.1f} s CPU")
    rss = peak_rss_gb()
    print(f"peak RSS {rss:.2f} GiB")
    limit = 4 if args.candidates <= 1000 else 8
    ok = (t_sel < 60 or args.candidates > 1000) and rss < limit
    print("PASS" if ok else "FAIL", f"(target: < {limit} GiB peak"
          + (", < 60 s selection)" if args.candidates <= 1000 else ")"))
    return 0 if ok else 1


def _cpu(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn's result, CPU and wall seconds."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - t


def bench_exhaustive(args: argparse.Namespace) -> int:
    """Exhaustive selection beside greedy on the same ``--exhaustive-top`` candidates."""
    n_top, size = args.exhaustive_top, args.exhaustive_max_size
    gen, y, folds = make_candidates(n_top, args.samples)
    X = to_combine_space(np.stack([z.copy() for z in gen]), args.combine)  # one buffer
    stats = candidate_stats(X, args.combine)
    eo = ExhaustiveOptions(top=n_top, max_size=size, combine=args.combine)
    print(f"data: {X.shape} float32, combine {args.combine}; {n_subsets(n_top, size)} subsets "
          f"of 1..{size} of {n_top}", flush=True)
    ex, ex_cpu, ex_wall = _cpu(lambda: exhaustive_select(X, y, options=eo, stats=stats))
    print(f"exhaustive: {ex_cpu:.2f} s CPU ({ex_wall:.2f} s wall) for {ex.n_subsets} subsets; "
          f"best size {ex.size}, score {ex.score:.4f} (best by size "
          + ", ".join(f"{v:.4f}" for v in ex.best_by_size) + ")", flush=True)
    ok = ex_cpu < 10
    for weights in ("none", "nelder-mead"):
        opts = SelectionOptions(max_size=args.steps, weights=weights, combine=args.combine)
        g, g_cpu, g_wall = _cpu(lambda o=opts: select_ensemble(X, y, options=o, stats=stats))
        print(f"greedy ({args.steps} steps, weights {weights}): {g_cpu:.2f} s CPU "
              f"({g_wall:.2f} s wall), score {g.score:.4f} at size {g.best_step}; "
              f"exhaustive / greedy CPU = {ex_cpu / max(g_cpu, 1e-9):.2f}", flush=True)
    if args.honest:
        hon, h_cpu, h_wall = _cpu(lambda: exhaustive_honest(X, y, folds, eo, stats=stats))
        print(f"exhaustive honest estimate (5 nested selections): {h_cpu:.2f} s CPU "
              f"({h_wall:.2f} s wall), fold mean {hon.mean:.4f}", flush=True)
    print("PASS" if ok else "FAIL", "(target: exhaustive selection < 10 s CPU)")
    return 0 if ok else 1


def bench_mlflow(args: argparse.Namespace) -> int:
    """Log ``--mlflow`` trial runs with full-size artifacts, then load them cold and cached."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from bst_search.ensemble.candidates import load_candidates
    from bst_search.taxonomy import CODES, PROBA_COLUMNS

    root = Path(tempfile.mkdtemp(prefix="bst-bench-ens-", dir=args.store_dir))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("bench", artifact_location=(root / "art").as_uri())
    gen, y, folds = make_candidates(args.mlflow, args.samples)
    ids = np.array([f"s{i}" for i in range(args.samples)])
    base = pd.DataFrame({"sound_id": ids, "fold": folds, "label": np.asarray(CODES)[y]})
    clock = Clock()
    for c, z in enumerate(gen):
        run = client.create_run(exp, tags={"bst.kind": "trial", "bst.trial_id": f"t{c}",
                                           "bst.data_fp": "D", "bst.fold_fp": "F"})
        path = root / "oof.parquet"
        pd.concat([base, pd.DataFrame(z, columns=list(PROBA_COLUMNS))], axis=1).to_parquet(path)
        client.log_artifact(run.info.run_id, str(path))
        client.set_terminated(run.info.run_id, "FINISHED")
    clock.lap(f"log {args.mlflow} trial runs")
    cache = root / "cache"
    for what in ("cold (download into the cache)", "cached"):
        cs = load_candidates("bench", tracking_uri=uri, cache_dir=cache, progress=True)
        name = f"load {len(cs.infos)} runs, {what}"
        t = clock.lap(name)
        cpu = clock.cpu[name]
        print(f"    {1000 * t / args.mlflow:.0f} ms wall, {1000 * cpu / args.mlflow:.0f} ms CPU per "
              f"run -> {10_000 * t / args.mlflow / 60:.0f} min wall, "
              f"{10_000 * cpu / args.mlflow / 60:.0f} min CPU for 10,000 runs (extrapolated)")
        cs.store.close()
    print(f"peak RSS {peak_rss_gb():.2f} GiB; files in {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=11000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--weights", default="nelder-mead", choices=["none", "nelder-mead"])
    ap.add_argument("--combine", default="prob", choices=["prob", "logit"])
    ap.add_argument("--honest", action="store_true", help="also time the nested-CV estimate")
    ap.add_argument("--path", default="store", choices=["store", "memory"])
    ap.add_argument("--top-k", type=int, default=1000, help="the coordinator's default (0 = all)")
    ap.add_argument("--diversity", type=float, default=0.01)
    ap.add_argument("--store-dtype", default="auto", choices=["auto", "float16", "float32"])
    ap.add_argument("--store-dir", default=None, help="where the store's file goes (default /tmp)")
    ap.add_argument("--mlflow", type=int, default=0, metavar="R",
                    help="time loading R logged runs from MLflow instead")
    ap.add_argument("--exhaustive", action="store_true",
                    help="time exhaustive subset selection beside greedy instead")
    ap.add_argument("--exhaustive-top", type=int, default=12)
    ap.add_argument("--exhaustive-max-size", type=int, default=4)
    args = ap.parse_args(argv)
    if args.exhaustive:
        return bench_exhaustive(args)
    return bench_mlflow(args) if args.mlflow else bench_selection(args)


if __name__ == "__main__":
    sys.exit(main())
