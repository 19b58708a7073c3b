"""``bst-search dashboard``: the live views of a sweep, on 127.0.0.1 by default.

Starts the MLflow UI on the sweep's tracking store and ``optuna-dashboard`` on its Optuna
storage, prints their URLs (the MLflow one opens the experiment's runs page) and the Ray
dashboard's, and stops both on Ctrl-C. It works while the sweep runs: SQLite stores are
opened read-only (``mode=ro``), so neither viewer can take the write lock the driver needs;
a tracking server (``http://``) is not started again, only linked.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bst_search import tracking
from bst_search.tracking.stores import (
    StoreError,
    add_store_arguments,
    check_store,
    existing_optuna_storage,
    read_only_sqlite,
)

RAY_DASHBOARD = "http://127.0.0.1:8265"
START_TIMEOUT_S = 90.0


@dataclass
class Service:
    """One started viewer: its name, the URL to open and its process."""

    name: str
    url: str
    proc: subprocess.Popen | None = None
    probe: str = ""


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _up(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (urllib.error.URLError, OSError):
        return False


def _bin(name: str) -> str:
    """A console script of this environment (the venv's mlflow, optuna-dashboard)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _stop(services: list[Service]) -> None:
    """SIGTERM each viewer's process group, then SIGKILL what is left after 10 s."""
    procs = [s.proc for s in services if s.proc is not None and s.proc.poll() is None]
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def _experiment_id(uri: str, experiment: str) -> str | None:
    exp = tracking.client(uri).get_experiment_by_name(experiment)
    return None if exp is None else exp.experiment_id


class Stopped(Exception):
    """Ctrl-C or SIGTERM arrived while the viewers were starting."""


def start(args: argparse.Namespace, stopping: Callable[[], bool] = lambda: False) -> list[Service]:
    """Start the viewers (or link a tracking server); StoreError on bad input, Stopped when
    ``stopping()`` turns true before they answer."""
    workdir = Path(args.workdir).resolve()
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{workdir / 'mlflow.db'}"
    check_store(uri)
    exp_id = _experiment_id(uri, args.experiment)
    if exp_id is None:
        raise StoreError(f"experiment {args.experiment!r} does not exist in {uri} (yet: a sweep "
                          f"creates it when its first trial starts)")
    storage = existing_optuna_storage(args.optuna_storage, workdir)
    host, logs = args.host, workdir / "dashboard-logs"
    for port, flag in ((args.mlflow_port, "--mlflow-port"), (args.optuna_port, "--optuna-port")):
        if not _port_free(host, port):
            raise StoreError(f"port {port} on {host} is in use; pass another {flag}")
    services: list[Service] = []
    if uri.startswith(("http://", "https://")):
        services.append(Service("MLflow (tracking server)", tracking.runs_url(uri, exp_id)))
    else:
        base = f"http://{host}:{args.mlflow_port}"
        cmd = [_bin("mlflow"), "server", "--backend-store-uri", read_only_sqlite(uri),
               "--host", host, "--port", str(args.mlflow_port), "--workers", "1"]
        art = tracking.artifact_location(workdir, uri)
        if art:
            cmd += ["--default-artifact-root", art]
        services.append(Service("MLflow UI", tracking.runs_url(base, exp_id),
                                _spawn(cmd, logs / "mlflow.log"), f"{base}/health"))
    if storage:
        base = f"http://{host}:{args.optuna_port}"
        cmd = [_bin("optuna-dashboard"), read_only_sqlite(storage), "--host", host,
               "--port", str(args.optuna_port)]
        services.append(Service("optuna-dashboard", f"{base}/dashboard/",
                                _spawn(cmd, logs / "optuna-dashboard.log"), f"{base}/api/meta"))
    else:
        print(f"note: no Optuna storage found in {workdir} (pass --optuna-storage): "
              f"optuna-dashboard not started")
    deadline = time.time() + START_TIMEOUT_S
    try:
        for s in services:
            while s.proc is not None and not _up(s.probe):
                if s.proc.poll() is not None:
                    raise StoreError(f"{s.name} exited with code {s.proc.returncode}; see "
                                      f"{logs}/{'mlflow' if 'MLflow' in s.name else 'optuna-dashboard'}.log")
                if stopping():
                    raise Stopped
                if time.time() > deadline:
                    raise StoreError(f"{s.name} did not answer within {START_TIMEOUT_S:.0f} s")
                time.sleep(0.3)
    except BaseException:
        _stop(services)
        raise
    return services


def serve(args: argparse.Namespace) -> int:
    """Start, print the URLs, wait for Ctrl-C (or SIGTERM, or a viewer dying), stop."""
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    # set explicitly: a shell without job control starts background jobs with SIGINT ignored
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    services: list[Service] = []
    try:
        try:
            services = start(args, lambda: bool(stop["signal"]))
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Stopped:
            print("stopped before the dashboards were up", flush=True)
            return 0
        print(f"dashboards of experiment {args.experiment!r} (read-only; Ctrl-C stops them):")
        for s in services:
            print(f"  {s.name:26s} {s.url}")
        ray = args.ray_dashboard
        state = "up" if _up(ray) else ("not reachable: local sweeps run Ray without its dashboard; "
                                       "on a cluster run `ray dashboard launch/cluster.yaml` and "
                                       "open it here")
        print(f"  {'Ray dashboard':26s} {ray}   ({state})", flush=True)
        while not stop["signal"]:
            dead = [s for s in services if s.proc is not None and s.proc.poll() is not None]
            if dead:
                print(f"error: {dead[0].name} exited with code {dead[0].proc.returncode}",
                      file=sys.stderr)
                return 1
            time.sleep(0.5)
        print("stopping the dashboards", flush=True)
        return 0
    finally:
        _stop(services)
        for sig, handler in old.items():
            signal.signal(sig, handler)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_store_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (default 127.0.0.1)")
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--optuna-port", type=int, default=8080)
    p.add_argument("--ray-dashboard", default=os.environ.get("RAY_DASHBOARD_URL", RAY_DASHBOARD),
                   help=f"Ray dashboard address to print and probe (default {RAY_DASHBOARD})")
    return p


def main(argv: list[str] | None = None) -> int:
    return serve(add_arguments(argparse.ArgumentParser(prog="bst-search dashboard",
                                                       description=__doc__)).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
