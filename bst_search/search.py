"""Search driver: Ray Tune runs Optuna-suggested trials; the driver alone writes to MLflow.

How the pieces fit:
* the development (and evaluation, crowd) data are loaded once, validated and put into
  Ray's object store with ``tune.with_parameters``; every trial reads them from there;
* ``OptunaSearch`` (TPE, seeded) asks the search space's define-by-run function for each
  trial, and keeps its study in Optuna RDB storage (SQLite file here, PostgreSQL on a cluster);
* a trial reports after every fold (running strict hF) with a checkpoint holding its
  finished folds, so ASHA / median stopping can stop poor trials early, and a retried or
  resumed trial continues from its last finished fold;
* :class:`MlflowTrialLogger`, a Tune callback in the driver process, opens one MLflow run
  per trial, logs per-fold values as steps and, when the trial ends, its metrics and
  artifacts from the final checkpoint. Only the driver writes, so a SQLite store is safe.
* ``--resume`` restores the Tune experiment from its storage, marks runs that were open
  when the previous driver died KILLED, and reconciles MLflow and Optuna with Tune at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# read by Ray when it is imported or started, so set before the import
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic trial table (CLIReporter)
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # experiment state saved often
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from ray import tune  # noqa: E402

from bst_search import tracking
from bst_search.config import SCHEMA
from bst_search.sampling import ValidOptunaSearch, concurrency_of, make_sampler, warm_start_points

FAULT_ENV = "BST_FAULT_EXIT_AFTER_FOLD"  # fault injection for tests: "<fold>:<marker file>"


# --------------------------------------------------------------------------- trial side


def _report_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def trial_fn(params: dict[str, Any], *, dev: Any, eval_data: Any, crowd: Any, space: Any,
             n_folds: int, holdout_fraction: float = 0.0) -> None:
    """Ray Tune function trainable: one cross-validated trial, reporting after every fold."""
    import torch

    from bst_search.trial import run_trial

    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    cfg = space.config({k: v for k, v in params.items() if k in SCHEMA})
    metric = space.metric
    work = Path(tempfile.mkdtemp(prefix="bst-trial-"))
    try:
        ckpt = tune.get_checkpoint()
        if ckpt is not None:  # retried or resumed: continue from the last finished fold
            with ckpt.as_directory() as d:
                shutil.copytree(d, work, dirs_exist_ok=True)
        fault = os.environ.get(FAULT_ENV, "")

        def on_fold(info: dict[str, Any]) -> None:
            if info["resumed"] or info["folds_done"] == n_folds:
                return  # reported before this restart / reported with the outputs below
            tune.report({**info, metric: info["running_hF_strict"], "trial_status": "running"},
                        checkpoint=tune.Checkpoint.from_directory(str(work)))
            if fault:
                at, marker = fault.split(":", 1)
                if int(at) == info["fold"] and not Path(marker).exists():
                    Path(marker).write_text(str(os.getpid()))
                    os._exit(17)  # the worker process dies without cleanup

        metrics = run_trial(cfg, dev, work, eval_data=eval_data, crowd=crowd, n_folds=n_folds,
                            on_fold=on_fold, holdout_fraction=holdout_fraction)
        last = metrics["folds"][-1]
        per_fold = {f"fold{r['fold']}_{k}": r[k] for r in metrics["folds"] for k in ("hF", "hF_strict")}
        final = {**_report_metrics(metrics), **per_fold, "fold": last["fold"], "folds_done": n_folds,
                 "fold_hF": last["hF"], "fold_hF_strict": last["hF_strict"],
                 "running_hF_strict": metrics["fold_hF_strict_mean"], "trial_status": "complete"}
        if metric not in final:
            raise KeyError(f"objective metric {metric!r} is not produced by a trial")
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- driver side


class ResumableOptunaSearch(ValidOptunaSearch):
    """``OptunaSearch`` whose RDB study may be ahead of Tune's restored experiment state.

    When the driver dies between a trial's completion (told to the study at once) and the
    next save of Tune's experiment state, the resumed sweep replays that trial from its last
    checkpoint; the study already holds its final value, which is kept.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass


