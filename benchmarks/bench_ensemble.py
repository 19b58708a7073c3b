"""Scale check of the ensemble selection: 1,000 candidates x 11,000 samples x 23 classes.

Candidates are noisy copies of the one-hot truth with varying strength and a shared
"hard sample" component, so that members differ in quality and in the errors they share and
greedy selection has real choices to make. The target (issue 4): selection with
Nelder-Mead weights and 50 steps in under 60 s on 2 cores and under 4 GB peak memory.

    .venv/bin/python benchmarks/bench_ensemble.py [--candidates 1000] [--samples 11000]
        [--steps 50] [--weights nelder-mead] [--honest]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

from bst_search.ensemble.honest import honest_estimate
from bst_search.ensemble.selection import SelectionOptions, candidate_stats, select_ensemble
from bst_search.taxonomy import N_CLASSES


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def make_candidates(n_cand: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """(C, N, 23) float32 softmax outputs, labels and 5 folds, filled chunk by chunk.

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
    X = np.empty((n_cand, n, N_CLASSES), dtype=np.float32)
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
        X[c] = Z
    return X, y, folds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=11000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--weights", default="nelder-mead", choices=["none", "nelder-mead"])
    ap.add_argument("--combine", default="prob", choices=["prob", "logit"])
    ap.add_argument("--honest", action="store_true", help="also time the nested-CV estimate")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    X, y, folds = make_candidates(args.candidates, args.samples)
    t_gen = time.perf_counter() - t0
    print(f"data: {X.shape} float32 = {X.nbytes / 2**30:.2f} GiB, generated in {t_gen:.1f} s")

    opts = SelectionOptions(max_size=args.steps, weights=args.weights, combine=args.combine)
    t0 = time.perf_counter()
    stats = candidate_stats(X, opts.combine)
    t_stats = time.perf_counter() - t0
    t1 = time.perf_counter()
    c1 = time.process_time()
    res = select_ensemble(X, y, options=opts, stats=stats)
    t_sel = time.perf_counter() - t1
    cpu = time.process_time() - c1
    total = t_stats + t_sel
    print(f"selection: {t_sel:.1f} s wall, {cpu:.1f} s CPU (+ {t_stats:.1f} s one-pass candidate "
          f"stats) = {total:.1f} s wall")
    print(f"best single {res.singles.max():.4f}  selected {res.score:.4f} at size "
          f"{res.best_step} ({'Nelder-Mead weights' if res.weighted else 'uniform counts'}), "
          f"{int((res.counts > 0).sum())} distinct members")
    print("curve head (size: greedy / Nelder-Mead):")
    for e in res.curve[:10]:
        nm = "-" if e["score_nm"] is None else f"{e['score_nm']:.4f}"
        print(f"  {e['size']:3d}: {e['score']:.4f} / {nm}")
    if args.honest:
        t2 = time.perf_counter()
        hon = honest_estimate(X, y, folds, opts, stats=stats)
        print(f"honest estimate: {hon.mean:.4f} (per fold "
              f"{', '.join(f'{s:.4f}' for s in hon.per_fold)}) in {time.perf_counter() - t2:.1f} s")
    rss = peak_rss_gb()
    print(f"peak RSS {rss:.2f} GiB")
    ok = total < 60 and rss < 4
    print("PASS" if ok else "FAIL", "(target: < 60 s selection, < 4 GiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
