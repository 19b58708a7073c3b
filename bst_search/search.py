"""Search driver: Ray Tune runs Optuna-suggested trials; the driver's writer process alone
writes to MLflow.

How the pieces fit:
* the development (and evaluation, crowd) data are loaded once, validated and put into
  Ray's object store with ``tune.with_parameters``; every trial reads them from there, and the
  search space travels with its base configuration resolved (workers read nothing from the
  driver's disk);
* ``OptunaSearch`` (TPE, seeded) asks the search space's define-by-run function for each
  trial, and keeps its study in Optuna RDB storage (SQLite file here, PostgreSQL on a
  cluster); the database URL never enters the pickled searcher state
  (:mod:`bst_search.optuna_searcher`);
* a trial reports after every fold the running value of the space's own objective, with a
  checkpoint holding its finished folds, so ASHA / median stopping can stop poor trials early
  (Optuna is told PRUNED), and a retried or resumed trial continues from its last finished fold;
  its device and threads are the resources Ray assigned it, and it reports the node it ran on;
* :class:`~bst_search.sweep_logger.MlflowTrialLogger`, a Tune callback in the driver process,
  opens one MLflow run per trial and sends its writes to the sweep's MLflow writer process;
* the sweep's identity (id, fingerprints, space hash, fixed arguments) and a lease live in the
  Optuna database (:mod:`bst_search.sweep_state`), the Tune state in ``--tune-storage``: a
  ``--resume`` from any machine that reaches both continues the sweep; Ctrl-C leaves it
  resumable (interrupted runs end KILLED), and ``--resume --trials N+M`` extends a finished one.
"""

from __future__ import annotations

import argparse
import logging
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
# the experiment state is saved every 2 s: a trial created and finished between two saves is
# unknown to a driver that resumes after losing this one (Tune samples another in its place);
# a save writes every trial's state, about 0.1 s at 1,000 trials (benchmarks/bench_scale.py)
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# MLflow is the sweep's record: Tune's own per-trial JSON, CSV and TensorBoard files would
# cost the driver a write per result (and a thread per trial) for nothing
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# a checkpoint's record in Tune's state holds its path, not a copy of the result it came with
# (the sweep reads a trial's metrics from MLflow and its checkpoint's metrics.json): a finished
# trial's five fold checkpoints weighed 9.4 KB in every experiment-state save, now 4.7 KB
os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
# with a tracking server, MLflow reads every run back when it ends to print two links to it:
# a request and two console lines per trial (the summary prints the experiment's link once)
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")

from bst_search.config import SCHEMA  # noqa: E402

