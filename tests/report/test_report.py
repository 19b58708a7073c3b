"""The sweep report: built from a real small sweep, its bad inputs, and checked in Chromium."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import free_port

from bst_search import report, tracking
from bst_search.cli import main
from bst_search.report.render import _header

# page order: what a reader came for first (after the header), the sweep's bookkeeping last
SECTION_IDS = ("leaderboard", "ensemble", "matters", "per_class", "sweep")


@pytest.fixture(scope="module")
def built(small_sweep, tmp_path_factory) -> dict:
    """The report of the small sweep through the CLI (also logs it to the ensemble run)."""
    out = tmp_path_factory.mktemp("report") / "rep.html"
    t0 = time.perf_counter()
    rc = main(["report", "--experiment", "rep", "--workdir", str(small_sweep["workdir"]),
               "--out", str(out), "--eval-labels", str(small_sweep["eval_labels"])])
    assert rc == 0
    return {"path": out, "html": out.read_text(), "seconds": time.perf_counter() - t0}


def test_report_is_self_contained_with_every_section(built, small_sweep):
    page = built["html"]
    for sid in SECTION_IDS:
        assert f'<section id="{sid}"' in page
    # plotly's JavaScript once, inline; nothing fetched from the network
    assert page.count("<script type=\"text/javascript\">") == 1
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"?https?:", page)
    assert "honest estimate, a lower bound (believe this)" in page  # the sweep has no holdout
    assert 'data-estimate-kind="honest_lower_bound"' in page
    assert "evaluation labels, official hF" in page  # --eval-labels was given
    assert "Parameter importances (optuna.importance)" in page
    assert "Parallel coordinates (Optuna)" in page
    assert "Ensemble confusion, 23 x 23" in page and "5 top levels" in page
    assert "Selection curve" in page and "Submission self-checks" in page
    assert built["path"].stat().st_size < 20e6


def test_sections_in_reading_order(built):
    """The header (the estimate to believe), then leaderboard, ensemble, what matters, per
    class, and the sweep's bookkeeping last; the nav lists them in the same order."""
    page = built["html"]
    at = [page.index('<header id="header"')] + [page.index(f'<section id="{sid}"')
                                                for sid in SECTION_IDS]
    assert at == sorted(at), dict(zip(("header", *SECTION_IDS), at, strict=True))
    assert list(report.SECTIONS) == list(SECTION_IDS)
    nav = re.search(r"<nav>(.*?)</nav>", page, re.S).group(1)
    assert re.findall(r'href="#(\w+)"', nav) == ["header", *SECTION_IDS]


def _frame_sweep(statuses: list[str]):
    """A Sweep built from a small frame of trial runs, one per status given."""
    import pandas as pd

    n = len(statuses)
    trials = pd.DataFrame({
        "run_id": [f"r{i}" for i in range(n)], "trial_id": [f"t{i}" for i in range(n)],
        "name": [f"trial {i}" for i in range(n)], "bst_status": statuses, "sweep": "s-0",
        "start": [1e12 + 6e4 * i for i in range(n)], "end": [1e12 + 6e4 * (i + 1) for i in range(n)],
        "cpus": 1.0, "gpus": 0.0, "number": range(n),
        "oof_hF_strict": [0.5 + 0.01 * i if st == "complete" else None
                          for i, st in enumerate(statuses)]})
    return report.Sweep("frame", "1", "sqlite:///x.db", "http://127.0.0.1:5000", trials, [])


def test_one_status_is_a_line_not_a_one_bar_chart():
    one = report.sections.sweep_section(_frame_sweep(["complete"] * 8))
    text = "".join(one.blocks)
    assert "Trials by status" not in text and "all 8 trial runs: complete" in text
    assert one.figures == 2  # the objective per trial and against wall time
    assert "Trials by status" not in report.render(_frame_sweep(["complete"] * 8))

    two = report.sections.sweep_section(_frame_sweep(["complete"] * 3 + ["failed"]))
    assert "Trials by status" in "".join(two.blocks) and two.figures == 3


