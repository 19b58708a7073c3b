"""Extraction throughput: clips (texts) per second per backbone on CPU, 1 and 2 Ray workers.

Each backbone runs ``bst-search extract`` on a generated set (5 s clips at 44.1 kHz, wav; the
texts of the same metadata) through the Ray Data path with 1 and then 2 actors of one CPU each
(one torch thread each), and in-process (one process, all threads) for reference. The figure
is end to end (n / wall time, model loading and Ray start-up included) and the steady state:
the items written after the first batch over the time since it was written (files'
modification times). With Ray the driver receives results in groups, so its steady figure is
coarse; use enough clips for several batches per worker.
Weights: PANNs and CLAP use random test weights (speed does not depend on the values;
HTSAT-tiny, non-fusion and fusion), MiniLM its real weights. On a GPU machine, add
``--device cuda --batch-sizes 8,32,64`` (not measured here: no GPU was lent).

    python benchmarks/bench_extract.py [--clips 24] [--texts 400] [--backbones panns,clap_audio,...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_set(root: Path, n_clips: int, n_texts: int, seconds: float = 5.0) -> Path:
    import soundfile as sf

    from bst_search.synth.audio import _clip
    from bst_search.synth.texts import sound_texts

    rng = np.random.default_rng(0)
    n = max(n_clips, n_texts)
    ids = [str(10_000 + i) for i in range(n)]
    (root / "audio").mkdir(parents=True)
    for i, sid in enumerate(ids[:n_clips]):
        sf.write(root / "audio" / f"{sid}.wav", _clip(rng, ("m", "is", "sp", "fx", "ss")[i % 5],
                                                      seconds, 44_100), 44_100)
    codes = np.array(["fx-o"] * n, dtype=object)
    titles, tags, descs = sound_texts(rng, codes)
    (root / "metadata").mkdir()
    pd.DataFrame({"sound_id": ids, "title": titles, "tags": tags, "description": descs}).to_csv(
        root / "metadata" / "bench_metadata.csv", index=False)
    return root


def steady_rate(folder: Path, first_batch: int) -> float:
    """Items written after the first ``first_batch`` ones, over the time since those were
    written: leaves out start-up and model loading (file modification times)."""
    t = sorted(p.stat().st_mtime for p in folder.glob("*.npy"))
    if len(t) <= first_batch or t[-1] <= t[first_batch - 1]:
        return float("nan")
    return (len(t) - first_batch) / (t[-1] - t[first_batch - 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--texts", type=int, default=400)
    ap.add_argument("--backbones", default="panns,clap_audio,clap_audio_fusion,clap_text,minilm_text")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", default="4")
    args = ap.parse_args()

    import ray
    import torch

    from bst_search.extract.backbones import BackboneOptions, Panns, write_random_clap
    from bst_search.extract.run import ExtractJob, run_extract
    from bst_search.extract.testing import write_tiny_roberta

    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        data = make_set(tmp / "data", args.clips, args.texts)
        roberta = write_tiny_roberta(tmp / "roberta-tiny")
        ckpts = {"panns": Panns.write_random_checkpoint(tmp / "panns.pth", 0, BackboneOptions())}
        wanted = args.backbones.split(",")
        if {"clap_audio", "clap_text"} & set(wanted):
            ckpts["clap"] = write_random_clap(tmp / "clap.pt", 0, BackboneOptions(text_model_dir=roberta))
        if "clap_audio_fusion" in wanted:
            ckpts["clap_fusion"] = write_random_clap(
                tmp / "clap_f.pt", 0, BackboneOptions(text_model_dir=roberta, settings={"fusion": "true"}))
        print(f"bench_extract {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, device {args.device}; "
              f"{args.clips} clips of 5 s at 44.1 kHz, {args.texts} texts")
        print(f"{'backbone':18s} {'path':12s} {'batch':>5s} {'items':>6s} {'wall s':>7s} "
              f"{'e2e/s':>7s} {'steady/s':>8s}")
        ray.init(address="local", num_cpus=max(2, max(int(w) for w in args.workers.split(","))),
                 include_dashboard=False, log_to_driver=False)
        for name in wanted:
            backbone = "clap_audio" if name == "clap_audio_fusion" else name
            ckpt = {"panns": ckpts.get("panns"), "clap_audio": ckpts.get("clap"),
                    "clap_text": ckpts.get("clap"), "clap_audio_fusion": ckpts.get("clap_fusion"),
                    "minilm_text": None}[name]
            n_items = args.texts if backbone.endswith("_text") else args.clips
            for bs in (int(b) for b in args.batch_sizes.split(",")):
                paths = [("in-process", None, 1)] + [(f"ray x{w}", "local", int(w))
                                                     for w in args.workers.split(",")]
                for label, address, workers in paths:
                    folder = data / "features" / f"{backbone}_embeddings"
                    shutil.rmtree(folder, ignore_errors=True)
                    opts = BackboneOptions(checkpoint=ckpt, text_model_dir=roberta, device=args.device,
                                           batch_size=bs, allow_random_weights=True)
                    job = ExtractJob(root=data, backbones=[backbone], options=opts, address=address,
                                     workers=workers, progress=False, log=lambda _m: None,
                                     limit=n_items)
                    threads = torch.get_num_threads()
                    t0 = time.perf_counter()
                    run_extract(job)
                    wall = time.perf_counter() - t0
                    torch.set_num_threads(threads)
                    print(f"{name:18s} {label:12s} {bs:5d} {n_items:6d} {wall:7.1f} "
                          f"{n_items / wall:7.2f} {steady_rate(folder, bs * workers):8.2f}", flush=True)
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