FAULT_ENV = "BST_FAULT_EXIT_AFTER_FOLD"  # fault injection for tests: "<fold>:<marker file>"
FAIL_ENV = "BST_FAULT_RAISE_AT_FOLD"  # fault injection for tests: every attempt raises there
SLOW_ENV = "BST_FAULT_FOLD_DELAY_S"  # fault injection for tests: each fold reports this late
TRIALS_DEFAULT, FOLDS_DEFAULT, SEED_DEFAULT = 20, 5, 0
INTERRUPTED_RC = 130
SYNC_ENV = "BST_TUNE_SYNC_S"  # seconds between uploads of Tune's experiment state to its storage


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``bst-search search`` and ``launch/search.py``.

    Those a sweep fixes (``--folds``, ``--seed``, ``--concurrency``, ``--scheduler``, the
    resources, ``--tracking-uri``, ``--tune-storage``) default to the stored sweep's values on
    ``--resume``; a different explicit value is refused.
    """
    p.add_argument("--data", required=True, help="development dataset root (official layout)")
    p.add_argument("--eval-data", help="evaluation dataset root: trials also predict it")
    p.add_argument("--crowd-data", help="crowd dataset root, for data.crowd other than none")
    p.add_argument("--space", required=True, help="search space YAML (search_spaces/*.yaml)")
    p.add_argument("--experiment", required=True, help="MLflow experiment = sweep name")
    p.add_argument("--trials", type=int,
                   help=f"trials in the sweep (default {TRIALS_DEFAULT}; with --resume, more "
                        "than before extends the sweep)")
    p.add_argument("--concurrency", type=int, help="trials at once (default: as resources allow)")
    p.add_argument("--cpus-per-trial", type=float, help="override the space's resources.cpu")
    p.add_argument("--gpus-per-trial", type=float, help="override the space's resources.gpu")
    p.add_argument("--workdir", default=os.environ.get("BST_WORKDIR", "bst-runs"),
                   help="holds mlflow.db, mlartifacts/, optuna.db, tune/ and the feature cache")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                   "else SQLite in the work dir)")
    p.add_argument("--tune-storage", help="Ray Tune storage every node writes: s3://BUCKET/PREFIX"
                   "[?endpoint_override=HOST:PORT], gs://BUCKET/PREFIX, or a path / file:// URI "
                   "(with --address only with --shared-fs); default: $BST_TUNE_STORAGE, else "
                   "<workdir>/tune")
    p.add_argument("--shared-fs", action="store_true",
                   help="a path --tune-storage is mounted on every node (NFS, or all nodes on "
                        "one machine): allow it with --address")
    p.add_argument("--optuna-storage", help="Optuna RDB URL (default: $BST_OPTUNA_STORAGE, else "
                   "sqlite:///<workdir>/optuna.db); keep passwords out of the command line: "
                   "$BST_OPTUNA_STORAGE or $PGPASSWORD")
    p.add_argument("--address", help="join this Ray cluster ('auto': the one started on this "
                   "machine); default: a private local Ray")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep from the shared state (study, Tune storage)")
    p.add_argument("--scheduler", choices=("asha", "median", "none"),
                   help="early stopping on per-fold results (default: the space's, else asha)")
    p.add_argument("--folds", type=int, help=f"cross-validation folds (default {FOLDS_DEFAULT})")
    p.add_argument("--holdout-fraction", type=float, default=0.0, metavar="F",
                   help="set a stratified fraction F of the development rows aside before the "
                        "folds are drawn: no trial trains, validates or is scored on it, no "
                        "ensemble selection sees it; the ensemble scores it once (default 0)")
    p.add_argument("--seed", type=int, help=f"seed of the sampler (default {SEED_DEFAULT})")
    p.add_argument("--sampler", choices=("tpe", "random", "gp"),
                   help="Optuna sampler: constant-liar TPE (default), random, or Gaussian process")
    p.add_argument("--warm-start", metavar="EXPERIMENT",
                   help="first evaluate the best configurations of this earlier experiment")
    p.add_argument("--warm-start-n", type=int, default=5, metavar="N",
                   help="how many of them (default 5)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial")
    p.add_argument("--missing", choices=("error", "drop", "zero"), default="error")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bst-search search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_search_arguments(p)
    return p


# --------------------------------------------------------------------------- trial side


# What a trial reports to Tune is kept small: Tune stores every reported key of every trial
# in its experiment state (with running min/max/mean statistics) and re-encodes a trial's
# state after each result, so the driver's cost per result grows with the number of keys.
# The trial's full measurements travel in its checkpoint (metrics.json), which the driver's
# MLflow logger reads once, when the trial ends.
PROGRESS_KEYS = ("fold", "folds_done", "fold_hF", "fold_hF_strict", "running_hF_strict")
HEADLINE_KEYS = ("oof_hF", "oof_hF_strict", "fold_hF_mean", "fold_hF_std")


def fold_result(info: dict[str, Any], metric: str, node: str) -> dict[str, Any]:
    """The report after a fold: its scores and the objective's running value under the
    objective's name (what ASHA / the median rule compare, and Optuna's intermediate value)."""
    return {**{k: info[k] for k in PROGRESS_KEYS}, metric: info[f"running_{metric}"],
            "trial_status": "running", "node": node}


def final_result(metrics: dict[str, Any], metric: str, n_folds: int, node: str,
                 resumed: int = 0) -> dict[str, Any]:
    """The last report of a trial that finished every fold; ``metrics``: its metrics.json."""
    last = metrics["folds"][-1]
    out: dict[str, Any] = {"fold": last["fold"], "folds_done": n_folds, "fold_hF": last["hF"],
                           "fold_hF_strict": last["hF_strict"],
                           "running_hF_strict": metrics["fold_hF_strict_mean"],
                           "folds_resumed": resumed, "trial_status": "complete", "node": node}
    for k in (metric, *HEADLINE_KEYS):
        v = metrics.get(k, out.get(k))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
    if metric not in out:
        raise KeyError(f"objective metric {metric!r} is not produced by a trial")
    return out


def quiet_worker_logs() -> None:
    """In a trial's worker: keep Ray's "Checkpoint successfully created" (one line per fold and
    trial, 5,000 at 1,000 trials) out of the driver's console; warnings still show."""
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)


