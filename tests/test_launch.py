"""launch/cluster.yaml is a valid Ray cluster-launcher file (checked by Ray's own schema and
the same preparation `ray up` does) and describes the cluster bst-search needs."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "launch" / "cluster.yaml"

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
    cfg = _prepared()
    (server,) = [c for c in cfg["head_setup_commands"] if "mlflow server" in c]
    assert '--backend-store-uri "$BST_DB_URL/mlflow"' in server
    assert '--artifacts-destination "$BST_S3_URI/mlartifacts"' in server
    assert "--host 0.0.0.0" in server and "--port 5000" in server
    every = " ".join(_commands(cfg, "setup_commands"))
    assert "BST_TUNE_STORAGE=$BST_S3_URI/tune" in every and "BST_OPTUNA_STORAGE" in every
    assert any("MLFLOW_TRACKING_URI=http://" in c for c in cfg["head_setup_commands"])


def test_start_commands() -> None:
    cfg = _prepared()
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    assert cfg["head_start_ray_commands"][0] == "ray stop" and "ray start --head" in head
    assert cfg["worker_start_ray_commands"][0] == "ray stop"
    assert "--address=$RAY_HEAD_IP:6379" in worker


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_every_command_is_valid_shell() -> None:
    cfg = _raw()
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    for cmd in _commands(cfg, *keys):
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
        m = re.search(r'python -c "(.*)"', cmd)
        if m:
            compile(m.group(1), "<setup command>", "exec")


def test_image_matches_local_ray() -> None:
    """`ray up` wants the same Ray on the laptop and in the image."""
    import ray

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray.__version__}" in dockerfile
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    assert "rsync" in dockerfile


def test_readme_covers_the_workflow() -> None:
    text = (ROOT / "launch" / "README.md").read_text()
    for needle in ("docker build", "ray up launch/cluster.yaml", "ray submit", "launch/search.py",
                   "--resume", "ray down launch/cluster.yaml", "bst_search.ensemble", "5000"):
        assert needle in text, needle
