"""The cluster's MLflow server behind MLflow's basic-auth app, set up as docs/cluster.md's
Security section says (the same ``mlflow server`` line as ``launch/setup.sh head`` with
``BST_MLFLOW_APP=basic-auth``): no login, no answer; the driver's login writes; a user with
the default READ permission reads and cannot write."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from procs import free_port

pytestmark = pytest.mark.system


def _get(uri: str, path: str, login: tuple[str, str] | None = None) -> int:
    """The HTTP status of a GET on the tracking server, with a basic-auth login or none."""
    req = urllib.request.Request(uri + path)
    if login:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except urllib.error.URLError:
        return 0  # not listening yet


def _as(login: tuple[str, str], uri: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python with MLflow's client logged in as ``login`` (MLflow reads
    MLFLOW_TRACKING_USERNAME/PASSWORD, as the driver does)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "MLFLOW_TRACKING_USERNAME": login[0], "MLFLOW_TRACKING_PASSWORD": login[1]}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def test_basic_auth_refuses_strangers_lets_the_driver_write_and_viewers_read(tmp_path: Path) -> None:
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth] (Flask-WTF)")
    admin = ("admin", f"pw-{uuid.uuid4().hex}")
    viewer = ("viewer", f"pw-{uuid.uuid4().hex}")
    ini = tmp_path / "mlflow-auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = admin\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    ini.chmod(0o600)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,  # the app's CSRF key
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    mlflow = str(Path(sys.executable).parent / "mlflow")
    log = open(tmp_path / "mlflow.log", "wb")
    server = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port),
                               "--app-name", "basic-auth",
                               "--artifacts-destination", str(tmp_path / "mlartifacts")],
                              env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.time() + 120
        while _get(uri, "/health") != 200:
            assert server.poll() is None and time.time() < deadline, (tmp_path / "mlflow.log").read_text()[-3000:]
            time.sleep(0.5)
        search = "/api/2.0/mlflow/experiments/search?max_results=10"
        assert _get(uri, search) == 401  # no login
        assert _get(uri, search, (admin[0], "wrong")) == 401

        wrote = _as(admin, uri, (
            "import json, mlflow\n"
            "from mlflow.server import get_app_client\n"
            f"get_app_client('basic-auth', tracking_uri={uri!r}).create_user(*{viewer!r})\n"
            "mlflow.set_experiment('sweep')\n"
            "with mlflow.start_run() as run:\n"
            "    mlflow.log_metric('oof_hF', 0.8)\n"
            "print(json.dumps(run.info.run_id))\n"))
        assert wrote.returncode == 0, wrote.stderr[-3000:]
        run_id = json.loads(wrote.stdout.strip().splitlines()[-1])

        read = _as(viewer, uri, (
            "import mlflow\n"
            f"print(mlflow.MlflowClient().get_run({run_id!r}).data.metrics['oof_hF'])\n"))
        assert read.returncode == 0 and read.stdout.strip() == "0.8", read.stderr[-3000:]
        denied = _as(viewer, uri, (
            "import mlflow\n"
            f"mlflow.MlflowClient().log_metric({run_id!r}, 'oof_hF', 0.1)\n"))
        assert denied.returncode != 0 and "403" in denied.stderr, denied.stderr[-3000:]

        shown = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline_has(pid, admin[1])]
        assert not shown  # the admin password is in the environment and the ini only
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        log.close()


def _cmdline_has(pid: str, secret: str) -> bool:
    try:
        return secret.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
