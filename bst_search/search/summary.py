"""The end of a sweep: closing what a dead driver left open, deleting the finished trials'
checkpoints, and the summary the driver prints (the top trials, read back from MLflow)."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

INTERRUPTED_RC = 130

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from bst_search.search.mlflow_logger import MlflowTrialLogger
    from bst_search.search.plan import SweepPlan


@dataclass
class SweepSummary:
    """What the driver prints at the end and returns to its caller."""

    sweep: str
    n_finished: int
    n_complete: int
    top: pd.DataFrame
    ui: str
    workdir: str
    tracking_uri: str  # masked
    errors: int = 0
    interrupted: int = 0
    budget_s: float | None = None
    budget_hit: bool = False
    lease_lost: bool = False
    taken_by: str | None = None  # who holds the lease this driver lost
    signum: int | None = None  # the SIGTERM / SIGHUP that stopped the sweep
    counts: dict[str, int] = field(default_factory=dict)


def close_sweep(plan: SweepPlan, logger: MlflowTrialLogger, cut: set[str], stopped: bool = False,
                drain_s: float | None = None) -> dict[str, int]:
    """Wait for MLflow (at most ``drain_s`` seconds); after a sweep that ended (not cut off,
    not ``stopped`` by a signal or a lost lease), close runs and Optuna trials no Tune trial
    owns any more and delete the finished trials' checkpoints. Returns the counts."""
    failed_writes = logger.drain(drain_s)
    counts = {"interrupted": len(cut), "failed_writes": len(failed_writes)}
    if not cut and not stopped:
        counts.update(close_orphans(logger, plan.rdb, plan.experiment))
        if not failed_writes:
            counts["checkpoints_deleted"] = drop_finished_checkpoints(logger.trials, logger.finished)
    if failed_writes:
        print(f"warning: {len(failed_writes)} MLflow write(s) failed for good: {failed_writes[:3]}",
              file=sys.stderr)
    return counts


def drop_finished_checkpoints(trials: list[Any], finished: set[str]) -> int:
    """Delete the Tune checkpoints of trials whose MLflow run is FINISHED, once the sweep has
    ended: MLflow holds their outputs and nothing resumes them (an errored trial's are kept,
    ``--resume`` re-runs it). Returns how many checkpoint directories went."""
    import pyarrow.fs as pafs

    n = 0
    for t in trials:
        if t.status != "TERMINATED" or t.trial_id not in finished:
            continue
        fs, root = t.storage.storage_filesystem, t.storage.trial_fs_path
        for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                fs.delete_dir(info.path)
                n += 1
    return n


def close_orphans(logger: MlflowTrialLogger, rdb: optuna.storages.RDBStorage,
                  study_name: str) -> dict[str, int]:
    """After a sweep that ended: runs and Optuna trials no Tune trial owns any more (left by
    a driver that died) end KILLED / FAIL, so MLflow and Optuna agree with Tune."""
    import optuna

    from bst_search import tracking

    killed = tracking.close_interrupted(logger.client, logger.experiment_id, logger.sweep)
    study = optuna.load_study(study_name=study_name, storage=rdb)
    stale = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        stale += 1
    return {"killed": len(killed), "optuna_stale": stale}


def _short(value: str | None) -> str | None:
    """MLflow params are strings; show floats with 4 significant digits in the table."""
    try:
        return f"{float(value):.4g}" if value is not None and "." in value else value
    except ValueError:
        return value


def summarize(logger: MlflowTrialLogger, plan: SweepPlan, top: int = 10) -> SweepSummary:
    """Top trials of the sweep from MLflow, with their key parameters."""
    import pandas as pd

    from bst_search import tracking
    from bst_search.tracking.redact import mask_url

    space = plan.space
    runs = tracking.find_runs(logger.client, logger.experiment_id, sweep=logger.sweep, status="FINISHED")
    rows = []
    for r in runs:
        row = {"trial": r.data.tags.get(tracking.TRIAL_ID), "status": r.data.tags.get(tracking.STATUS),
               "run_id": r.info.run_id[:8]}
        row.update({k: r.data.metrics.get(k) for k in dict.fromkeys(
            ("oof_hF", "oof_hF_strict", space.metric, "fold_hF_std"))})
        row.update({k: _short(r.data.params.get(k)) for k in list(space.params)[:6]})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        key = space.metric if space.metric in frame else "oof_hF_strict"
        frame = frame.sort_values(key, ascending=space.mode == "min", na_position="last")
    n_complete = int((frame.get("status") == "complete").sum()) if len(frame) else 0
    uri = mask_url(plan.tracking_uri)
    return SweepSummary(sweep=logger.sweep, n_finished=len(frame), n_complete=n_complete,
                        top=frame.head(top), workdir=str(plan.workdir), tracking_uri=uri,
                        ui=tracking.ui_command(uri, plan.workdir, logger.experiment_id))


def print_summary(summary: SweepSummary, experiment: str) -> None:
    import pandas as pd

    if summary.lease_lost:
        print(f"\nsweep {summary.sweep} (experiment {experiment!r}): this driver lost its lease to "
              f"{summary.taken_by}, which drives the sweep now. It stopped scheduling and closed no "
              f"run after that; do not --resume it while the other driver runs",
              file=sys.stderr)
        return

    print(f"\n== sweep {summary.sweep} (experiment {experiment!r}): {summary.n_finished} finished "
          f"trial runs, {summary.n_complete} complete, {summary.errors} errored ==")
    if summary.budget_s is not None:
        print(f"time budget {summary.budget_s:.0f} s: {summary.n_complete} trial(s) completed in "
              f"it{f', {summary.interrupted} stopped at the budget' if summary.interrupted else ''}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.top.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nwork dir:      {summary.workdir}\ntracking:      {summary.tracking_uri}")
    print(f"MLflow UI:     {summary.ui}")
    if summary.interrupted or summary.signum:
        why = ("stopped at the time budget" if summary.budget_hit else
               f"interrupted by {signal.Signals(summary.signum).name}" if summary.signum else "interrupted")
        print(f"\n{why}: "
              f"{summary.interrupted} trial(s) stopped (runs KILLED); they continue from their "
              f"last finished fold with the same command and --resume")
        if not summary.budget_hit or summary.signum:
            return
    print(f"ensemble next: python -m bst_search.ensemble --experiment {experiment} "
          f"--workdir {summary.workdir}")
    print(f"report:        bst-search report --experiment {experiment} --workdir {summary.workdir}"
          f"   (live: bst-search dashboard --experiment {experiment} --workdir {summary.workdir})")


def exit_code(summary: SweepSummary) -> int:
    """0 for a sweep with a finished trial (or one the time budget ended), 130 after Ctrl-C,
    143 after SIGTERM, 129 after SIGHUP, 3 when another driver took the lease over, 1 when no
    trial finished."""
    from bst_search.search.stopping import exit_code_of

    stopped = exit_code_of(summary.signum, summary.lease_lost)
    if stopped is not None:
        return stopped
    if summary.interrupted and not summary.budget_hit:
        return INTERRUPTED_RC
    return 0 if summary.n_finished or summary.budget_hit else 1
