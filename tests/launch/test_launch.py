"""launch/cluster.yaml and cluster.local.yaml are valid Ray cluster-launcher files (checked by
Ray's own schema and the same preparation `ray up` does) and describe the cluster bst-search
needs; their shared setup (launch/create_databases.py, launch/setup.sh) is run here for real.
`ray up` -> `ray submit` -> `ray down` itself runs in tests/launch/test_cluster.py."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
CLUSTER = LAUNCH / "cluster.yaml"
LOCAL = LAUNCH / "cluster.local.yaml"
SETUP = LAUNCH / "setup.sh"

pytest.importorskip("jsonschema")  # Ray's validator needs it (ray[default] brings it)
ray_util = pytest.importorskip("ray.autoscaler._private.util")


def _raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER.read_text())


def _prepared() -> dict[str, Any]:
    """What `ray up` validates: the file merged with the provider defaults."""
    cfg = ray_util.prepare_config(_raw())
    ray_util.validate_config(cfg)
    return cfg


def _commands(cfg: dict[str, Any], *keys: str) -> list[str]:
    return [c for k in keys for c in cfg.get(k, [])]


def test_ray_validates_cluster_config() -> None:
    cfg = _prepared()
    assert cfg["cluster_name"] == "bst-search"
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_validation_is_not_vacuous() -> None:
    bad = copy.deepcopy(_raw())
    bad["available_node_types"]["gpu_worker"]["max_worker"] = 3  # typo
    with pytest.raises(Exception, match="max_worker"):
        ray_util.validate_config(ray_util.prepare_config(bad))
    bad = copy.deepcopy(_raw())
    bad["head_node_type"] = "nope"
    with pytest.raises(ValueError, match="head_node_type"):
        ray_util.validate_config(ray_util.prepare_config(bad))


def test_gpu_workers_autoscale_and_head_has_no_gpu() -> None:
    cfg = _prepared()
    types = cfg["available_node_types"]
    gpu = types["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["resources"]["CPU"] >= 1
    assert gpu["node_config"]["InstanceType"].startswith(("g4", "g5", "g6", "p3", "p4", "p5"))
    assert gpu["min_workers"] == 0 and 1 <= gpu["max_workers"] <= cfg["max_workers"]
    # trials asking for a GPU fraction must never be scheduled on the head
    assert types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0


def test_docker_image_and_gpus() -> None:
    docker = _prepared()["docker"]
    assert docker["image"].endswith("bst-search:latest") and docker["container_name"]
    assert "--gpus all" in docker["worker_run_options"]
    assert not any("--gpus" in o for o in docker.get("run_options", []) + docker.get("head_run_options", []))


def test_setup_installs_the_mounted_package() -> None:
    cfg = _prepared()
    mounts = cfg["file_mounts"]
    repo = next(remote for remote, local in mounts.items() if local == ".")
    installs = [c for c in cfg["setup_commands"] if re.search(r"pip install .*-e \.", c)]
    assert installs and all(repo in c for c in installs)


def test_head_runs_mlflow_server_on_shared_stores() -> None:
    """The head's setup is launch/setup.sh (shared with cluster.local.yaml, where it runs)."""
    _prepared()
    cfg = _raw()  # (prepare_config merges setup_commands into head_setup_commands)
    assert cfg["head_setup_commands"] == ["bash ~/bst-search/launch/setup.sh head"]
    assert "bash ~/bst-search/launch/setup.sh node" in cfg["setup_commands"]
    setup = SETUP.read_text()
    # the store URL (a password in it) through the environment, never on the command line
    assert 'MLFLOW_BACKEND_STORE_URI="${BST_DB_URL%/}/${BST_MLFLOW_DB:-mlflow}"' in setup
    assert "--backend-store-uri" not in setup
    assert '--artifacts-destination "${BST_S3_URI%/}/mlartifacts"' in setup
    assert "create_databases.py" in setup and "export MLFLOW_TRACKING_URI=" in setup
    env = (ROOT / "launch" / "cluster_env.sh").read_text()
    assert 'BST_TUNE_STORAGE="${BST_S3_URI%/}/tune"' in env and "BST_OPTUNA_STORAGE=" in env
    assert "RAY_AUTH_MODE=token" in env and "RAY_AUTH_TOKEN_PATH=" in env
    assert cfg["file_mounts"]["~/bst-search-ray-token"] == "~/.bst-search/ray-token"


def test_start_commands() -> None:
    cfg = _prepared()
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    assert cfg["head_start_ray_commands"][0] == "ray stop" and "ray start --head" in head
    assert cfg["worker_start_ray_commands"][0] == "ray stop"
    assert "--address=$RAY_HEAD_IP:6379" in worker


