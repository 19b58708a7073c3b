"""``bst-search dashboard``: the live views of a sweep, on 127.0.0.1 by default.

Starts the MLflow UI on the sweep's tracking store and ``optuna-dashboard`` on its Optuna
storage, prints their URLs (the MLflow one opens the experiment's runs page) and the Ray
dashboard's, and stops both on Ctrl-C. It works while the sweep runs: the viewers open the
stores read-only (SQLite ``mode=ro``, so neither takes the write lock the driver needs;
PostgreSQL sessions with read-only transactions), and a store that cannot be opened so is
printed as writable. A tracking server (``http://``) is not started again, only linked.

The store URLs may carry a password, so they reach the viewers through the environment
(``MLFLOW_BACKEND_STORE_URI``; optuna-dashboard runs in a Python child that reads its
storage from ``BST_VIEWER_OPTUNA_STORAGE``), never their command lines, which every local
user can read in ``/proc``.
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
from bst_search.tracking.redact import mask_text, mask_url
from bst_search.tracking.stores import (
    StoreError,
    add_store_arguments,
    check_store,
    existing_optuna_storage,
    viewer_url,
)

RAY_DASHBOARD = "http://127.0.0.1:8265"
START_TIMEOUT_S = 90.0
OPTUNA_URL_ENV = "BST_VIEWER_OPTUNA_STORAGE"


@dataclass
class Service:
    """One started viewer: its name, the URL to open, what it may do to its store (``read-only``
    or ``writable ...``), its process and log."""

    name: str
    url: str
    access: str
    proc: subprocess.Popen | None = None
    probe: str = ""
    log: Path | None = None


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


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A viewer in its own process group; ``env`` (the store URLs) is added to the environment,
    readable by this user only, where the command line is anyone's."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env}, start_new_session=True)


def _access(read_only: bool, url: str) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else url
    return "read-only" if read_only else f"writable ({scheme} stores cannot be opened read-only)"


def _mlflow_ui(uri: str, exp_id: str, host: str, port: int, workdir: Path, logs: Path) -> Service:
    """The MLflow UI on the tracking store, or the link to a tracking server's own."""
    if uri.startswith(("http://", "https://")):
        return Service("MLflow (tracking server)", mask_url(tracking.runs_url(uri, exp_id)),
                       "writable (the tracking server's own UI and permissions)")
    base = f"http://{host}:{port}"
    url, read_only = viewer_url(uri)
    env = {"MLFLOW_BACKEND_STORE_URI": url}
    art = tracking.artifact_location(workdir, uri)
    if art:
        env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = art
    cmd = [_bin("mlflow"), "server", "--host", host, "--port", str(port), "--workers", "1"]
    log = logs / "mlflow.log"
    return Service("MLflow UI", tracking.runs_url(base, exp_id), _access(read_only, uri),
                   _spawn(cmd, log, env), f"{base}/health", log)


def _optuna_dashboard(storage: str, host: str, port: int, logs: Path) -> Service:
    """optuna-dashboard in a Python child (:func:`serve_optuna`), its storage in the environment."""
    base = f"http://{host}:{port}"
    url, read_only = viewer_url(storage)
    cmd = [sys.executable, "-c", "from bst_search.dashboard import serve_optuna; serve_optuna()",
           host, str(port)]
    log = logs / "optuna-dashboard.log"
    return Service("optuna-dashboard", f"{base}/dashboard/", _access(read_only, storage),
                   _spawn(cmd, log, {OPTUNA_URL_ENV: url}), f"{base}/api/meta", log)


def serve_optuna(argv: list[str] | None = None) -> None:
    """Serve optuna-dashboard on the storage in ``$BST_VIEWER_OPTUNA_STORAGE`` at HOST PORT
    (``argv``) until killed: optuna-dashboard's own command would need the URL as an argument.
    Threaded, as optuna-dashboard's wsgiref server is; the tables are never created."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIServer, make_server

    import optuna
    import optuna_dashboard

    host, port = argv or sys.argv[1:3]
    storage = optuna.storages.RDBStorage(os.environ[OPTUNA_URL_ENV], skip_table_creation=True)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    make_server(host, int(port), optuna_dashboard.wsgi(storage), server_class=Server).serve_forever()


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


def _experiment_id(uri: str, experiment: str) -> str:
    try:
        exp = tracking.client(uri).get_experiment_by_name(experiment)
    except Exception as exc:  # noqa: BLE001 - any reader failure is one line, password masked
        raise StoreError(f"cannot read the MLflow store {mask_url(uri)}: "
                         f"{mask_text(str(exc), uri)}") from None
    if exp is None:
        raise StoreError(f"experiment {experiment!r} does not exist in {mask_url(uri)} (yet: a "
                         f"sweep creates it when its first trial starts)")
    return exp.experiment_id


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
    storage = existing_optuna_storage(args.optuna_storage, workdir)
    host, logs = args.host, workdir / "dashboard-logs"
    for port, flag in ((args.mlflow_port, "--mlflow-port"), (args.optuna_port, "--optuna-port")):
        if not _port_free(host, port):
            raise StoreError(f"port {port} on {host} is in use; pass another {flag}")
    services: list[Service] = []
    deadline = time.time() + START_TIMEOUT_S
    try:
        services.append(_mlflow_ui(uri, exp_id, host, args.mlflow_port, workdir, logs))
        if storage:
            services.append(_optuna_dashboard(storage, host, args.optuna_port, logs))
        else:
            print(f"note: no Optuna storage found in {workdir} (pass --optuna-storage): "
                  f"optuna-dashboard not started")
        for s in services:
            while s.proc is not None and not _up(s.probe):
                if s.proc.poll() is not None:
                    raise StoreError(f"{s.name} exited with code {s.proc.returncode}; see {s.log}")
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
        print(f"dashboards of experiment {args.experiment!r} (Ctrl-C stops them):")
        for s in services:
            print(f"  {s.name:26s} {s.url}   ({s.access})")
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
