"""One trial: a configuration trained and evaluated with K-fold cross-validation.

A trial predicts every development sample exactly once (out of fold) and, when evaluation
data is given, averages its fold models' probabilities on every evaluation sample. Data
strategies (confidence filter and weighting, crowd data) change only each fold's training
part, so OOF matrices of different trials can be combined by the ensemble.

Each finished fold is saved under ``<out>/folds/`` before the next starts: a trial cut off
mid-way continues from its last finished fold when run again on the same directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bst_search import config as config_mod
from bst_search import metrics
from bst_search.config import META_BACKBONE, backbone_modality
from bst_search.data import DataError, Dataset, is_text_backbone, meta_probs, pseudo
from bst_search.data.strategies import (
    FoldContext,
    confident_rows,
    crowd_candidates,
    crowd_targets,
    select_crowd,
)
from bst_search.folds import assign_folds, fold_fingerprint, holdout_mask, train_val_split
from bst_search.taxonomy import CODES, N_CLASSES, PROBA_COLUMNS

FoldCallback = Callable[[dict[str, Any]], None]


def _config_hash(cfg: dict[str, Any]) -> str:
    """Hash of the configuration; without meta_probs (or pseudo-labels) the keys only it reads
    are left out, so every configuration from before those keys existed keeps its hash (and
    its saved folds)."""
    if META_BACKBONE not in cfg["backbones"]:
        cfg = {k: v for k, v in cfg.items() if k != "meta"}
        cfg["model"] = {k: v for k, v in cfg["model"].items() if k != "meta_encoder"}
    if cfg["data"]["crowd"] != "pseudo":
        cfg = {**cfg, "data": {k: v for k, v in cfg["data"].items() if not k.startswith("pseudo_")}}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file so a killed process never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def check_backbones(cfg: dict[str, Any], *datasets: Dataset | None) -> list[str]:
    """The configured backbones, checked to exist with equal dimensions in every dataset
    (``meta_probs``: that every dataset has the text and inputs its text model reads)."""
    backbones = list(cfg["backbones"])
    if not any(not is_text_backbone(b) for b in backbones):
        raise DataError(f"backbones {backbones}: at least one audio backbone is required")
    if META_BACKBONE in backbones:
        meta_probs.check_inputs(cfg, *datasets)
    ref = datasets[0]
    for ds in datasets:
        if ds is None:
            continue
        for b in (b for b in backbones if b != META_BACKBONE):
            if b not in ds.features:
                raise DataError(f"{ds.root}: backbone {b!r} not found; available: "
                                f"{', '.join(ds.backbones) or 'none'}")
            if ds.features[b].shape[1] != ref.features[b].shape[1]:
                raise DataError(f"{ds.root}: backbone {b!r} has dimension {ds.features[b].shape[1]} "
                                f"but the development set has {ref.features[b].shape[1]}")
    return backbones


def _rows(ds: Dataset, mask: np.ndarray) -> Dataset:
    """The rows of ``ds`` where ``mask`` is True, as a dataset of its own."""
    def pick(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[mask]

    return dataclasses.replace(ds, ids=ds.ids[mask], y=pick(ds.y), confidence=pick(ds.confidence),
                               uploader=pick(ds.uploader),
                               features={b: m[mask] for b, m in ds.features.items()},
                               fingerprint="")


def _prediction_frame(ds: Dataset, fold: int, proba: np.ndarray) -> pd.DataFrame:
    """sound_id, fold (of the model that predicted), label, p_<code>: the oof.parquet layout."""
    head = pd.DataFrame({"sound_id": ds.ids.astype(str), "fold": int(fold),
                         "label": np.asarray(CODES)[ds.y]})
    return pd.concat([head, pd.DataFrame(proba.astype(np.float32), columns=list(PROBA_COLUMNS))],
                     axis=1)


def _fold_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0] % (2**31))


def run_fold(cfg: dict[str, Any], dev: Dataset, fold: np.ndarray, k: int, *,
             eval_data: Dataset | None = None, crowd: Dataset | None = None,
             holdout: Dataset | None = None, pseudo_labels: pseudo.PseudoLabels | None = None,
             device: str | None = None, on_epoch: Callable[[dict], None] | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train fold k and predict its held-out rows (and the evaluation, holdout and crowd sets).

    Reads top to bottom: the fold's text-model probabilities (``meta_probs``, cross-fitted on
    the fold's training part), the training part and data strategy, the crowd filter (and
    stage 1 of two-stage training), the model, then its predictions. Every fit here uses the
    fold's validation split for early stopping and nothing of fold k's held-out rows.
    ``data.crowd: pseudo`` trains the crowd rows towards fold k's soft pseudo-labels (from
    stage-1 models that never saw fold k's held-out rows), mixed with their own labels.
    """
    from bst_search import training  # torch import deferred: data-only commands stay fast

    t0 = time.perf_counter()
    device = training.pick_device(device or "auto")
    backbones = list(cfg["backbones"])
    if META_BACKBONE in backbones:
        dev, eval_data, crowd, holdout = meta_probs.attach(
            cfg, dev, fold, k, eval_data=eval_data, crowd=crowd, holdout=holdout, log=log)
    modalities = [backbone_modality(b) for b in backbones]
    seed = _fold_seed(cfg["seed"], k)
    train_idx, val_idx = train_val_split(dev.y, fold, k)
    rows, weights = confident_rows(cfg, dev, train_idx)
    X_dev = dev.X(backbones)
    X_train, y_train = [x[rows] for x in X_dev], dev.y[rows]
    X_val, y_val = [x[val_idx] for x in X_dev], dev.y[val_idx]
    eligible = None if crowd is None else crowd_candidates(crowd, dev)  # never dev sounds

    def fit(X: list[np.ndarray], y: np.ndarray, w: np.ndarray | None, max_epochs: int | None,
            **kw: Any) -> training.FitResult:
        return training.fit(cfg, X, y, X_val, y_val, modalities=modalities, seed=seed,
                            sample_weight=w, device=device, max_epochs=max_epochs, **kw)

    init_state, n_crowd, target = None, 0, None
    if cfg["data"]["crowd"] != "none":
        ctx = FoldContext(cfg, X_train, y_train, weights, crowd,
                          confident_rows(cfg, crowd, eligible)[0], backbones,
                          fit=lambda X, y, w, e: fit(X, y, w, e, average_top=1).model,
                          predict=lambda m, X: training.predict_proba(m, X, device=device), log=log,
                          pseudo=None if pseudo_labels is None else pseudo_labels.fold(k, crowd.ids))
        X_train, y_train, weights, target, init_state, n_crowd = _with_crowd(ctx, k, fit)

    result = fit(X_train, y_train, weights, None, init_state=init_state, on_epoch=on_epoch,
                 target_proba=target)
    test_idx = np.flatnonzero(fold == k)
    X_eval = eval_data.X(backbones) if eval_data is not None else None
    X_hold = holdout.X(backbones) if holdout is not None else None  # predicted, like eval
    X_crowd_all = None  # every crowd sound that is not a development sound: stage 2's material
    if crowd is not None:
        X_crowd_all = [x[eligible] for x in crowd.X(backbones)]
    proba, eval_proba, hold_proba, crowd_proba = _predict(
        cfg["post"], result.model, X_train, y_train, device,
        [[x[test_idx] for x in X_dev], X_eval, X_hold, X_crowd_all])
    fm = metrics.evaluate(dev.y[test_idx], proba)
    return {
        "fold": k, "test_idx": test_idx, "proba": proba, "eval_proba": eval_proba,
        "holdout_proba": hold_proba,
        "crowd_proba": None if crowd_proba is None else crowd_proba.astype(np.float16),
        "n_train": int(len(y_train)), "n_crowd": n_crowd, "n_val": int(len(val_idx)),
        "n_test": int(len(test_idx)), "hF": fm["hF"], "hF_strict": fm["hF_strict"], "acc": fm["acc"],
        "best_epoch": result.best_epoch, "epochs": result.epochs, "best_val_hF": result.best_val_hF,
        "seconds": time.perf_counter() - t0, "model_seconds": result.model_seconds,
    }