def test_no_psycopg2_anywhere() -> None:
    """The package depends on psycopg 3; psycopg2 is installed nowhere."""
    for path in [*LAUNCH.iterdir(), *(ROOT / "docker").iterdir()]:
        if path.is_file():
            assert "psycopg2" not in path.read_text(), path


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("path", [CLUSTER, LOCAL], ids=["cloud", "local"])
def test_every_command_is_valid_shell(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    for cmd in _commands(cfg, *keys):
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
    for script in ("setup.sh", "cluster_env.sh", "local_sshd.sh", "local_e2e.sh"):
        r = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script}: {r.stderr}"


# --------------------------------------------------------------------------- cluster.local.yaml


def test_local_cluster_config_is_valid_and_on_premise() -> None:
    raw = yaml.safe_load(LOCAL.read_text())
    cfg = ray_util.prepare_config(copy.deepcopy(raw))
    ray_util.validate_config(cfg)
    assert raw["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    assert "docker" not in raw  # no image: the setup commands build the environment
    assert raw["file_mounts"]["~/bst-search"] == "."
    assert raw["file_mounts"]["~/bst-search-ray-token"].startswith("~/.bst-search/local/")
    assert any("make venv" in c for c in raw["setup_commands"])
    # the same setup script as the cloud file, so running this one exercises that one
    assert raw["head_setup_commands"] == _raw()["head_setup_commands"]
    assert "bash ~/bst-search/launch/setup.sh node" in raw["setup_commands"]
    head = " ".join(raw["head_start_ray_commands"])
    port = int(re.search(r"--port=(\d+)", head).group(1))
    assert port != 6379  # a Redis server listens there on these machines
    assert f"$RAY_HEAD_IP:{port}" in " ".join(raw["worker_start_ray_commands"])
    assert "--temp-dir=" in head  # not /tmp/ray, where other clusters of the machine live


def test_local_e2e_drives_up_submit_down() -> None:
    text = (LAUNCH / "local_e2e.sh").read_text()
    for needle in ("ray up -y", "ray submit \"$yaml\" launch/search.py --", "ray down -y",
                   "launch/local_sshd.sh", "moto_server", "find_runs"):
        assert needle in text, needle


# --------------------------------------------------------------------------- local_sshd.sh

SSHD = LAUNCH / "local_sshd.sh"


def _sshd(cmd: str, dir_: Path, **env: str) -> subprocess.CompletedProcess:
    from procs import free_port

    full = {k: v for k, v in os.environ.items() if k != "BST_E2E_SSHD_STATE"}
    full.update({"BST_E2E_SSH_PORT": str(free_port()), **env})
    return subprocess.run(["bash", str(SSHD), cmd, str(dir_)], env=full, capture_output=True,
                          text=True, timeout=60)


def test_local_sshd_refuses_a_state_folder_it_did_not_create(tmp_path) -> None:
    """sshd accepts the keys in the state folder's home for the caller (root): a folder that
    exists already, even private and the caller's, is refused, and nothing is written to it."""
    dir_, pre = tmp_path / "sshd", tmp_path / "state"
    pre.mkdir(mode=0o700)
    r = _sshd("start", dir_, BST_E2E_SSHD_STATE=str(pre))
    assert r.returncode == 5, r.stdout + r.stderr
    assert f"{pre} exists and is not a folder local_sshd.sh created" in r.stderr
    assert list(pre.iterdir()) == [] and not (dir_ / "sshd.pid").exists()
    assert not (dir_ / "id_ed25519").exists()
    # recorded as its own, but not marked (or no longer private): refused all the same
    (dir_ / "state-dir").write_text(f"{pre}\n")
    assert _sshd("start", dir_).returncode == 5
    (pre / ".made-by-local-sshd").touch()
    pre.chmod(0o755)
    assert _sshd("start", dir_).returncode == 5
    if os.geteuid() == 0:  # another user's folder
        pre.chmod(0o700)
        os.chown(pre, 65534, 65534)
        assert _sshd("start", dir_).returncode == 5
    # a client-key folder others may write to is refused before anything else
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    r = _sshd("start", loose)
    assert r.returncode == 5 and "writable by nobody else" in r.stderr


def _no_local_sshd() -> str | None:
    if os.geteuid() != 0:
        return "needs root (sshd, a mount namespace)"
    for tool in ("ssh", "ssh-keygen", "unshare"):
        if not shutil.which(tool):
            return f"no {tool}"
    if not (shutil.which("sshd") or Path("/usr/sbin/sshd").exists()):
        return "no sshd: apt-get install -y openssh-server"
    return None


@pytest.mark.skipif(_no_local_sshd() is not None, reason=str(_no_local_sshd()))
def test_local_sshd_serves_its_key_with_strict_modes_and_reuses_its_folder(tmp_path) -> None:
    """A fresh mktemp -d state folder, StrictModes yes, the client key accepted; the next start
    reuses the folder it recorded (the head's home, and its venv, persist between runs)."""
    from procs import free_port

    dir_ = tmp_path / "sshd"
    port = str(free_port())
    try:
        r = _sshd("start", dir_, BST_E2E_SSH_PORT=port)
        assert r.returncode == 0, r.stdout + r.stderr
        state = Path((dir_ / "state-dir").read_text().strip())
        assert state.name.startswith("bst-local-sshd.") and (state.stat().st_mode & 0o777) == 0o700
        assert "StrictModes yes" in (state / "sshd_config").read_text()
        ssh = ["ssh", "-i", str(dir_ / "id_ed25519"), "-p", port, "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "root@127.0.0.1", "cat ~/.bashrc | head -n 1"]
        login = subprocess.run(ssh, capture_output=True, text=True, timeout=60)
        assert login.returncode == 0, login.stderr + (dir_ / "sshd.log").read_text()
        assert "written by launch/local_sshd.sh" in login.stdout  # the private home
        assert _sshd("stop", dir_).returncode == 0
        (state / "home" / "kept").write_text("venv")
        assert _sshd("start", dir_, BST_E2E_SSH_PORT=port).returncode == 0
        assert (dir_ / "state-dir").read_text().strip() == str(state)
        assert (state / "home" / "kept").exists()
    finally:
        _sshd("stop", dir_)
        if (dir_ / "state-dir").exists():
            shutil.rmtree((dir_ / "state-dir").read_text().strip(), ignore_errors=True)


# --------------------------------------------------------------------------- the setup, run


def _harness_with_postgres():
    """tests/cluster_harness.py, or a skip when the local PostgreSQL does not answer."""
    pg = pytest.importorskip("cluster_harness")
    why = pg.postgres_available()
    if why:
        pytest.skip(why)
    return pg


@pytest.mark.postgres
def test_create_databases_with_psycopg3(monkeypatch: pytest.MonkeyPatch) -> None:
    """launch/create_databases.py, run as the head runs it, against the local PostgreSQL."""
    pg = _harness_with_postgres()
    tag = uuid.uuid4().hex[:8]
    names = [f"bst_cluster_setup_{tag}_mlflow", f"bst_cluster_setup_{tag}_optuna"]
    env = {**os.environ, "BST_DB_URL": "postgresql+psycopg://postgres@127.0.0.1:5432",
           "BST_MLFLOW_DB": names[0], "BST_OPTUNA_DB": names[1]}
    script = [sys.executable, str(LAUNCH / "create_databases.py")]
    try:
        r = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert f"created {names}" in r.stdout
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres") as c:
            have = {row[0] for row in c.execute("SELECT datname FROM pg_database")}
        assert set(names) <= have
        again = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "created none" in again.stdout  # idempotent
        # a server that cannot be reached: one clear line, the password masked
        bad = {**env, "BST_DB_URL": "postgresql+psycopg://bst:s3cret-pw@127.0.0.1:1"}
        r = subprocess.run(script, env=bad, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "cannot create databases" in r.stderr
        assert "s3cret-pw" not in r.stderr + r.stdout and "bst:***@127.0.0.1:1" in r.stderr
    finally:
        pg.drop_databases(names)


# A stand-in for `mlflow server` that records what it was given and answers /health: what
# launch/setup.sh passes to the server, and where the server would listen.
FAKE_MLFLOW = """#!{python}
import json, os, sys, http.server
args = sys.argv[1:]
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
with open(os.path.expanduser("~/fake-mlflow.json"), "w") as fh:
    json.dump({{"argv": sys.argv, "store": os.environ.get("MLFLOW_BACKEND_STORE_URI")}}, fh)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
http.server.HTTPServer((host, port), Health).serve_forever()
"""


@pytest.mark.system
@pytest.mark.postgres
def test_head_setup_keeps_the_password_off_the_command_line_and_listens_on_loopback(tmp_path) -> None:
    """launch/setup.sh head with a password in BST_DB_URL (the real databases, a stand-in
    server): the password is in no command line, the server binds 127.0.0.1 unless told
    BST_MLFLOW_HOST=private (the head's private address), and BST_MLFLOW_APP=basic-auth puts
    it behind MLflow's basic-auth app."""
    import json
    import signal
    import time

    pg = _harness_with_postgres()
    tag = uuid.uuid4().hex[:8]
    names = [f"bst_setup_argv_{tag}_mlflow", f"bst_setup_argv_{tag}_optuna"]
    password = f"pw-{uuid.uuid4().hex}"
    home, fake = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    fake.mkdir()
    (fake / "mlflow").write_text(FAKE_MLFLOW.format(python=sys.executable))
    (fake / "mlflow").chmod(0o755)
    (home / "bst-search-ray-token").write_text("f" * 64)
    port = pg.free_port()
    env_file = (f"export BST_DB_URL=postgresql+psycopg://postgres:{password}@127.0.0.1:5432\n"
                f"export BST_MLFLOW_DB={names[0]} BST_OPTUNA_DB={names[1]}\n"
                f"export BST_S3_URI=s3://bucket/bst-search BST_MLFLOW_PORT={port}\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("BST_", "MLFLOW_"))},
           "HOME": str(home), "PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def head(extra: str = "") -> dict:
        (home / "bst-search.env").write_text(env_file + extra)
        r = subprocess.run(["bash", str(SETUP), "head"], env=env, cwd=home, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert password not in r.stdout + r.stderr
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
        shown = [pid for pid in pids if any(password in a for a in pg.cmdline(pid))]
        assert not shown, [pg.cmdline(pid) for pid in shown]
        return json.loads((home / "fake-mlflow.json").read_text())

    try:
        seen = head()
        argv = seen["argv"]
        assert argv[argv.index("--host") + 1] == "127.0.0.1" and "--app-name" not in argv
        assert seen["store"] == f"postgresql+psycopg://postgres:{password}@127.0.0.1:5432/{names[0]}"
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in (home / ".bashrc").read_text()
        private = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
        if private:
            argv = head("export BST_MLFLOW_HOST=private\n")["argv"]
            assert argv[argv.index("--host") + 1] == private[0]
            assert f"MLFLOW_TRACKING_URI=http://{private[0]}:{port}" in (home / ".bashrc").read_text()
        argv = head("export BST_MLFLOW_APP=basic-auth\n")["argv"]
        assert argv[argv.index("--app-name") + 1] == "basic-auth"
    finally:
        pidfile = home / "mlflow.pid"
        if pidfile.exists():
            try:
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        pg.drop_databases(names)


def test_image_matches_local_ray() -> None:
    """`ray up` wants the same Ray on the laptop and in the image."""
    import ray

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray.__version__}" in dockerfile
    assert re.search(r'^RUN pip install "?\.\[extract,auth\]', dockerfile, re.M)
    assert "rsync" in dockerfile


def test_readme_covers_the_workflow() -> None:
    text = (ROOT / "launch" / "README.md").read_text()
    for needle in ("docker build", "ray up -y launch/cluster.yaml", "ray submit", "launch/search.py",
                   "--resume", "ray down -y launch/cluster.yaml", "bst_search.ensemble", "5000",
                   "ray dashboard launch/cluster.yaml", "IAM", "Bucket", "Database",
                   "postgresql+psycopg://", "ray-token", "bash launch/local_e2e.sh"):
        assert needle in text, needle


def test_readme_security_section_matches_the_setup() -> None:
    """launch/README.md says what listens where (the MLflow row names the address setup.sh
    binds by default), where secrets live, what is read-only, what the token protects, and
    how to add authentication; the cluster page points to it."""
    text = (ROOT / "launch" / "README.md").read_text()
    section = text.split("\n## Security\n", 1)[1].split("\n## ", 1)[0]
    default = re.search(r"host=\$\{BST_MLFLOW_HOST:-([^}]+)\}", SETUP.read_text()).group(1)
    mlflow_row = next(line for line in section.splitlines() if line.startswith("| 5000 (`BST_MLFLOW_PORT`)"))
    assert f"(`{default}`)" in mlflow_row and "0.0.0.0" not in section
    for needle in ("**What listens where", "**Where secrets live", "**What is read-only",
                   "**What the token protects", "MLFLOW_BACKEND_STORE_URI", "/proc/*/cmdline",
                   "default_transaction_read_only=on", "`writable`", "--app-name basic-auth",
                   "BST_MLFLOW_HOST=private", "StrictModes yes"):
        assert needle in section, needle
    assert "Security** section of `launch/README.md`" in (ROOT / "docs" / "cluster.md").read_text()


def test_readme_mesh_example_is_runnable() -> None:
    """The mesh sweep passes --crowd-data, since mesh.yaml samples crowd strategies, and every
    data.crowd value the guide names exists."""
    from bst_search.config import SCHEMA
    from bst_search.search.space import load_space

    text = (ROOT / "launch" / "README.md").read_text()
    example = re.search(r"ray submit --tmux launch/cluster.yaml launch/search.py -- \\\n(.*?)```",
                        text, re.S).group(1)
    assert "--space mesh" in example and "--crowd-data" in example
    named = re.search(r"samples `data.crowd` from (.*?): every", text, re.S).group(1)
    values = re.findall(r"`([a-z0-9_]+)`", named)
    assert set(values) <= set(SCHEMA["data.crowd"].choices), values
    mesh = load_space("mesh")  # every strategy mesh samples, and no other
    assert {v for v in SCHEMA["data.crowd"].choices if mesh.can_take("data.crowd", v)} == set(values)