def _ensemble(holdout: bool, method: str = "greedy") -> dict:
    """The parts of an ensemble.json the header reads: greedy's honest estimate, SK's
    cross-fitted scores, and (``holdout``) every method's holdout scores."""
    def scores(avg: float, one: float) -> dict:
        return {"fold_models_averaged": {"hF_strict": avg, "hF": avg + 0.01},
                "one_fold_model_mean": {"hF_strict": one, "hF": one + 0.01}}

    return {"method": method, "options": {"metric": "strict"}, "selected_score": 0.8233,
            "submitted": {"score": 0.8233},
            "honest": {"mean": 0.8083, "std": 0.0202, "pooled_hF_strict": 0.8159,
                       "pooled_hF": 0.8170},
            "sk": {"score": 0.7907, "per_fold": [0.78, 0.79], "std": 0.005},
            "holdout": {"n": 777, "fold_models": [0, 1, 2, 3, 4], "submitted": method,
                        "greedy": scores(0.8356, 0.8097), "sk": scores(0.8174, 0.7958)}
            if holdout else None}


def test_header_believes_the_holdout_with_one_and_the_honest_lower_bound_without():
    """The header's main card is ensemble.json's rule: with a holdout, the submission's
    holdout score (fold models averaged); without, the submitted method's honest estimate,
    said to be a lower bound. The other numbers stay on the page."""
    s = _frame_sweep(["complete"] * 3)
    s.ensemble = _ensemble(holdout=True)
    head = _header(s)
    cards = {label: value for label, value, _ in head["cards"]}
    main = [(label, value) for label, value, cls in head["cards"] if cls == "main"]
    assert main == [("holdout score of the submission: greedy, 5 fold models averaged "
                     "(believe this)", "0.8356")]
    assert head["kind"] == "holdout" and "777 development sounds" in head["believe"]
    assert "lower bound" not in head["believe"]
    assert cards["honest estimate (greedy, nested CV, one fold model per row)"] == "0.8083 ± 0.0202"
    assert cards["selected ensemble (optimistic)"] == "0.8233"

    s.ensemble = _ensemble(holdout=False)
    head = _header(s)
    main = [(label, value) for label, value, cls in head["cards"] if cls == "main"]
    assert main == [("greedy honest estimate, a lower bound (believe this)", "0.8083 ± 0.0202")]
    assert head["kind"] == "honest_lower_bound"
    assert "lower bound" in head["believe"] and "--holdout-fraction" in head["believe"]
    assert "averages all of them" in head["believe"]
    assert not any(label.startswith("honest estimate (greedy") for label, _, _ in head["cards"])

    s.ensemble = _ensemble(holdout=False, method="sk")  # SK's cross-fitted score plays the role
    label, value, _ = next(c for c in _header(s)["cards"] if c[2] == "main")
    assert label.startswith("SK fusion cross-fitted") and value == "0.7850 ± 0.0050"
    s.ensemble = _ensemble(holdout=True, method="sk")
    label, value, _ = next(c for c in _header(s)["cards"] if c[2] == "main")
    assert label.startswith("holdout score of the submission: SK fusion") and value == "0.8174"


def test_report_is_logged_with_the_ensemble_run(built, small_sweep):
    cl = tracking.client(small_sweep["uri"])
    exp = cl.get_experiment_by_name("rep")
    (ens,) = tracking.find_runs(cl, exp.experiment_id, kind="ensemble")
    assert report.ARTIFACT in {a.path for a in cl.list_artifacts(ens.info.run_id)}


def test_leaderboard_numbers_are_mlflows(built, small_sweep):
    cl = tracking.client(small_sweep["uri"])
    rows = re.findall(r'data-run-id="(\w+)".*?data-metric="oof_hF">([\d.]+)<.*?'
                      r'data-metric="oof_hF_strict">([\d.]+)<.*?data-metric="oof_top_acc">([\d.]+)<',
                      built["html"], re.S)
    assert len(rows) == 4
    scores = []
    for run_id, hf, strict, top in rows:
        m = cl.get_run(run_id).data.metrics
        assert (hf, strict, top) == (f"{m['oof_hF']:.4f}", f"{m['oof_hF_strict']:.4f}",
                                     f"{m['oof_top_acc']:.4f}")
        scores.append(m["oof_hF_strict"])
    assert scores == sorted(scores, reverse=True)


