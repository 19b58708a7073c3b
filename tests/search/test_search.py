"""End-to-end sweeps through the real CLI: Ray Tune + Optuna + MLflow, resume, PostgreSQL.

Every sweep runs in a subprocess with its own local Ray, as a user would run it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest

from bst_search import tracking
from bst_search.data import load_dataset
from bst_search.search.space.parse import SPACE_DIR
from bst_search.search.trainable import FAIL_ENV, FAULT_ENV, SLOW_ENV

ROOT = Path(__file__).resolve().parents[2]
SMOKE = SPACE_DIR / "smoke.yaml"
PG = "postgresql://postgres@127.0.0.1:5432/test"


def _search_cmd(data: dict, workdir: Path, experiment: str, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bst_search.cli", "search", "--data", str(data["dev"]),
            "--eval-data", str(data["eval"]), "--space", str(SMOKE), "--experiment", experiment,
            "--trials", str(trials), "--workdir", str(workdir), *extra]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(extra)
    return env


def _trial_runs(uri: str, experiment: str, status: str | None = None) -> list:
    cl = tracking.client(uri)
    exp = cl.get_experiment_by_name(experiment)
    return [] if exp is None else tracking.find_runs(cl, exp.experiment_id, status=status)


def _check_complete_runs(uri: str, experiment: str, n: int, dev_ids) -> list:
    cl = tracking.client(uri)
    runs = _trial_runs(uri, experiment, "FINISHED")
    assert len(runs) == n
    trial_ids = [r.data.tags["bst.trial_id"] for r in runs]
    assert len(set(trial_ids)) == n  # no FINISHED duplicates
    for r in runs:
        assert r.data.tags["bst.status"] == "complete"
        assert {"oof_hF", "oof_hF_strict", "fold_hF_mean", "fold_hF_std"} <= set(r.data.metrics)
        # what the trial's compact last report leaves out comes from its metrics.json
        assert {"train_seconds", "oof_top_acc", "epochs_mean"} <= set(r.data.metrics)
        assert sum(k.startswith("hF_") for k in r.data.metrics) >= 5
        assert {a.path for a in cl.list_artifacts(r.info.run_id)} >= {
            "oof.parquet", "eval.parquet", "config.yaml", "metrics.json"}
        assert len(cl.get_metric_history(r.info.run_id, "fold_hF")) == 5
    local = cl.download_artifacts(runs[0].info.run_id, "oof.parquet")
    oof = pd.read_parquet(local)
    assert sorted(oof["sound_id"]) == sorted(dev_ids) and oof["sound_id"].is_unique
    return runs


def _optuna_states(storage: str, experiment: str) -> dict[str, int]:
    study = optuna.load_study(study_name=experiment, storage=storage)
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _identity(storage: str, experiment: str) -> dict:
    """The sweep's identity as kept in shared state (the Optuna study's user attributes)."""
    import json

    return json.loads(optuna.load_study(study_name=experiment, storage=storage)
                      .user_attrs["bst.identity"])


@pytest.mark.slow
@pytest.mark.system  # a driver as an operator meets it: make test-system
def test_smoke_sweep_end_to_end_survives_a_dying_worker(tiny_data, tmp_path):
    marker = tmp_path / "worker-died"
    env = _env(**{FAULT_ENV: f"1:{marker}"})  # the first trial to finish fold 1 kills its worker
    # a stale cluster address (as an earlier `ray start` leaves behind) must not be joined:
    # without --address the driver starts its own private Ray
    env["RAY_ADDRESS"] = f"127.0.0.1:{_free_port()}"
    r = subprocess.run(_search_cmd(tiny_data, tmp_path, "e2e", 4), env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "started a private local Ray" in r.stdout
    assert marker.exists()  # a worker process really died mid-trial and was retried
    assert re.search(r"^trial \S+\s+restarted\s+after a failure", r.stdout, re.M)  # said so
    assert "MLflow UI" in r.stdout and "oof_hF_strict" in r.stdout
    dev = load_dataset(tiny_data["dev"])
    runs = _check_complete_runs(tracking.tracking_uri(tmp_path), "e2e", 4, list(dev.ids))
    for run in runs:  # the Ray node that ran the trial
        assert re.fullmatch(r"[0-9a-f]{56}", run.data.tags["bst.node"])
    states = _optuna_states(f"sqlite:///{tmp_path / 'optuna.db'}", "e2e")
    assert states == {"COMPLETE": 4}
    # MLflow holds the finished trials' outputs: their Tune checkpoints are gone, the state stays
    assert not list((tmp_path / "tune").rglob("checkpoint_0*"))
    # Tune's saved state keeps what a resume reads, without Tune's running statistics or a
    # copy of each checkpoint's result; the console has no line per checkpoint or trial file
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    saved = [json.loads(meta) for f in (tmp_path / "tune").rglob("experiment_state-*.json")
             for _, meta in json.loads(f.read_text())["trial_data"]]
    assert len(saved) >= 4
    for meta in saved:
        assert meta["metric_analysis"] == meta["metric_n_steps"] == {}
        ckpts = _loads_with_cloudpickle(json.dumps(meta))["checkpoint_manager"]._checkpoint_results
        assert ckpts and all(c.metrics == {} for c in ckpts)
    assert "Checkpoint successfully created" not in r.stdout + r.stderr
    assert "Failed to fetch metrics" not in r.stdout + r.stderr
    assert list((tmp_path / "tune").rglob("experiment_state*.json"))


def test_invalid_space_is_refused_before_ray_starts(tiny_data, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  train.lrr: {type: float, low: 0.1, high: 0.2}\n")
    r = subprocess.run(
        [sys.executable, "-m", "bst_search.cli", "search", "--data", str(tiny_data["dev"]),
         "--space", str(bad), "--experiment", "bad", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 2
    assert "train.lrr" in r.stderr
    assert not (tmp_path / "tune").exists()


def test_local_tune_storage_on_a_cluster_is_refused_before_anything_starts(tiny_data, tmp_path):
    dead = f"127.0.0.1:{_free_port()}"  # nothing is joined: the refusal comes first
    r = subprocess.run(_search_cmd(tiny_data, tmp_path, "nfs", 2, "--address", dead),
                       capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "--tune-storage" in r.stderr and "--shared-fs" in r.stderr
    assert not (tmp_path / "tune").exists() and "Ray" not in r.stdout
    assert sweep_identity_absent(tmp_path, "nfs")  # a failed start leaves no sweep behind


def sweep_identity_absent(workdir: Path, experiment: str) -> bool:
    from bst_search.search.state import read_identity

    return read_identity(f"sqlite:///{workdir / 'optuna.db'}", experiment) is None


@pytest.mark.parametrize(("text", "named"), [
    ("base: late_fusion\nfixed: {loss.top: 0.0}\n"
     "params:\n  model.head: {type: categorical, choices: [gc, lcl]}\n", "loss.top"),
    ("base: late_fusion\nfixed: {data.crowd: teacher}\n", "data.crowd=teacher (base/fixed) needs crowd data"),
], ids=["no-valid-combination", "fixed-value-without-data"])
def test_space_that_cannot_run_is_refused_before_ray_starts(tiny_data, tmp_path, text, named):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    r = subprocess.run(
        [sys.executable, "-m", "bst_search.cli", "search", "--data", str(tiny_data["dev"]),
         "--space", str(bad), "--experiment", "bad", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 2, r.stderr
    assert named in r.stderr and str(bad) in r.stderr
    assert not (tmp_path / "tune").exists()


@pytest.mark.slow
@pytest.mark.system  # a driver as an operator meets it: make test-system
def test_resume_after_sigkill_of_the_driver(tiny_data, tmp_path):
    n = 6
    uri = tracking.tracking_uri(tmp_path)
    cmd = _search_cmd(tiny_data, tmp_path, "resume", n, "--concurrency", "2")
    # the first driver's folds report 3 s late: when 2 trials have finished, the other 4 take
    # 30 s more, longer than the second driver needs to start (on a loaded machine, it once
    # found the whole sweep finished and resumed it instead of being refused)
    proc = subprocess.Popen(cmd, env=_env(**{SLOW_ENV: "3"}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    try:
        while time.time() < deadline:
            if len(_trial_runs(uri, "resume", "FINISHED")) >= 2:
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("no trial finished in time")
        second = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True,
                                timeout=120)  # a second driver on the live sweep is refused
        assert second.returncode == 2 and "being driven by" in second.stderr, second.stderr[-2000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, like a lost head node
        proc.wait()
    before = {r.data.tags["bst.trial_id"]: (r.info.run_id, r.info.start_time)
              for r in _trial_runs(uri, "resume", "FINISHED")}
    assert 2 <= len(before) < n
    time.sleep(2)

    r = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    dev = load_dataset(tiny_data["dev"])
    runs = _check_complete_runs(uri, "resume", n, list(dev.ids))
    after = {r.data.tags["bst.trial_id"]: (r.info.run_id, r.info.start_time) for r in runs}
    for trial_id, run in before.items():  # finished trials were not run again
        assert after[trial_id] == run
    statuses = {r.info.status for r in _trial_runs(uri, "resume")}
    assert statuses <= {"FINISHED", "KILLED", "FAILED"}  # nothing left RUNNING
    states = _optuna_states(f"sqlite:///{tmp_path / 'optuna.db'}", "resume")
    assert states.get("COMPLETE") == n and "RUNNING" not in states
    # resuming a finished sweep again changes nothing
    again = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(_trial_runs(uri, "resume", "FINISHED")) == n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_up() -> bool:
    try:
        import psycopg

        psycopg.connect(PG, connect_timeout=3).close()
        return True
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.system  # a driver as an operator meets it: make test-system
@pytest.mark.postgres
def test_cluster_setup_postgres_optuna_and_mlflow_server(tiny_data, tmp_path):
    if not _postgres_up():
        pytest.skip(f"no PostgreSQL server at {PG} (CI and dev machines run one)")
    import psycopg

    # two databases, as on a cluster: MLflow's and Optuna's schemas both use alembic's
    # version table, so they cannot share one
    tag = uuid.uuid4().hex[:8]
    dbs = {"mlflow": f"bst_mlflow_{tag}", "optuna": f"bst_optuna_{tag}"}
    conn = psycopg.connect(PG, autocommit=True)
    for db in dbs.values():
        conn.execute(f"CREATE DATABASE {db}")
    backend = PG.rsplit("/", 1)[0] + f"/{dbs['mlflow']}"
    # trust auth accepts any password: enough to check that it is never printed or pickled
    secret = "Pw-s3cret-4711"
    optuna_url = PG.rsplit("/", 1)[0].replace("postgres@", f"postgres:{secret}@") + f"/{dbs['optuna']}"
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, "the MLflow server did not start"
                time.sleep(0.5)
        r = subprocess.run(_search_cmd(tiny_data, tmp_path, "cluster", 2, "--tracking-uri", uri),
                           env=_env(BST_OPTUNA_STORAGE=optuna_url),  # the secret via the environment
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert secret not in r.stdout + r.stderr and "postgres:***@" in r.stdout
        for f in (tmp_path / "tune").rglob("*"):  # tuner.pkl, searcher state, experiment state
            assert not f.is_file() or secret.encode() not in f.read_bytes(), f
        dev = load_dataset(tiny_data["dev"])
        _check_complete_runs(uri, "cluster", 2, list(dev.ids))
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to the embedded store
        assert any((tmp_path / "server-artifacts").rglob("oof.parquet"))
        assert _optuna_states(optuna_url, "cluster") == {"COMPLETE": 2}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:  # a loaded machine: do not leave it behind
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
        for db in dbs.values():
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.close()


def _wait_for(pred, proc: subprocess.Popen, what: str, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        assert proc.poll() is None, f"the sweep ended before {what}"
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _running_with_folds(uri: str, experiment: str) -> list:
    cl = tracking.client(uri)
    return [r for r in _trial_runs(uri, experiment, "RUNNING")
            if cl.get_metric_history(r.info.run_id, "fold_hF")]


@pytest.mark.slow
@pytest.mark.system  # a driver as an operator meets it: make test-system
def test_ctrl_c_interrupts_cleanly_and_resume_continues_from_the_last_fold(tiny_data, tmp_path):
    n = 3  # 2 running and 1 pending when Ctrl-C comes
    uri = tracking.tracking_uri(tmp_path)
    cmd = _search_cmd(tiny_data, tmp_path, "ctrlc", n, "--concurrency", "2")
    log = tmp_path / "driver.log"
    with open(log, "w") as out:  # folds of the tiny data take well under a second: slow them
        proc = subprocess.Popen(cmd, env=_env(**{SLOW_ENV: "3"}), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: len(_running_with_folds(uri, "ctrlc")) >= 2, proc, "two trials ran a fold")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: the foreground group
        rc = proc.wait(180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 130, text[-3000:]
    assert "Traceback" not in text and "--resume" in text, text[-3000:]
    runs = _trial_runs(uri, "ctrlc")
    killed = {r.data.tags["bst.trial_id"] for r in runs if r.info.status == "KILLED"}
    assert len(killed) >= 2
    assert all(r.data.tags["bst.status"] == "interrupted" for r in runs if r.info.status == "KILLED")
    assert not [r for r in runs if r.data.tags["bst.status"] == "early_stopped"]
    assert "RUNNING" not in {r.info.status for r in runs}

    r = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    dev = load_dataset(tiny_data["dev"])
    done = {x.data.tags["bst.trial_id"]: x for x in _check_complete_runs(uri, "ctrlc", n, list(dev.ids))}
    for trial_id in killed:  # continued from the last finished fold, not from scratch
        assert done[trial_id].data.metrics["folds_resumed"] >= 1
    assert _optuna_states(f"sqlite:///{tmp_path / 'optuna.db'}", "ctrlc") == {"COMPLETE": n}


@pytest.mark.slow
@pytest.mark.system  # a driver as an operator meets it: make test-system
def test_a_time_budget_ends_the_sweep_like_ctrl_c_and_exits_0(tiny_data, tmp_path):
    uri = tracking.tracking_uri(tmp_path)
    cmd = _search_cmd(tiny_data, tmp_path, "budget", 1, "--concurrency", "2")
    cmd = cmd[:cmd.index("--trials")] + cmd[cmd.index("--trials") + 2:]  # as many as fit
    # folds 4 s late: a trial takes 20 s or more, so trials are running at the budget
    r = subprocess.run(cmd + ["--time-budget", "25s"], env=_env(**{SLOW_ENV: "4"}),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "time budget of 0m25s reached" in r.stdout and "stopped at the time budget" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    runs = _trial_runs(uri, "budget")
    killed = {x.data.tags["bst.trial_id"] for x in runs if x.info.status == "KILLED"}
    assert killed and "RUNNING" not in {x.info.status for x in runs}
    assert all(x.data.tags["bst.status"] == "interrupted" for x in runs if x.info.status == "KILLED")

    refused = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True,
                             timeout=120)  # no budget: it would never end
    assert refused.returncode == 2 and "resume it with --time-budget" in refused.stderr

    again = subprocess.run(cmd + ["--resume", "--time-budget", "30s"], env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    done = {x.data.tags["bst.trial_id"]: x for x in _trial_runs(uri, "budget", "FINISHED")}
    for trial_id in killed:  # continued from its last finished fold
        assert done[trial_id].data.metrics["folds_resumed"] >= 1


@pytest.mark.slow
@pytest.mark.system  # a driver as an operator meets it: make test-system
def test_errored_trial_rerun_on_resume_agrees_and_the_sweep_grows(tiny_data, tmp_path):
    uri, storage = tracking.tracking_uri(tmp_path), f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = _search_cmd(tiny_data, tmp_path, "rerun", 1, "--max-failures", "0")
    r = subprocess.run(cmd, env=_env(**{FAIL_ENV: "1"}), capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]  # the only trial errored
    assert [x.info.status for x in _trial_runs(uri, "rerun")] == ["FAILED"]
    assert _optuna_states(storage, "rerun") == {"FAIL": 1}

    cmd[cmd.index("--trials") + 1] = "2"  # --resume --trials N+M: re-run the error, then one more
    r = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    dev = load_dataset(tiny_data["dev"])
    runs = _check_complete_runs(uri, "rerun", 2, list(dev.ids))
    study = optuna.load_study(study_name="rerun", storage=storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2 and _optuna_states(storage, "rerun") == {"FAIL": 1, "COMPLETE": 2}
    by_trial = {x.data.tags["bst.trial_id"]: x for x in runs}
    for t in complete:  # Optuna's values are MLflow's objective, trial by trial
        run = by_trial[t.user_attrs["bst.tune_trial_id"]]
        assert t.value == pytest.approx(run.data.metrics["oof_hF_strict"])
    rerun = [t for t in complete if "bst.rerun_of" in t.user_attrs]
    assert len(rerun) == 1  # the errored trial, continued from its checkpoint of fold 0
    assert by_trial[rerun[0].user_attrs["bst.tune_trial_id"]].data.metrics["folds_resumed"] == 1
    assert _identity(storage, "rerun")["trials"] == 2


@pytest.mark.slow
def test_early_stopped_trials_are_pruned_on_the_spaces_own_objective(tiny_data, tmp_path):
    space = tmp_path / "min.yaml"  # not strict hF, and minimised: the scheduler must follow it
    text = SMOKE.read_text().replace("objective: {metric: oof_hF_strict, mode: max}",
                                     "objective: {metric: oof_hF, mode: min}")
    space.write_text(text.replace("scheduler: none", "scheduler: asha"))
    uri, storage = tracking.tracking_uri(tmp_path), f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = _search_cmd(tiny_data, tmp_path, "prune", 5, "--concurrency", "1", "--folds", "3")
    cmd[cmd.index("--space") + 1] = str(space)
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = optuna.load_study(study_name="prune", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    runs = {x.data.tags["bst.trial_id"]: x for x in _trial_runs(uri, "prune", "FINISHED")}
    assert len(runs) == 5
    states = {}
    for t in study.trials:
        run = runs[t.user_attrs["bst.tune_trial_id"]]
        states[t.state.name] = states.get(t.state.name, 0) + 1
        if t.state.name == "PRUNED":  # stopped at a rung: its running oof_hF, never COMPLETE
            assert run.data.tags["bst.status"] == "early_stopped"
            assert 0 < len(t.intermediate_values) < 3 and "oof_hF" not in run.data.metrics
        else:
            assert t.state.name == "COMPLETE" and run.data.tags["bst.status"] == "complete"
            assert t.value == pytest.approx(run.data.metrics["oof_hF"])
            assert t.intermediate_values == {}  # its curve is MLflow's fold_hF (optuna_searcher)
    assert states.get("PRUNED", 0) >= 1 and sum(states.values()) == 5


MIXED_SPACE = """
description: smoke, plus combinations that break a rule and values without data
objective: {metric: oof_hF_strict, mode: max}
scheduler: none
base: late_fusion
fixed: {model.hidden: 32, model.heads: 2, train.max_epochs: 3, train.patience: 2,
        train.batch_size: 64, train.drop_last: false, train.warmup_epochs: 0}