class _NoTrialFiles(logging.Filter):
    """Tune's result grid reads per-trial result files that the sweep does not write (MLflow is
    its record, ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``) and warns once per trial at the end."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to fetch metrics")


_NO_TRIAL_FILES = _NoTrialFiles()


def _assigned_device() -> tuple[str, int, str]:
    """(torch device, torch threads, node id) from what Ray assigned this trial."""
    import ray
    import torch
    from ray import tune

    from bst_search.training import assigned_device, assigned_threads

    ctx = ray.get_runtime_context()
    gpus = ctx.get_accelerator_ids().get("GPU", [])
    device = assigned_device(gpus, cuda_available=bool(gpus) and torch.cuda.is_available(),
                             visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    return device, assigned_threads(cpus), ctx.get_node_id()


def trial_fn(params: dict[str, Any], *, dev: Any, eval_data: Any, crowd: Any, space: Any,
             n_folds: int, holdout_fraction: float = 0.0) -> None:
    """Ray Tune function trainable: one cross-validated trial, reporting after every fold."""
    import torch
    from ray import tune

    from bst_search.trial import run_trial

    quiet_worker_logs()
    device, threads, node = _assigned_device()
    torch.set_num_threads(threads)
    cfg = space.config({k: v for k, v in params.items() if k in SCHEMA})
    metric = space.metric
    work = Path(tempfile.mkdtemp(prefix="bst-trial-"))
    try:
        ckpt = tune.get_checkpoint()
        if ckpt is not None:  # retried or resumed: continue from the last finished fold
            with ckpt.as_directory() as d:
                shutil.copytree(d, work, dirs_exist_ok=True)
        fault, fail_at = os.environ.get(FAULT_ENV, ""), os.environ.get(FAIL_ENV, "")
        resumed = 0

        def on_fold(info: dict[str, Any]) -> None:
            nonlocal resumed
            resumed += bool(info["resumed"])
            if fail_at and int(fail_at) == info["fold"]:
                raise RuntimeError(f"injected failure after fold {info['fold']} ({FAIL_ENV})")
            if info["resumed"] or info["folds_done"] == n_folds:
                return  # reported before this restart / reported with the outputs below
            time.sleep(float(os.environ.get(SLOW_ENV, 0)))
            tune.report(fold_result(info, metric, node),
                        checkpoint=tune.Checkpoint.from_directory(str(work)))
            if fault:
                at, marker = fault.split(":", 1)
                if int(at) == info["fold"] and not Path(marker).exists():
                    Path(marker).write_text(str(os.getpid()))
                    os._exit(17)  # the worker process dies without cleanup

        metrics = run_trial(cfg, dev, work, eval_data=eval_data, crowd=crowd, n_folds=n_folds,
                            device=device, on_fold=on_fold, holdout_fraction=holdout_fraction)
        tune.report(final_result(metrics, metric, n_folds, node, resumed),
                    checkpoint=tune.Checkpoint.from_directory(str(work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- driver side


def _scheduler(name: str, metric: str, mode: str, n_folds: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if name == "asha":
        return ASHAScheduler(metric=metric, mode=mode, time_attr="training_iteration",
                             max_t=n_folds, grace_period=min(2, n_folds), reduction_factor=2)
    if name == "median":
        return MedianStoppingRule(metric=metric, mode=mode, time_attr="training_iteration",
                                  grace_period=min(2, n_folds), min_samples_required=3)
    return FIFOScheduler()


def _fixed_args(args: argparse.Namespace, space: Any, workdir: Path,
                stored: dict[str, Any] | None) -> dict[str, Any]:
    """The arguments a sweep fixes: the explicit flag, else its environment variable, else
    (on --resume) the stored sweep's value, else the default."""
    from bst_search import tracking
    from bst_search.redact import mask_url

    old = (stored or {}).get("args", {})

    def pick(key: str, given: Any, default: Any) -> Any:
        return given if given is not None else old.get(key, default)

    tracking_given = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    tracking_uri = tracking_given or (old.get("tracking_uri") if stored else None) or tracking.tracking_uri(workdir)
    tune_given = args.tune_storage or os.environ.get("BST_TUNE_STORAGE")
    return {
        "folds": pick("folds", args.folds, FOLDS_DEFAULT),
        "seed": pick("seed", args.seed, SEED_DEFAULT),
        "sampler": pick("sampler", args.sampler, "tpe"),
        "concurrency": pick("concurrency", args.concurrency, None),
        "scheduler": pick("scheduler", args.scheduler, space.scheduler),
        "cpus_per_trial": pick("cpus_per_trial", args.cpus_per_trial, space.resources.get("cpu", 1.0)),
        "gpus_per_trial": pick("gpus_per_trial", args.gpus_per_trial, space.resources.get("gpu", 0.0)),
        "tracking_uri": mask_url(tracking_uri),
        "tune_storage": mask_url(tune_given or old.get("tune_storage") or str(workdir / "tune")),
        "_tracking_uri": tracking_uri,  # unmasked, for this process only (not stored)
    }


