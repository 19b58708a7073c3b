"""Sweeps on a real three-node Ray cluster with shared storage (tests/cluster_harness.py).

Head and two workers (separate ``ray start``, token auth), Tune storage and MLflow artifacts
on an S3 endpoint (moto server), Optuna and MLflow in PostgreSQL, an MLflow tracking server
process. Each test kills something mid-sweep (a worker's raylet, the head and the driver, the
MLflow server) and then checks that the sweep ended exactly as a clean one would: N FINISHED
trial runs, no duplicate, each with its complete OOF, trials on several nodes, N COMPLETE
Optuna trials. These run with ``make test-cluster`` (each takes one to three minutes).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cluster_harness as ch  # tests/ is on sys.path (pytest rootdir-relative import)
import pytest

from bst_search.search.space import SPACE_DIR

ROOT = Path(__file__).resolve().parents[2]
SMOKE = SPACE_DIR / "smoke.yaml"
N_TRIALS = 8

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
if not Path("/proc/self/environ").exists():
    pytest.skip("the cluster harness finds its processes through /proc (Linux)", allow_module_level=True)
_why = ch.postgres_available()
if _why:
    pytest.skip(_why, allow_module_level=True)


# --------------------------------------------------------------------------- fixtures


def _teardown(c: ch.Cluster) -> None:
    print(c.tail_logs(30))  # captured: pytest shows it only when the test failed
    c.stop()
    left = ch.marked_pids(c.marker, root=c.root)
    shutil.rmtree(c.root, ignore_errors=True)
    assert not left, f"processes of the cluster survived its teardown: {left}"


@pytest.fixture
def cluster() -> Iterator[ch.Cluster]:
    """Head + workers w1, w2 + S3 + PostgreSQL + MLflow server; all gone afterwards."""
    c = ch.new_cluster()
    try:
        c.start()
        yield c
    finally:
        _teardown(c)


@pytest.fixture
def head_only() -> Iterator[ch.Cluster]:
    c = ch.new_cluster()
    (c.root / "ray").mkdir()
    try:
        c.start_head()
        yield c
    finally:
        _teardown(c)


# --------------------------------------------------------------------------- helpers


class Sweep:
    """One ``bst-search search --address ...`` driver process on the cluster."""

    def __init__(self, c: ch.Cluster, data: dict[str, Path], experiment: str, workdir: Path,
                 trials: int = N_TRIALS, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.c, self.experiment, self.workdir, self.extra_env = c, experiment, workdir, env or {}
        self.argv = [ch.tool("bst-search"), "search", "--data", str(data["dev"]),
                     "--eval-data", str(data["eval"]), "--space", str(SMOKE),
                     "--experiment", experiment, "--trials", str(trials), "--concurrency", "3",
                     "--address", c.address, "--tracking-uri", c.tracking_uri,
                     "--optuna-storage", c.db_url("optuna"), "--tune-storage", c.tune_storage(),
                     "--workdir", str(workdir), "--max-failures", "3", *extra]
        self.log = c.root / f"driver-{experiment}-{len(c.logs)}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, *more: str) -> Sweep:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = self.c.env("driver")
        env["BST_CACHE_DIR"] = str(self.workdir / "cache")
        env.update(self.extra_env)
        self.c.logs.append(self.log)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.argv + list(more), stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.workdir,
                                         start_new_session=True)
        return self

    def wait(self, timeout: float = 900) -> str:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep did not end within {timeout:.0f}s:\n{self.output()[-4000:]}")
        out = self.output()
        assert rc == 0, f"the driver exited with {rc}:\n{out[-6000:]}"
        assert "View run" not in out  # MLflow's two lines per run closed on a tracking server
        return out

    def kill(self) -> None:
        """SIGKILL the driver and everything in its session, and reap it (a zombie would
        still hold its sweep's lease, which checks whether the pid is alive)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(60)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _client(c: ch.Cluster):
    from bst_search import tracking

    return tracking.client(c.tracking_uri)


def _runs(c: ch.Cluster, experiment: str, status: str | None = None) -> list:
    from bst_search import tracking

    cl = _client(c)
    exp = cl.get_experiment_by_name(experiment)
    return [] if exp is None else tracking.find_runs(cl, exp.experiment_id, status=status)


def _trial_on(c: ch.Cluster, node: str) -> str | None:
    """Id of a Tune trial whose actor runs on ``node`` now: its process is a Ray worker of that
    node named ``ray::ImplicitFunc``, and its working directory is the trial's directory."""
    for pid in ch.marked_pids(c.marker, node):
        argv = ch.cmdline(pid)
        if not argv or not argv[0].startswith("ray::ImplicitFunc"):
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        m = re.search(r"_([0-9a-f]{8})_\d+_", os.path.basename(cwd))
        if m:
            return m.group(1)
    return None


def _checkpoints_saved(c: ch.Cluster, experiment: str, trial_id: str) -> int:
    """Fold checkpoints of a trial in the sweep's S3 storage: a worker uploads one as soon as a
    fold ends (MLflow hears of folds later, in batches: BST_MLFLOW_FOLD_S)."""
    keys = c.s3_keys(f"tune/{experiment}")
    return len({m.group(1) for k in keys if f"_{trial_id}_" in k
                for m in [re.search(r"/(checkpoint_\d+)/", k)] if m})


def wait_for_trial_on(c: ch.Cluster, sweep: Sweep, node: str, timeout: float = 600) -> str:
    """Block until a trial on ``node`` has a finished fold (a checkpoint in S3); its id."""

    def check() -> str | None:
        assert sweep.alive(), f"the sweep ended early:\n{sweep.output()[-4000:]}"
        trial = _trial_on(c, node)
        return trial if trial and _checkpoints_saved(c, sweep.experiment, trial) >= 1 else None

    return ch.wait_for(f"a trial with a finished fold on node {node}", check, timeout, every=0.5)


def check_sweep(c: ch.Cluster, experiment: str, n: int, dev_ids: list[str],
                orphans_fail: bool = False) -> dict:
    """The guarantees of a sweep, whatever happened during it; returns figures for a report.
    ``orphans_fail``: trials that a killed driver had just asked Optuna for, and that Tune's
    saved state never saw, may end FAIL (never COMPLETE twice, never left RUNNING)."""
    import optuna
    import pandas as pd

    cl = _client(c)
    runs = _runs(c, experiment, "FINISHED")
    trial_ids = [r.data.tags["bst.trial_id"] for r in runs]
    assert len(runs) == n, f"{len(runs)} FINISHED trial runs, expected {n}"
    assert len(set(trial_ids)) == n, f"duplicate FINISHED runs: {sorted(trial_ids)}"
    every = _runs(c, experiment)
    assert {r.info.status for r in every} <= {"FINISHED", "KILLED", "FAILED"}, "a run is left open"
    for r in runs:
        assert r.data.tags.get("bst.status") == "complete", (r.info.run_id, r.data.tags)
        arts = {a.path for a in cl.list_artifacts(r.info.run_id)}
        assert {"oof.parquet", "eval.parquet", "config.yaml", "metrics.json"} <= arts, arts
        oof = pd.read_parquet(cl.download_artifacts(r.info.run_id, "oof.parquet"))
        assert oof["sound_id"].is_unique and sorted(oof["sound_id"]) == sorted(dev_ids)
        assert sorted(oof["fold"].unique()) == [0, 1, 2, 3, 4]
        steps = sorted(m.step for m in cl.get_metric_history(r.info.run_id, "fold_hF"))
        assert sorted(set(steps)) == [0, 1, 2, 3, 4], steps
    node_ids = {node["node_id"] for node in c.nodes.values()}
    tags = [r.data.tags.get("bst.node") for r in runs]
    assert all(tags), "a trial run has no bst.node tag"
    assert set(tags) <= node_ids, f"bst.node tags {set(tags)} are not node ids of the cluster"
    assert len(set(tags)) >= 2, f"all trials ran on one node: {set(tags)}"
    sweeps = {r.data.tags["bst.sweep"] for r in runs}
    assert len(sweeps) == 1, sweeps
    sweep = sweeps.pop()
    names = set(optuna.get_all_study_names(c.db_url("optuna"))) & {experiment, sweep}
    assert len(names) == 1, f"no single Optuna study for sweep {sweep}: {names}"
    study = optuna.load_study(study_name=names.pop(), storage=c.db_url("optuna"))
    states: dict[str, int] = {}
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    seen = [(t.number, t.state.name, {k: v for k, v in t.user_attrs.items() if k != "bst.invalid"})
            for t in trials]
    if orphans_fail:
        assert states.get("COMPLETE") == n and set(states) <= {"COMPLETE", "FAIL"}, (states, seen)
    else:
        assert states == {"COMPLETE": n}, (states, seen)
    return {"runs": len(every), "finished": len(runs), "nodes": len(set(tags)), "sweep": sweep}


def _dev_ids(data: dict[str, Path]) -> list[str]:
    from bst_search.data import load_dataset

    return list(load_dataset(data["dev"]).ids)


def _retries(output: str) -> int:
    """Trial restarts: the console's line per trial Tune started again after a failure."""
    return len(re.findall(r"^trial \S+\s+restarted\s", output, re.M))


# --------------------------------------------------------------------------- tests


def test_a_node_without_the_token_is_refused(head_only: ch.Cluster) -> None:
    """Token auth is on: a node that does not present the cluster's token cannot join."""
    c = head_only
    wrong = c.root / "wrong-token"
    wrong.write_text("0" * 64)
    env = c.env("intruder")
    env["RAY_AUTH_TOKEN_PATH"] = str(wrong)
    argv = [ch.tool("ray"), "start", "--address", c.address, "--temp-dir", str(c.root / "ray" / "x"),
            "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--min-worker-port", "0",
            "--max-worker-port", "0", "--dashboard-agent-listen-port", str(ch.free_port())]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert re.search(r"auth|token", r.stdout + r.stderr, re.I), (r.stdout + r.stderr)[-2000:]
    assert c.alive_nodes() == 1  # and the right token joins
    c.add_worker("w1")
    assert c.alive_nodes() == 2


def test_sweep_survives_the_loss_of_a_worker_node(cluster: ch.Cluster, tiny_data, tmp_path) -> None:
    c = cluster
    t0 = time.monotonic()
    # each fold reports 1.5 s late: the trial found on w1 with one fold saved is still running
    # there when w1 is killed (smoke folds alone can take less time than finding it does)
    sweep = Sweep(c, tiny_data, "nodeloss", tmp_path / "driver", env={"BST_FAULT_FOLD_DELAY_S": "1.5"}).start()
    victim = wait_for_trial_on(c, sweep, "w1")
    killed_at = time.monotonic() - t0
    c.kill_raylet("w1")
    ch.wait_for("the cluster to see node w1 dead", lambda: c.alive_nodes() == 2, 120)
    out = sweep.wait()
    wall = time.monotonic() - t0
    figures = check_sweep(c, "nodeloss", N_TRIALS, _dev_ids(tiny_data))
    victim_run = [r for r in _runs(c, "nodeloss", "FINISHED") if r.data.tags["bst.trial_id"] == victim]
    assert victim_run, f"the trial running on the lost node ({victim}) did not finish"
    lost = c.nodes["w1"]["node_id"]
    assert victim_run[0].data.tags["bst.node"] != lost  # it finished elsewhere ...
    assert lost in victim_run[0].data.tags.get("bst.nodes", "")  # ... after starting on w1
    retries = _retries(out)
    assert retries >= 1
    print(f"\nnode loss: {N_TRIALS} trials, trial {victim} on w1 killed at {killed_at:.0f}s, "
          f"retries {retries}, wall {wall:.0f}s (cluster start excluded), 0 lost, {figures}")


def _tune_state(c: ch.Cluster, experiment: str) -> dict[str, str]:
    """The S3 keys of the Tune experiment's own files, by kind: its trial list
    (``experiment_state``) and its searcher's state (``searcher-state``, ``search_gen_state``),
    which Tune saves side by side and uploads one by one."""
    found = {}
    for key in c.s3_keys(f"tune/{experiment}"):
        m = re.search(r"/(experiment_state|searcher-state|search_gen_state)-[^/]+$", key)
        if m and key.count("/") == 2:
            found[m.group(1)] = key
    return found


def _tune_trials_in_s3(c: ch.Cluster, experiment: str) -> int:
    key = _tune_state(c, experiment).get("experiment_state")
    return len(json.loads(c.s3_get(key))["trial_data"]) if key else 0


def test_sweep_resumes_on_a_new_head_from_shared_state(cluster: ch.Cluster, tiny_data, tmp_path) -> None:
    """Driver and head die; a new head (new temp dir, new workers) resumes from S3 + PostgreSQL
    only: the new driver gets a fresh work dir, nothing of the old head's disk. Exactly
    N_TRIALS trials: an Optuna trial asked for after Tune's state last reached S3 is adopted
    (left RUNNING: told FAIL, its parameters run again; finished: it counts), never sampled
    anew. The searcher's state in S3 is set back to its first upload, older than the trial
    list, as a head lost between Tune's uploads leaves it: the trials Tune restores keep their
    Optuna trials (none runs twice, each outcome reaches Optuna)."""
    c = cluster
    first = Sweep(c, tiny_data, "headloss", tmp_path / "driver-a").start()
    keys = ch.wait_for("the searcher's first state in S3", lambda: (
        assert_alive(first) and (found := _tune_state(c, "headloss"))
        and {"searcher-state", "search_gen_state"} <= set(found) and found), 600)
    stale = {keys[kind]: c.s3_get(keys[kind]) for kind in ("searcher-state", "search_gen_state")}
    stale_trials = len(pickle.loads(stale[keys["searcher-state"]])["_ot_trial_ids"])
    ch.wait_for("two finished trials and a newer trial list", lambda: (
        assert_alive(first) and len(_runs(c, "headloss", "FINISHED")) >= 2
        and _tune_trials_in_s3(c, "headloss") > stale_trials), 600)
    before = {r.data.tags["bst.trial_id"]: r.info.run_id for r in _runs(c, "headloss", "FINISHED")}
    first.kill()
    for key, body in stale.items():  # the same keys (one Tune session); the trial list stays the newest
        c.s3_put(key, body)
    for name in ("head", "w1", "w2"):  # the head, and the workers that belonged to it
        c.kill_node(name)  # (c.nodes keeps them: trials that finished there carry their ids)
    old_ids = set(before)
    shutil.rmtree(tmp_path / "driver-a")  # the dead head's disk is gone too
    c.start_head("head2")
    c.add_worker("w3")
    assert c.alive_nodes() == 2
    second = Sweep(c, tiny_data, "headloss", tmp_path / "driver-b").start("--resume")
    out = second.wait()
    assert "restored without the searcher state that asked for it" in out
    runs = {r.data.tags["bst.trial_id"]: r.info.run_id for r in _runs(c, "headloss", "FINISHED")}
    for trial_id in old_ids:  # finished trials were not run again
        assert runs[trial_id] == before[trial_id]
    check_sweep(c, "headloss", N_TRIALS, _dev_ids(tiny_data), orphans_fail=True)


def assert_alive(sweep: Sweep) -> bool:
    assert sweep.alive(), f"the sweep ended early:\n{sweep.output()[-4000:]}"
    return True


def test_sweep_survives_an_mlflow_server_restart(cluster: ch.Cluster, tiny_data, tmp_path) -> None:
    c = cluster
    sweep = Sweep(c, tiny_data, "mlflowrestart", tmp_path / "driver").start()
    ch.wait_for("a finished trial", lambda: (assert_alive(sweep)
                                             and len(_runs(c, "mlflowrestart", "FINISHED")) >= 1), 600)
    c.stop_mlflow()
    time.sleep(15)  # trials go on reporting folds and finishing while the server is down
    assert sweep.alive()
    c.start_mlflow()
    sweep.wait()
    check_sweep(c, "mlflowrestart", N_TRIALS, _dev_ids(tiny_data))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))