def _with_crowd(ctx: FoldContext, k: int, fit: Callable[..., Any]) -> tuple[
        list[np.ndarray], np.ndarray, np.ndarray | None, np.ndarray | None, dict | None, int]:
    """The crowd rows ``data.crowd`` keeps for fold k, joined to the training part, or (two
    stage) trained on alone first: (X, y, weights, label distributions or None, the stage-1
    weights or None, the number of crowd rows)."""
    cfg, crowd = ctx.cfg, ctx.crowd
    X_train, y_train, weights, target, init_state = ctx.X_train, ctx.y_train, ctx.w_train, None, None
    extra = select_crowd(cfg, ctx)
    n_crowd = int(len(extra))
    if n_crowd == 0:
        raise DataError(f"{crowd.root}: data.crowd={cfg['data']['crowd']} kept no crowd rows "
                        f"in fold {k}")
    X_crowd, w_crowd = ctx.crowd_X(extra), ctx.crowd_weights(extra)
    y_crowd, q_crowd = crowd_targets(ctx, extra)  # q_crowd: soft labels, or None
    if cfg["data"]["two_stage"]:  # stage 1: the crowd rows alone; the caller fine-tunes
        stage1 = fit(X_crowd, y_crowd, w_crowd, cfg["data"]["pretrain_epochs"], average_top=1,
                     target_proba=q_crowd)
        init_state = stage1.model.state_dict()
        ctx.log and ctx.log(f"  stage 1 on {n_crowd} crowd rows: val hF {stage1.best_val_hF:.4f}")
        return X_train, y_train, weights, None, init_state, n_crowd
    if q_crowd is not None:  # the development rows' one-hot labels beside the soft ones
        target = np.concatenate([np.eye(N_CLASSES, dtype=np.float32)[y_train], q_crowd])
    X_train = [np.concatenate([a, c]) for a, c in zip(X_train, X_crowd, strict=True)]
    y_train = np.concatenate([y_train, y_crowd])
    if weights is not None:
        weights = np.concatenate([weights, w_crowd])
    return X_train, y_train, weights, target, init_state, n_crowd


