"""The search driver: one sweep, from its arguments to its summary.

:func:`run_search` reads it top to bottom:

1. :func:`~bst_search.search.plan.plan_sweep` resolves and checks everything before Ray starts
   (the space, the stores, the arguments a sweep fixes, the stored identity on ``--resume``)
   into a :class:`~bst_search.search.plan.SweepPlan`;
2. the lease makes this the sweep's one live driver;
3. :func:`~bst_search.search.plan.load_data` loads and validates the data once; Ray's object store shares them;
4. :func:`run_segments` runs the Tune experiment(s) the sweep is made of, fresh, restored or
   extended, with the MLflow logger and the console as Tune callbacks;
5. :func:`~bst_search.search.summary.close_sweep` closes what a dead driver left open and
   deletes finished trials' checkpoints; :func:`~bst_search.search.summary.summarize` reads the
   top trials back from MLflow.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bst_search.search.plan import (
    UNBOUNDED,
    SweepData,
    SweepPlan,
    load_data,
    plan_sweep,
    sweep_identity,
)
from bst_search.search.stopping import STOPS, own_session_for_ray
from bst_search.search.summary import SweepSummary, close_sweep, summarize
from bst_search.search.trainable import FAIL_ENV, FAULT_ENV, SLOW_ENV, trial_fn

if TYPE_CHECKING:
    from ray import tune

    from bst_search.search.console import Console
    from bst_search.search.mlflow_logger import MlflowTrialLogger
    from bst_search.search.state import Lease

TrialFn = Callable[..., None]  # trial_fn, or a stand-in with its keyword arguments
SYNC_ENV = "BST_TUNE_SYNC_S"  # seconds between uploads of Tune's experiment state to its storage

# What Ray, Tune and MLflow read when they start; set by prepare_environment() when a sweep
# starts, so that other bst-search commands do not inherit them.
RUNTIME_ENV = {
    # the classic console engine: its trial table is what --verbose shows
    "RAY_AIR_NEW_OUTPUT": "0",
    # the experiment state is saved every 2 s: a trial created and finished between two saves
    # is unknown to a driver that resumes after losing this one (Tune samples another in its
    # place); a save writes every trial's state (docs/benchmarks.md, driver at scale)
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    "RAY_DEDUP_LOGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # MLflow is the sweep's record: Tune's own per-trial JSON, CSV and TensorBoard files would
    # cost the driver a write per result (and a thread per trial) for nothing
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # a checkpoint's record in Tune's state holds its path, not a copy of the result it came
    # with (the sweep reads a trial's metrics from its checkpoint's metrics.json): half the
    # size of a finished trial's entry in every experiment-state save
    "TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE": "1",
    # with a tracking server, MLflow reads every run back when it ends to print two links to
    # it: a request and two console lines per trial (the summary prints the link once)
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "1",
}


def prepare_environment() -> None:
    """Set :data:`RUNTIME_ENV` (what the user set wins) before Ray is imported or started."""
    for key, value in RUNTIME_ENV.items():
        os.environ.setdefault(key, value)


# --------------------------------------------------------------------------- planning


def start_ray(address: str | None, verbose: bool = True) -> str:
    """A private local Ray, or the cluster at ``address``; returns what was started/joined.
    Ray's own INFO lines show with ``verbose`` only; its warnings always do."""
    import ray

    env = {k: os.environ[k] for k in (FAULT_ENV, FAIL_ENV, SLOW_ENV, "BST_CACHE_DIR") if k in os.environ}
    if ray.is_initialized():
        return "the Ray instance already running in this process"
    level = logging.INFO if verbose else logging.WARNING
    if address:
        ray.init(address=address, log_to_driver=True, logging_level=level,
                 runtime_env={"env_vars": env} if env else None)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        res = ray.cluster_resources()
        return (f"joined Ray cluster {ray.get_runtime_context().gcs_address} (--address {address}): "
                f"{len(nodes)} node(s), {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU")
    # a private Ray uses token authentication, Ray's default; its warning that it chose it is
    # for clusters others join, not for this driver's own Ray
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _DEFAULT_TOKEN_AUTH)
    # address="local": never attach to a cluster an earlier `ray start` left in
    # /tmp/ray/ray_current_cluster or $RAY_ADDRESS; the GCS takes a free port (not 6379).
    # Its processes out of the driver's process group: a SIGTERM to the group stops the
    # driver, which stops them (stopping.own_session_for_ray)
    with own_session_for_ray():
        ray.init(address="local", include_dashboard=False, logging_level=level,
                 runtime_env={"env_vars": env})
    return f"started a private local Ray (GCS {ray.get_runtime_context().gcs_address})"


def concurrency_of(requested: int | None, cpu: float, gpu: float) -> int:
    """Trials at once: ``--concurrency`` if given, else what the Ray cluster's resources allow."""
    if requested:
        return int(requested)
    import ray

    res = ray.cluster_resources()
    fits = [res.get("CPU", 1.0) / cpu] + ([res.get("GPU", 0.0) / gpu] if gpu else [])
    return max(1, int(min(fits)))


