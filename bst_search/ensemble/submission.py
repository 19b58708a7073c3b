"""Challenge submission: self-checks before ``submission.csv`` is written, and scoring.

The MESH team's 0.846 dev / 0.372 eval gap is what a submission looks like when the
evaluation path differs from the development path. Each check below catches one way that
happens: ids missing or shuffled, invalid codes, members without (or with different)
evaluation predictions, a predicted class distribution on the evaluation set that has
moved far from the OOF one, degenerate scores. All failures are reported together.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bst_search.metrics import hierarchical_prf
from bst_search.taxonomy import CODES, INDEX, N_CLASSES, PARENT

SUBMISSION_COLUMNS: tuple[str, ...] = ("id", "predicted_bst_second_level_class",
                                       "prediction_score")
DEFAULT_MAX_SHIFT = 0.15


class SubmissionCheckError(ValueError):
    """A submission failed one or more self-checks; ``failures`` lists each one."""

    def __init__(self, failures: Sequence[str], where: str = "submission") -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  - {f}" for f in self.failures)
        super().__init__(f"{where} refused: {len(self.failures)} self-check(s) failed:\n{lines}")


@dataclass
class MemberEval:
    """Evaluation facts of one ensemble member, for the consistency checks."""

    run_id: str
    trial_id: str
    has_eval: bool
    eval_fp: str
    backbones_tag: list[str]
    backbones_config: list[str] | None


def _first(values: Sequence[object] | np.ndarray | pd.Index, k: int = 5) -> str:
    values = list(values)
    return ", ".join(map(str, values[:k])) + (f" ... ({len(values)} in all)" if len(values) > k else "")


def class_distribution(pred: np.ndarray) -> np.ndarray:
    """Relative frequency of each of the 23 classes among index predictions."""
    pred = np.asarray(pred, dtype=np.int64)
    counts = np.bincount(pred, minlength=N_CLASSES).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def tv_distance(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Total variation distance between the predicted-class distributions of two sets."""
    return float(0.5 * np.abs(class_distribution(pred_a) - class_distribution(pred_b)).sum())


def build_submission(eval_ids: np.ndarray, eval_proba: np.ndarray) -> pd.DataFrame:
    """One row per evaluation id: the most probable code and its probability."""
    eval_proba = np.asarray(eval_proba)
    if eval_proba.shape != (len(eval_ids), N_CLASSES):
        raise ValueError(f"eval probabilities must have shape ({len(eval_ids)}, {N_CLASSES}), "
                         f"got {eval_proba.shape}")
    pred = eval_proba.argmax(axis=1)
    return pd.DataFrame({
        "id": np.asarray(eval_ids, dtype=object),
        "predicted_bst_second_level_class": np.asarray(CODES, dtype=object)[pred],
        "prediction_score": eval_proba[np.arange(len(pred)), pred].astype(np.float64),
    })


def _id_failures(ids: pd.Series, expected: pd.Index, where: str) -> list[str]:
    out = []
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        out.append(f"{where}: {len(dup)} evaluation ids appear more than once: {_first(dup)}")
    got = pd.Index(ids.unique())
    missing = expected.difference(got, sort=False)
    extra = got.difference(expected, sort=False)
    if len(missing):
        out.append(f"{where}: {len(missing)} evaluation ids missing: {_first(missing)}")
    if len(extra):
        out.append(f"{where}: {len(extra)} ids that are not evaluation ids: {_first(extra)}")
    if not out and not np.array_equal(ids.to_numpy(dtype=str), expected.to_numpy(dtype=str)):
        out.append(f"{where}: rows are not in evaluation metadata order")
    return out


