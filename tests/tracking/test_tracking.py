"""MLflow schema and SQLite safety of the tracking module."""

import json
import multiprocessing as mp
import sqlite3

import pytest

from bst_search import config, tracking


def _log_many(uri: str, workdir: str, tag: str, n: int, ahead: bool = False) -> None:
    if ahead:
        tracking.write_ahead_sqlite()
    cl = tracking.client(uri)
    exp = tracking.ensure_experiment(cl, "concurrent", workdir, uri)
    cfg = config.defaults()
    for i in range(n):
        rid = tracking.start_trial_run(cl, exp, sweep=tag, trial_id=f"{tag}-{i}", cfg=cfg,
                                       fingerprints={"data_fp": "d", "fold_fp": "f"})
        tracking.log_folds(cl, rid, [{"fold": 0, "fold_hF": 0.5, "fold_hF_strict": 0.4}])
        tracking.finish_trial_run(cl, rid, metrics={"oof_hF": 0.5}, artifacts_dir=None,
                                  status="FINISHED", bst_status="complete")


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://h:5000")
    assert tracking.tracking_uri(tmp_path) == "http://h:5000"
    assert tracking.tracking_uri(tmp_path, "http://x:1") == "http://x:1"
    assert tracking.artifact_location(tmp_path, "http://h:5000") is None