def make_trainable(plan: SweepPlan, data: SweepData, trial: TrialFn = trial_fn) -> Any:
    """The trial function with the data in Ray's object store and the resources it asks for."""
    from ray import tune

    extra = {"holdout_fraction": plan.holdout_fraction} if plan.holdout_fraction else {}
    return tune.with_resources(
        tune.with_parameters(trial, dev=data.dev, eval_data=data.eval, crowd=data.crowd,
                             space=plan.space, n_folds=plan.fixed.folds, **extra),
        plan.fixed.resources)


def new_tuner(plan: SweepPlan, trainable: Any, callbacks: list[Any], name: str, n: int,
              warm: list[dict[str, Any]] | None = None) -> tune.Tuner:
    """A fresh Tune experiment ``name`` of ``n`` trials, driven by the sweep's Optuna study."""
    from ray import tune

    from bst_search.search.samplers import make_sampler
    from bst_search.search.schedulers import make_scheduler
    from bst_search.search.searcher import SweepLimiter, SweepOptunaSearch

    fixed, space = plan.fixed, plan.space
    concurrency = concurrency_of(fixed.concurrency, fixed.cpus_per_trial, fixed.gpus_per_trial)
    searcher = SweepOptunaSearch(
        space=space.sample, metric=space.metric, mode=space.mode, points_to_evaluate=warm,
        sampler=make_sampler(fixed.sampler, fixed.seed, concurrency),
        study_name=plan.experiment, storage=plan.rdb, segment=name, n_trials=n)
    alg = SweepLimiter(searcher, max_concurrent=fixed.concurrency) if fixed.concurrency else searcher
    reporter = None
    if plan.verbose:  # Tune's own trial table, as Tune prints it
        reporter = tune.CLIReporter(
            metric_columns={"folds_done": "folds", "running_hF_strict": "running hF",
                            space.metric: space.metric},
            parameter_columns=list(space.params)[:5], max_report_frequency=15)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=alg, num_samples=n, reuse_actors=True,
            scheduler=make_scheduler(fixed.scheduler, space.metric, space.mode, fixed.folds)),
        run_config=tune.RunConfig(
            name=name, storage_path=plan.tune.path, storage_filesystem=plan.tune.filesystem,
            callbacks=callbacks, failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            # every checkpoint of a running trial is kept: with num_to_keep, Tune saves the
            # whole experiment state whenever a trial checkpoints that often since the last
            # save (a save per result or two at 32 trials with fast folds); the finished
            # trials' checkpoints are deleted when the sweep ends
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            # the experiment state reaches s3:// / gs:// storage at most every sync_period
            # (Tune's default: 300 s); a head lost in between would resume without the trials
            # created since. The state is small: upload it often.
            sync_config=tune.SyncConfig(sync_period=float(os.environ.get(SYNC_ENV, "5"))),
            progress_reporter=reporter, verbose=1 if plan.verbose else 0))


class _NoTrialFiles(logging.Filter):
    """Tune's result grid reads per-trial result files that the sweep does not write (MLflow is
    its record, ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``) and warns once per trial at the end."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to fetch metrics")


_NO_TRIAL_FILES = _NoTrialFiles()


class _DefaultTokenAuth(logging.Filter):
    """Ray's warning that a new local cluster enabled token authentication by default."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray")


_DEFAULT_TOKEN_AUTH = _DefaultTokenAuth()


def fit(tuner: tune.Tuner, logger: MlflowTrialLogger) -> set[str]:
    """Run one Tune experiment; returns the trials it cut off (Ctrl-C, SIGTERM, the time
    budget, a lost lease)."""
    logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(_NO_TRIAL_FILES)
    with STOPS.tune_run():
        tuner.fit()
    cut = logger.cut_off()
    logger.finish_restored()
    logger.interrupt(cut)
    return cut


def run_segments(plan: SweepPlan, identity: dict[str, Any], trainable: Any,
                 logger: MlflowTrialLogger, console: Console) -> set[str]:
    """Run the sweep's Tune experiments: the first one fresh (warm-started when asked), or on
    --resume the last one restored, then one more when --trials grew. Returns the trials the
    last one cut off."""
    from ray import tune

    from bst_search.search.searcher import TuneTrials

    callbacks = [logger, console, TuneTrials()]
    last = identity["segments"][-1]
    if plan.stored is None:
        warm = None
        if plan.warm_start:
            from bst_search.search.warm_start import warm_start_points

            warm = warm_start_points(plan.tracking_uri, plan.warm_start, plan.space, plan.warm_start_n)
        return fit(new_tuner(plan, trainable, callbacks, last["name"], last["trials"], warm), logger)
    path = plan.tune.experiment(last["name"])
    fs = plan.tune.filesystem
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        cut = fit(tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                     resume_errored=True, storage_filesystem=fs), logger)
    else:  # the previous driver died before Tune first saved its state
        cut = fit(new_tuner(plan, trainable, callbacks, last["name"], last["trials"]), logger)
    extra = _extension(plan.trials, identity["trials"])
    if not cut and extra and not console.budget_hit and not STOPS.requested:
        name = f"{identity['sweep']}-{len(identity['segments']) + 1}"
        identity["segments"].append({"name": name, "trials": extra})
        identity["trials"] = plan.trials
        print(f"extending sweep {identity['sweep']} by "
              f"{'as many trials as fit' if extra == UNBOUNDED else f'{extra} trial(s)'}"
              f"{'' if plan.trials == UNBOUNDED else f' to {plan.trials}'}")
        cut = fit(new_tuner(plan, trainable, callbacks, name, extra), logger)
    return cut


