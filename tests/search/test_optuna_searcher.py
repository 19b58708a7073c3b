"""The sweep's searcher: no database URL in pickles, PRUNED early stops, re-runs that agree."""

from __future__ import annotations

import pickle
import uuid

import optuna
import pytest

from bst_search.search import searcher as optuna_searcher
from bst_search.search.searcher import SweepOptunaSearch, outcome

S = optuna.trial.TrialState
PG = "postgresql://postgres@127.0.0.1:5432/test"


def _space(trial: optuna.Trial) -> dict:
    return {"train.lr": trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)}


def _searcher(url: str, mode: str = "max") -> SweepOptunaSearch:
    optuna_searcher.use_storage(url)
    return SweepOptunaSearch(space=_space, metric="oof_hF", mode=mode, study_name="exp",
                             storage=optuna_searcher.storage_from_env(),
                             sampler=optuna.samplers.TPESampler(seed=0))


def _pickles(s: SweepOptunaSearch, tmp_path) -> list[bytes]:
    s.save(str(tmp_path / "searcher.pkl"))
    return [pickle.dumps(s), (tmp_path / "searcher.pkl").read_bytes()]


def _check_secret_free_roundtrip(url: str, secret: str, tmp_path) -> None:
    s = _searcher(url)
    s.suggest("t1")
    s.on_trial_result("t1", {"oof_hF": 0.4, "training_iteration": 1})
    for blob in _pickles(s, tmp_path):
        assert secret.encode() not in blob
    back = pickle.loads(_pickles(s, tmp_path)[0])  # reconnects through the driver's URL
    back.on_trial_complete("t1", {"oof_hF": 0.5, "trial_status": "complete"})
    again = _searcher(url)
    again.restore(str(tmp_path / "searcher.pkl"))
    assert set(again._ot_trials) == {"t1"}
    (t,) = optuna.load_study(study_name="exp", storage=url).trials
    assert (t.state, t.value, t.user_attrs["bst.tune_trial_id"]) == (S.COMPLETE, 0.5, "t1")


def test_pickled_state_holds_no_storage_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna-with-a-distinct-name.db'}"
    _check_secret_free_roundtrip(url, "optuna-with-a-distinct-name", tmp_path)


@pytest.mark.postgres
def test_pickled_state_holds_no_postgres_password(tmp_path):
    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect(PG, autocommit=True, connect_timeout=3)
    except Exception:
        pytest.skip(f"no PostgreSQL server at {PG}")
    db = f"bst_driver_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE DATABASE {db}")
    try:  # trust auth accepts any password: enough to see where a password would travel
        url = f"postgresql+psycopg://postgres:Pw-s3cret-4711@127.0.0.1:5432/{db}"
        _check_secret_free_roundtrip(url, "Pw-s3cret-4711", tmp_path)
    finally:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.close()


def test_outcome_complete_pruned_fail():
    assert outcome({"trial_status": "complete", "oof_hF": 0.7}, "oof_hF", False) == (S.COMPLETE, 0.7)
    assert outcome({"trial_status": "running", "oof_hF": 0.7}, "oof_hF", False) == (S.PRUNED, None)
    assert outcome(None, "oof_hF", False) == (S.PRUNED, None)
    assert outcome({"trial_status": "complete", "oof_hF": 0.7}, "oof_hF", True) == (S.FAIL, None)


def test_scheduler_stop_is_pruned_with_its_intermediate_value_mode_min(tmp_path):
    s = _searcher(f"sqlite:///{tmp_path / 'o.db'}", mode="min")
    s.suggest("t1")
    s.on_trial_result("t1", {"oof_hF": 0.61, "training_iteration": 1})
    s.on_trial_result("t1", {"oof_hF": 0.64, "training_iteration": 2})
    s.on_trial_complete("t1", {"oof_hF": 0.64, "training_iteration": 2, "trial_status": "running"})
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{tmp_path / 'o.db'}")
    (t,) = study.trials
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert t.state == S.PRUNED and t.intermediate_values == {1: 0.61, 2: 0.64}