params:
  train.lr: {type: float, low: 3.0e-4, high: 1.0e-2, log: true}
  model.head: {type: categorical, choices: [flat, gc]}
  loss.top: {type: categorical, choices: [0.0, 1.0]}
  loss.proxy: {type: categorical, choices: [0.0, 1.0]}
  backbones: {type: subset, choices: [clap_audio, clap_text, beats], min_size: 1}
  data.crowd: {type: categorical, choices: [none, all]}
"""


@pytest.mark.slow
def test_invalid_combinations_never_reach_a_worker_and_warm_start(tiny_data, tmp_path):
    """Three in four head x loss.top x loss.proxy combinations break a rule; `beats` has no embeddings and there
    is no crowd data. The sweep drops what needs missing data, says so in one line, runs
    exactly --trials valid trials and tells Optuna FAIL for every rejected combination. A
    second sweep warm-started from it first replays its two best configurations."""
    space = tmp_path / "mixed.yaml"
    space.write_text(MIXED_SPACE)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    uri = tracking.tracking_uri(tmp_path)
    cmd = _search_cmd(tiny_data, tmp_path, "mixed", 3, "--space", str(space))
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert ("not searched, no data for them: backbones=beats (no embeddings), "
            "data.crowd=all (no crowd data)\n") in r.stdout
    runs = _trial_runs(uri, "mixed", "FINISHED")
    assert len(runs) == 3 and all(r.data.tags["bst.status"] == "complete" for r in runs)
    for run in runs:  # every trial a worker ran is a valid configuration
        p = run.data.params
        assert (p["model.head"] == "gc") == (float(p["loss.top"]) > 0)
        assert float(p["loss.proxy"]) == 0
        assert "beats" not in p["backbones"] and p["data.crowd"] == "none"
    study = optuna.load_study(study_name="mixed", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") >= 1
    for t in study.trials:
        if t.state.name == "FAIL":
            assert "loss.top" in t.user_attrs["bst.invalid"] or "loss.proxy" in t.user_attrs["bst.invalid"]

    best = sorted(runs, key=lambda r: -r.data.metrics["oof_hF_strict"])[:2]
    r = subprocess.run(_search_cmd(tiny_data, tmp_path, "warm", 2, "--space", str(space),
                                   "--warm-start", "mixed", "--warm-start-n", "2",
                                   "--sampler", "random"),
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    warm = optuna.load_study(study_name="warm", storage=storage)
    assert [t.state.name for t in warm.trials] == ["COMPLETE", "COMPLETE"]
    for t, run in zip(sorted(warm.trials, key=lambda t: t.number), best, strict=True):
        assert t.params["train.lr"] == pytest.approx(float(run.data.params["train.lr"]))
        assert t.params["backbones"] == run.data.params["backbones"]
        assert t.params["model.head"] == run.data.params["model.head"]