# --------------------------------------------------------------------------- the launch files, run


def test_cloud_head_setup_creates_databases_and_serves_mlflow_on_s3(tmp_path) -> None:
    """launch/setup.sh, the setup of launch/cluster.yaml's nodes, run as `ray up` runs it (a
    login shell's HOME with ~/bst-search.env), against PostgreSQL and the S3 endpoint."""
    import psycopg

    from bst_search import tracking

    c = ch.new_cluster()
    home = tmp_path / "home"
    home.mkdir()
    try:
        c.start_s3()
        c.databases = {r: f"{ch.DB_PREFIX}setup_{c.marker}_{r}" for r in ("mlflow", "optuna")}
        port = ch.free_port()
        (home / "bst-search.env").write_text(
            "export BST_DB_URL=postgresql+psycopg://postgres@127.0.0.1:5432\n"
            f"export BST_MLFLOW_DB={c.databases['mlflow']} BST_OPTUNA_DB={c.databases['optuna']}\n"
            f"export BST_S3_URI=s3://{c.bucket}/bst-search\n"
            f"export BST_MLFLOW_HOST=127.0.0.1 BST_MLFLOW_PORT={port}\n"
            f"export BST_VENV={sys.prefix}\n")
        (home / "bst-search-ray-token").write_text("f" * 64)
        env = {**c.env("setup"), "HOME": str(home)}

        def setup(mode: str) -> str:
            r = subprocess.run(["bash", str(ROOT / "launch" / "setup.sh"), mode], env=env, cwd=home,
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            return r.stdout

        setup("node")
        setup("node")  # idempotent
        bashrc = (home / ".bashrc").read_text()
        assert bashrc.count("launch/cluster_env.sh") == 1
        out = setup("head")
        assert f"created ['{c.databases['mlflow']}', '{c.databases['optuna']}']" in out
        with psycopg.connect(ch.PG_ADMIN_URL) as conn:
            have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        assert set(c.databases.values()) <= have
        uri = f"http://127.0.0.1:{port}"
        assert f"export MLFLOW_TRACKING_URI={uri}" in (home / ".bashrc").read_text()
        # a shell as the launcher opens it sees what the driver and `ray start` need
        bare = {k: v for k, v in env.items() if not k.startswith(("RAY_AUTH", "MLFLOW_", "BST_"))}
        r = subprocess.run(["bash", "--login", "-c", "-i", "source ~/.bashrc; echo $BST_OPTUNA_STORAGE "
                            "$BST_TUNE_STORAGE $RAY_AUTH_MODE $RAY_AUTH_TOKEN_PATH $MLFLOW_TRACKING_URI"],
                           env=bare, capture_output=True, text=True, timeout=60)
        assert r.stdout.split() == [
            f"postgresql+psycopg://postgres@127.0.0.1:5432/{c.databases['optuna']}",
            f"s3://{c.bucket}/bst-search/tune", "token", str(home / "bst-search-ray-token"), uri]
        # the server keeps runs in PostgreSQL and artifacts in the bucket
        cl = tracking.client(uri)
        exp = cl.create_experiment("setup-check")
        run = cl.create_run(exp)
        (tmp_path / "oof.parquet").write_bytes(b"x")
        cl.log_artifact(run.info.run_id, str(tmp_path / "oof.parquet"))
        assert any(k.startswith("bst-search/mlartifacts/") and k.endswith("oof.parquet")
                   for k in c.s3_keys())
        first = int((home / "mlflow.pid").read_text())
        out = setup("head")  # `ray up` again: same databases, the server restarted
        assert "created none" in out
        assert int((home / "mlflow.pid").read_text()) != first and not ch._alive(first)
        assert tracking.client(uri).get_run(run.info.run_id).info.experiment_id == exp
    finally:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


def _sshd_missing() -> str | None:
    if not (shutil.which("sshd") or Path("/usr/sbin/sshd").exists()):
        return "no sshd: apt-get install -y openssh-server (.ci/run does)"
    if not shutil.which("unshare"):
        return "no unshare (util-linux)"
    import socket

    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 22)) == 0:
            running = subprocess.run(["bash", str(ROOT / "launch" / "local_sshd.sh"), "running",
                                      str(Path.home() / ".bst-search" / "local" / "sshd")])
            if running.returncode != 0:
                return "another sshd listens on 127.0.0.1:22; launch/local_sshd.sh needs that port"
    return None


@pytest.mark.skipif(_sshd_missing() is not None, reason=str(_sshd_missing()))
def test_ray_up_submit_down_on_the_local_machine() -> None:
    """launch/local_e2e.sh: sshd, ray up (venv built by the setup commands, launch/setup.sh),
    ray submit of a smoke sweep, runs checked through the head's MLflow server, ray down."""
    r = subprocess.run(["bash", str(ROOT / "launch" / "local_e2e.sh")], cwd=ROOT, capture_output=True,
                       text=True, timeout=2400)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert r.stdout.count("e2e check:") == 2, r.stdout
    print("\n" + r.stdout.strip().splitlines()[-1])