def _predict(post: dict[str, Any], model: Any, X_train: list[np.ndarray], y_train: np.ndarray,
             device: Any, sets: list[list[np.ndarray] | None]) -> list[np.ndarray | None]:
    """The fold model's probabilities on each set (held-out, evaluation, holdout rows; None
    for a set not given), blended with the KNN prior of the training rows under
    ``post.knn_alpha``: the bank is exactly the rows the model was trained on."""
    from bst_search import training
    from bst_search.knn import KnnPrior, blend, retrieval_space

    out = [None if X is None else training.predict_proba(model, X, device=device) for X in sets]
    if post["knn_alpha"] > 0:
        prior = KnnPrior(retrieval_space(X_train), y_train, k=post["knn_k"], tau=post["knn_tau"],
                         device=device)
        out = [p if X is None else blend(p, prior.predict(retrieval_space(X)), post["knn_alpha"])
               for p, X in zip(out, sets, strict=True)]
    return out


def _epoch_logger(log: Callable[[str], None] | None, k: int,
                  every: int = 10) -> Callable[[dict], None] | None:
    """Progress of a long fold: one line every ``every`` epochs."""
    if log is None:
        return None

    def on_epoch(h: dict) -> None:
        if h["epoch"] % every == 0:
            log(f"  fold {k} epoch {h['epoch']}: train loss {h['train_loss']:.4f}, "
                f"val hF {h['val_hF']:.4f} ({h['seconds']:.1f}s/epoch)")

    return on_epoch


_ARRAYS = ("test_idx", "proba", "eval_proba", "holdout_proba", "crowd_proba")


def _save_fold(path: Path, res: dict[str, Any]) -> None:
    arrays = {k: res[k] for k in _ARRAYS if res.get(k) is not None}
    info = {k: v for k, v in res.items() if k not in _ARRAYS}
    arrays["info"] = np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    _atomic_write(path, write)


