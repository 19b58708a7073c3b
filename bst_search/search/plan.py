"""A sweep's plan: everything one run of it is made of, resolved and checked before Ray starts.

:func:`plan_sweep` reads the stored identity (``--resume``) and resolves the arguments a sweep
fixes; :func:`load_data` loads its datasets once; :func:`sweep_identity` is the identity this
run drives, refused on ``--resume`` when the space, the data or a fixed argument changed.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from bst_search.data import Dataset
    from bst_search.search.space import SearchSpace
    from bst_search.search.storage import TuneStorage

TRIALS_DEFAULT, FOLDS_DEFAULT, SEED_DEFAULT = 20, 5, 0
UNBOUNDED = -1  # --trials omitted with --time-budget: as many as fit (Tune's num_samples=-1)


@dataclass(frozen=True)
class FixedArgs:
    """The arguments a sweep fixes: stored with its identity, compared on ``--resume``. Store
    URLs are masked here; the driver's unmasked ones live in :class:`SweepPlan` only."""

    folds: int
    seed: int
    sampler: str
    concurrency: int | None
    scheduler: str
    cpus_per_trial: float
    gpus_per_trial: float
    tracking_uri: str
    tune_storage: str

    @property
    def resources(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


@dataclass
class SweepPlan:
    """Everything one run of a sweep is made of, resolved and checked before Ray starts."""

    experiment: str
    space: SearchSpace
    space_source: str
    workdir: Path
    data: str
    eval_data: str | None
    crowd_data: str | None
    missing: str
    fixed: FixedArgs
    tracking_uri: str  # unmasked: this process only, never stored or printed
    optuna_url: str  # unmasked, likewise
    rdb: optuna.storages.RDBStorage
    tune: TuneStorage
    stored: dict[str, Any] | None  # the identity of the sweep being resumed
    trials: int  # UNBOUNDED: until the time budget
    holdout_fraction: float = 0.0
    time_budget_s: float | None = None
    address: str | None = None
    warm_start: str | None = None
    warm_start_n: int = 5
    max_failures: int = 2
    verbose: bool = False
    started: float = field(default_factory=time.monotonic)  # the budget counts from here


@dataclass
class SweepData:
    """The sweep's data, loaded once: what every trial reads from Ray's object store."""

    dev: Dataset
    eval: Dataset | None
    crowd: Dataset | None
    fingerprints: dict[str, str]


def fixed_args(args: argparse.Namespace, space: SearchSpace, workdir: Path,
               stored: dict[str, Any] | None) -> tuple[FixedArgs, str]:
    """The arguments a sweep fixes, and the unmasked tracking URI: the explicit flag, else its
    environment variable, else (on --resume) the stored sweep's value, else the default."""
    from bst_search import tracking
    from bst_search.tracking.redact import mask_url

    old = (stored or {}).get("args", {})

    def pick(key: str, given: Any, default: Any) -> Any:
        return given if given is not None else old.get(key, default)

    tracking_given = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    tracking_uri = (tracking_given or (old.get("tracking_uri") if stored else None)
                    or tracking.tracking_uri(workdir))
    tune_given = args.tune_storage or os.environ.get("BST_TUNE_STORAGE")
    fixed = FixedArgs(
        folds=pick("folds", args.folds, FOLDS_DEFAULT),
        seed=pick("seed", args.seed, SEED_DEFAULT),
        sampler=pick("sampler", args.sampler, "tpe"),
        concurrency=pick("concurrency", args.concurrency, None),
        scheduler=pick("scheduler", args.scheduler, space.scheduler),
        cpus_per_trial=pick("cpus_per_trial", args.cpus_per_trial, space.resources.get("cpu", 1.0)),
        gpus_per_trial=pick("gpus_per_trial", args.gpus_per_trial, space.resources.get("gpu", 0.0)),
        tracking_uri=mask_url(tracking_uri),
        tune_storage=mask_url(tune_given or old.get("tune_storage") or str(workdir / "tune")))
    return fixed, tracking_uri


def with_pseudo_labels(space: SearchSpace, folder: str | None,
                       crowd_data: str | None) -> SearchSpace:
    """The space with ``data.pseudo_dir`` fixed to ``--pseudo-labels`` (an absolute path, so
    that every trial reads the same folder), refused when the space can use pseudo-labels and
    none are given, or the other way round."""
    import dataclasses

    can = space.can_take("data.crowd", "pseudo")
    if folder is None:
        if can:
            raise SystemExit(f"error: {space.source} trains on pseudo-labels (data.crowd: pseudo): "
                             f"give --pseudo-labels DIR (made by `bst-search pseudo-label`)")
        return space
    if not can:
        raise SystemExit(f"error: --pseudo-labels {folder}: {space.source} never uses them "
                         f"(no trial has data.crowd: pseudo)")
    if crowd_data is None:
        raise SystemExit("error: --pseudo-labels needs --crowd-data, the crowd set they label")
    return dataclasses.replace(space, fixed={**space.fixed,
                                             "data.pseudo_dir": str(Path(folder).resolve())})


def holdout_fraction(args: argparse.Namespace) -> float:
    """--holdout-fraction, checked."""
    holdout = getattr(args, "holdout_fraction", 0.0) or 0.0
    if not 0 <= holdout < 1:
        raise SystemExit(f"error: --holdout-fraction must be in [0, 1), got {holdout}")
    return float(holdout)


def _trial_count(args: argparse.Namespace, stored: dict[str, Any] | None,
                 budget_s: float | None) -> int:
    if args.trials is not None:
        return args.trials
    if stored is not None:
        return stored.get("trials", TRIALS_DEFAULT)
    return UNBOUNDED if budget_s else TRIALS_DEFAULT


def plan_sweep(args: argparse.Namespace, space: SearchSpace, workdir: Path,
               optuna_url: str) -> SweepPlan:
    """Read the stored identity and resolve the arguments; refuse a ``--resume`` with nothing
    to resume and a fresh start over an existing sweep."""
    from bst_search.search import searcher, state, storage
    from bst_search.tracking.redact import mask_url

    rdb = searcher.storage_from_env()
    stored = state.read_identity(rdb, args.experiment)
    if args.resume and stored is None:
        raise state.SweepStateError(
            f"nothing to resume: no sweep {args.experiment!r} has started with the Optuna storage "
            f"{mask_url(optuna_url)} (a start that failed before its trials leaves nothing)")
    if not args.resume and stored is not None:
        raise state.SweepStateError(
            f"experiment {args.experiment!r} already has sweep {stored['sweep']} in "
            f"{mask_url(optuna_url)}; use --resume to continue it or choose another --experiment")
    budget = getattr(args, "time_budget", None)
    if stored is not None and stored.get("trials") == UNBOUNDED and (budget is None or args.trials):
        raise state.SweepStateError(
            f"sweep {stored['sweep']} runs as many trials as fit in its time budget: resume it "
            "with --time-budget (and without --trials)")
    space = with_pseudo_labels(space, getattr(args, "pseudo_labels", None), args.crowd_data)
    fixed, tracking_uri = fixed_args(args, space, workdir, stored)
    tune = storage.resolve(fixed.tune_storage, cluster=bool(args.address), shared_fs=args.shared_fs)
    return SweepPlan(
        experiment=args.experiment, space=space, space_source=str(args.space), workdir=workdir,
        data=args.data, eval_data=args.eval_data, crowd_data=args.crowd_data,
        missing=args.missing, fixed=fixed, tracking_uri=tracking_uri, optuna_url=optuna_url,
        rdb=rdb, tune=tune, stored=stored, trials=_trial_count(args, stored, budget),
        holdout_fraction=holdout_fraction(args), time_budget_s=budget, address=args.address,
        warm_start=args.warm_start, warm_start_n=args.warm_start_n,
        max_failures=args.max_failures, verbose=bool(getattr(args, "verbose", False)))


def load_data(plan: SweepPlan) -> SweepData:
    """Load and validate the sweep's datasets once, with their fingerprints."""
    from bst_search.config import META_BACKBONE
    from bst_search.data import load_dataset
    from bst_search.data.meta_probs import loadable_backbones
    from bst_search.data.text_models import TEXT_MODELS
    from bst_search.folds import development_fold_fp

    backbones = loadable_backbones(plan.space.backbones_needed(),  # meta_probs is computed
                                   [m for m in TEXT_MODELS if plan.space.can_take("meta.model", m)])

    def load(root: str | None) -> Dataset | None:
        return (load_dataset(Path(root), backbones=backbones, missing=plan.missing, progress=True)
                if root else None)

    dev, ev, crowd = load(plan.data), load(plan.eval_data), load(plan.crowd_data)
    assert dev is not None
    try:  # the trials' folds leave the holdout rows out
        fold_fp = development_fold_fp(dev.ids, dev.y, plan.fixed.folds, plan.holdout_fraction)
    except ValueError as exc:
        raise SystemExit(f"error: --holdout-fraction: {exc}") from exc
    fps = {"data_fp": dev.fingerprint, "fold_fp": fold_fp,
           "eval_fp": ev.fingerprint if ev is not None else ""}
    if crowd is not None:  # every trial predicts it: a resume must see the same crowd set
        fps["crowd_fp"] = crowd.fingerprint
    if META_BACKBONE in plan.space.backbones_needed():  # the text meta_probs reads
        fps["text_fp"] = ",".join(ds.text_fp for ds in (dev, ev, crowd) if ds is not None)
    pseudo_dir = plan.space.fixed.get("data.pseudo_dir")
    if pseudo_dir:  # refused here, before any trial, when made for other data or folds
        from bst_search.data import pseudo
        from bst_search.folds import holdout_mask

        keep = ~holdout_mask(dev.y, plan.holdout_fraction)
        assert crowd is not None
        pseudo.load_folder(pseudo_dir, {"dev_labels_fp": pseudo.rows_fp(dev.ids[keep], dev.y[keep]),
                                        "fold_fp": fold_fp,
                                        "crowd_fp": pseudo.rows_fp(crowd.ids, crowd.y)},
                           plan.fixed.folds)
    return SweepData(dev, ev, crowd, fps)


def sweep_identity(plan: SweepPlan, fingerprints: dict[str, str]) -> dict[str, Any]:
    """The identity this run drives: the stored one on --resume (refused when the space, the
    data or a fixed argument changed), else a new one."""
    from bst_search.search import state

    current = {"space_hash": state.space_hash(plan.space), "space_source": plan.space_source,
               "fingerprints": fingerprints, "args": asdict(plan.fixed), "trials": plan.trials}
    if plan.stored is not None:
        diff = state.changes(plan.stored, current)
        if diff:
            raise state.SweepStateError(
                f"--resume of sweep {plan.stored['sweep']} refused: changed " + "; ".join(diff)
                + ". Resume with the original values, or start a new --experiment")
        return plan.stored
    state.discard_failed_start(plan.rdb, plan.experiment)  # a study whose start failed
    sweep = f"{plan.experiment}-{uuid.uuid4().hex[:8]}"
    return {**current, "sweep": sweep, "experiment": plan.experiment,
            "segments": [{"name": sweep, "trials": plan.trials}],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
