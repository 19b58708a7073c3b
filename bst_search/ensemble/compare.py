"""The one estimate to believe, and the methods side by side, read from ensemble.json's content.

Both are functions of the ``ensemble.json`` dict (:func:`bst_search.ensemble.summary.build_report`
writes it, the report reads it back from the ensemble run), so the printed summary,
``ensemble.json``'s ``estimate`` and the report's header and ensemble section cannot
disagree. The rule (:func:`headline`):

- with a holdout: the holdout score of the submitted recipe (the submitted method, its
  members' fold models averaged, the chosen metric's variant): it covers the search, the
  selection and the averaging, so it estimates the submission itself;
- without one: the submitted method's honest estimate (fold mean; SK fusion's cross-fitted
  out-of-fold score plays that role for ``sk``), a lower bound: every OOF row was
  predicted by one fold model, the submission averages all of them;
- without either (``--no-honest``, or a method with no honest estimate): its score on the
  rows it was chosen on, optimistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

HOLDOUT, HONEST, OPTIMISTIC = "holdout", "honest_lower_bound", "optimistic"
# (field of MethodRow, column label): like with like, pooled beside pooled
COLUMNS: tuple[tuple[str, str], ...] = (
    ("selected", "selected, pooled"),
    ("honest_pooled", "honest, pooled"),
    ("honest_fold_mean", "honest, fold mean"),
    ("holdout_averaged", "holdout, fold models averaged"),
    ("holdout_one_model", "holdout, one fold model"),
)
_LABELS = {"greedy": "greedy", "exhaustive": "exhaustive subset", "sk": "SK fusion"}


@dataclass(frozen=True)
class Headline:
    """The estimate to believe: its value, its kind, a short label and why, in words."""

    value: float
    kind: str  # HOLDOUT, HONEST or OPTIMISTIC
    label: str
    why: str
    std: float | None = None  # over the folds, for the honest estimate


@dataclass(frozen=True)
class MethodRow:
    """One method's estimates in the chosen metric; None where the method has none."""

    name: str
    submitted: bool
    selected: float | None  # on the rows it was chosen on
    honest_pooled: float | None  # nested CV (greedy, exhaustive) or cross-fitted (sk)
    honest_fold_mean: float | None
    honest_std: float | None
    holdout_averaged: float | None  # the submission's recipe
    holdout_one_model: float | None  # the OOF recipe

    @property
    def label(self) -> str:
        return _LABELS.get(self.name, self.name)


def _key(report: dict[str, Any]) -> str:
    return "hF_strict" if report["options"]["metric"] == "strict" else "hF"


def _honest(report: dict[str, Any], name: str) -> dict[str, float] | None:
    """A method's out-of-fold record in the chosen metric: pooled, fold mean, std."""
    key = _key(report)
    if name == "sk":
        sk = report.get("sk")
        return None if not sk else {"pooled": sk["score"],
                                    "fold_mean": float(np.mean(sk["per_fold"])),
                                    "std": float(np.std(sk["per_fold"]))}
    hon = report.get("honest") if name == "greedy" else (report.get(name) or {}).get("honest")
    return None if not hon else {"pooled": hon[f"pooled_{key}"], "fold_mean": hon["mean"],
                                 "std": hon["std"]}


def _selected(report: dict[str, Any], name: str) -> float | None:
    if name == "greedy":
        return report["selected"]["score"]
    rec = report.get(name) if name != "sk" else None
    return rec["score"] if rec else None


def method_rows(report: dict[str, Any]) -> list[MethodRow]:
    """Greedy, exhaustive and SK fusion (those that ran), every estimate side by side."""
    key, ho = _key(report), report.get("holdout") or {}
    rows = []
    for name in ("greedy", "exhaustive", "sk"):
        if name != "greedy" and not report.get(name):
            continue
        hon, h = _honest(report, name), ho.get(name)
        rows.append(MethodRow(
            name=name, submitted=report.get("method", "greedy") == name,
            selected=_selected(report, name),
            honest_pooled=hon["pooled"] if hon else None,
            honest_fold_mean=hon["fold_mean"] if hon else None,
            honest_std=hon["std"] if hon else None,
            holdout_averaged=h["fold_models_averaged"][key] if h else None,
            holdout_one_model=h["one_fold_model_mean"][key] if h else None))
    return rows


def method_table(report: dict[str, Any]) -> list[dict[str, str]]:
    """:func:`method_rows` formatted: one dict per method, the column labels as keys."""
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    out = []
    for r in method_rows(report):
        cells = {"method": r.label + (" [submitted]" if r.submitted else "")}
        for field, label in COLUMNS:
            cells[label] = fmt(getattr(r, field))
            if field == "honest_fold_mean" and r.honest_std is not None:
                cells[label] += f" ± {r.honest_std:.4f}"
        out.append(cells)
    return out


def headline(report: dict[str, Any]) -> Headline:
    """The number to believe for the submission, by the rule of the module docstring."""
    method, key = report.get("method", "greedy"), _key(report)
    variant = "strict" if key == "hF_strict" else "official"
    label = _LABELS.get(method, method)
    ho = (report.get("holdout") or {}).get(method)
    if ho is not None:
        n, models = report["holdout"]["n"], len(report["holdout"]["fold_models"])
        return Headline(
            ho["fold_models_averaged"][key], HOLDOUT,
            f"holdout score of the submission: {label}, {models} fold models averaged",
            f"it is the {variant} hF, on {n} development sounds set aside before the search, "
            f"of exactly what was submitted: the {label} ensemble with each member's {models} "
            f"fold models averaged. No trial and no selection saw those sounds, so it covers the "
            f"search, the selection and the averaging; its only error is the sampling noise "
            f"of {n} sounds.")
    hon = _honest(report, method)
    if hon is not None:
        how = ("cross-fitted out-of-fold score (fusers trained on four folds, scored on the "
               "fifth)" if method == "sk" else
               "honest estimate (the selection re-run on four folds, scored on the fifth)")
        return Headline(
            hon["fold_mean"], HONEST, f"{label} {how.split(' (')[0]}, a lower bound",
            f"there is no holdout, so this is the {label} {how}, {variant} hF, fold mean. "
            f"Read it as a lower bound: every out-of-fold row was predicted by one fold model, "
            f"while the submission averages all of them, which usually scores higher. Run the "
            f"search with --holdout-fraction F for an estimate of the submission itself.",
            hon["std"])
    return Headline(
        report.get("submitted", {}).get("score", report["selected_score"]), OPTIMISTIC, f"{label} ensemble on its own rows, optimistic",
        f"there is no holdout and no honest estimate (--no-honest), so this is the {label} "
        f"ensemble's {variant} hF on the very rows it was chosen on: optimistic. Drop "
        f"--no-honest, or search with --holdout-fraction F, for a number to believe.")
