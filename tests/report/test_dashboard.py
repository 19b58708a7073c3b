"""`bst-search dashboard`: live viewers on a running sweep, read-only, stopped by Ctrl-C."""

from __future__ import annotations

import argparse
import socket

import pytest
from procs import free_port

from bst_search import dashboard, tracking
from bst_search.cli import main
from bst_search.tracking import stores

# Writes MLflow runs and Optuna trials into the stores until a stop file appears, with no
# retry, like the sweep's driver: any lock the viewers took would surface as an error here.
WRITER = """
import sys, time, optuna
from pathlib import Path
from mlflow.entities import Metric
from bst_search import tracking
wd, stop, sweep = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
cl = tracking.client(f"sqlite:///{wd / 'mlflow.db'}")
exp = cl.get_experiment_by_name("rep").experiment_id
study = optuna.load_study(study_name="rep", storage=f"sqlite:///{wd / 'optuna.db'}")  # named after the experiment
n = 0
while not stop.exists():
    run = cl.create_run(exp, tags={tracking.KIND: "live", tracking.TRIAL_ID: f"live{n}"})
    cl.log_batch(run.info.run_id, metrics=[Metric("oof_hF_strict", 0.5, int(time.time() * 1000), 0)])
    cl.set_terminated(run.info.run_id, "FINISHED")
    study.tell(study.ask(), 0.5)
    n += 1
    print(f"writes {n}", flush=True)
"""