def check_frame(sub: pd.DataFrame, expected_ids: Sequence[str] | np.ndarray,
                where: str = "submission") -> list[str]:
    """Failures of the file-level checks: columns, ids once each in order, codes, scores."""
    failures = []
    if list(sub.columns) != list(SUBMISSION_COLUMNS):
        return [f"{where}: header is {','.join(map(str, sub.columns))}, expected "
                f"{','.join(SUBMISSION_COLUMNS)}"]
    ids = sub["id"].astype(str)
    failures += _id_failures(ids, pd.Index(np.asarray(expected_ids, dtype=str)), where)
    codes = sub["predicted_bst_second_level_class"].astype(str)
    bad = codes[~codes.isin(list(CODES))]
    if len(bad):
        failures.append(f"{where}: {len(bad)} predictions are not one of the 23 codes: "
                        f"{_first(sorted(set(bad)))} (ids {_first(ids[bad.index])})")
    scores = pd.to_numeric(sub["prediction_score"], errors="coerce")
    bad_s = ~(np.isfinite(scores) & (scores > 0) & (scores <= 1))
    if bad_s.any():
        failures.append(f"{where}: {int(bad_s.sum())} prediction_score values outside (0, 1]: "
                        f"ids {_first(ids[bad_s])}")
    return failures


def member_failures(members: Sequence[MemberEval]) -> list[str]:
    """Every member has evaluation predictions made the same way as its OOF ones."""
    failures = []
    for m in members:
        name = f"member trial {m.trial_id or '?'} (run {m.run_id})"
        if not m.has_eval:
            failures.append(f"{name} has no evaluation predictions")
        if m.backbones_config is not None and m.backbones_tag != m.backbones_config:
            failures.append(f"{name}: bst.backbones tag {','.join(m.backbones_tag) or '(none)'} "
                            f"differs from config.yaml backbones {','.join(m.backbones_config)}")
        if m.has_eval and not m.eval_fp:
            failures.append(f"{name} has evaluation predictions but no bst.eval_fp tag")
    fps: dict[str, list[str]] = {}
    for m in members:
        if m.has_eval and m.eval_fp:
            fps.setdefault(m.eval_fp, []).append(m.trial_id or m.run_id)
    if len(fps) > 1:
        failures.append("members' evaluation predictions come from different evaluation data: "
                        + "; ".join(f"bst.eval_fp {fp}: trials {_first(t)}" for fp, t in fps.items()))
    return failures


def check_submission(sub: pd.DataFrame, expected_ids: Sequence[str] | np.ndarray, *,
                     members: Sequence[MemberEval], oof_pred: np.ndarray,
                     max_shift: float = DEFAULT_MAX_SHIFT,
                     where: str = "submission") -> dict[str, object]:
    """Run every self-check; return the report or raise SubmissionCheckError listing failures.

    The report always carries the eval-vs-OOF total variation distance of predicted classes.
    """
    failures = check_frame(sub, expected_ids, where)
    failures += member_failures(members)
    report: dict[str, object] = {"n": len(sub), "max_shift": max_shift, "tv_distance": None}
    codes = sub["predicted_bst_second_level_class"].astype(str) if len(sub.columns) == 3 else None
    if codes is not None and codes.isin(list(CODES)).all():
        eval_pred = np.array([INDEX[c] for c in codes], dtype=np.int64)
        dist = tv_distance(eval_pred, oof_pred)
        report["tv_distance"] = dist
        report["eval_distribution"] = dict(zip(CODES, class_distribution(eval_pred).round(6).tolist(),
                                               strict=True))
        report["oof_distribution"] = dict(zip(CODES, class_distribution(oof_pred).round(6).tolist(),
                                              strict=True))
        if not dist <= max_shift:
            e, o = class_distribution(eval_pred), class_distribution(oof_pred)
            worst = np.argsort(-np.abs(e - o))[:3]
            failures.append(
                f"predicted class distribution on the evaluation set is {dist:.3f} (total "
                f"variation) from the OOF one, above --max-shift {max_shift}: largest moves "
                + ", ".join(f"{CODES[j]} {o[j]:.3f} -> {e[j]:.3f}" for j in worst))
    report["failures"] = failures
    if failures:
        raise SubmissionCheckError(failures, where)
    return report


def write_submission(sub: pd.DataFrame, path: str | os.PathLike[str],
                     expected_ids: Sequence[str] | np.ndarray, **check_kwargs: object) -> dict[str, object]:
    """Check, write beside the current file, re-read and re-check it, then replace the current one.

    Checking what was written, not only what was meant, catches formatting accidents. The
    previous submission is replaced (``os.replace``, after an fsync) only once every check has
    passed: a refused or interrupted ensemble leaves it as it was.
    """
    path = Path(path)
    report = check_submission(sub, expected_ids, **check_kwargs)  # type: ignore[arg-type]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        sub.to_csv(tmp, index=False, float_format="%.6f")
        back = pd.read_csv(tmp, dtype={"id": str, "predicted_bst_second_level_class": str},
                           keep_default_na=False)
        failures = check_frame(back, expected_ids, where=str(path))
        if failures:
            raise SubmissionCheckError(failures, str(path))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:  # the rename itself survives a power cut
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return report


