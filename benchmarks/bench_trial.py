"""Throughput of one training run (`bst_search.training.fit`) at the real data size.

Random float32 embeddings shaped like one fold of BSD10k (11,000 x 0.64 training rows,
11,000 x 0.16 validation rows), random labels. Reports training samples/s and the share of
epoch time spent outside forward+backward+optimizer step (batching, augmentation,
validation, checkpointing), which should stay under 20 %.

    .venv/bin/python benchmarks/bench_trial.py [--epochs 5] [--threads 2] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from bst_search.config import load
from bst_search.models import n_params
from bst_search.training import fit, pick_device

N_ROWS = 11_000
DIMS = {"clap_audio": 512, "clap_text": 512, "panns": 2048}
MODALITY = {"clap_audio": "audio", "clap_text": "text", "panns": "audio"}
MAX_OVERHEAD = 0.20


def bench(preset: str, epochs: int, device: torch.device) -> float:
    cfg = load(preset, {"train.max_epochs": epochs})
    rng = np.random.default_rng(0)
    n_tr, n_va = int(N_ROWS * 0.64), int(N_ROWS * 0.16)
    bbs = cfg["backbones"]
    Xtr = [rng.standard_normal((n_tr, DIMS[b]), dtype=np.float32) for b in bbs]
    Xva = [rng.standard_normal((n_va, DIMS[b]), dtype=np.float32) for b in bbs]
    ytr, yva = rng.integers(0, 23, n_tr), rng.integers(0, 23, n_va)

    res = fit(cfg, Xtr, ytr, Xva, yva, modalities=[MODALITY[b] for b in bbs], seed=0, device=device)
    epoch_s = sum(r["seconds"] for r in res.history)
    overhead = 1 - res.model_seconds / epoch_s
    val_share = sum(r["val_seconds"] for r in res.history) / epoch_s
    rows = n_tr * res.epochs
    print(f"{preset:14s} {cfg['model']['name']:11s} params {n_params(res.model):>9,d}  "
          f"batch {cfg['train']['batch_size']:>3d}  epochs {res.epochs}  "
          f"{rows / epoch_s:>8,.0f} samples/s ({rows / res.model_seconds:,.0f} in model)  "
          f"epoch {epoch_s / res.epochs:.2f} s  non-model share {overhead:5.1%} "
          f"(validation {val_share:.1%})  "
          f"fit total {res.seconds:.1f} s")
    return overhead


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    t0 = time.perf_counter()
    worst = max(bench(p, args.epochs, device) for p in ("baseline_hatr", "late_fusion"))
    print(f"worst non-model share {worst:.1%} (limit {MAX_OVERHEAD:.0%}); "
          f"{time.perf_counter() - t0:.0f} s in all")
    if worst >= MAX_OVERHEAD:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
