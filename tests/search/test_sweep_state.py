"""The sweep's identity and lease in shared state (the Optuna database)."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest

from bst_search.search import state as sweep_state
from bst_search.search.space import space_from_dict
from bst_search.search.state import Lease, SweepStateError

SPACE = {"base": "late_fusion", "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}


def _identity(**over):
    base = {"space_hash": "h1", "space_source": "a.yaml", "trials": 6,
            "fingerprints": {"data_fp": "d", "fold_fp": "f", "eval_fp": ""},
            "args": {"folds": 5, "seed": 0, "concurrency": 2, "scheduler": "asha",
                     "cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "tracking_uri": "sqlite:///m.db",
                     "tune_storage": "s3://b/p"}}
    for k, v in over.items():
        if k in base["args"]:
            base["args"] = {**base["args"], k: v}
        else:
            base[k] = v
    return base


def test_changes_name_what_differs_and_trials_may_only_grow():
    old = _identity()
    assert sweep_state.changes(old, _identity()) == []
    assert sweep_state.changes(old, _identity(trials=9)) == []
    diff = sweep_state.changes(old, _identity(concurrency=3, scheduler="none", trials=4,
                                              space_hash="h2", tracking_uri="http://x:5000"))
    text = "; ".join(diff)
    for needle in ("--concurrency (2 -> 3)", "--scheduler (asha -> none)", "--trials (6 -> 4",
                   "the search space", "--tracking-uri"):
        assert needle in text
    fp = sweep_state.changes(old, _identity(fingerprints={"data_fp": "X", "fold_fp": "f", "eval_fp": ""}))
    assert fp == ["the data (data_fp d -> X)"]


def test_space_hash_is_content_not_path():
    a = space_from_dict(SPACE, source="one.yaml")
    b = space_from_dict(SPACE, source="elsewhere/two.yaml")
    c = space_from_dict({**SPACE, "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 2e-2}}})
    assert sweep_state.space_hash(a) == sweep_state.space_hash(b) != sweep_state.space_hash(c)


def test_identity_roundtrip_and_a_failed_start_is_discarded(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(study_name="exp", storage=url)  # a start that failed before the Tuner
    assert sweep_state.read_identity(url, "exp") is None
    assert sweep_state.read_identity(url, "missing") is None
    assert sweep_state.discard_failed_start(url, "exp")
    optuna.create_study(study_name="exp", storage=url)
    sweep_state.write_identity(url, "exp", {"sweep": "exp-1", "trials": 3})
    assert sweep_state.read_identity(url, "exp") == {"sweep": "exp-1", "trials": 3}


def test_lease_refuses_a_second_live_driver_and_expires(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    first = Lease(url, "exp", ttl_s=0.5)
    first.acquire()
    second = Lease(url, "exp", ttl_s=0.5)
    with pytest.raises(SweepStateError, match="being driven by"):
        second.acquire()  # same host, live pid (this process), fresh lease
    Lease(url, "other", ttl_s=0.5).acquire()  # another sweep is independent
    assert first.renew()
    time.sleep(0.7)  # first stopped renewing: its lease expired
    second.acquire()
    assert not first.renew() and first.lost  # the old holder learns it lost the lease
    second.release()
    first.acquire()
    first.release()


def test_lease_of_a_dead_driver_on_this_host_is_taken_over_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    code = (f"from bst_search.search.state import Lease; Lease({url!r}, 'exp', ttl_s=3600).acquire()")
    subprocess.run([sys.executable, "-c", code], check=True)  # acquires, then dies (no release)
    lease = Lease(url, "exp", ttl_s=3600)
    lease.acquire()  # the holder's pid is gone: no need to wait an hour
    lease.release()


def test_a_stalled_driver_finds_its_lease_taken_before_it_writes(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    first = Lease(url, "exp", ttl_s=0.6)
    first.acquire()
    lost: list[str] = []
    first.on_lost = lambda lease: lost.append(lease.taken_by)
    assert first.held()  # renewed just now: no database round trip
    time.sleep(0.7)  # stalled past the TTL (SIGSTOP): another driver takes over
    second = Lease(url, "exp", ttl_s=60)
    second.acquire()
    assert not first.held() and first.lost  # checked against the database, not assumed
    assert lost == [f"host {second.host} pid {second.pid} (since " + lost[0].split("(since ")[1]]
    assert not first.renew() and len(lost) == 1  # told once
    first.release()  # releases nothing that is not its own
    assert Lease(url, "exp", ttl_s=60).holder().startswith(f"host {second.host} pid {second.pid}")
    second.release()
