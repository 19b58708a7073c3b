"""The method registry: ``--method`` choices come from it, and a new method is one class."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import test_ensemble_mlflow as mlflow_tests

from bst_search.ensemble import main
from bst_search.ensemble.cli import add_arguments
from bst_search.ensemble.methods import (
    DEFAULT_METHOD,
    METHODS,
    EnsembleMethod,
    MethodFit,
    MethodInput,
    register_method,
)
from bst_search.ensemble.scoring import CandidateMatrix, combine, single_scores
from bst_search.ensemble.selection import SelectionOptions

store = mlflow_tests.store  # the MLflow store of the coordinator tests, reused as is


class BestSingle(EnsembleMethod):
    """A third method in a dozen lines: the best single candidate as an ensemble of one."""

    name = "best-single"
    estimate = "optimistic (the best of many on these rows)"
    members_meaning = "the best single candidate, weight 1"

    def __init__(self, combine_mode: str) -> None:
        self.combine = combine_mode

    @classmethod
    def from_args(cls, args: argparse.Namespace, opts: SelectionOptions) -> BestSingle:
        return cls(opts.combine)

    def fit(self, data: MethodInput) -> MethodFit:
        singles = single_scores(data.stats, data.y, np.arange(len(data.y)), "strict")
        weights = np.zeros(data.X.shape[0])
        weights[int(np.argmax(singles))] = 1.0
        return MethodFit(oof=combine(data.X, weights, None, self.combine),
                         members=np.flatnonzero(weights), counts=(weights > 0).astype(np.int64),
                         weights=weights)

    def predict(self, fit: MethodFit, rows: CandidateMatrix) -> np.ndarray:
        return combine(rows[fit.members], fit.weights[fit.members], None, self.combine)


def _method_choices() -> list[str]:
    parser = add_arguments(argparse.ArgumentParser())
    return next(a for a in parser._actions if a.dest == "method").choices


def test_the_registry_holds_the_methods_and_feeds_the_cli():
    assert list(METHODS) == ["greedy", "sk", "exhaustive"] and DEFAULT_METHOD == "greedy"
    assert _method_choices() == list(METHODS)
    with pytest.raises(ValueError, match="already registered"):
        register_method(type("Other", (BestSingle,), {"name": "sk"}))


def test_a_registered_method_is_fitted_scored_and_submitted(store, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.setitem(METHODS, BestSingle.name, BestSingle)
    assert BestSingle.name in _method_choices()
    out = tmp_path / "best"
    args = mlflow_tests._args(store, out, "--method", BestSingle.name, "--no-honest",
                              "--no-log", "--sk-epochs", "2")
    assert main(args) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "ensemble.json").read_text())
    assert rep["method"] == rep["submitted"]["method"] == BestSingle.name
    assert rep["submitted"]["estimate"] == BestSingle.estimate
    assert rep["members_meaning"] == BestSingle.members_meaning
    assert [m["run_id"] for m in rep["members"]] == [rep["best_single"]["run_id"]]
    assert rep["submitted"]["hF_strict"] == pytest.approx(rep["best_single"]["hF_strict"])
    assert rep["eval"]["method"] == BestSingle.name and rep["eval"]["submission_written"]
    assert rep["sk"] is not None and rep["selected"]["hF_strict"] > 0  # the others still ran
    row = next(line for line in printed.splitlines() if f"{BestSingle.name} (OOF)" in line)
    assert "[submitted]" in row
    assert (out / "submission.csv").is_file() and (out / "eval.parquet").is_file()
