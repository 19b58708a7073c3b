"""How the search driver scales with the number of trials (1,000 trials, 32 at once).

Runs the real driver (``run_search``: Optuna searcher, concurrency limit, Tune loop,
checkpoints, experiment-state saves, the MLflow callback and its writer process, the final
reconciliation) with a trainable that does a few milliseconds of real work per fold on the
smoke data: it scores seeded random probabilities with the hierarchical metric, reports after
every fold with a checkpoint, and leaves the artifacts a trial leaves (oof.parquet,
metrics.json, config.yaml). Everything but the model training is what a sweep does.

Prints, for the SQLite stores and (with ``--postgres URL``) PostgreSQL ones:
* driver CPU seconds per trial (the driver process, all its threads), overall and between
  checkpoints (100 / 500 / 1,000 trials by default), so a cost that grows with the number of
  runs shows as a rising figure; beside it, the CPU of the sweep's MLflow writer process
  (``mlflow_logger.Writers``), which does the MLflow writes outside the driver;
* trials per minute (wall);
* the Tune experiment-state save time (mean / max of ``TuneController.checkpoint``);
* the driver's resident memory at each checkpoint;
* FINISHED runs and duplicates (must be exactly N and 0).

With ``--mlflow-server`` MLflow sits behind ``mlflow server`` on the same store (the cluster
layout: the driver sends HTTP requests, the server does the database work); the server's own
CPU per trial is printed beside the driver's.

    python benchmarks/bench_scale.py [--trials 1000] [--cpus 32] [--concurrency 32]
                                     [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
                                     [--mlflow-server]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from bst_search import tracking
from bst_search.search import build_parser
from bst_search.search.driver import run_search
from bst_search.synth import make_synthetic

SPACE = {"description": "benchmark: the driver alone", "scheduler": "none", "base": "late_fusion",
         "fixed": {"backbones": ["clap_audio"]},
         "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5}}}


def light_trial(params: dict, *, dev: Any, eval_data: Any, crowd: Any, space: Any, n_folds: int,
                **_: Any) -> None:
    """A few ms of real work per fold; reports, checkpoints and leaves the files ``trial_fn`` does."""
    import json

    import numpy as np
    import pandas as pd
    import ray
    from ray import tune

    from bst_search import config
    from bst_search.metrics import evaluate
    from bst_search.search.trainable import final_result, fold_result, quiet_worker_logs
    from bst_search.taxonomy import PROBA_COLUMNS

    quiet_worker_logs()
    rng = np.random.default_rng(abs(hash(json.dumps(params, sort_keys=True, default=str))) % 2**32)
    proba = rng.dirichlet(np.ones(len(PROBA_COLUMNS)), size=len(dev.y)).astype(np.float32)
    proba[np.arange(len(dev.y)), dev.y] += 0.5
    fold = np.arange(len(dev.y)) % n_folds
    node = ray.get_runtime_context().get_node_id()
    folds = []
    with tempfile.TemporaryDirectory() as work:
        for k in range(n_folds):
            f = evaluate(dev.y[fold == k], proba[fold == k])
            folds.append({"fold": k, "hF": f["hF"], "hF_strict": f["hF_strict"]})
            m = evaluate(dev.y[fold <= k], proba[fold <= k])
            info = {"fold": k, "folds_done": k + 1, "fold_hF": f["hF"], "fold_hF_strict": f["hF_strict"],
                    "running_hF_strict": float(np.mean([r["hF_strict"] for r in folds])),
                    "running_fold_hF_mean": float(np.mean([r["hF"] for r in folds])),
                    **{f"running_oof_{x}": m[x] for x in ("hF", "hF_strict", "acc")}}
            if k < n_folds - 1:
                tune.report(fold_result(info, space.metric, node),
                            checkpoint=tune.Checkpoint.from_directory(work))
        oof = pd.concat([pd.DataFrame({"sound_id": dev.ids.astype(str), "fold": fold}),
                         pd.DataFrame(proba, columns=list(PROBA_COLUMNS))], axis=1)
        oof.to_parquet(Path(work) / "oof.parquet", index=False)
        metrics = {**{f"oof_{k}": float(v) for k, v in m.items()}, "folds": folds,
                   "fold_hF_mean": float(np.mean([r["hF"] for r in folds])),
                   "fold_hF_std": float(np.std([r["hF"] for r in folds])),
                   "fold_hF_strict_mean": info["running_hF_strict"]}
        (Path(work) / "metrics.json").write_text(json.dumps(metrics))
        config.dump(space.config({k: v for k, v in params.items() if k in config.SCHEMA}),
                    Path(work) / "config.yaml")
        tune.report(final_result(metrics, space.metric, n_folds, node),
                    checkpoint=tune.Checkpoint.from_directory(work))


class Probe:
    """Samples the driver while the sweep runs: CPU, memory and state-save times."""

    def __init__(self, marks: list[int]) -> None:
        self.marks, self.at, self.saves = marks, {}, []
        self.writer_cpu: dict[int, float] = {}  # MLflow writer process -> its last CPU reading
        self.stop = threading.Event()
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def install(self) -> None:
        from ray.tune.execution.tune_controller import TuneController

        real = TuneController.checkpoint
        probe = self

        def timed(self: Any, *a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return real(self, *a, **k)
            finally:
                probe.saves.append(time.perf_counter() - t)

        TuneController.checkpoint = timed

    def run(self) -> None:
        from bst_search.search import mlflow_logger

        while not self.stop.wait(0.25):
            live = list(mlflow_logger._LIVE.values())
            done = sum(len(lg._done) for lg in live)
            for lg in live:  # the MLflow writer process: its CPU, read while it lives
                pid = getattr(getattr(lg.writers, "process", None), "pid", None)
                if pid:
                    self.writer_cpu[pid] = tree_cpu(pid, alone=True)
            for m in self.marks:
                if m not in self.at and done >= m:
                    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                    self.at[m] = (time.process_time() - self.cpu0, time.perf_counter() - self.t0, rss,
                                  sum(self.writer_cpu.values()))
                    print(f"[bench_scale] {m} trials done: driver CPU {self.at[m][0]:.1f} s, "
                          f"writer CPU {self.at[m][3]:.1f} s, wall {self.at[m][1]:.1f} s, "
                          f"max RSS {rss:,.0f} MiB", flush=True)


def start_mlflow_server(store: str, root: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on ``store`` (artifacts under ``root``); returns it and its URL."""
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--artifacts-destination", str(root / "mlartifacts")],
                            env={**os.environ, "MLFLOW_BACKEND_STORE_URI": store},  # not argv: a password
                            stdout=subprocess.DEVNULL, stderr=open(root / "mlflow-server.log", "w"))
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start; see {root / 'mlflow-server.log'}") from None
            time.sleep(0.5)
    # its job runner keeps starting for ~10 s after /health answers (~14 s of CPU): wait
    # until the server idles, so that its CPU counted from here is the sweep's
    before = tree_cpu(proc.pid)
    while time.time() < deadline:
        time.sleep(2)
        now = tree_cpu(proc.pid)
        if now - before < 0.3:
            break
        before = now
    return proc, url