@pytest.mark.system  # servers started and stopped by a signal: make test-system
def test_dashboard_during_writes_stops_on_ctrl_c(small_sweep, tmp_path):
    """Starts while the stores are being written, never blocks the writer, stops cleanly."""
    import json
    import shutil
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from procs import wait_for_lines

    wd = tmp_path / "wd"
    wd.mkdir()
    for name in ("mlflow.db", "optuna.db"):
        shutil.copy(small_sweep["workdir"] / name, wd / name)
    sweep = tracking.find_runs(tracking.client(small_sweep["uri"]),
                               tracking.client(small_sweep["uri"]).get_experiment_by_name(
                                   "rep").experiment_id)[0].data.tags[tracking.SWEEP]
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(wd), str(stop), sweep],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ports = free_port(), free_port()
    dash = None
    try:
        wait_for_lines(writer, "writes 1", 120)
        dash = subprocess.Popen(
            [sys.executable, "-m", "bst_search.cli", "dashboard", "--experiment", "rep",
             "--workdir", str(wd), "--mlflow-port", str(ports[0]), "--optuna-port", str(ports[1])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        printed = wait_for_lines(dash, "Ray dashboard", 300)
        assert writer.poll() is None, "the writer failed while the dashboards started"
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/api/studies", timeout=30) as r:
            studies = json.loads(r.read())["study_summaries"]
        assert [s["study_name"] for s in studies] == ["rep"]  # the study is named after the experiment
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/health", timeout=30) as r:
            assert r.status == 200
        exp_id = tracking.client(small_sweep["uri"]).get_experiment_by_name("rep").experiment_id
        assert f"http://127.0.0.1:{ports[0]}/#/experiments/{exp_id}/runs" in printed
        assert f"http://127.0.0.1:{ports[1]}/dashboard/" in printed
        time.sleep(2)  # a few more writes while both viewers serve
        dash.send_signal(signal.SIGINT)
        t0 = time.time()
        assert dash.wait(60) == 0
        assert time.time() - t0 < 30
        assert "stopping the dashboards" in wait_for_lines(dash, "stopping", 10)
        for port in ports:  # both viewers are gone
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if dash is not None and dash.poll() is None:
            dash.kill()
        stop.touch()
        rc = writer.wait(120)
    assert rc == 0, "the writer failed: a viewer blocked it"
    cl = tracking.client(f"sqlite:///{wd / 'mlflow.db'}")
    live = tracking.find_runs(cl, exp_id, kind="live")
    assert len(live) >= 2 and {r.info.status for r in live} == {"FINISHED"}


def test_stores_are_opened_read_only():
    assert stores.read_only_sqlite("sqlite:////x/optuna.db") == \
        "sqlite:///file:/x/optuna.db?mode=ro&uri=true"
    assert stores.read_only_sqlite("postgresql://u@h/db") == "postgresql://u@h/db"


def test_what_cannot_be_read_only_is_printed_writable(tmp_path):
    """A tracking server is only linked (its own UI decides), and a store without a read-only
    mode is named writable; the link never shows a password."""
    linked = dashboard._mlflow_ui("http://bst:s3cret-pw@head:5000", "3", "127.0.0.1", 1,
                                  tmp_path, tmp_path)
    assert linked.proc is None and linked.access.startswith("writable")
    assert "s3cret-pw" not in linked.url and linked.url.startswith("http://bst:***@head:5000/#/experiments/3")
    assert dashboard._access(*reversed(stores.viewer_url("mysql://u:pw@h/db"))).startswith("writable")
    assert dashboard._access(*reversed(stores.viewer_url("sqlite:////x.db"))) == "read-only"


def _tree(root: int) -> dict[int, str]:
    """Every live descendant of ``root`` (and root), with its command line."""
    from pathlib import Path

    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
        except (OSError, ValueError):
            continue
        if d.name.isdigit():
            parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return {pid: _cmdline(pid) for pid in tree}


def _cmdline(pid: int) -> str:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.system
@pytest.mark.postgres
def test_no_password_on_a_command_line_and_viewers_cannot_write(tmp_path):
    """PostgreSQL stores whose URLs carry a password, given as the environment gives them: no
    process of the dashboard's tree (nor any on the machine) shows it in /proc/*/cmdline,
    nothing printed or logged shows it, and both viewers' writes are refused by the server."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request
    import uuid

    import optuna
    import psycopg
    from procs import wait_for_lines

    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg.connect(admin, connect_timeout=3).close()
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL at {admin} is not reachable: {e}")
    tag = uuid.uuid4().hex[:8]
    role, password = f"bst_viewer_{tag}", f"pw-{uuid.uuid4().hex}"
    dbs = {k: f"bst_viewer_{tag}_{k}" for k in ("mlflow", "optuna")}
    urls = {k: f"postgresql+psycopg://{role}:{password}@127.0.0.1:5432/{db}" for k, db in dbs.items()}
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        for db in dbs.values():
            c.execute(f'CREATE DATABASE "{db}" OWNER {role}')
    dash = None
    try:
        exp_id = tracking.client(urls["mlflow"]).create_experiment("rep")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.create_study(study_name="rep", storage=urls["optuna"]).optimize(
            lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        ports = free_port(), free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": urls["mlflow"], "BST_OPTUNA_STORAGE": urls["optuna"]}
        dash = subprocess.Popen(
            [sys.executable, "-m", "bst_search.cli", "dashboard", "--experiment", "rep",
             "--workdir", str(tmp_path), "--mlflow-port", str(ports[0]), "--optuna-port", str(ports[1])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        printed = wait_for_lines(dash, "Ray dashboard", 300)
        tree = _tree(dash.pid)
        assert len(tree) >= 3, tree  # the command, the MLflow server, optuna-dashboard
        assert any("mlflow" in c and "server" in c for c in tree.values()), tree
        assert any("serve_optuna" in c for c in tree.values()), tree
        assert not [c for c in tree.values() if password in c]
        machine = [int(d) for d in os.listdir("/proc") if d.isdigit()]
        assert not [pid for pid in machine if password in _cmdline(pid)]
        assert printed.count("(read-only)") == 2 and "writable" not in printed, printed

        def call(method: str, url: str, body: dict | None = None) -> tuple[int, str]:
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        mlflow_base, optuna_base = (f"http://127.0.0.1:{p}" for p in ports)
        status, _ = call("GET", f"{mlflow_base}/api/2.0/mlflow/experiments/get?experiment_id={exp_id}")
        assert status == 200
        status, body = call("POST", f"{mlflow_base}/api/2.0/mlflow/experiments/delete",
                            {"experiment_id": exp_id})
        assert status >= 400 and "read-only transaction" in body, (status, body)
        status, body = call("GET", f"{optuna_base}/api/studies")
        (study,) = json.loads(body)["study_summaries"]
        status, body = call("DELETE", f"{optuna_base}/api/studies/{study['study_id']}",
                            {"remove_associated_artifacts": False})
        assert status == 500, (status, body)  # Optuna's StorageInternalError: a read-only transaction
        dash.send_signal(signal.SIGINT)
        assert dash.wait(60) == 0
        printed += wait_for_lines(dash, "stopping", 30)
        logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "dashboard-logs").iterdir())
        assert password not in printed + logs
        assert tracking.client(urls["mlflow"]).get_experiment(exp_id).lifecycle_stage == "active"
        assert optuna.get_all_study_names(urls["optuna"]) == ["rep"]
    finally:
        if dash is not None and dash.poll() is None:
            dash.kill()
        with psycopg.connect(admin, autocommit=True) as c:
            for db in dbs.values():
                c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.execute(f"DROP ROLE IF EXISTS {role}")


def _args(**kw) -> argparse.Namespace:
    p = dashboard.add_arguments(argparse.ArgumentParser())
    return p.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])


def test_bad_inputs(small_sweep, tmp_path, capsys):
    wd = str(small_sweep["workdir"])
    assert main(["dashboard", "--experiment", "nope", "--workdir", wd]) == 2
    assert "experiment 'nope' does not exist" in capsys.readouterr().err
    assert main(["dashboard", "--experiment", "rep", "--workdir", str(tmp_path)]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(stores.StoreError, match=f"port {port} on 127.0.0.1 is in use"):
            dashboard.start(_args(experiment="rep", workdir=wd, mlflow_port=port,
                                  optuna_port=free_port()))


def test_grafana_dashboard_uses_metrics_ray_exports():
    """Every metric the Grafana dashboard queries is one Ray's own dashboards query."""
    import json
    import re
    from pathlib import Path

    import ray.dashboard.modules.metrics.dashboards.default_dashboard_panels as ray_panels

    root = Path(__file__).resolve().parents[2]
    dash = json.loads((root / "dashboards" / "grafana-ray-sweep.json").read_text())
    ray_source = Path(ray_panels.__file__).read_text()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    used = {m for e in exprs for m in re.findall(r"\b((?:ray|autoscaler)_[a-z_]+)\{", e)}
    assert used and all(m in ray_source for m in used), used - {m for m in used if m in ray_source}
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "SessionName", "Instance"} <= names
    assert "grafana-ray-sweep.json" in (root / "dashboards" / "README.md").read_text()
