"""The driver's MLflow callback: state read once, writes queued in order, runs closed right."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray import tune

from bst_search import tracking
from bst_search.search.mlflow_logger import MlflowTrialLogger, Writers
from bst_search.search.space import SPACE_DIR, load_space

SMOKE = SPACE_DIR / "smoke.yaml"


class _Counting:
    """An MlflowClient that counts its search_runs calls."""

    calls = 0

    def __init__(self, cl) -> None:
        self.cl = cl

    def __getattr__(self, name):
        if name == "search_runs":
            _Counting.calls += 1
        return getattr(self.cl, name)


def _trial(tid: str, tmp_path: Path, result: dict) -> SimpleNamespace:
    d = tmp_path / tid
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"oof_hF": 0.5}))
    (d / "config.yaml").write_text("seed: 0\n")
    return SimpleNamespace(trial_id=tid, config={"train.lr": 1e-3}, last_result=result,
                           checkpoint=tune.Checkpoint.from_directory(str(d)), status="TERMINATED")


def test_results_never_search_mlflow_and_writes_keep_their_order(tmp_path, monkeypatch):
    real = tracking.client
    monkeypatch.setattr(tracking, "client", lambda uri: _Counting(real(uri)))
    uri = tracking.tracking_uri(tmp_path)
    lg = MlflowTrialLogger(uri, str(tmp_path), "exp", "sw-1", {"data_fp": "d"}, load_space(SMOKE), 5)
    assert lg.start() == []
    after_start = _Counting.calls
    final = {"trial_status": "complete", "oof_hF": 0.5, "oof_hF_strict": 0.4, "folds_done": 5}
    t1 = _trial("t1", tmp_path, final)
    t2 = _trial("t2", tmp_path, {"trial_status": "running"})
    lg.setup()
    for t in (t1, t2):
        lg.on_trial_start(0, [], t)
    for k in range(5):
        lg.on_trial_result(0, [], t1, {"fold": k, "fold_hF": 0.1 * k, "fold_hF_strict": 0.1 * k,
                                        "node": "n1" if k < 3 else "n2"})
    lg.on_trial_result(0, [], t2, {"fold": 0, "fold_hF": 0.3, "fold_hF_strict": 0.3, "node": "n1"})
    lg.on_trial_complete(0, [], t1)
    assert lg.cut_off() == {"t2"}  # started, never ended: Ctrl-C cut it off
    lg.interrupt(lg.cut_off())
    assert lg.drain() == []
    assert _Counting.calls == after_start  # nothing searched per result or per trial
    shared = pickle.loads(pickle.dumps(lg))  # what Tune restores from tuner.pkl drives this one
    assert shared._done is lg._done
    lg.close()

    cl = real(uri)
    runs = {r.data.tags["bst.trial_id"]: r for r in tracking.find_runs(cl, lg.experiment_id, sweep="sw-1")}
    r1, r2 = runs["t1"], runs["t2"]
    assert (r1.info.status, r1.data.tags["bst.status"]) == ("FINISHED", "complete")
    history = cl.get_metric_history(r1.info.run_id, "fold_hF")
    assert [(m.step, m.value) for m in history] == [(k, pytest.approx(0.1 * k)) for k in range(5)]
    assert (r1.data.tags["bst.node"], r1.data.tags["bst.nodes"]) == ("n2", "n1,n2")
    assert {a.path for a in cl.list_artifacts(r1.info.run_id)} == {"metrics.json", "config.yaml"}
    assert (r2.info.status, r2.data.tags["bst.status"]) == ("KILLED", "interrupted")


class _Ledger:
    """A book whose writes append a line to a file: what the writer process ran, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def note(self, cl, key: str, i: int) -> None:
        with open(self.path, "a") as fh:
            fh.write(f"{os.getpid()} {key} {i}\n")

    def boom(self, cl) -> None:
        raise ZeroDivisionError("a write that fails")

    def nap(self, cl, seconds: float) -> None:
        time.sleep(seconds)


def _ledger(path: Path) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        _, key, i = line.split()
        seen.setdefault(key, []).append(int(i))
    return seen


def test_writers_run_each_keys_writes_in_order_in_another_process(tmp_path):
    path = tmp_path / "ledger"
    w = Writers(tracking.tracking_uri(tmp_path), _Ledger(path), n=3, maxsize=4)  # small: back-pressure
    for i in range(60):
        w.submit(f"k{i % 5}", "note", f"k{i % 5}", i)
    w.submit("k0", "boom")  # a failing write is reported, the others go on
    w.drain()
    seen = _ledger(path)
    assert all(v == sorted(v) and len(v) == 12 for v in seen.values()) and len(seen) == 5
    assert len(w.errors) == 1 and "ZeroDivisionError" in w.errors[0]
    assert {int(line.split()[0]) for line in path.read_text().splitlines()} == {w.process.pid} != {os.getpid()}
    w.close()
    assert w.process.exitcode == 0


