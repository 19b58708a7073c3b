"""Submission self-checks (each failure reported clearly) and scoring against labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bst_search.ensemble.outputs import _log_outputs, clear_outputs
from bst_search.ensemble.submission import (
    MemberEval,
    SubmissionCheckError,
    build_submission,
    check_submission,
    score_main,
    score_submission,
    tv_distance,
    write_submission,
)
from bst_search.metrics import hierarchical_prf
from bst_search.taxonomy import CODES, N_CLASSES

IDS = np.array([f"e{i:03d}" for i in range(46)], dtype=object)


def _proba(pred: np.ndarray) -> np.ndarray:
    p = np.full((len(pred), N_CLASSES), 0.2 / (N_CLASSES - 1))
    p[np.arange(len(pred)), pred] = 0.8
    return p


def _member(i: int = 0, **kw) -> MemberEval:
    base = dict(run_id=f"run{i}", trial_id=f"{i:04d}", has_eval=True, eval_fp="E1",
                backbones_tag=["clap_audio", "clap_text"],
                backbones_config=["clap_audio", "clap_text"])
    base.update(kw)
    return MemberEval(**base)


def _good():
    pred = np.arange(len(IDS)) % N_CLASSES
    sub = build_submission(IDS, _proba(pred))
    return sub, pred


def _fail(sub, **kw) -> list[str]:
    args = dict(members=[_member()], oof_pred=_good()[1], max_shift=0.15)
    args.update(kw)
    with pytest.raises(SubmissionCheckError) as err:
        check_submission(sub, IDS, **args)
    assert "self-check(s) failed" in str(err.value)
    return err.value.failures


def test_good_submission_passes_and_reports_distance(tmp_path):
    sub, pred = _good()
    report = write_submission(sub, tmp_path / "submission.csv", IDS, members=[_member()],
                              oof_pred=pred, max_shift=0.15)
    assert report["tv_distance"] == 0.0
    back = pd.read_csv(tmp_path / "submission.csv", dtype=str)
    assert list(back.columns) == ["id", "predicted_bst_second_level_class", "prediction_score"]
    assert back["id"].tolist() == IDS.tolist()
    assert not list(tmp_path.glob(".*tmp"))


def test_missing_extra_duplicate_and_order():
    sub, _ = _good()
    f = _fail(sub.iloc[1:])
    assert any("1 evaluation ids missing: e000" in x for x in f)
    extra = pd.concat([sub, sub.iloc[:1].assign(id="zzz")], ignore_index=True)
    assert any("not evaluation ids: zzz" in x for x in _fail(extra))
    dup = pd.concat([sub, sub.iloc[:1]], ignore_index=True)
    assert any("more than once: e000" in x for x in _fail(dup))
    assert any("not in evaluation metadata order" in x for x in _fail(sub.iloc[::-1]))


def test_invalid_codes_and_scores():
    sub, _ = _good()
    bad = sub.copy()
    bad.loc[0, "predicted_bst_second_level_class"] = "fx"
    bad.loc[1, "predicted_bst_second_level_class"] = "ss-other"
    f = _fail(bad)
    assert any("not one of the 23 codes: fx, ss-other" in x and "e000" in x for x in f)
    bad = sub.copy()
    bad.loc[3, "prediction_score"] = 0.0
    bad.loc[4, "prediction_score"] = 1.5
    assert any("outside (0, 1]: ids e003, e004" in x for x in _fail(bad))


def test_member_checks():
    sub, _ = _good()
    f = _fail(sub, members=[_member(0), _member(1, has_eval=False)])
    assert any("trial 0001 (run run1) has no evaluation predictions" in x for x in f)
    f = _fail(sub, members=[_member(0), _member(1, backbones_config=["panns"])])
    assert any("bst.backbones tag clap_audio,clap_text differs from config.yaml backbones panns"
               in x for x in f)
    f = _fail(sub, members=[_member(0), _member(1, eval_fp="E2")])
    assert any("different evaluation data" in x and "E1" in x and "E2" in x for x in f)


def test_distribution_shift_refused_with_distance():
    sub, pred = _good()
    shifted = build_submission(IDS, _proba(np.zeros(len(IDS), dtype=int)))
    f = _fail(shifted, oof_pred=pred)
    assert any("total variation" in x and "above --max-shift 0.15" in x and "m-sp" in x for x in f)
    assert tv_distance(np.zeros(46, dtype=int), pred) == pytest.approx(1 - 2 / 46)


def test_all_failures_reported_together():
    sub, _ = _good()
    bad = sub.iloc[1:].copy()
    bad.iloc[0, 2] = -1.0
    f = _fail(bad, members=[_member(0, has_eval=False)])
    assert len(f) >= 3


def _previous(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text("id,predicted_bst_second_level_class,prediction_score\ne000,m-sp,0.9\n")
    return path, path.read_bytes()


def test_refused_submission_leaves_the_previous_one(tmp_path):
    path, before = _previous(tmp_path)
    sub, pred = _good()
    shifted = build_submission(IDS, _proba(np.zeros(len(IDS), dtype=int)))
    with pytest.raises(SubmissionCheckError, match="above --max-shift"):
        write_submission(shifted, path, IDS, members=[_member()], oof_pred=pred, max_shift=0.15)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]
    # what is written is checked too: a score that rounds to 0.000000 in the file
    tiny = sub.copy()
    tiny.loc[3, "prediction_score"] = 1e-7
    with pytest.raises(SubmissionCheckError, match=rf"{path}.*outside \(0, 1\]"):
        write_submission(tiny, path, IDS, members=[_member()], oof_pred=pred, max_shift=0.15)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]
    write_submission(sub, path, IDS, members=[_member()], oof_pred=pred, max_shift=0.15)
    assert pd.read_csv(path, dtype=str)["id"].tolist() == IDS.tolist()
    assert sorted(tmp_path.iterdir()) == [path]


def test_interrupted_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path, before = _previous(tmp_path)
    sub, pred = _good()

    def disk_full(self, target, **kw):
        Path(target).write_text("id,predicted_bst_sec")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_submission(sub, path, IDS, members=[_member()], oof_pred=pred, max_shift=0.15)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


class _Recorder:
    """The two MlflowClient calls that log a run's artifacts, recorded."""

    def __init__(self) -> None:
        self.logged: list[str] = []

    def log_artifact(self, run_id: str, local: str) -> None:
        self.logged.append(Path(local).name)

    def log_artifacts(self, run_id: str, local: str, artifact_path: str) -> None:
        self.logged.append(artifact_path + "/")