def _start_ray(address: str | None) -> str:
    """A private local Ray, or the cluster at ``address``; returns what was started/joined."""
    import ray

    env = {k: os.environ[k] for k in (FAULT_ENV, FAIL_ENV, SLOW_ENV, "BST_CACHE_DIR") if k in os.environ}
    if ray.is_initialized():
        return "the Ray instance already running in this process"
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env} if env else None)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        res = ray.cluster_resources()
        return (f"joined Ray cluster {ray.get_runtime_context().gcs_address} (--address {address}): "
                f"{len(nodes)} node(s), {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU")
    # address="local": never attach to a cluster an earlier `ray start` left in
    # /tmp/ray/ray_current_cluster or $RAY_ADDRESS; the GCS takes a free port (not 6379)
    ray.init(address="local", include_dashboard=False, runtime_env={"env_vars": env})
    return f"started a private local Ray (GCS {ray.get_runtime_context().gcs_address})"


def run_search(args: argparse.Namespace, trial: Any = None) -> dict[str, Any]:
    """Run (or resume) a sweep; return a summary with the top trials. ``trial`` replaces
    :func:`trial_fn` (same keyword arguments), for benchmarks of the driver alone."""
    from bst_search import optuna_searcher, sweep_state, tracking, tune_storage
    from bst_search.redact import mask_url
    from bst_search.search_space import data_available, load_space

    tracking.write_ahead_sqlite()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BST_CACHE_DIR", str(workdir / "cache"))
    space = load_space(Path(args.space))  # invalid spaces fail here, before Ray starts
    space, dropped = space.restricted_to(**data_available(args.data, args.eval_data, args.crowd_data))
    if dropped:
        print(f"not searched, no data for them: {', '.join(dropped)}")
    storage_url = (args.optuna_storage or os.environ.get(optuna_searcher.STORAGE_ENV)
                   or f"sqlite:///{workdir / 'optuna.db'}")
    optuna_searcher.use_storage(storage_url)
    study_name = args.experiment
    lease = sweep_state.Lease(storage_url, study_name)
    lease.acquire()  # one live driver per sweep, before anything is written
    try:
        lease.start_heartbeat()
        rdb = optuna_searcher.storage_from_env()
        stored = sweep_state.read_identity(rdb, study_name)
        if args.resume and stored is None:
            raise sweep_state.SweepStateError(
                f"nothing to resume: no sweep {study_name!r} has started with the Optuna storage "
                f"{mask_url(storage_url)} (a start that failed before its trials leaves nothing)")
        if not args.resume and stored is not None:
            raise sweep_state.SweepStateError(
                f"experiment {study_name!r} already has sweep {stored['sweep']} in "
                f"{mask_url(storage_url)}; use --resume to continue it or choose another --experiment")
        fixed = _fixed_args(args, space, workdir, stored)
        storage = tune_storage.resolve(fixed["tune_storage"], cluster=bool(args.address),
                                       shared_fs=args.shared_fs)
        return _run(args, space, workdir, storage_url, rdb, stored, fixed, storage, lease,
                    trial or trial_fn)
    finally:
        lease.release()