def _extension(wanted: int, stored: int) -> int:
    """Trials a resumed sweep adds: none when it already has as many (or is unbounded)."""
    if stored == UNBOUNDED:
        return 0
    if wanted == UNBOUNDED:
        return UNBOUNDED
    return max(0, wanted - stored)


def drive(plan: SweepPlan, lease: Lease, trial: TrialFn = trial_fn) -> SweepSummary:
    """Steps 3 to 5 of the module docstring, for a planned sweep whose lease this driver holds."""
    from bst_search.search import state
    from bst_search.search.console import Console
    from bst_search.search.mlflow_logger import MlflowTrialLogger
    from bst_search.tracking.redact import mask_url

    data = load_data(plan)
    identity = sweep_identity(plan, data.fingerprints)
    sweep = identity["sweep"]
    print(start_ray(plan.address, plan.verbose))
    STOPS.install(str(plan.workdir))  # after Ray's own SIGTERM handler, which exits at once
    print(f"sweep {sweep}: Optuna study {plan.experiment!r} in {mask_url(plan.optuna_url)}, "
          f"Tune storage {plan.tune.uri}, MLflow {plan.fixed.tracking_uri}")
    logger = MlflowTrialLogger(
        plan.tracking_uri, str(plan.workdir), plan.experiment, sweep, data.fingerprints,
        plan.space, plan.fixed.folds, resources=plan.fixed.resources,
        on_setup=lambda: state.write_identity(plan.rdb, plan.experiment, identity),
        fence=state.LeaseFence(plan.optuna_url, lease.key, lease.owner))
    closed = logger.start()
    if plan.stored is not None:
        print(f"resuming sweep {sweep}: {len(closed)} interrupted run(s) marked KILLED")
    console = Console(plan.space.metric, plan.space.mode, plan.fixed.folds, plan.trials,
                      budget_s=plan.time_budget_s, live=not plan.verbose, t0=plan.started)
    cut: set[str] = set()
    try:
        cut = run_segments(plan, identity, make_trainable(plan, data, trial), logger, console)
        errors = sum(t.status == "ERROR" for t in logger.trials)
        counts = close_sweep(plan, logger, cut, stopped=STOPS.requested, drain_s=STOPS.drain_s())
    except KeyboardInterrupt:  # a second Ctrl-C (or SIGTERM): do not wait for MLflow again
        logger.close(wait=False)
        raise
    finally:
        console.close()
        logger.close(timeout=STOPS.drain_s())
    summary = summarize(logger, plan)
    summary.counts, summary.errors, summary.interrupted = counts, errors, len(cut)
    summary.budget_s, summary.budget_hit = plan.time_budget_s, console.budget_hit
    summary.lease_lost, summary.taken_by, summary.signum = lease.lost, lease.taken_by, STOPS.signum
    return summary


def run_search(args: argparse.Namespace, trial: TrialFn = trial_fn) -> SweepSummary:
    """Run (or resume) a sweep; return its summary. ``trial`` replaces
    :func:`~bst_search.search.trainable.trial_fn` (same keyword arguments), for benchmarks of
    the driver alone."""
    from bst_search import tracking
    from bst_search.search import searcher, state
    from bst_search.search.console import quiet_known_warnings
    from bst_search.search.space import data_available, load_space

    prepare_environment()
    quiet_known_warnings(bool(getattr(args, "verbose", False)))
    tracking.write_ahead_sqlite()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BST_CACHE_DIR", str(workdir / "cache"))
    space = load_space(Path(args.space))  # invalid spaces fail here, before Ray starts
    space, dropped = space.restricted_to(**data_available(args.data, args.eval_data, args.crowd_data))
    if dropped:
        print(f"not searched, no data for them: {', '.join(dropped)}")
    optuna_url = (args.optuna_storage or os.environ.get(searcher.STORAGE_ENV)
                  or f"sqlite:///{workdir / 'optuna.db'}")
    searcher.use_storage(optuna_url)
    lease = state.Lease(optuna_url, args.experiment)
    lease.acquire()  # one live driver per sweep, before anything is written
    STOPS.reset()
    STOPS.lease = lease  # the MLflow logger and the searcher write only while it is held
    try:
        lease.start_heartbeat()
        return drive(plan_sweep(args, space, workdir, optuna_url), lease, trial)
    except KeyboardInterrupt:
        if STOPS.signum:  # a SIGTERM / SIGHUP before or after the Tune run: its exit code
            raise SystemExit(128 + STOPS.signum) from None
        raise
    finally:
        STOPS.lease = None
        lease.release()