def tree_cpu(pid: int, alone: bool = False) -> float:
    """CPU seconds of a process and its descendants, or of it ``alone`` (from /proc: Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for d in ([Path(f"/proc/{pid}")] if alone else Path("/proc").glob("[0-9]*")):
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        stats[int(d.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)  # ppid, utime + stime
    tree, grew = {pid}, True
    while grew:
        more = {p for p, (pp, _) in stats.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(stats[p][1] for p in tree if p in stats)


def one(kind: str, data: dict, root: Path, a: argparse.Namespace, optuna_url: str | None,
        mlflow_url: str | None) -> None:
    import ray

    server = None
    if a.mlflow_server:
        (root / kind).mkdir(parents=True, exist_ok=True)
        server, mlflow_url = start_mlflow_server(mlflow_url or f"sqlite:///{root / kind / 'mlflow.db'}", root / kind)
        kind, server_cpu0 = f"{kind}-mlflow-server", tree_cpu(server.pid)

    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    argv = ["--data", str(data["dev"]), "--space", str(space), "--experiment", f"scale-{kind}",
            "--trials", str(a.trials), "--concurrency", str(a.concurrency), "--cpus-per-trial", "1",
            "--workdir", str(root / kind), "--max-failures", "0", "--sampler", a.sampler]
    if optuna_url:
        argv += ["--optuna-storage", optuna_url]
    if mlflow_url:
        argv += ["--tracking-uri", mlflow_url]
    marks = sorted({m for m in (100, 500, 1000, a.trials // 4, a.trials // 2, a.trials)
                    if 0 < m <= a.trials})
    probe = Probe(marks)
    probe.install()
    ray.init(address="local", num_cpus=a.cpus, include_dashboard=False)
    th = threading.Thread(target=probe.run, daemon=True)
    th.start()
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = run_search(build_parser().parse_args(argv), trial=light_trial)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    probe.stop.set()
    th.join()
    ray.shutdown()
    server_cpu = tree_cpu(server.pid) - server_cpu0 if server is not None else None
    cl = tracking.client(mlflow_url or summary.tracking_uri)
    exp = cl.get_experiment_by_name(f"scale-{kind}").experiment_id
    runs = tracking.find_runs(cl, exp, status="FINISHED")
    ids = [r.data.tags[tracking.TRIAL_ID] for r in runs]
    print(f"\n== {kind}: {a.trials} trials, concurrency {a.concurrency}, ray num_cpus {a.cpus}")
    print(f"FINISHED runs {len(runs)} (expected {a.trials}), duplicates {len(ids) - len(set(ids))}")
    print(f"wall {wall:.1f} s -> {a.trials / wall * 60:.1f} trials/min; driver CPU {cpu:.1f} s "
          f"-> {cpu / a.trials:.3f} s/trial (includes start-up and the final reconciliation)")
    writer = sum(probe.writer_cpu.values())  # read until the writer's last quarter second
    print(f"MLflow writer process CPU {writer:.1f} s -> {writer / a.trials:.3f} s/trial "
          f"(driver + writer {(cpu + writer) / a.trials:.3f} s/trial)")
    if server is not None:
        print(f"MLflow server CPU {server_cpu:.1f} s -> {server_cpu / a.trials:.3f} s/trial")
        server.terminate()
        server.wait(30)
    prev = (0, 0.0, 0.0)
    for m in marks:
        if m in probe.at:
            c, w, rss, wc = probe.at[m]
            print(f"  at {m:5d} trials: driver CPU {c:7.1f} s, {(c - prev[1]) / (m - prev[0]):.3f} s/trial "
                  f"since {prev[0]} (writer {(wc - prev[2]) / (m - prev[0]):.3f}); wall {w:7.1f} s; "
                  f"max RSS {rss:,.0f} MiB")
            prev = (m, c, wc)
    if probe.saves:
        s = sorted(probe.saves)
        print(f"experiment-state saves: {len(s)}, mean {sum(s) / len(s) * 1000:.1f} ms, "
              f"max {s[-1] * 1000:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--cpus", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--n", type=int, default=800, help="smoke development set size")
    ap.add_argument("--postgres", help="a PostgreSQL server URL: also run with Optuna and "
                    "MLflow in two fresh databases there")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--sampler", default="tpe", help="the sweep's --sampler (random: no model "
                    "fitted to the finished trials, so a cost that grows with them is not Optuna's)")
    ap.add_argument("--mlflow-server", action="store_true",
                    help="MLflow behind `mlflow server` on the same store (the cluster layout)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chdir(root)  # a database tracking URI puts artifacts under ./mlruns
        data = make_synthetic(root / "data", n=a.n, eval_n=0, seed=0)
        if not a.skip_sqlite:
            one("sqlite", data, root, a, None, None)
        if a.postgres:
            import psycopg

            tag = uuid.uuid4().hex[:8]
            dbs = [f"bst_driver_scale_optuna_{tag}", f"bst_driver_scale_mlflow_{tag}"]
            conn = psycopg.connect(a.postgres, autocommit=True)
            for db in dbs:
                conn.execute(f"CREATE DATABASE {db}")
            base = a.postgres.rsplit("/", 1)[0]
            try:
                one("postgres", data, root, a, f"{base}/{dbs[0]}", f"{base}/{dbs[1]}")
            finally:
                for db in dbs:
                    conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                conn.close()


if __name__ == "__main__":
    main()
