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
