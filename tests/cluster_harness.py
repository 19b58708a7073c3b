"""A real multi-node Ray cluster on one machine, with the shared services a cluster has.

Used by ``tests/launch/test_cluster.py`` (and usable from a shell: ``python -m tests.cluster_harness``
prints how to reach a cluster it starts). What it starts, each as its own processes:

* an S3-compatible endpoint on loopback (moto's server mode), the Tune storage and the
  MLflow artifact store;
* two PostgreSQL databases on the local server, one for MLflow and one for Optuna;
* an MLflow tracking server (PostgreSQL backend, artifacts proxied to the S3 bucket);
* a Ray head and worker nodes, each a separate ``ray start`` with its own ``--temp-dir``,
  its own custom resource ``node_<name>`` and one CPU, joined with token authentication
  (``RAY_AUTH_MODE=token`` and a token file of the cluster's own, never ``~/.ray``).

Other people's Ray clusters run on the same machine, so nothing here uses ``ray stop``
(it kills every Ray process of the machine) or a default port. Every process started here
carries the environment variable ``BST_CLUSTER_HARNESS=<cluster id>`` (inherited by every
child: Ray's workers, agents, uvicorn workers); :func:`kill_marked` finds them by that
variable in ``/proc/<pid>/environ`` and kills them by pid. That is the teardown, and it
works even when a test failed half-way.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import free_port

MARK_ENV = "BST_CLUSTER_HARNESS"
NODE_ENV = "BST_CLUSTER_NODE"
PG_ADMIN_URL = os.environ.get("BST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_PREFIX = "bst_cluster_"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script of this environment (ray, mlflow, moto_server, bst-search)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is neither in {BIN} nor on PATH")
    return found


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``.
    An AssertionError from ``check`` (the thing waited on can no longer happen) ends it at once."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - retried until the deadline, then reported
            last = e
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {last!r}" if last else ""))


# --------------------------------------------------------------------------- processes


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _cwd_in(pid: int, root: Path) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
    except OSError:
        return False
    return cwd == str(root) or cwd.startswith(f"{root}/")


def marked_pids(marker: str, node: str | None = None, root: Path | None = None) -> list[int]:
    """Live processes carrying ``BST_CLUSTER_HARNESS=marker`` (and ``BST_CLUSTER_NODE=node``),
    or, for the whole cluster, working in ``root``: a Ray agent whose node's raylet was killed
    outlives it, and its process title overwrites the environment /proc shows (no marker)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        env = _environ(pid)
        if env.get(MARK_ENV) == marker and (node is None or env.get(NODE_ENV) == node):
            pids.append(pid)
        elif node is None and root is not None and _cwd_in(pid, root):
            pids.append(pid)
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_pids(pids: Iterable[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after ``grace`` seconds."""
    pids = list(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


def kill_marked(marker: str, node: str | None = None, grace: float = 3.0,
                root: Path | None = None) -> int:
    """Kill every process of this cluster (or of one of its nodes); repeat until none is left
    (a dying parent may still spawn); return how many were killed."""
    total = 0
    for _ in range(5):
        pids = marked_pids(marker, node, root)
        if not pids:
            break
        kill_pids(pids, grace)
        total += len(pids)
    return total


# --------------------------------------------------------------------------- services


def create_databases(names: Iterable[str], admin_url: str = PG_ADMIN_URL) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')


def drop_databases(names: Iterable[str], admin_url: str = PG_ADMIN_URL) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_available(admin_url: str = PG_ADMIN_URL) -> str | None:
    """None when the server answers, else why not (a skip reason)."""
    try:
        import psycopg

        with psycopg.connect(admin_url, connect_timeout=3):
            return None
    except Exception as e:  # noqa: BLE001 - any failure means the tests cannot run
        return f"PostgreSQL at {admin_url} is not reachable: {e}"


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return 200 <= r.status < 500


@dataclass
class Cluster:
    """Handles to everything one harness started (see the module docstring)."""

    root: Path
    marker: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    s3_port: int = 0
    mlflow_port: int = 0
    gcs_port: int = 0
    bucket: str = "bst-cluster"
    databases: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)

    # ---------------------------------------------------------------- environment
    @property
    def token_file(self) -> Path:
        return self.root / "ray-token"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def db_url(self, role: str) -> str:
        """``postgresql+psycopg://`` URL of the ``mlflow`` or ``optuna`` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.databases[role]}"

    def tune_storage(self, sub: str = "tune") -> str:
        return f"s3://{self.bucket}/{sub}"

    def env(self, node: str = "client") -> dict[str, str]:
        """What every process of the cluster sees: S3 endpoint and dummy credentials, token
        auth, this cluster's marker. Secrets would come the same way (environment)."""
        env = dict(os.environ)
        for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "BST_TUNE_STORAGE", "BST_OPTUNA_STORAGE"):
            env.pop(k, None)
        env.update({
            MARK_ENV: self.marker, NODE_ENV: node,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.s3_endpoint, "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file),
            "RAY_USAGE_STATS_ENABLED": "0",
            # a lost raylet is noticed in seconds, not the default 30 s
            "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def spawn(self, name: str, argv: list[str], node: str = "service",
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a process of the cluster in its own session, output to ``root/<name>.log``."""
        log = self.root / f"{name}.log"
        self.logs.append(log)
        fh = open(log, "ab")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env or self.env(node), cwd=self.root, start_new_session=True)
        finally:
            fh.close()

    # ---------------------------------------------------------------- services
    def start_s3(self) -> None:
        """moto in server mode on loopback, and the bucket."""
        self.s3_port = self.s3_port or free_port()
        self.spawn("s3", [tool("moto_server"), "-H", "127.0.0.1", "-p", str(self.s3_port)])
        wait_for("the S3 endpoint", lambda: _http_ok(f"{self.s3_endpoint}/moto-api/"), 60)
        self._s3().create_bucket(Bucket=self.bucket)

    def _s3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def s3_keys(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        for page in self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def s3_get(self, key: str) -> bytes:
        return self._s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def s3_put(self, key: str, body: bytes) -> None:
        self._s3().put_object(Bucket=self.bucket, Key=key, Body=body)

    def create_databases(self) -> None:
        self.databases = {role: f"{DB_PREFIX}{self.marker}_{role}" for role in ("mlflow", "optuna")}
        create_databases(self.databases.values())

    def start_mlflow(self) -> None:
        """The tracking server: runs in PostgreSQL (its URL in the environment, as a password
        would be), artifacts proxied to the bucket."""
        self.mlflow_port = self.mlflow_port or free_port()
        self.spawn("mlflow", [tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port),
                              "--workers", "1", "--artifacts-destination", f"s3://{self.bucket}/mlartifacts"],
                   node="mlflow", env={**self.env("mlflow"), "MLFLOW_BACKEND_STORE_URI": self.db_url("mlflow")})
        wait_for("the MLflow server", lambda: _http_ok(f"{self.tracking_uri}/health"), 120)

    def stop_mlflow(self) -> None:
        kill_marked(self.marker, node="mlflow")

    # ---------------------------------------------------------------- Ray
    def _ray_start(self, name: str, head: bool, resources: dict[str, float], cpus: int) -> dict[str, Any]:
        temp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root / "ray"))
        argv = [tool("ray"), "start", "--temp-dir", str(temp), "--node-ip-address", "127.0.0.1",
                "--num-cpus", str(cpus), "--num-gpus", "0", "--resources", json.dumps(resources),
                "--min-worker-port", "0", "--max-worker-port", "0",
                "--dashboard-agent-listen-port", str(free_port()),
                "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats",
                "--log-style", "record"]
        if head:
            self.gcs_port = free_port()
            argv += ["--head", "--port", str(self.gcs_port), "--include-dashboard", "false",
                     "--dashboard-port", str(free_port())]
        else:
            argv += ["--address", self.address]
        log = self.root / f"ray-start-{name}.log"
        self.logs.append(log)
        r = subprocess.run(argv, env=self.env(name), cwd=self.root, capture_output=True, text=True,
                           timeout=180)
        log.write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise RuntimeError(f"ray start for node {name} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        node = {"name": name, "temp_dir": temp, "resource": next(iter(resources))}
        node["raylet_pid"], node["node_id"] = wait_for(f"the raylet of node {name}",
                                                       lambda: self._raylet(temp), 60)
        self.nodes[name] = node
        return node

    @staticmethod
    def _raylet(temp: Path) -> tuple[int, str] | None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            argv = cmdline(int(entry.name))
            if argv and argv[0].endswith("/raylet") and f"--temp_dir={temp}" in argv:
                node_id = next(a.split("=", 1)[1] for a in argv if a.startswith("--node_id="))
                return int(entry.name), node_id
        return None

    def start_head(self, name: str = "head") -> dict[str, Any]:
        if not self.token_file.exists():
            self.token_file.write_text(secrets.token_hex(32))
            self.token_file.chmod(0o600)
        return self._ray_start(name, True, {f"node_{name}": 1}, cpus=1)

    def add_worker(self, name: str) -> dict[str, Any]:
        return self._ray_start(name, False, {f"node_{name}": 1}, cpus=1)

    def alive_nodes(self) -> int:
        """Alive nodes as the GCS sees them (a client with the token; without it: refused)."""
        code = (f"import ray, json; ray.init(address={self.address!r}, logging_level='ERROR'); "
                "print(json.dumps(sum(n['Alive'] for n in ray.nodes())))")
        r = subprocess.run([sys.executable, "-c", code], env=self.env("probe"), capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        return int(r.stdout.strip().splitlines()[-1])

    def kill_raylet(self, name: str) -> int:
        """Kill a node the hard way: its raylet, by pid (the node's workers die with it)."""
        pid = self.nodes[name]["raylet_pid"]
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_node(self, name: str) -> int:
        """Every process of one node (head: GCS, raylet, dashboard, its workers)."""
        return kill_marked(self.marker, node=name, grace=0.5)

    # ---------------------------------------------------------------- lifecycle
    def start(self, workers: Iterable[str] = ("w1", "w2")) -> Cluster:
        (self.root / "ray").mkdir(parents=True, exist_ok=True)
        self.create_databases()
        self.start_s3()
        self.start_mlflow()
        self.start_head()
        for w in workers:
            self.add_worker(w)
        return self

    def stop(self) -> None:
        """Kill everything this cluster started and drop its databases; never raises."""
        try:
            kill_marked(self.marker, root=self.root)
        finally:
            if self.databases:
                try:
                    drop_databases(self.databases.values())
                except Exception as e:  # noqa: BLE001 - teardown reports, does not mask the test
                    print(f"warning: could not drop {list(self.databases.values())}: {e}", file=sys.stderr)

    def tail_logs(self, n: int = 40) -> str:
        """The end of every log, for a failing test's report; not S3's access log (a line per
        request: it would push the failure itself out of a CI report's excerpt)."""
        parts = []
        for log in self.logs:
            if log.exists() and log.name != "s3.log":
                lines = log.read_text(errors="replace").splitlines()[-n:]
                parts.append(f"----- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def new_cluster(prefix: str = "bstc-") -> Cluster:
    """A cluster rooted in a short /tmp directory (Ray's socket paths must stay < 108 chars)."""
    return Cluster(root=Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")))


if __name__ == "__main__":  # a cluster to poke at by hand; Ctrl-C tears it down
    c = new_cluster()
    try:
        c.start()
        print(json.dumps({"address": c.address, "tracking_uri": c.tracking_uri,
                          "s3_endpoint": c.s3_endpoint, "optuna": c.db_url("optuna"),
                          "token_file": str(c.token_file), "root": str(c.root)}, indent=1))
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