def _holdout(args: argparse.Namespace) -> float:
    """--holdout-fraction, checked."""
    holdout = getattr(args, "holdout_fraction", 0.0) or 0.0
    if not 0 <= holdout < 1:
        raise SystemExit(f"error: --holdout-fraction must be in [0, 1), got {holdout}")
    return float(holdout)


def _load_data(args: argparse.Namespace, space: Any, folds: int) -> tuple[Any, Any, Any, dict[str, str]]:
    from bst_search.data import load_dataset
    from bst_search.folds import development_fold_fp

    backbones = space.backbones_needed()

    def load(root: str | None) -> Any:
        return (load_dataset(Path(root), backbones=backbones, missing=args.missing, progress=True)
                if root else None)

    dev, ev, crowd = load(args.data), load(args.eval_data), load(args.crowd_data)
    holdout = _holdout(args)  # the trials' folds leave these rows out
    try:
        fold_fp = development_fold_fp(dev.ids, dev.y, folds, holdout)
    except ValueError as exc:
        raise SystemExit(f"error: --holdout-fraction: {exc}") from exc
    fps = {"data_fp": dev.fingerprint, "fold_fp": fold_fp,
           "eval_fp": ev.fingerprint if ev is not None else ""}
    return dev, ev, crowd, fps


def _run(args: argparse.Namespace, space: Any, workdir: Path, storage_url: str, rdb: Any,
         stored: dict[str, Any] | None, fixed: dict[str, Any], storage: Any, lease: Any,
         trial: Any) -> dict[str, Any]:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from bst_search import sweep_state
    from bst_search.optuna_searcher import SweepOptunaSearch
    from bst_search.redact import mask_url
    from bst_search.sampling import concurrency_of, make_sampler, warm_start_points
    from bst_search.sweep_logger import MlflowTrialLogger

    folds = fixed["folds"]
    dev, ev, crowd, fps = _load_data(args, space, folds)
    args_fixed = {k: v for k, v in fixed.items() if not k.startswith("_")}
    trials = args.trials if args.trials is not None else (stored or {}).get("trials", TRIALS_DEFAULT)
    current = {"space_hash": sweep_state.space_hash(space), "space_source": str(args.space),
               "fingerprints": fps, "args": args_fixed, "trials": trials}
    if stored is not None:
        diff = sweep_state.changes(stored, current)
        if diff:
            raise sweep_state.SweepStateError(
                f"--resume of sweep {stored['sweep']} refused: changed " + "; ".join(diff)
                + ". Resume with the original values, or start a new --experiment")
        identity = stored
    else:
        sweep_state.discard_failed_start(rdb, args.experiment)  # a study whose start failed
        sweep = f"{args.experiment}-{uuid.uuid4().hex[:8]}"
        identity = {**current, "sweep": sweep, "experiment": args.experiment,
                    "segments": [{"name": sweep, "trials": trials}],
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    sweep = identity["sweep"]

    print(_start_ray(args.address))
    print(f"sweep {sweep}: Optuna study {args.experiment!r} in {mask_url(storage_url)}, "
          f"Tune storage {storage.uri}, MLflow {fixed['tracking_uri']}")
    logger = MlflowTrialLogger(fixed["_tracking_uri"], str(workdir), args.experiment, sweep, fps,
                               space, folds,
                               on_setup=lambda: sweep_state.write_identity(rdb, args.experiment, identity),
                               resources={"cpu": fixed["cpus_per_trial"], "gpu": fixed["gpus_per_trial"]})
    closed = logger.start()
    if stored is not None:
        print(f"resuming sweep {sweep}: {len(closed)} interrupted run(s) marked KILLED")
    trainable = tune.with_resources(
        tune.with_parameters(trial, dev=dev, eval_data=ev, crowd=crowd, space=space, n_folds=folds,
                             **({"holdout_fraction": _holdout(args)} if _holdout(args) else {})),
        {"cpu": fixed["cpus_per_trial"], "gpu": fixed["gpus_per_trial"]})

    def new_tuner(name: str, n: int, warm: list | None = None) -> Any:
        concurrency = concurrency_of(fixed["concurrency"], fixed["cpus_per_trial"], fixed["gpus_per_trial"])
        searcher = SweepOptunaSearch(
            space=space.sample, metric=space.metric, mode=space.mode, points_to_evaluate=warm,
            sampler=make_sampler(fixed["sampler"], fixed["seed"], concurrency),
            study_name=args.experiment, storage=rdb)
        alg = (ConcurrencyLimiter(searcher, max_concurrent=fixed["concurrency"])
               if fixed["concurrency"] else searcher)
        reporter = tune.CLIReporter(
            metric_columns={"folds_done": "folds", "running_hF_strict": "running hF",
                            space.metric: space.metric},
            parameter_columns=list(space.params)[:5], max_report_frequency=15)
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=alg, num_samples=n, reuse_actors=True,
                scheduler=_scheduler(fixed["scheduler"], space.metric, space.mode, folds)),
            run_config=tune.RunConfig(
                name=name, storage_path=storage.path, storage_filesystem=storage.filesystem,
                callbacks=[logger], failure_config=tune.FailureConfig(max_failures=args.max_failures),
                # every checkpoint of a running trial is kept: with num_to_keep, Tune saves the
                # whole experiment state whenever a trial checkpoints that often since the
                # last save (a save per result or two at 32 trials with fast folds); the
                # finished trials' checkpoints are deleted when the sweep ends
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                # the experiment state (trials, searcher) reaches s3:// / gs:// storage at most
                # every sync_period (Tune's default: 300 s); a head lost in between would resume
                # without the trials created since. The state is small: upload it often.
                sync_config=tune.SyncConfig(sync_period=float(os.environ.get(SYNC_ENV, "5"))),
                progress_reporter=reporter, verbose=1))

    def fit(tuner: Any) -> set[str]:
        """Run one Tune experiment; returns the trials Ctrl-C cut off (none when it ended)."""
        logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(_NO_TRIAL_FILES)
        tuner.fit()
        cut = logger.cut_off()
        logger.finish_restored()
        logger.interrupt(cut)
        return cut

    errors = 0
    try:
        last = identity["segments"][-1]
        if stored is None:  # a fresh sweep: warm-started from an earlier one when asked
            warm = (warm_start_points(fixed["_tracking_uri"], args.warm_start, space, args.warm_start_n)
                    if args.warm_start else None)
            cut = fit(new_tuner(last["name"], last["trials"], warm))
        else:
            path = storage.experiment(last["name"])
            if tune.Tuner.can_restore(path, storage_filesystem=storage.filesystem):
                cut = fit(tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                             resume_errored=True, storage_filesystem=storage.filesystem))
            else:  # the previous driver died before Tune first saved its state
                cut = fit(new_tuner(last["name"], last["trials"]))
            if not cut and trials > identity["trials"]:
                extra = trials - identity["trials"]
                name = f"{sweep}-{len(identity['segments']) + 1}"
                identity["segments"].append({"name": name, "trials": extra})
                identity["trials"] = trials
                print(f"extending sweep {sweep} by {extra} trial(s) to {trials}")
                cut = fit(new_tuner(name, extra))
        errors = sum(t.status == "ERROR" for t in logger.trials)
        failed_writes = logger.drain()
        counts = {"interrupted": len(cut), "failed_writes": len(failed_writes)}
        if not cut:
            counts.update(_close_orphans(logger, rdb, args.experiment))
            if not failed_writes:
                counts["checkpoints_deleted"] = drop_finished_checkpoints(logger.trials, logger._done)
    except KeyboardInterrupt:  # a second Ctrl-C: do not wait for MLflow again
        logger.close(wait=False)
        raise
    finally:
        logger.close()
    summary = summarize(logger, space, fixed["_tracking_uri"], workdir)
    summary.update(counts=counts, sweep=sweep, errors=errors, interrupted=len(cut),
                   lease_lost=lease.lost)
    if failed_writes:
        print(f"warning: {len(failed_writes)} MLflow write(s) failed for good: {failed_writes[:3]}",
              file=sys.stderr)
    return summary


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


