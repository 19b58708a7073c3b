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
    assert '--backend-store-uri "${BST_DB_URL%/}/${BST_MLFLOW_DB:-mlflow}"' in setup
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


# --------------------------------------------------------------------------- the setup, run


@pytest.mark.postgres
def test_create_databases_with_psycopg3(monkeypatch: pytest.MonkeyPatch) -> None:
    """launch/create_databases.py, run as the head runs it, against the local PostgreSQL."""
    pg = pytest.importorskip("cluster_harness")
    why = pg.postgres_available()
    if why:
        pytest.skip(why)
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


def test_image_matches_local_ray() -> None:
    """`ray up` wants the same Ray on the laptop and in the image."""
    import ray

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray.__version__}" in dockerfile
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    assert "rsync" in dockerfile


def test_readme_covers_the_workflow() -> None:
    text = (ROOT / "launch" / "README.md").read_text()
    for needle in ("docker build", "ray up -y launch/cluster.yaml", "ray submit", "launch/search.py",
                   "--resume", "ray down -y launch/cluster.yaml", "bst_search.ensemble", "5000",
                   "ray dashboard launch/cluster.yaml", "IAM", "Bucket", "Database",
                   "postgresql+psycopg://", "ray-token", "bash launch/local_e2e.sh"):
        assert needle in text, needle


def test_readme_mesh_example_is_runnable() -> None:
    """The mesh sweep passes --crowd-data, since mesh.yaml samples crowd strategies, and every
    data.crowd value the guide names exists."""
    from bst_search.config import SCHEMA

    text = (ROOT / "launch" / "README.md").read_text()
    example = re.search(r"ray submit --tmux launch/cluster.yaml launch/search.py -- \\\n(.*?)```",
                        text, re.S).group(1)
    assert "--space mesh" in example and "--crowd-data" in example
    named = re.search(r"samples `data.crowd` from (.*?): every", text, re.S).group(1)
    values = re.findall(r"`([a-z0-9_]+)`", named)
    assert set(values) == set(SCHEMA["data.crowd"].choices), values