def test_trial_runs_as_the_mlflow_ui_shows_them(small_sweep):
    """Model-training experiment, its description and view, scannable names, active params."""
    cl = tracking.client(small_sweep["uri"])
    exp = cl.get_experiment_by_name("rep")
    assert exp.tags[tracking.EXPERIMENT_KIND] == tracking.MODEL_TRAINING
    note = exp.tags[tracking.NOTE]
    assert "Search space" in note and "oof_hF_strict" in note and "Data fingerprint" in note
    assert "oof_hF_strict" in exp.tags[tracking.VIEW_TAG]
    runs = tracking.find_runs(cl, exp.experiment_id)
    assert len(runs) == 4
    for r in runs:
        name, params = r.data.tags["mlflow.runName"], r.data.params
        assert name.endswith(f"{r.data.metrics['oof_hF_strict']:.4f}")
        assert "late_fusion transformer/flat" in name
        assert "train.step_size" not in params  # late_fusion preset: plateau schedule
        assert ("train.mask_p" in params) == (params["train.mask_mode"] != "none")
        assert r.data.tags[tracking.CPUS] == "1.0"
    assert f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in \
        small_sweep["sweep_output"]


def test_report_without_ensemble_says_so(small_sweep, tmp_path):
    """No ensemble run yet: the ensemble sections say what is missing, the rest renders."""
    s = report.load_sweep("rep", workdir=small_sweep["workdir"])
    s.ensemble = s.ensemble_run = s.ensemble_oof = None
    page = report.render(s)
    assert "No ensemble run yet" in page
    assert "Confusion matrices need an ensemble run" in page
    assert 'data-run-id="' in page  # the leaderboard still renders