# ---------------------------------------------------------------------------------------
# scoring a submission against labels


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) != list(columns):
        raise ValueError(f"{path}: header is {','.join(frame.columns)}, expected {','.join(columns)}")
    return frame


def score_submission(submission_csv: str | os.PathLike[str],
                     labels_csv: str | os.PathLike[str]) -> dict[str, float]:
    """Official and strict hierarchical P/R/F and accuracies of a submission against labels.

    Raises ValueError naming the file and the ids for missing, extra or duplicated ids and
    invalid codes, all at once.
    """
    sub_path, lab_path = Path(submission_csv), Path(labels_csv)
    sub = _read_csv(sub_path, SUBMISSION_COLUMNS)
    lab = _read_csv(lab_path, ("id", "class"))
    problems = []
    for frame, p, col in ((sub, sub_path, "predicted_bst_second_level_class"), (lab, lab_path, "class")):
        dup = frame["id"][frame["id"].duplicated()].unique()
        if len(dup):
            problems.append(f"{p}: {len(dup)} duplicated ids: {_first(dup)}")
        bad = frame[~frame[col].isin(list(CODES))]
        if len(bad):
            problems.append(f"{p}: {len(bad)} rows with invalid codes "
                            f"{_first(sorted(set(bad[col])))}: ids {_first(bad['id'])}")
    missing = pd.Index(lab["id"]).difference(pd.Index(sub["id"]), sort=False)
    extra = pd.Index(sub["id"]).difference(pd.Index(lab["id"]), sort=False)
    if len(missing):
        problems.append(f"{sub_path}: {len(missing)} labelled ids have no prediction: {_first(missing)}")
    if len(extra):
        problems.append(f"{sub_path}: {len(extra)} ids are not in {lab_path}: {_first(extra)}")
    if problems:
        raise ValueError("cannot score:\n" + "\n".join(f"  - {p}" for p in problems))
    pred = sub.set_index("id").loc[lab["id"], "predicted_bst_second_level_class"].to_numpy()
    truth = lab["class"].to_numpy()
    hp, hr, hf = hierarchical_prf(truth, pred, variant="official")
    hps, hrs, hfs = hierarchical_prf(truth, pred, variant="strict")
    t_idx = np.array([INDEX[c] for c in truth])
    p_idx = np.array([INDEX[c] for c in pred])
    return {"hF": hf, "hP": hp, "hR": hr, "hF_strict": hfs, "hP_strict": hps, "hR_strict": hrs,
            "acc": float(np.mean(t_idx == p_idx)),
            "top_acc": float(np.mean(PARENT[t_idx] == PARENT[p_idx])), "n": float(len(truth))}


def add_score_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``bst-search score`` (reused by the lead's CLI)."""
    parser.add_argument("--submission", required=True, help="submission.csv to score")
    parser.add_argument("--labels", required=True, help="CSV with columns id,class")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return parser


def score_main(argv: list[str] | None = None) -> int:
    """``bst-search score --submission FILE --labels FILE``: official hF of a submission."""
    parser = add_score_arguments(argparse.ArgumentParser(
        prog="bst-search score", description="Score a submission against a label file."))
    return score_execute(parser.parse_args(argv))


def score_execute(args: argparse.Namespace) -> int:
    """Run on arguments parsed with :func:`add_score_arguments`."""
    try:
        result = score_submission(args.submission, args.labels)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.submission} against {args.labels} ({int(result['n'])} sounds)")
        print(f"  official hF {result['hF']:.4f}  (hP {result['hP']:.4f}, hR {result['hR']:.4f})")
        print(f"  strict   hF {result['hF_strict']:.4f}")
        print(f"  accuracy {result['acc']:.4f}, top-level accuracy {result['top_acc']:.4f}")
    return 0