def _load_fold(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        res = json.loads(z["info"].tobytes().decode())
        res.update({k: z[k] if k in z.files else None for k in _ARRAYS})
    return res


RUNNING_KEYS = ("hF", "hF_strict", "hP", "hR", "acc", "top_acc")


def running_objectives(y: np.ndarray, results: list[dict[str, Any]]) -> dict[str, float]:
    """Every objective a space can name, on the folds finished so far: ``running_<metric>``.

    The ``oof_*`` values are computed on the held-out predictions of the finished folds (the
    partial OOF matrix), ``fold_hF_mean`` is the mean of their fold scores, so early stopping
    compares trials on the space's own objective. ``running_hF_strict`` (the mean strict fold
    hF) is kept for the progress table.
    """
    idx = np.concatenate([r["test_idx"] for r in results])
    m = metrics.evaluate(y[idx], np.concatenate([r["proba"] for r in results]))
    out = {f"running_oof_{k}": float(m[k]) for k in RUNNING_KEYS}
    out["running_fold_hF_mean"] = float(np.mean([r["hF"] for r in results]))
    out["running_hF_strict"] = float(np.mean([r["hF_strict"] for r in results]))
    return out


def _split_holdout(dev: Dataset, crowd: Dataset | None, fraction: float
                   ) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """(development rows the folds use, the holdout rows, the crowd set without them)."""
    if fraction <= 0:
        return dev, None, crowd
    hold = holdout_mask(dev.y, fraction)
    holdout, dev = _rows(dev, hold), _rows(dev, ~hold)
    if crowd is not None:  # a holdout sound must not come back through the crowd set
        crowd = _rows(crowd, ~np.isin(crowd.ids, holdout.ids))
    return dev, holdout, crowd


class OutputsError(config_mod.ConfigError):
    """The output folder holds another trial's outputs; the message names it and what differs."""


_STATE_NAMES = {"config": "the configuration", "data_fp": "the development data",
                "fold_fp": "the folds", "eval_fp": "the evaluation data",
                "crowd_fp": "the crowd data", "holdout_fraction": "the holdout fraction",
                "text_fp": "the metadata text", "crowd_pred_fp": "the crowd set predicted",
                "pseudo_run": "the pseudo-labels"}
_OUTPUTS = ("oof.parquet", "eval.parquet", "holdout.parquet", "crowd.parquet", "config.yaml",
            "metrics.json")


def _differences(old: dict[str, Any], state: dict[str, Any], settings: dict[str, Any]) -> str:
    """What differs between the saved state and this trial's; the configuration by setting."""
    parts: list[str] = []
    for key in sorted((set(old) | set(state)) - {"settings"}):
        if old.get(key) == state.get(key):
            continue
        was = old.get("settings", {})
        keys = [k for k in sorted(set(was) | set(settings)) if was.get(k) != settings.get(k)]
        if key == "config" and keys:
            parts += [f"{k}: {was.get(k, '(unset)')!r} -> {settings.get(k, '(unset)')!r}"
                      for k in keys[:8]] + (["..."] if len(keys) > 8 else [])
        else:
            parts.append(f"{_STATE_NAMES.get(key, key)} ({old.get(key)!r} -> {state.get(key)!r})")
    return "; ".join(parts)


def _start_over_if_changed(out: Path, state: dict[str, Any], cfg: dict[str, Any],
                           overwrite: bool) -> None:
    """Finished folds are kept only for the same configuration and data (``state.json``);
    another's outputs are deleted only when ``overwrite`` says so, else the folder is refused."""
    state_path = out / "state.json"
    settings = json.loads(json.dumps(config_mod.flatten(cfg), default=str))
    old = json.loads(state_path.read_text()) if state_path.exists() else None
    if old is not None and {k: v for k, v in old.items() if k != "settings"} != state:
        stale = [*(out / "folds").glob("fold_*.npz"), *(p for p in map(out.joinpath, _OUTPUTS)
                                                         if p.exists())]
        if stale and not overwrite:
            raise OutputsError(f"{out}: holds the outputs of another trial "
                               f"({_differences(old, state, settings)}); pass --overwrite to "
                               f"replace them, or choose another --out")
        for path in stale:
            path.unlink()
    _atomic_write(state_path, lambda p: p.write_text(
        json.dumps({**state, "settings": settings}, indent=1)))


def _trial_metrics(dev: Dataset, proba: np.ndarray, results: list[dict[str, Any]],
                   state: dict[str, Any], n_holdout: int, wall: float) -> dict[str, Any]:
    """``metrics.json``: the OOF metrics, the fold statistics, timings and the state."""
    m = metrics.evaluate(dev.y, proba)
    fold_hf = np.array([r["hF"] for r in results])
    fold_hfs = np.array([r["hF_strict"] for r in results])
    out: dict[str, Any] = {f"oof_{k}": v for k, v in m.items()}
    out.update({
        "fold_hF_mean": float(fold_hf.mean()), "fold_hF_std": float(fold_hf.std()),
        "fold_hF_strict_mean": float(fold_hfs.mean()), "fold_hF_strict_std": float(fold_hfs.std()),
        "metric_variants_differ": bool(m["n_never_predicted"] > 0),
        "train_seconds": float(sum(r["seconds"] for r in results)),
        "model_seconds": float(sum(r["model_seconds"] for r in results)),
        "wall_seconds": float(wall),
        "epochs_mean": float(np.mean([r["epochs"] for r in results])),
        "n_dev": int(len(dev.ids)), "n_excluded": int(dev.n_excluded),
        "n_holdout": int(n_holdout),
        **state,
        "folds": [{k: v for k, v in r.items() if k not in _ARRAYS} for r in results],
    })
    return out


def _crowd_frame(ids: np.ndarray, results: list[dict[str, Any]]) -> pd.DataFrame:
    """sound_id, fold (of the model that predicted), p_<code> in float16: ``crowd.parquet``,
    one block per fold model, what ``bst-search pseudo-label`` reads."""
    blocks = []
    for r in results:
        head = pd.DataFrame({"sound_id": ids.astype(str), "fold": int(r["fold"])})
        blocks.append(pd.concat([head, pd.DataFrame(r["crowd_proba"].astype(np.float16),
                                                    columns=list(PROBA_COLUMNS))], axis=1))
    return pd.concat(blocks, ignore_index=True)


def _write_outputs(out: Path, cfg: dict[str, Any], oof: pd.DataFrame,
                   results: list[dict[str, Any]], eval_data: Dataset | None,
                   holdout: Dataset | None, crowd_ids: np.ndarray | None,
                   out_metrics: dict[str, Any]) -> None:
    """The trial's artifacts, each written atomically: oof, eval, holdout, crowd, config,
    metrics."""
    _atomic_write(out / "oof.parquet", lambda p: oof.to_parquet(p, index=False))
    if eval_data is not None:
        ev = np.mean([r["eval_proba"] for r in results], axis=0).astype(np.float32)
        frame = pd.concat([pd.DataFrame({"id": eval_data.ids.astype(str)}),
                           pd.DataFrame(ev, columns=list(PROBA_COLUMNS))], axis=1)
        _atomic_write(out / "eval.parquet", lambda p: frame.to_parquet(p, index=False))
    if holdout is not None:
        hold_frame = pd.concat([_prediction_frame(holdout, r["fold"], r["holdout_proba"])
                                for r in results], ignore_index=True)
        _atomic_write(out / "holdout.parquet", lambda p: hold_frame.to_parquet(p, index=False))
    if crowd_ids is not None:
        crowd_frame = _crowd_frame(crowd_ids, results)
        _atomic_write(out / "crowd.parquet", lambda p: crowd_frame.to_parquet(p, index=False))
    _atomic_write(out / "config.yaml", lambda p: config_mod.dump(cfg, p))
    _atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(out_metrics, indent=1)))