def _close_orphans(logger: Any, rdb: Any, study_name: str) -> dict[str, int]:
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


def summarize(logger: Any, space: Any, uri: str, workdir: Path, top: int = 10) -> dict[str, Any]:
    """Top trials of the sweep from MLflow, with their key parameters."""
    import pandas as pd

    from bst_search import tracking
    from bst_search.redact import mask_url

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
        asc = space.mode == "min"
        key = space.metric if space.metric in frame else "oof_hF_strict"
        frame = frame.sort_values(key, ascending=asc, na_position="last")
    return {"n_finished": len(frame), "n_complete": int((frame.get("status") == "complete").sum()) if len(frame) else 0,
            "top": frame.head(top), "ui": tracking.ui_command(mask_url(uri), workdir, logger.experiment_id),
            "workdir": str(workdir), "tracking_uri": mask_url(uri)}


def print_summary(summary: dict[str, Any], experiment: str) -> None:
    import pandas as pd

    print(f"\n== sweep {summary['sweep']} (experiment {experiment!r}): {summary['n_finished']} finished "
          f"trial runs, {summary['n_complete']} complete, {summary['errors']} errored ==")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary["top"].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nwork dir:      {summary['workdir']}\ntracking:      {summary['tracking_uri']}")
    print(f"MLflow UI:     {summary['ui']}")
    if summary.get("interrupted"):
        print(f"\ninterrupted: {summary['interrupted']} trial(s) stopped (runs KILLED); they continue "
              f"from their last finished fold with the same command and --resume")
        return
    print(f"ensemble next: python -m bst_search.ensemble --experiment {experiment} "
          f"--workdir {summary['workdir']}")
    print(f"report:        bst-search report --experiment {experiment} --workdir {summary['workdir']}"
          f"   (live: bst-search dashboard --experiment {experiment} --workdir {summary['workdir']})")


def run_search_from_args(args: argparse.Namespace) -> int:
    from bst_search.redact import mask_text
    from bst_search.sweep_state import SweepStateError
    from bst_search.tune_storage import StorageError

    try:
        summary = run_search(args)
    except (SweepStateError, StorageError) as e:
        secrets = (args.optuna_storage, os.environ.get("BST_OPTUNA_STORAGE"), args.tracking_uri)
        print(f"error: {mask_text(str(e), *secrets)}", file=sys.stderr)
        return 2
    print_summary(summary, args.experiment)
    if summary.get("interrupted"):
        return INTERRUPTED_RC
    return 0 if summary["n_finished"] else 1


def main(argv: list[str] | None = None) -> int:
    return run_search_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
