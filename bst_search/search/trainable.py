"""The trial side of a sweep: the Ray Tune function trainable every trial runs.

A trial reads its data from Ray's object store (``tune.with_parameters``), trains on the
device and threads Ray assigned it, and reports after every fold the running value of the
space's objective with a checkpoint holding its finished folds: ASHA / the median rule can
stop it early, and a retried or resumed trial continues from its last finished fold.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bst_search.config import SCHEMA

if TYPE_CHECKING:
    from bst_search.data import Dataset
    from bst_search.search.space import SearchSpace

FAULT_ENV = "BST_FAULT_EXIT_AFTER_FOLD"  # fault injection for tests: "<fold>:<marker file>"
FAIL_ENV = "BST_FAULT_RAISE_AT_FOLD"  # fault injection for tests: every attempt raises there
SLOW_ENV = "BST_FAULT_FOLD_DELAY_S"  # fault injection for tests: each fold reports this late


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


def trial_fn(params: dict[str, Any], *, dev: Dataset, eval_data: Dataset | None,
             crowd: Dataset | None, space: SearchSpace, n_folds: int,
             holdout_fraction: float = 0.0) -> None:
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