def _pseudo_labels(cfg: dict[str, Any], dev: Dataset, fold: np.ndarray, crowd_fp: str,
                   n_folds: int) -> pseudo.PseudoLabels | None:
    """``data.pseudo_dir``, checked to be made for these development rows, folds and crowd."""
    if cfg["data"]["crowd"] != "pseudo":
        return None
    if not cfg["data"]["pseudo_dir"]:
        raise DataError("data.crowd=pseudo trains on soft pseudo-labels: set data.pseudo_dir "
                        "to the folder `bst-search pseudo-label` wrote (search: --pseudo-labels)")
    return pseudo.load_folder(cfg["data"]["pseudo_dir"], {
        "dev_labels_fp": pseudo.rows_fp(dev.ids, dev.y),
        "fold_fp": fold_fingerprint(dev.ids, fold), "crowd_fp": crowd_fp}, n_folds)


def run_trial(cfg: dict[str, Any], dev: Dataset, out_dir: str | Path, *,
              eval_data: Dataset | None = None, crowd: Dataset | None = None,
              n_folds: int = 5, device: str | None = None, on_fold: FoldCallback | None = None,
              log: Callable[[str], None] | None = None,
              holdout_fraction: float = 0.0, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) a cross-validated trial; write its outputs; return ``metrics.json``.

    ``on_fold`` is called after every fold with the fold's results and the running mean,
    which is what the search driver reports to Ray Tune's early-stopping scheduler.
    ``holdout_fraction`` sets a stratified part of the development rows aside before the
    folds are drawn: every fold model predicts it (``holdout.parquet``, one block per fold
    model), nothing is fitted, validated or scored on it here. A folder that holds another
    configuration's (or data's) outputs is refused (``OutputsError``) unless ``overwrite``.
    """
    cfg = config_mod.validate(cfg)
    if not dev.labelled:
        raise DataError(f"{dev.root}: a trial needs a labelled development set")
    if eval_data is not None and eval_data.labelled:
        log and log(f"note: evaluation set {eval_data.root} has labels; they are not used")
    if cfg["data"]["crowd"] != "none" and crowd is None:
        raise DataError(f"data.crowd={cfg['data']['crowd']} needs a crowd dataset (--crowd-data)")
    check_backbones(cfg, dev, eval_data, crowd)  # the crowd set is predicted whenever given
    crowd_fp = "" if crowd is None else pseudo.rows_fp(crowd.ids, crowd.y)
    dev, holdout, crowd = _split_holdout(dev, crowd, holdout_fraction)
    out = Path(out_dir)
    (out / "folds").mkdir(parents=True, exist_ok=True)
    fold = assign_folds(dev.y, n_folds)
    pseudo_labels = _pseudo_labels(cfg, dev, fold, crowd_fp, n_folds)
    state = {"config": _config_hash(cfg), "data_fp": dev.fingerprint,
             "fold_fp": fold_fingerprint(dev.ids, fold),
             "eval_fp": eval_data.fingerprint if eval_data is not None else "",
             "crowd_fp": crowd.fingerprint if crowd is not None and cfg["data"]["crowd"] != "none" else "",
             "holdout_fraction": float(holdout_fraction)}
    if META_BACKBONE in cfg["backbones"]:  # the text beside the data fingerprints
        state["text_fp"] = ",".join(ds.text_fp for ds in (dev, eval_data, crowd) if ds is not None)
    if crowd is not None:  # every fold model predicts the crowd set (crowd.parquet)
        state["crowd_pred_fp"] = crowd_fp
    if pseudo_labels is not None:
        state["pseudo_run"] = pseudo_labels.manifest.get("ensemble_run_id", "")
    _start_over_if_changed(out, state, cfg, overwrite)

    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    for k in range(n_folds):
        path = out / "folds" / f"fold_{k}.npz"
        if path.exists():
            res, resumed = _load_fold(path), True
        else:
            res, resumed = run_fold(cfg, dev, fold, k, eval_data=eval_data, crowd=crowd,
                                    holdout=holdout, pseudo_labels=pseudo_labels, device=device,
                                    on_epoch=_epoch_logger(log, k), log=log), False
            _save_fold(path, res)
        results.append(res)
        how = "resumed" if resumed else f"{res['seconds']:.1f}s, {res['epochs']} epochs"
        log and log(f"fold {k}: hF {res['hF']:.4f} strict {res['hF_strict']:.4f} ({how})")
        if on_fold is not None:
            on_fold({"fold": k, "folds_done": k + 1, "fold_hF": res["hF"],
                     "fold_hF_strict": res["hF_strict"], "resumed": resumed,
                     **running_objectives(dev.y, results)})

    proba = np.zeros((len(dev.ids), N_CLASSES), dtype=np.float32)
    for r in results:
        proba[r["test_idx"]] = r["proba"]
    oof = pd.DataFrame({"sound_id": dev.ids.astype(str), "fold": fold,
                        "label": np.asarray(CODES)[dev.y]})
    oof = pd.concat([oof, pd.DataFrame(proba, columns=list(PROBA_COLUMNS))], axis=1)
    out_metrics = _trial_metrics(dev, proba, results, state,
                                 0 if holdout is None else len(holdout.ids), time.perf_counter() - t0)
    if out_metrics["oof_n_never_predicted"] > 0:
        log and log(f"warning: {int(out_metrics['oof_n_never_predicted'])} class(es) never "
                    f"predicted: official hF {out_metrics['oof_hF']:.4f} differs from strict "
                    f"{out_metrics['oof_hF_strict']:.4f}")
    crowd_ids = None if crowd is None else crowd.ids[crowd_candidates(crowd, dev)]
    _write_outputs(out, cfg, oof, results, eval_data, holdout, crowd_ids, out_metrics)
    return out_metrics
