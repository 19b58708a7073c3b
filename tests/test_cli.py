"""The top-level command line wires every subcommand."""

import pandas as pd
import pytest

from bst_search.cli import build_parser, main


def test_every_subcommand_is_wired():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"synth", "data", "trial", "search", "ensemble", "score", "demo",
                                "extract", "report", "dashboard", "pseudo-label"}


@pytest.mark.parametrize("cmd", ["ensemble", "score", "search", "trial", "extract", "report",
                                 "dashboard", "pseudo-label"])
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: bst-search " + cmd in capsys.readouterr().out


def test_score_a_submission(tmp_path, capsys):
    sub = tmp_path / "submission.csv"
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "predicted_bst_second_level_class": ["fx-a", "fx-v", "m-sp"],
                  "prediction_score": [0.9, 0.8, 0.7]}).to_csv(sub, index=False)
    pd.DataFrame({"id": ["a", "b", "c"], "class": ["fx-a", "fx-a", "m-sp"]}).to_csv(labels, index=False)
    assert main(["score", "--submission", str(sub), "--labels", str(labels)]) == 0
    assert "official hF" in capsys.readouterr().out


def test_data_summary(tiny_data, capsys):
    assert main(["data", "--data", str(tiny_data["dev"])]) == 0
    out = capsys.readouterr().out
    assert "excluded" in out and "clap_audio" in out


def test_search_module_does_not_import_the_cli() -> None:
    """The parser lives with its command: search.py imports nothing from cli.py (no circle),
    and cli.py uses search.py's parser."""
    import ast
    import inspect

    import bst_search.cli
    import bst_search.search.cli

    tree = ast.parse(inspect.getsource(bst_search.search.cli))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "bst_search.cli" not in imported
    assert bst_search.cli.add_search_arguments is bst_search.search.cli.add_search_arguments
