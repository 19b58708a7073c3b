"""The driver as an operator stops it: SIGTERM and SIGHUP to its process group, and a driver
stalled past its lease while another one takes the sweep over (``make test-system``)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import pytest
from test_search import (  # tests/search is on sys.path (pytest rootdir-relative import)
    _check_complete_runs,
    _env,
    _optuna_states,
    _running_with_folds,
    _search_cmd,
    _trial_runs,
    _wait_for,
)

from bst_search import tracking
from bst_search.data import load_dataset
from bst_search.search.stopping import LEASE_LOST_RC
from bst_search.search.trainable import SLOW_ENV

pytestmark = pytest.mark.system


def _start(cmd: list[str], log, **env: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=_env(**env), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_to_the_process_group_stops_like_ctrl_c_and_resumes_exactly(tiny_data, tmp_path, sig):
    """As ``timeout`` sends SIGTERM, and a closed session SIGHUP, to the whole group: the
    driver and its MLflow writer process, which must outlive it long enough to drain."""
    n, name = 3, sig.name.lower()
    uri = tracking.tracking_uri(tmp_path)
    cmd = _search_cmd(tiny_data, tmp_path, name, n, "--concurrency", "2")
    log = tmp_path / "driver.log"
    proc = _start(cmd, log, **{SLOW_ENV: "3"})
    try:
        _wait_for(lambda: len(_running_with_folds(uri, name)) >= 2, proc, "two trials ran a fold")
        os.killpg(proc.pid, sig)
        rc = proc.wait(120)
    finally:
        _stop(proc)
    text = log.read_text()
    assert rc == 128 + sig, text[-3000:]
    assert f"{sig.name} received" in text and f"interrupted by {sig.name}" in text, text[-3000:]
    assert "--resume" in text and "Traceback" not in text, text[-3000:]
    assert "writer process is gone" not in text, text[-3000:]  # it outlived the signal
    runs = _trial_runs(uri, name)
    killed = {r.data.tags["bst.trial_id"] for r in runs if r.info.status == "KILLED"}
    assert len(killed) >= 2, [(r.info.status, r.data.tags.get("bst.status")) for r in runs]
    assert all(r.data.tags["bst.status"] == "interrupted" for r in runs if r.info.status == "KILLED")
    assert "RUNNING" not in {r.info.status for r in runs} and not [
        r for r in runs if r.info.status == "FAILED"]  # Ray's processes did not die under the trials

    r = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    done = {x.data.tags["bst.trial_id"]: x for x in _check_complete_runs(
        uri, name, n, list(load_dataset(tiny_data["dev"]).ids))}
    for trial_id in killed:  # continued from the last finished fold
        assert done[trial_id].data.metrics["folds_resumed"] >= 1
    assert _optuna_states(f"sqlite:///{tmp_path / 'optuna.db'}", name) == {"COMPLETE": n}


def _lease_pid(db, key: str) -> int | None:
    with sqlite3.connect(db) as c:
        row = c.execute("SELECT pid FROM bst_sweep_lease WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def test_a_driver_stalled_past_its_lease_stops_when_another_took_over(tiny_data, tmp_path):
    """SIGSTOP a driver past its TTL, start a second with --resume, SIGCONT the first: only one
    driver schedules and closes runs; the first exits LEASE_LOST_RC naming the second."""
    n, ttl = 4, 4
    uri, db = tracking.tracking_uri(tmp_path), tmp_path / "optuna.db"
    cmd = _search_cmd(tiny_data, tmp_path, "lease", n, "--concurrency", "2")
    env = {"BST_LEASE_TTL_S": str(ttl)}
    first = _start(cmd, tmp_path / "first.log", **env, **{SLOW_ENV: "2"})
    second: subprocess.Popen | None = None
    try:
        _wait_for(lambda: len(_running_with_folds(uri, "lease")) >= 2, first, "two trials ran a fold")
        os.killpg(first.pid, signal.SIGSTOP)  # the driver and its MLflow writer stall
        time.sleep(ttl + 1)
        second = _start(cmd + ["--resume"], tmp_path / "second.log", **env)
        deadline = time.time() + 120
        while _lease_pid(db, "lease") != second.pid:
            assert second.poll() is None and time.time() < deadline, (tmp_path / "second.log").read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGCONT)
        rc_first = first.wait(180)
        rc_second = second.wait(600)
    finally:
        _stop(first)
        if second is not None:
            _stop(second)
    text = (tmp_path / "first.log").read_text()
    assert rc_first == LEASE_LOST_RC, text[-3000:]
    assert f"lost its lease to host {os.uname().nodename} pid {second.pid} (since " in text, text[-3000:]
    # the driver's own lines (a trial's worker may print one as Ray's shutdown ends it)
    assert not [x for x in text.splitlines() if "Traceback" in x and "pid=" not in x], text[-3000:]
    assert rc_second == 0, (tmp_path / "second.log").read_text()[-3000:]
    _check_complete_runs(uri, "lease", n, list(load_dataset(tiny_data["dev"]).ids))  # n, no duplicate
    states = _optuna_states(f"sqlite:///{db}", "lease")
    assert states.get("COMPLETE") == n and set(states) <= {"COMPLETE", "FAIL"}, states
