"""Prints how long the vectorised metric takes on 100,000 predictions (target: well under 50 ms)."""

import time

import numpy as np

from bst_search import metrics
from bst_search.taxonomy import CODES, N_CLASSES


def main() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, N_CLASSES, 100_000)
    p = np.where(rng.random(100_000) < 0.8, y, rng.integers(0, N_CLASSES, 100_000))
    proba = rng.random((100_000, N_CLASSES))
    codes_t, codes_p = [CODES[i] for i in y], [CODES[i] for i in p]
    for name, fn in [
        ("hf_score (indices)", lambda: metrics.hf_score(y, p)),
        ("hierarchical_prf (codes)", lambda: metrics.hierarchical_prf(codes_t, codes_p)),
        ("evaluate (probabilities, all metrics)", lambda: metrics.evaluate(y, proba)),
    ]:
        fn()
        t0 = time.perf_counter()
        reps = 20
        for _ in range(reps):
            fn()
        print(f"{name:40s} {1000 * (time.perf_counter() - t0) / reps:8.2f} ms per 100,000 predictions")


if __name__ == "__main__":
    main()