def test_bad_inputs_are_one_line_errors(small_sweep, tmp_path, capsys):
    wd = str(small_sweep["workdir"])
    assert main(["report", "--experiment", "nope", "--workdir", wd]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "experiment 'nope' does not exist" in err and "rep" in err

    assert main(["report", "--experiment", "rep", "--workdir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no MLflow store at" in err
    assert not (tmp_path / "empty" / "mlflow.db").exists()  # nothing created

    t0 = time.perf_counter()
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["report", "--experiment", "rep", "--tracking-uri", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"MLflow tracking server {url} is unreachable" in err
    assert time.perf_counter() - t0 < 15


def test_experiment_with_no_finished_trial(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cl = tracking.client(uri)
    exp_id = tracking.ensure_experiment(cl, "fresh", tmp_path, uri)
    cl.create_run(exp_id, tags={tracking.KIND: "trial", tracking.STATUS: "running",
                                tracking.TRIAL_ID: "t0", tracking.SWEEP: "fresh-0"})
    s = report.load_sweep("fresh", workdir=tmp_path)
    assert any("no finished trial" in m for m in s.missing)
    page = report.render(s)
    assert "No complete trial yet" in page and "No ensemble run yet" in page
    assert "Optuna study: no storage found" in page


def test_active_params_of_runs_logged_with_every_key():
    """Runs logged before params were filtered still group correctly in the report."""
    from bst_search import config

    flat = {k: str(v) for k, v in config.flatten(config.load("baseline_hatr")).items()}
    kept = report.load._active(flat)
    assert "model.fusion" not in kept and "model.head" not in kept and kept["model.name"] == "hatr"


# --------------------------------------------------------------------------- in a browser


def _wait(driver, js: str, timeout: float = 60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = driver.execute_script(js)
        if value:
            return value
        time.sleep(0.5)
    return driver.execute_script(js)


def _check_in_browser(chrome, page: Path, uri: str, shots: Path) -> None:
    """Every section's figures rendered, no console error, leaderboard = MLflow; screenshots."""
    from selenium.webdriver.common.by import By

    chrome.set_window_size(1400, 1000)
    chrome.get(page.resolve().as_uri())
    counts = _wait(chrome, """
        const secs = Array.from(document.querySelectorAll('section'));
        const ok = secs.every(s => s.querySelectorAll('.js-plotly-plot .main-svg').length > 0
            || s.dataset.figures === '0');
        return ok ? secs.map(s => [s.id, +s.dataset.figures,
                                   s.querySelectorAll('.js-plotly-plot').length,
                                   s.querySelectorAll('.js-plotly-plot .plot-container').length])
                  : null;""")
    assert counts, "figures did not render"
    assert [c[0] for c in counts] == list(SECTION_IDS)
    for sid, expected, rendered, containers in counts:
        assert rendered == containers == expected, (sid, expected, rendered, containers)
        if sid != "leaderboard":
            assert expected >= 2, sid
    severe = [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    cl = tracking.client(uri)
    rows = chrome.find_elements(By.CSS_SELECTOR, "table.leaderboard tbody tr")
    assert rows
    for row in rows:  # the leaderboard as displayed equals MLflow's numbers
        run_id = row.find_element(By.CSS_SELECTOR, "a[data-run-id]").get_attribute("data-run-id")
        m = cl.get_run(run_id).data.metrics
        for key in ("oof_hF", "oof_hF_strict", "oof_top_acc"):
            shown = row.find_element(By.CSS_SELECTOR, f'[data-metric="{key}"]').text
            assert shown == f"{m[key]:.4f}", (run_id, key)
    for sid in SECTION_IDS:
        sec = chrome.find_element(By.ID, sid)
        height = chrome.execute_script("return arguments[0].getBoundingClientRect().height", sec)
        chrome.set_window_size(1400, int(height) + 120)
        chrome.execute_script("arguments[0].scrollIntoView()", sec)
        assert sec.screenshot(str(shots / f"report-{sid}.png"))
    chrome.set_window_size(1400, 1000)


def test_report_renders_in_chromium(built, small_sweep, chrome, browser_artifacts):
    _check_in_browser(chrome, built["path"], small_sweep["uri"], browser_artifacts)


@pytest.mark.skipif(not os.environ.get("BST_DEMO_WORKDIR"),
                    reason="set BST_DEMO_WORKDIR=bst-runs/demo after `make demo` to check its report")
def test_demo_report_renders_in_chromium(chrome, browser_artifacts):
    """The demo's report (the README's screenshots: BST_TEST_ARTIFACTS=docs/img)."""
    wd = Path(os.environ["BST_DEMO_WORKDIR"]).resolve()
    _check_in_browser(chrome, wd / "reports" / "demo.html", f"sqlite:///{wd / 'mlflow.db'}",
                      browser_artifacts)


def test_mlflow_ui_lists_trials_and_compares_two(small_sweep, chrome, browser_artifacts):
    """The URL `bst-search dashboard` prints opens the sweep's runs with their scores."""
    import json
    import signal
    import urllib.parse

    from procs import wait_for_lines

    cl = tracking.client(small_sweep["uri"])
    exp = cl.get_experiment_by_name("rep")
    runs = tracking.find_runs(cl, exp.experiment_id)
    port = free_port()
    dash = subprocess.Popen([sys.executable, "-m", "bst_search.cli", "dashboard", "--experiment",
                             "rep", "--workdir", str(small_sweep["workdir"]), "--mlflow-port",
                             str(port), "--optuna-port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        printed = wait_for_lines(dash, "Ray dashboard", 240)
        url = re.search(r"MLflow UI\s+(\S+)", printed).group(1)
        chrome.set_window_size(1900, 1000)
        chrome.get(url)
        names = [r.data.tags["mlflow.runName"] for r in runs]
        js = f"""const t = document.body.innerText;
                const h = Array.from(document.querySelectorAll('[role=columnheader]'))
                               .map(e => e.textContent.trim());
                return h.includes('oof_hF_strict') && {json.dumps(names)}.every(n => t.includes(n))
                    ? h : null;"""
        headers = _wait(chrome, js, 90)
        chrome.save_screenshot(str(browser_artifacts / "mlflow-runs.png"))
        assert headers and "oof_hF_strict" in headers, printed
        values = chrome.execute_script("return document.body.innerText")
        for r in runs:  # the objective column shows MLflow's values
            assert f"{r.data.metrics['oof_hF_strict']:.4f}"[:6] in values

        q = urllib.parse.urlencode({"runs": json.dumps([runs[0].info.run_id, runs[1].info.run_id]),
                                    "experiments": json.dumps([exp.experiment_id])})
        chrome.get(f"http://127.0.0.1:{port}/#/compare-runs?{q}")
        loaded = _wait(chrome, f"""const t = document.body.innerText;
            return t.includes('Comparing 2 Runs') && t.includes({json.dumps(runs[0].info.run_id)})
                && t.includes({json.dumps(runs[1].info.run_id)});""", 90)
        chrome.save_screenshot(str(browser_artifacts / "mlflow-compare.png"))
        assert loaded
    finally:
        dash.send_signal(signal.SIGINT)
        assert dash.wait(60) == 0
        chrome.set_window_size(1400, 1000)


def test_readme_screenshots_exist():
    """README shows a screenshot per section, made by test_report_renders_in_chromium."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    for sid in SECTION_IDS:
        png = root / "docs" / "img" / f"report-{sid}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG", png
        assert f"docs/img/report-{sid}.png" in readme