def test_writes_a_dead_driver_sent_are_still_performed(tmp_path):
    """The driver is SIGKILLed right after queueing: its writer process performs what it was
    sent, then exits (nothing left behind)."""
    path = tmp_path / "ledger"
    code = (f"import os, signal, sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from test_sweep_logger import _Ledger\n"
            "from bst_search.search.mlflow_logger import Writers\n"
            "if __name__ == '__main__':\n"
            f"    w = Writers({tracking.tracking_uri(tmp_path)!r}, _Ledger(__import__('pathlib').Path({str(path)!r})), n=2)\n"
            "    for i in range(200):\n"
            "        w.submit(f'k{i % 4}', 'note', f'k{i % 4}', i)\n"
            "    print(w.process.pid, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    script = tmp_path / "driver.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    child = int(r.stdout.split()[0])
    deadline = time.monotonic() + 60
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists(), "the writer process outlived its driver"
    seen = _ledger(path)
    assert sum(len(v) for v in seen.values()) == 200 and all(v == sorted(v) for v in seen.values())


def test_a_dead_writer_process_is_an_error_not_a_hang(tmp_path):
    """The writer process dies (OOM killer, say): the driver goes on, and drain() reports it."""
    w = Writers(tracking.tracking_uri(tmp_path), _Ledger(tmp_path / "ledger"), n=2)
    w.submit("k", "note", "k", 0)
    w.drain()
    os.kill(w.process.pid, signal.SIGKILL)
    w.process.join(30)
    for i in range(1, 50):  # more than a pipe holds, were nobody reading
        w.submit("k", "note", "k", i)
    w.drain()
    assert len(w.errors) == 1 and "writer process is gone" in w.errors[0]
    assert _ledger(tmp_path / "ledger") == {"k": [0]}
    w.close()


def test_the_writer_process_outlives_group_signals_and_a_stop_drains_bounded(tmp_path):
    """SIGTERM and SIGHUP sent to the driver's group (``timeout``, a hang-up) reach the writer
    too: it ignores them and the driver drains it; a drain after a stop waits a bounded time."""
    w = Writers(tracking.tracking_uri(tmp_path), _Ledger(tmp_path / "ledger"), n=2)
    w.submit("k", "note", "k", 0)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        os.kill(w.process.pid, sig)
    w.submit("k", "note", "k", 1)
    w.drain()
    assert w.process.is_alive() and w.errors == [] and _ledger(tmp_path / "ledger") == {"k": [0, 1]}
    w.submit("k", "nap", 30.0)
    t0 = time.monotonic()
    assert not w.drain(timeout=0.5) and "within 0.5s" in w.errors[-1]
    w.close(timeout=0.5)  # killed, not waited for: it ignores SIGTERM
    assert time.monotonic() - t0 < 20 and not w.process.is_alive()


def test_a_run_is_closed_only_while_the_driver_holds_the_lease(tmp_path):
    from bst_search.search.mlflow_logger import RunBook
    from bst_search.search.state import Lease, LeaseFence

    url = f"sqlite:///{tmp_path / 'o.db'}"
    lease = Lease(url, "exp", ttl_s=60)
    lease.acquire()
    space = load_space(SMOKE)
    mine = pickle.loads(pickle.dumps(RunBook("0", "sw", {}, space, 5, fence=LeaseFence(url, "exp", lease.owner))))
    other = RunBook("0", "sw", {}, space, 5, fence=LeaseFence(url, "exp", "another-driver"))
    assert mine._may_close("t1") and not other._may_close("t1")
    other.complete(None, "t1", {}, "", [], {}, {}, None, set())  # no client needed: nothing written
    lease.release()


def test_fold_metrics_are_batched_and_none_is_lost(tmp_path, monkeypatch):
    """A trial's folds are written at most every BST_MLFLOW_FOLD_S seconds from its start (a
    write per fold was a transaction per result); the rest go with the close."""
    monkeypatch.setenv("BST_MLFLOW_FOLD_S", "3")  # wider than a drain under a loaded suite
    uri = tracking.tracking_uri(tmp_path)
    lg = MlflowTrialLogger(uri, str(tmp_path), "exp", "sw-1", {"data_fp": "d"}, load_space(SMOKE), 5)
    lg.start()
    cl = tracking.client(uri)
    t1 = _trial("t1", tmp_path, {"trial_status": "complete", "oof_hF": 0.5, "folds_done": 5})
    lg.setup()
    lg.on_trial_start(0, [], t1)

    def folds_logged() -> list[int]:
        lg.drain()
        (run,) = tracking.find_runs(cl, lg.experiment_id, sweep="sw-1")
        return [m.step for m in cl.get_metric_history(run.info.run_id, "fold_hF")]

    def fold(k: int) -> None:
        lg.on_trial_result(0, [], t1, {"fold": k, "fold_hF": 0.1 * k, "fold_hF_strict": 0.1 * k})

    fold(0)
    assert folds_logged() == []  # within 3 s of the trial's start: it waits
    lg._last_sweep = 0.0
    __import__("time").sleep(3.1)
    lg.on_step_end(0, [])  # overdue: queued by the event loop, without a new result
    assert folds_logged() == [0]
    fold(1)
    fold(2)
    lg.on_step_end(0, [])
    assert folds_logged() == [0]  # folds 1 and 2 wait: fewer, larger writes
    lg._last_sweep = 0.0
    __import__("time").sleep(3.1)
    lg.on_step_end(0, [])
    assert folds_logged() == [0, 1, 2]
    fold(3)
    fold(4)
    lg.on_trial_complete(0, [], t1)
    assert folds_logged() == [0, 1, 2, 3, 4]
    lg.close()