def test_a_failed_trial_rerun_on_resume_reaches_optuna(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = _searcher(url)
    params = s.suggest("t1")
    s.on_trial_result("t1", {"oof_hF": 0.3, "training_iteration": 1})
    s.on_trial_complete("t1", error=True)  # retries exhausted: FAIL
    resumed = pickle.loads(pickle.dumps(s))  # --resume restores the searcher, re-runs t1
    resumed.on_trial_result("t1", {"oof_hF": 0.35, "training_iteration": 2})
    resumed.on_trial_complete("t1", {"oof_hF": 0.5, "trial_status": "complete"})
    trials = optuna.load_study(study_name="exp", storage=url).trials
    assert [t.state for t in trials] == [S.FAIL, S.COMPLETE]
    assert trials[1].value == 0.5 and trials[1].params == trials[0].params == {"train.lr": params["train.lr"]}
    assert trials[1].user_attrs["bst.rerun_of"] == 0
    resumed.on_trial_complete("t1", {"oof_hF": 0.5, "trial_status": "complete"})  # once only
    assert len(optuna.load_study(study_name="exp", storage=url).trials) == 2


def test_a_result_costs_no_database_round_trip(tmp_path):
    """Running values stay in the searcher until the trial ends: a read or a write per fold was
    a tenth of the driver's CPU at 32 concurrent trials. A COMPLETE trial's value is its value."""
    s = _searcher(f"sqlite:///{tmp_path / 'o.db'}")
    s.suggest("t1")
    storage, calls = s._ot_study._storage, []
    for name in ("get_trial", "set_trial_intermediate_value", "get_all_trials"):
        real = getattr(storage, name)
        setattr(storage, name, lambda *a, _n=name, _f=real, **k: calls.append(_n) or _f(*a, **k))
    for k in range(1, 6):
        s.on_trial_result("t1", {"oof_hF": 0.1 * k, "training_iteration": k})
    assert calls == []
    last = {"oof_hF": 0.5, "training_iteration": 6, "trial_status": "complete"}
    s.on_trial_result("t1", last)  # the trial's value, not an intermediate one
    s.on_trial_complete("t1", last)
    assert "set_trial_intermediate_value" not in calls
    (t,) = optuna.load_study(study_name="exp", storage=f"sqlite:///{tmp_path / 'o.db'}").trials
    assert (t.state, t.value, t.intermediate_values) == (S.COMPLETE, 0.5, {})


def test_running_values_survive_a_driver_restart_and_reach_a_pruned_trial(tmp_path):
    """The searcher state Tune saves holds the running values: a trial pruned after the driver
    was restarted keeps those reported before."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = _searcher(url)
    s.suggest("t1")
    s.on_trial_result("t1", {"oof_hF": 0.61, "training_iteration": 1})
    s.save(str(tmp_path / "searcher.pkl"))
    back = _searcher(url)
    back.restore(str(tmp_path / "searcher.pkl"))
    back.on_trial_result("t1", {"oof_hF": 0.66, "training_iteration": 2})
    back.on_trial_complete("t1", {"oof_hF": 0.66, "training_iteration": 2, "trial_status": "running"})
    (t,) = optuna.load_study(study_name="exp", storage=url).trials
    assert (t.state, t.value, t.intermediate_values) == (S.PRUNED, 0.66, {1: 0.61, 2: 0.66})
    assert back._running == {}


def test_a_restored_segment_adopts_orphans_and_runs_exactly_its_trials(tmp_path):
    """A head lost after Tune's last saved state: one trial asked for then (RUNNING) and one
    asked for and finished then (COMPLETE) are unknown to the restored searcher. The first's
    parameters run as the next trial (it is told FAIL); the second takes a trial's place."""
    from ray.tune.search import Searcher

    url = f"sqlite:///{tmp_path / 'o.db'}"
    first = optuna_searcher.SweepOptunaSearch(
        space=_space, metric="oof_hF", mode="max", study_name="exp", segment="seg-1", n_trials=4,
        storage=(optuna_searcher.use_storage(url), optuna_searcher.storage_from_env())[1],
        sampler=optuna.samplers.TPESampler(seed=0))
    first.suggest("t1")
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's last saved state knows t1 only
    orphan = first.suggest("t2")
    first.suggest("t3")
    first.on_trial_complete("t3", {"oof_hF": 0.5, "trial_status": "complete"})

    again = _searcher(url)
    again.restore(str(tmp_path / "searcher.pkl"))
    assert again.suggest("t4") == orphan  # the orphan's parameters, not a new sample
    study = optuna.load_study(study_name="exp", storage=url)
    by_tune = {t.user_attrs["bst.tune_trial_id"]: t for t in study.trials}
    assert by_tune["t2"].state == S.FAIL and by_tune["t2"].user_attrs["bst.orphan"]
    assert by_tune["t4"].user_attrs["bst.adopts"] == by_tune["t2"].number
    assert by_tune["t4"].user_attrs["bst.segment"] == "seg-1"
    assert again.suggest("t5") is not None  # t1, t3 (finished, unknown), t4, t5: 4 trials
    assert again.suggest("t6") == Searcher.FINISHED


def _restored(url: str, tmp_path, tune_trials: dict[str, str]) -> SweepOptunaSearch:
    """The searcher a resumed driver restores from ``searcher.pkl``, after Tune's first step
    reported ``tune_trials`` (the trial list Tune restored, from its own state file)."""
    from types import SimpleNamespace

    seen = optuna_searcher.TuneTrials()
    seen.setup()
    seen.on_step_begin(iteration=0, trials=[SimpleNamespace(trial_id=t, status=s)
                                            for t, s in tune_trials.items()])
    again = _searcher(url)
    again.restore(str(tmp_path / "searcher.pkl"))
    return again


def _two_trials(tmp_path, n_trials: int, saved_after: int) -> tuple[str, dict]:
    """A segment's searcher asks for t1 and t2 and saves its state after the first
    ``saved_after`` of them; returns the study's URL and t2's parameters."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    optuna_searcher.use_storage(url)
    first = SweepOptunaSearch(space=_space, metric="oof_hF", mode="max", study_name="exp",
                              segment="seg-1", n_trials=n_trials,
                              storage=optuna_searcher.storage_from_env(),
                              sampler=optuna.samplers.TPESampler(seed=0))
    params = {}
    for i, tid in enumerate(("t1", "t2"), 1):
        params[tid] = first.suggest(tid)
        if i == saved_after:
            first.save(str(tmp_path / "searcher.pkl"))
    return url, params["t2"]


def _by_tune(url: str) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="exp", storage=url)
    return {t.user_attrs["bst.tune_trial_id"]: t for t in study.trials if "bst.tune_trial_id" in t.user_attrs}


@pytest.fixture
def _no_tune_trials():
    yield
    optuna_searcher.TuneTrials().setup()  # later tests restore without a Tune run


def test_a_trial_tune_restored_but_the_saved_searcher_missed_keeps_its_optuna_trial(tmp_path, _no_tune_trials):
    """Tune's trial list reached the storage after the searcher state did: Tune restores t2,
    which the saved searcher never saw. t2 is no orphan: it keeps its Optuna trial, its
    parameters do not run twice, and its outcome reaches Optuna."""
    from ray.tune.search import Searcher

    url, _ = _two_trials(tmp_path, n_trials=3, saved_after=1)
    again = _restored(url, tmp_path, {"t1": "PENDING", "t2": "PENDING"})
    assert again.suggest("t3") is not None
    again.on_trial_complete("t2", {"oof_hF": 0.7, "trial_status": "complete"})
    by_tune = _by_tune(url)
    assert (by_tune["t2"].state, by_tune["t2"].value) == (S.COMPLETE, 0.7)
    assert "bst.orphan" not in by_tune["t2"].user_attrs  # t3 is a new sample, not t2 again
    assert not any("bst.adopts" in t.user_attrs for t in by_tune.values())
    assert again.suggest("t4") == Searcher.FINISHED  # t1, t2, t3: the segment's 3 trials


def test_a_trial_the_saved_searcher_holds_but_tune_did_not_restore_is_an_orphan(tmp_path, _no_tune_trials):
    """The searcher state reached the storage after Tune's trial list: it holds t2, which
    Tune does not restore. t2 is an orphan: told FAIL, its parameters run as the next trial."""
    url, t2_params = _two_trials(tmp_path, n_trials=3, saved_after=2)
    again = _restored(url, tmp_path, {"t1": "PENDING"})
    assert again.suggest("t3") == t2_params
    by_tune = _by_tune(url)
    assert by_tune["t2"].state == S.FAIL and by_tune["t2"].user_attrs["bst.orphan"]
    assert by_tune["t3"].user_attrs["bst.adopts"] == by_tune["t2"].number


def test_the_concurrency_limit_follows_the_trials_tune_restored(tmp_path, _no_tune_trials):
    """The limiter's saved running set can miss a restored trial: it counts Tune's unfinished
    trials instead, and passes the end of a trial it never counted to the searcher."""
    url, _ = _two_trials(tmp_path, n_trials=4, saved_after=1)
    again = _restored(url, tmp_path, {"t1": "TERMINATED", "t2": "PENDING"})
    limiter = optuna_searcher.SweepLimiter(again, max_concurrent=1)
    limiter.set_state({"live_trials": set(), "num_unfinished_live_trials": 0})  # the stale set
    assert limiter.suggest("t3") is None  # t2 runs: no room for another
    limiter.on_trial_complete("t2", {"oof_hF": 0.6, "trial_status": "complete"})
    by_tune = _by_tune(url)
    assert (by_tune["t2"].state, by_tune["t2"].value) == (S.COMPLETE, 0.6)
    assert limiter.suggest("t4") is not None  # t2 ended: room again


def test_a_trial_asked_for_but_never_named_is_told_fail_and_an_adoption_runs_again(tmp_path, _no_tune_trials):
    """A driver died between Optuna's ask and naming the Tune trial: such a trial would stay
    RUNNING for ever. The next driver tells it FAIL; when it was the re-run of an orphan, that
    orphan's parameters are enqueued again, and nothing else is."""
    url, t2_params = _two_trials(tmp_path, n_trials=4, saved_after=1)
    study = optuna.load_study(study_name="exp", storage=url)
    t2 = _by_tune(url)["t2"]
    study.tell(t2.number, state=S.FAIL)  # an orphan a driver adopted, and then
    study.enqueue_trial(t2.params, user_attrs={"bst.adopts": t2.number}, skip_if_exists=False)
    adoption = study.ask()  # died just after asking for its re-run
    sampled = study.ask()  # or after asking for a new sample

    again = _restored(url, tmp_path, {"t1": "PENDING"})
    assert again.suggest("t3") == t2_params
    trials = optuna.load_study(study_name="exp", storage=url).trials
    for unnamed in (adoption, sampled):
        assert trials[unnamed.number].state == S.FAIL and trials[unnamed.number].user_attrs["bst.orphan"]
    assert not any(t.state == S.WAITING for t in trials)  # enqueued once, and t3 took it
    t3 = _by_tune(url)["t3"]
    assert t3.user_attrs["bst.adopts"] == t2.number and t3.state == S.RUNNING