def _two_writers(uri: str, workdir: str, n: int, ahead: bool = False) -> None:
    """Two processes write ``n`` trial runs each into one store (its schema made already)."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_log_many, args=(uri, workdir, t, n, ahead)) for t in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]


def test_two_processes_write_one_sqlite_store_without_loss(tmp_path):
    uri = tracking.tracking_uri(tmp_path)
    tracking.ensure_experiment(tracking.client(uri), "concurrent", tmp_path, uri)  # schema once
    _two_writers(uri, str(tmp_path), 15)
    cl = tracking.client(uri)
    exp = cl.get_experiment_by_name("concurrent").experiment_id
    runs = tracking.find_runs(cl, exp, status="FINISHED")
    assert len(runs) == 30
    assert len({r.data.tags[tracking.TRIAL_ID] for r in runs}) == 30
    assert all(r.data.metrics["oof_hF"] == 0.5 for r in runs)


def test_write_ahead_log_two_writers_and_read_only_readers(tmp_path):
    """The driver opens SQLite stores in WAL mode: two writing processes lose nothing, and a
    read-only reader (the report's, the dashboard's) reads beside an open writer and after."""
    from bst_search.tracking.stores import read_only_sqlite

    uri = tracking.tracking_uri(tmp_path)
    tracking.write_ahead_sqlite()
    writer = tracking.client(uri)
    tracking.ensure_experiment(writer, "concurrent", tmp_path, uri)  # schema once (MLflow's)
    _two_writers(uri, str(tmp_path), 10, ahead=True)
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reader = tracking.client(read_only_sqlite(uri))
    exp = reader.get_experiment_by_name("concurrent").experiment_id
    assert len(tracking.find_runs(reader, exp, status="FINISHED")) == 20  # after the writers
    rid = tracking.start_trial_run(writer, exp, sweep="c", trial_id="c-0", cfg=config.defaults(),
                                   fingerprints={"data_fp": "d", "fold_fp": "f"})
    assert (tmp_path / "mlflow.db-wal").exists()  # the writer's connection is open
    assert tracking.client(read_only_sqlite(uri)).get_run(rid).info.status == "RUNNING"


def test_trial_run_schema(tmp_path):
    uri = tracking.tracking_uri(tmp_path)
    cl = tracking.client(uri)
    exp = tracking.ensure_experiment(cl, "schema", tmp_path, uri)
    cfg = config.load("baseline_hatr")
    rid = tracking.start_trial_run(cl, exp, sweep="s1", trial_id="t1", cfg=cfg,
                                   fingerprints={"data_fp": "D", "fold_fp": "F", "eval_fp": "E"})
    folds = [{"fold": k, "fold_hF": 0.1 * k, "fold_hF_strict": 0.1 * k} for k in range(3)]
    tracking.log_folds(cl, rid, folds[:1])
    tracking.log_folds(cl, rid, folds[1:], {"bst.node": "n2"})  # a backlog: two folds, one call
    art = tmp_path / "art"
    art.mkdir()
    (art / "state.json").write_text("{}")  # the trial's work files stay out of MLflow
    (art / "metrics.json").write_text(json.dumps({"oof_hF": 0.7}))
    (art / "config.yaml").write_text("seed: 1\n")
    tracking.finish_trial_run(cl, rid, metrics={"oof_hF": 0.7, "oof_hF_strict": 0.6,
                                                "oof_hF_fx-a": 0.5, "oof_hF_ss-s": float("nan")},
                              artifacts_dir=art, status="FINISHED", bst_status="complete")
    run = cl.get_run(rid)
    t = run.data.tags
    assert (t["bst.kind"], t["bst.sweep"], t["bst.trial_id"]) == ("trial", "s1", "t1")
    assert (t["bst.data_fp"], t["bst.fold_fp"], t["bst.eval_fp"]) == ("D", "F", "E")
    assert t["bst.backbones"] == "clap_audio,clap_text" and t["bst.status"] == "complete"
    assert run.data.params["model.name"] == "hatr" and run.data.params["train.lr"] == "0.001"
    assert run.data.metrics["oof_hF"] == 0.7 and run.data.metrics["hF_fx-a"] == 0.5
    assert "hF_ss-s" not in run.data.metrics
    assert [m.step for m in cl.get_metric_history(rid, "fold_hF")] == [0, 1, 2]
    assert [m.value for m in cl.get_metric_history(rid, "fold_hF_strict")] == [0.0, 0.1, 0.2]
    assert t["bst.node"] == "n2"
    assert {a.path for a in cl.list_artifacts(rid)} == {"metrics.json", "config.yaml"}
    assert run.info.status == "FINISHED"


def test_close_interrupted_marks_running_runs_killed(tmp_path):
    uri = tracking.tracking_uri(tmp_path)
    cl = tracking.client(uri)
    exp = tracking.ensure_experiment(cl, "kill", tmp_path, uri)
    cfg = config.defaults()
    a = tracking.start_trial_run(cl, exp, sweep="s", trial_id="a", cfg=cfg, fingerprints={})
    b = tracking.start_trial_run(cl, exp, sweep="s", trial_id="b", cfg=cfg, fingerprints={})
    assert tracking.close_interrupted(cl, exp, "s", keep=[b]) == [a]
    assert cl.get_run(a).info.status == "KILLED"
    assert cl.get_run(b).info.status == "RUNNING"


@pytest.mark.parametrize("uri", ["sqlite:///x.db"])
def test_ui_command_names_the_store(uri, tmp_path):
    assert uri in tracking.ui_command(uri, tmp_path)


def test_ui_contract_kind_names_active_params_and_runs_url(tmp_path):
    uri = tracking.tracking_uri(tmp_path)
    cl = tracking.client(uri)
    exp = tracking.ensure_experiment(cl, "ui", tmp_path, uri)
    assert cl.get_experiment(exp).tags[tracking.EXPERIMENT_KIND] == tracking.MODEL_TRAINING
    hatr = tracking.start_trial_run(cl, exp, sweep="s", trial_id="ab12_00003",
                                    cfg=config.load("baseline_hatr"), fingerprints={},
                                    resources={"CPU": 2.0, "GPU": 0.5})
    tracking.finish_trial_run(cl, hatr, metrics={"oof_hF_strict": 0.61234}, artifacts_dir=None,
                              status="FINISHED", bst_status="complete")
    run = cl.get_run(hatr)
    assert run.info.run_name == "00003 hatr 0.6123"
    assert "model.fusion" not in run.data.params and "model.head" not in run.data.params
    assert (run.data.tags[tracking.CPUS], run.data.tags[tracking.GPUS]) == ("2.0", "0.5")
    late = tracking.start_trial_run(cl, exp, sweep="s", trial_id="t9",
                                    cfg=config.load("late_fusion", {"model.fusion": "gated"}),
                                    fingerprints={})
    assert cl.get_run(late).info.run_name == "t9 late_fusion gated/flat"
    assert cl.get_run(late).data.params["model.fusion"] == "gated"
    assert tracking.runs_url("http://h:5000/", exp).startswith(
        f"http://h:5000/#/experiments/{exp}/runs?workflowType=machine_learning")
    assert "then open http://127.0.0.1:5000/#/experiments/7/runs" in \
        tracking.ui_command("sqlite:///x.db", tmp_path, "7")


class _Flaky:
    """Wraps an MlflowClient: chosen calls fail with a connection error ``n`` times first;
    with ``after=True`` the call reaches the store and only the response is lost."""

    def __init__(self, cl, method: str, n: int, after: bool = False) -> None:
        self.cl, self.method, self.n, self.after, self.calls = cl, method, n, after, 0

    def __getattr__(self, name):
        real = getattr(self.cl, name)
        if name != self.method:
            return real

        def call(*a, **k):
            import requests

            self.calls += 1
            if self.calls <= self.n:
                if self.after:
                    real(*a, **k)
                raise requests.exceptions.ConnectionError("Connection refused (server restarting)")
            return real(*a, **k)

        return call


def test_writes_wait_out_a_restarting_server_and_create_run_stays_unique(tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.RETRY_ENV, "30")
    uri = tracking.tracking_uri(tmp_path)
    cl = tracking.client(uri)
    exp = tracking.ensure_experiment(cl, "retry", tmp_path, uri)
    cfg = config.defaults()
    # the server stored the run but the response was lost, twice: still exactly one run
    lossy = _Flaky(cl, "create_run", 2, after=True)
    rid = tracking.start_trial_run(lossy, exp, sweep="s", trial_id="t1", cfg=cfg,
                                   fingerprints={}, node="n1")
    runs = tracking.find_runs(cl, exp, sweep="s")
    assert [r.info.run_id for r in runs] == [rid] and lossy.calls == 1  # found by bst.attempt
    assert runs[0].data.tags["bst.node"] == "n1"
    down = _Flaky(cl, "log_batch", 3)  # refused three times, then the server is back
    tracking.log_folds(down, rid, [{"fold": 0, "fold_hF": 0.5, "fold_hF_strict": 0.4}])
    assert down.calls == 4 and len(cl.get_metric_history(rid, "fold_hF")) == 1


def test_a_permanent_error_is_not_retried(tmp_path):
    calls = []

    def bad():
        calls.append(1)
        raise ValueError("INVALID_PARAMETER_VALUE: no such run")

    with pytest.raises(ValueError):
        tracking.with_retry(bad, deadline_s=30)
    assert len(calls) == 1
    assert tracking.is_transient(RuntimeError("(sqlite3.OperationalError) database is locked"))