def test_new_outputs_keep_the_previous_submission_out_of_a_refused_run(tmp_path):
    path, before = _previous(tmp_path)
    for name in ("ensemble.json", "oof.parquet", "selection_curve.png"):
        (tmp_path / name).write_text("old")
    clear_outputs(tmp_path)
    assert sorted(tmp_path.iterdir()) == [path] and path.read_bytes() == before
    (tmp_path / "ensemble.json").write_text("{}")
    (tmp_path / "plots").mkdir()
    for status, logged in (("refused", ["ensemble.json", "plots/"]),
                           ("written", ["ensemble.json", "plots/", "submission.csv"])):
        client = _Recorder()
        _log_outputs(client, "r1", tmp_path, status)
        assert client.logged == logged


def _labels(tmp_path, truth):
    pd.DataFrame({"id": IDS, "class": np.asarray(CODES)[truth]}).to_csv(tmp_path / "labels.csv",
                                                                         index=False)
    return tmp_path / "labels.csv"


def test_score_submission(tmp_path, capsys):
    sub, pred = _good()
    truth = pred.copy()
    truth[:5] = (truth[:5] + 1) % N_CLASSES
    sub.to_csv(tmp_path / "sub.csv", index=False)
    labels = _labels(tmp_path, truth)
    got = score_submission(tmp_path / "sub.csv", labels)
    t, p = np.asarray(CODES)[truth], np.asarray(CODES)[pred]
    assert got["hF"] == pytest.approx(hierarchical_prf(t, p, variant="official")[2])
    assert got["hF_strict"] == pytest.approx(hierarchical_prf(t, p, variant="strict")[2])
    assert got["acc"] == pytest.approx(41 / 46)
    # order of the submission rows does not matter for scoring
    sub.iloc[::-1].to_csv(tmp_path / "rev.csv", index=False)
    assert score_submission(tmp_path / "rev.csv", labels)["hF"] == got["hF"]
    assert score_main(["--submission", str(tmp_path / "sub.csv"), "--labels", str(labels)]) == 0
    assert "official hF" in capsys.readouterr().out


def test_score_submission_errors_name_file_and_ids(tmp_path, capsys):
    sub, pred = _good()
    labels = _labels(tmp_path, pred)
    bad = pd.concat([sub.iloc[2:], sub.iloc[2:3], sub.iloc[:1].assign(id="x9")], ignore_index=True)
    bad.loc[0, "predicted_bst_second_level_class"] = "nope"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError) as err:
        score_submission(tmp_path / "bad.csv", labels)
    msg = str(err.value)
    assert "bad.csv: 1 duplicated ids: e002" in msg
    assert "invalid codes nope: ids e002" in msg
    assert "2 labelled ids have no prediction: e000, e001" in msg
    assert "1 ids are not in" in msg and "x9" in msg
    sub.rename(columns={"id": "ID"}).to_csv(tmp_path / "hdr.csv", index=False)
    with pytest.raises(ValueError, match="hdr.csv: header is ID"):
        score_submission(tmp_path / "hdr.csv", labels)
    assert score_main(["--submission", str(tmp_path / "bad.csv"), "--labels", str(labels)]) == 2
    assert "cannot score" in capsys.readouterr().err