class MlflowTrialLogger(tune.Callback):
    """Writes one MLflow run per Tune trial from the driver process (the only writer)."""

    def __init__(self, uri: str, workdir: str, experiment: str, sweep: str,
                 fingerprints: dict[str, str], space: Any, n_folds: int) -> None:
        self.uri, self.workdir, self.experiment, self.sweep = uri, workdir, experiment, sweep
        self.fingerprints, self.space, self.n_folds = fingerprints, space, n_folds
        self._client: Any = None
        self._exp_id: str | None = None
        self._runs: dict[str, str] = {}
        self._done: set[str] = set()  # trials whose FINISHED run exists (replayed on resume)
        self._folds_logged: dict[str, set[int]] = {}

    def __getstate__(self) -> dict[str, Any]:  # pickled with the Tune experiment state
        return {**self.__dict__, "_client": None, "_runs": {}, "_done": set(), "_folds_logged": {}}

    def _finished_before(self, trial_id: str) -> bool:
        if trial_id not in self._done and tracking.find_runs(
                self.client, self._exp_id, sweep=self.sweep, trial_id=trial_id, status="FINISHED"):
            self._done.add(trial_id)
        return trial_id in self._done

    @property
    def experiment_id(self) -> str:
        self.client  # noqa: B018 - creates the experiment on first use
        return self._exp_id

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = tracking.client(self.uri)
            self._exp_id = tracking.ensure_experiment(self._client, self.experiment, self.workdir, self.uri)
            tracking.describe_experiment(self._client, self._exp_id, sweep=self.sweep,
                                         space=self.space, fingerprints=self.fingerprints)
        return self._client

    def run_id(self, trial: Any) -> str:
        if trial.trial_id not in self._runs:
            cfg = self.space.config({k: v for k, v in trial.config.items() if k in SCHEMA})
            pgf = getattr(trial, "placement_group_factory", None)
            self._runs[trial.trial_id] = tracking.start_trial_run(
                self.client, self._exp_id, sweep=self.sweep, trial_id=trial.trial_id, cfg=cfg,
                fingerprints=self.fingerprints,
                resources=pgf.required_resources if pgf is not None else None)
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self._finished_before(trial.trial_id):
            self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "fold" in result and not self._finished_before(trial.trial_id):
            tracking.log_fold(self.client, self.run_id(trial), result)
            self._folds_logged.setdefault(trial.trial_id, set()).add(int(result["fold"]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finish(trial.trial_id, trial.last_result or {}, trial.checkpoint)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        note = str(getattr(trial, "error_file", "") or "")
        tracking.finish_trial_run(self.client, run_id, metrics=None, artifacts_dir=None,
                                  status="FAILED", bst_status="failed", note=note)
        self._runs.pop(trial.trial_id, None)

    def finish(self, trial_id: str, result: dict[str, Any], checkpoint: Any) -> None:
        """Close a trial's run as FINISHED, once: complete with artifacts, or early-stopped."""
        cl = self.client
        if self._finished_before(trial_id):
            self._runs.pop(trial_id, None)
            return
        run_id = self._runs.pop(trial_id, None)
        if run_id is None:
            cfg = self.space.config({k: v for k, v in result.get("config", {}).items() if k in SCHEMA})
            run_id = tracking.start_trial_run(cl, self._exp_id, sweep=self.sweep, trial_id=trial_id,
                                              cfg=cfg, fingerprints=self.fingerprints)
        complete = result.get("trial_status") == "complete" and checkpoint is not None
        logged = self._folds_logged.pop(trial_id, set())
        for k in range(self.n_folds):  # folds finished before a restart, into this run too
            if k not in logged and f"fold{k}_hF" in result:
                tracking.log_fold(cl, run_id, {"fold": k, "fold_hF": result[f"fold{k}_hF"],
                                               "fold_hF_strict": result[f"fold{k}_hF_strict"]})
        if complete:
            with checkpoint.as_directory() as d:
                tracking.finish_trial_run(cl, run_id, metrics=result, artifacts_dir=d,
                                          status="FINISHED", bst_status="complete",
                                          objective=self.space.metric)
        else:
            done = int(result.get("folds_done", 0))
            tracking.finish_trial_run(cl, run_id, metrics=None, artifacts_dir=None,
                                      status="FINISHED", bst_status="early_stopped",
                                      note=f"stopped by the scheduler after {done}/{self.n_folds} folds")
        self._done.add(trial_id)


def _scheduler(name: str, metric: str, mode: str, n_folds: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if name == "asha":
        return ASHAScheduler(metric=metric, mode=mode, time_attr="training_iteration",
                             max_t=n_folds, grace_period=min(2, n_folds), reduction_factor=2)
    if name == "median":
        return MedianStoppingRule(metric=metric, mode=mode, time_attr="training_iteration",
                                  grace_period=min(2, n_folds), min_samples_required=3)
    return FIFOScheduler()


def _sweep_state(workdir: Path, experiment: str) -> Path:
    return workdir / "sweeps" / f"{experiment}.json"


def _reconcile(logger: MlflowTrialLogger, results: Any, storage_url: str, study_name: str) -> dict[str, int]:
    """Make MLflow and Optuna agree with Tune after the run (or after a crash and resume)."""
    finished = 0
    for res in results:
        trial_id = (res.metrics or {}).get("trial_id")
        if not trial_id:
            continue
        if res.error is None:
            logger.finish(trial_id, {**res.metrics, "config": res.config}, res.checkpoint)
            finished += 1
    killed = tracking.close_interrupted(logger.client, logger.experiment_id, logger.sweep)
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    stale = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # orphaned by a crash
        stale += 1
    return {"finished": finished, "killed": len(killed), "optuna_stale": stale}


def run_search(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) a sweep; return a summary with the top trials."""
    import optuna
    import ray
    from ray.tune.search import ConcurrencyLimiter

    from bst_search.data import load_dataset
    from bst_search.folds import development_fold_fp
    from bst_search.search_space import data_available, load_space

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BST_CACHE_DIR", str(workdir / "cache"))
    space = load_space(Path(args.space))  # invalid spaces fail here, before Ray starts
    space, dropped = space.restricted_to(**data_available(args.data, args.eval_data, args.crowd_data))
    if dropped:
        print(f"not searched, no data for them: {', '.join(dropped)}")
    backbones = space.backbones_needed()
    dev = load_dataset(Path(args.data), backbones=backbones, missing=args.missing, progress=True)
    ev = (load_dataset(Path(args.eval_data), backbones=backbones, missing=args.missing, progress=True)
          if args.eval_data else None)
    crowd = (load_dataset(Path(args.crowd_data), backbones=backbones, missing=args.missing, progress=True)
             if args.crowd_data else None)
    holdout = getattr(args, "holdout_fraction", 0.0) or 0.0  # the trials' folds leave it out
    if not 0 <= holdout < 1:
        raise SystemExit(f"error: --holdout-fraction must be in [0, 1), got {holdout}")
    try:
        fold_fp = development_fold_fp(dev.ids, dev.y, args.folds, holdout)
    except ValueError as exc:
        raise SystemExit(f"error: --holdout-fraction: {exc}") from exc
    fps = {"data_fp": dev.fingerprint, "fold_fp": fold_fp,
           "eval_fp": ev.fingerprint if ev is not None else ""}

    state_path = _sweep_state(workdir, args.experiment)
    tune_root = args.tune_storage or os.environ.get("BST_TUNE_STORAGE") or str(workdir / "tune")
    exp_dir = f"{tune_root.rstrip('/')}/{args.experiment}"
    if args.resume:
        if not state_path.exists() or not tune.Tuner.can_restore(exp_dir):
            raise SystemExit(f"error: nothing to resume for experiment {args.experiment!r} in {workdir}")
        state = json.loads(state_path.read_text())
        if state["fingerprints"] != fps:
            raise SystemExit(f"error: the data differ from the interrupted sweep's "
                             f"({state['fingerprints']} != {fps}); resume with the same data")
    else:
        if state_path.exists() or tune.Tuner.can_restore(exp_dir):
            raise SystemExit(f"error: experiment {args.experiment!r} already exists in {workdir}; "
                             f"use --resume to continue it or choose another --experiment")
        state = {"sweep": f"{args.experiment}-{uuid.uuid4().hex[:8]}", "fingerprints": fps,
                 "space": str(Path(args.space).resolve()), "trials": args.trials,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps(state, indent=1))

    uri = tracking.tracking_uri(workdir, args.tracking_uri)
    storage_url = (args.optuna_storage or os.environ.get("BST_OPTUNA_STORAGE")
                   or f"sqlite:///{workdir / 'optuna.db'}")
    logger = MlflowTrialLogger(uri, str(workdir), args.experiment, state["sweep"], fps, space, args.folds)
    if args.resume:  # runs left open by the dead driver
        closed = tracking.close_interrupted(logger.client, logger.experiment_id, state["sweep"])
        print(f"resuming sweep {state['sweep']}: {len(closed)} interrupted run(s) marked KILLED")

    cpu = args.cpus_per_trial if args.cpus_per_trial is not None else space.resources.get("cpu", 1)
    gpu = args.gpus_per_trial if args.gpus_per_trial is not None else space.resources.get("gpu", 0)
    if args.address:
        ray.init(address=args.address, ignore_reinit_error=True, log_to_driver=True)
    elif not ray.is_initialized():
        ray.init(include_dashboard=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": {k: os.environ[k] for k in (FAULT_ENV, "BST_CACHE_DIR")
                                           if k in os.environ}})
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, dev=dev, eval_data=ev, crowd=crowd, space=space,
                             n_folds=args.folds, holdout_fraction=holdout),
        {"cpu": cpu, "gpu": gpu})

    if args.resume:
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        storage = optuna.storages.RDBStorage(storage_url, heartbeat_interval=None)
        warm = warm_start_points(uri, args.warm_start, space, args.warm_start_n) if args.warm_start else None
        searcher = ResumableOptunaSearch(
            space=space.sample, metric=space.metric, mode=space.mode, points_to_evaluate=warm,
            sampler=make_sampler(args.sampler, args.seed, concurrency_of(args.concurrency, cpu, gpu)),
            study_name=state["sweep"], storage=storage)
        if args.concurrency:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=args.concurrency)
        sched = args.scheduler or space.scheduler
        reporter = tune.CLIReporter(
            metric_columns={"folds_done": "folds", "running_hF_strict": "running hF",
                            space.metric: space.metric},
            parameter_columns=[k for k in list(space.params)[:5]], max_report_frequency=15)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=args.trials,
                                        scheduler=_scheduler(sched, space.metric, space.mode, args.folds),
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=args.experiment, storage_path=tune_root, callbacks=[logger],
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                progress_reporter=reporter, verbose=1),
        )
    results = tuner.fit()
    counts = _reconcile(logger, results, storage_url, state["sweep"])
    summary = summarize(logger, space, uri, workdir)
    summary.update(counts=counts, sweep=state["sweep"], errors=len(results.errors))
    return summary


def _short(value: str | None) -> str | None:
    """MLflow params are strings; show floats with 4 significant digits in the table."""
    try:
        return f"{float(value):.4g}" if value is not None and "." in value else value
    except ValueError:
        return value


def summarize(logger: MlflowTrialLogger, space: Any, uri: str, workdir: Path, top: int = 10) -> dict[str, Any]:
    """Top trials of the sweep from MLflow, with their key parameters."""
    import pandas as pd

    runs = tracking.find_runs(logger.client, logger.experiment_id, sweep=logger.sweep, status="FINISHED")
    rows = []
    for r in runs:
        row = {"trial": r.data.tags.get(tracking.TRIAL_ID), "status": r.data.tags.get(tracking.STATUS),
               "run_id": r.info.run_id[:8]}
        row.update({k: r.data.metrics.get(k) for k in ("oof_hF", "oof_hF_strict", "fold_hF_std")})
        row.update({k: _short(r.data.params.get(k)) for k in list(space.params)[:6]})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        asc = space.mode == "min"
        key = space.metric if space.metric in frame else "oof_hF_strict"
        frame = frame.sort_values(key, ascending=asc, na_position="last")
    return {"n_finished": len(frame), "n_complete": int((frame.get("status") == "complete").sum()) if len(frame) else 0,
            "top": frame.head(top), "ui": tracking.ui_command(uri, workdir, logger.experiment_id),
            "workdir": str(workdir),
            "tracking_uri": uri}


def print_summary(summary: dict[str, Any], experiment: str) -> None:
    import pandas as pd

    print(f"\n== sweep {summary['sweep']} (experiment {experiment!r}): {summary['n_finished']} finished "
          f"trial runs, {summary['n_complete']} complete, {summary['errors']} errored ==")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary["top"].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nwork dir:      {summary['workdir']}\ntracking:      {summary['tracking_uri']}")
    print(f"MLflow UI:     {summary['ui']}")
    print(f"ensemble next: python -m bst_search.ensemble --experiment {experiment} "
          f"--workdir {summary['workdir']}")
    print(f"report:        bst-search report --experiment {experiment} --workdir {summary['workdir']}"
          f"   (live: bst-search dashboard --experiment {experiment} --workdir {summary['workdir']})")


def run_search_from_args(args: argparse.Namespace) -> int:
    summary = run_search(args)
    print_summary(summary, args.experiment)
    return 0 if summary["n_finished"] else 1


def main(argv: list[str] | None = None) -> int:
    from bst_search.cli import add_search_arguments

    p = argparse.ArgumentParser(prog="bst-search search", description=__doc__)
    add_search_arguments(p)
    return run_search_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
