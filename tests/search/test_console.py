"""The sweep's console: a line per ended trial, a progress view, the time budget."""

from __future__ import annotations

import argparse
import io
import pickle
import signal
from types import SimpleNamespace

import pytest

from bst_search.search import console as console_mod
from bst_search.search.cli import duration_s
from bst_search.search.console import Console


def _trial(tid: str, status: str = "RUNNING") -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, status=status, last_result={})


def _console(**kw) -> tuple[Console, io.StringIO]:
    out = io.StringIO()  # not a terminal: plain lines
    return Console("oof_hF_strict", "max", 5, kw.pop("trials", 4), stream=out, **kw), out


def test_each_ended_trial_gets_one_record_with_objective_folds_wall_time_and_node() -> None:
    c, out = _console()
    a, b, e = _trial("a"), _trial("b"), _trial("e")
    for t in (a, b, e):
        c.on_trial_start(0, [], t)
    c.on_trial_result(0, [], a, {"trial_status": "running", "folds_done": 2, "oof_hF_strict": 0.5})
    c.on_trial_result(0, [], a, {"trial_status": "complete", "folds_done": 5, "oof_hF_strict": 0.71,
                                 "time_total_s": 12.5, "node": "0123456789abcdef"})
    c.on_trial_complete(0, [], a)  # Tune's own end of the same trial: no second record
    c.on_trial_result(0, [], b, {"trial_status": "running", "folds_done": 2, "oof_hF_strict": 0.6})
    c.on_trial_complete(0, [], b)  # stopped by the scheduler after 2 folds
    c.on_trial_error(0, [], e)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("trial a  complete") and "oof_hF_strict 0.7100" in lines[0]
    assert "5/5 folds" in lines[0] and "12.5 s" in lines[0] and "node 01234567" in lines[0]
    assert lines[0].endswith("best so far")
    assert lines[1].startswith("trial b  stopped early") and "2/5 folds" in lines[1]
    assert "best so far" not in lines[1]  # an early stop is not a result to rank
    assert lines[2].startswith("trial e  error")
    assert c.best == (0.71, "a")


def test_a_restarted_trial_is_one_line_and_counted_at_the_end() -> None:
    c, out = _console()
    a = _trial("a")
    c.on_trial_result(0, [], a, {"trial_status": "running", "folds_done": 2, "node": "abcdef0123"})
    c.on_trial_recover(0, [], a)
    c.counts["done"] = 1
    c.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "trial a  restarted     after a failure (last on node abcdef01, 2/5 folds kept)"
    assert lines[-1] == "1 trial restart(s) after failures"


def test_the_best_follows_the_objective_direction() -> None:
    c, _ = _console()
    c.mode = "min"
    for tid, v in (("a", 0.3), ("b", 0.2), ("c", 0.4)):
        c.on_trial_result(0, [], _trial(tid), {"trial_status": "complete", "oof_hF_strict": v})
    assert c.best == (0.2, "b")


def test_progress_view_counts_trials_and_estimates_the_time_left(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(console_mod.time, "monotonic", lambda: clock[0])
    c, out = _console(trials=10)
    trials = [_trial("a", "TERMINATED"), _trial("b", "TERMINATED"), _trial("c"), _trial("d", "PENDING")]
    clock[0] = 160.0  # 2 of 10 done in 60 s: 8 more take 240 s at that rate
    c.on_step_end(0, trials)
    assert c.counts == {"done": 2, "running": 1, "pending": 7}
    assert c.view_line() == ("2/10 done, 1 running, 7 pending; no complete trial yet; "
                             "elapsed 1m00s, ETA 4m00s")
    assert out.getvalue().count("2/10 done") == 1  # the first plain line comes at once
    clock[0] = 170.0
    c.on_step_end(0, trials)
    assert out.getvalue().count("done,") == 1  # ... the next one PLAIN_EVERY_S later
    clock[0] = 160.0 + console_mod.PLAIN_EVERY_S
    c.on_step_end(0, trials)
    assert out.getvalue().count("done,") == 2


def test_a_budget_caps_the_eta_and_stops_the_run_once_like_ctrl_c(monkeypatch) -> None:
    clock = [0.0]
    sent = []
    monkeypatch.setattr(console_mod.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(console_mod.os, "kill", lambda pid, sig: sent.append(sig))
    c, out = _console(trials=-1, budget_s=60.0)
    clock[0] = 20.0
    c.on_step_end(0, [_trial("a")])
    assert "ETA 0m40s" in c.view_line() and "pending" in c.view_line() and "/" not in c.view_line()
    assert sent == [] and not c.budget_hit
    clock[0] = 61.0
    c.on_step_end(0, [_trial("a")])
    c.on_step_end(0, [_trial("a")])
    assert sent == [signal.SIGUSR1] and c.budget_hit  # Tune ends the run as on SIGINT
    assert "time budget of 1m00s reached" in out.getvalue()


def test_a_restored_tuner_reports_to_the_drivers_live_console() -> None:
    c, out = _console()
    copy = pickle.loads(pickle.dumps(c))
    copy.on_trial_result(0, [], _trial("a"), {"trial_status": "complete", "oof_hF_strict": 0.5})
    assert c.best == (0.5, "a") and "trial a" in out.getvalue()
    c.close()
    inert = pickle.loads(pickle.dumps(c))  # no live console: reports go nowhere, no error
    inert.on_trial_result(0, [], _trial("b"), {"trial_status": "complete", "oof_hF_strict": 0.9})
    assert "trial b" not in out.getvalue()


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("1h", 3600),
                                          ("1.5h", 5400), (" 2d ", 172800)])
def test_time_budget_durations(text: str, seconds: float) -> None:
    assert duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "1w", "soon", "1h30m"])
def test_bad_time_budgets_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a positive duration"):
        duration_s(text)
