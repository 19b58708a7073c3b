"""The metric against hand-computed cases and a plain per-class reference.

The reference follows the published evaluate.py logic sample by sample: per class present in
the truth, precision over samples predicted as the class (ZeroDivisionError -> the class is
dropped from all three means in the official variant), recall over samples of the class.
"""

import numpy as np
import pytest

from bst_search import metrics
from bst_search.taxonomy import CODES, N_CLASSES


def reference_prf(y_true, y_pred, lam=0.75, variant="official"):
    def top(c):
        return c.split("-")[0]

    hps, hrs, hfs = [], [], []
    for c in [c for c in CODES if c in set(y_true)]:
        p_scores, r_scores = [], []
        for p, t in zip(y_pred, y_true, strict=False):
            w = 1 if p == t else (lam if top(p) == top(t) else 0)
            inter = len({top(p), p} & {top(t), t})
            if p == c:
                p_scores.append(w * inter / 2)
            if t == c:
                r_scores.append(w * inter / 2)
        r = sum(r_scores) / len(r_scores)
        if not p_scores:
            if variant == "official":
                continue
            p = 0.0
        else:
            p = sum(p_scores) / len(p_scores)
        f = 0 if (p == 0 and r == 0) else 2 * p * r / (p + r)
        hps.append(p)
        hrs.append(r)
        hfs.append(f)
    return float(np.mean(hps)), float(np.mean(hrs)), float(np.mean(hfs))


def test_hand_computed_case_with_never_predicted_and_absent_class():
    # fx-a is never predicted; is-p is predicted but absent from the truth;
    # the second sample earns partial credit lam/2 = 0.375 (same top level).
    y_true = ["m-sp", "m-sp", "m-si", "fx-a"]
    y_pred = ["m-sp", "m-si", "m-si", "is-p"]
    f_class = 2 * 1 * 0.6875 / 1.6875
    hp, hr, hf = metrics.hierarchical_prf(y_true, y_pred)
    assert (hp, hr) == (0.84375, 0.84375)
    assert hf == pytest.approx(f_class, abs=1e-15)
    hp, hr, hf = metrics.hierarchical_prf(y_true, y_pred, variant="strict")
    assert (hp, hr) == (0.5625, 0.5625)
    assert hf == pytest.approx(2 * f_class / 3, abs=1e-15)


def test_lambda_partial_credit():
    # all predictions wrong at the second level but right at the top level
    y_true = ["fx-a", "fx-v"]
    y_pred = ["fx-v", "fx-a"]
    assert metrics.hierarchical_prf(y_true, y_pred, lam=0.75)[2] == pytest.approx(0.375)
    assert metrics.hierarchical_prf(y_true, y_pred, lam=1.0)[2] == pytest.approx(0.5)
    # across top levels: no credit
    assert metrics.hierarchical_prf(["fx-a"], ["m-sp"]) == (0.0, 0.0, 0.0)


def test_perfect_prediction_scores_one():
    codes = list(CODES)
    assert metrics.hierarchical_prf(codes, codes, variant="strict") == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("variant", ["official", "strict"])
def test_vectorised_agrees_with_reference(seed, variant):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    k = int(rng.integers(2, N_CLASSES + 1))  # few classes -> never-predicted ones happen
    classes = rng.choice(N_CLASSES, size=k, replace=False)
    y_true = [CODES[i] for i in rng.choice(classes, n)]
    y_pred = [t if rng.random() < 0.6 else CODES[rng.choice(classes)] for t in y_true]
    got = metrics.hierarchical_prf(y_true, y_pred, variant=variant)
    want = reference_prf(y_true, y_pred, variant=variant)
    assert got == pytest.approx(want, abs=1e-12)


def test_per_class_values_are_bit_identical_to_reference():
    rng = np.random.default_rng(3)
    y = rng.integers(0, N_CLASSES, 3000)
    p = np.where(rng.random(3000) < 0.7, y, rng.integers(0, N_CLASSES, 3000))
    pc = metrics.per_class_prf(metrics.confusion_matrix(y, p))
    for c in range(N_CLASSES):
        # single-class reference: restrict the macro mean to one class
        t = [CODES[i] for i in y]
        q = [CODES[i] for i in p]
        ps = [(1.0 if a == b else (0.75 * 1) / 2 if a.split("-")[0] == b.split("-")[0] else 0.0)
              for a, b in zip(q, t, strict=False) if a == CODES[c]]
        assert pc["hP"][c] == sum(ps) / len(ps)


def test_strict_never_above_official_when_a_class_is_never_predicted():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 0, 1, 1, 1, 1])
    assert metrics.hf_score(y, p, variant="strict") < metrics.hf_score(y, p, variant="official")


def test_evaluate_keys_and_top2():
    y = np.array([0, 3, 11])
    proba = np.full((3, N_CLASSES), 0.01)
    proba[0, 0] = 0.9        # right
    proba[1, [4, 3]] = [0.5, 0.4]   # right in top-2 only, same top level
    proba[2, [0, 11]] = [0.6, 0.3]  # wrong top level, right in top-2
    m = metrics.evaluate(y, proba)
    assert m["acc"] == pytest.approx(1 / 3)
    assert m["top_acc"] == pytest.approx(2 / 3)
    assert m["top2_acc"] == pytest.approx(1.0)
    assert m["top_top2_acc"] == pytest.approx(1.0)
    assert m["n_never_predicted"] == 2.0  # classes 3 (is-s) and 11 (fx-o) never predicted
    assert np.isnan(m["hF_fx-a"]) and m["hF_fx-o"] == 0.0
    assert m["hF_strict"] < m["hF"]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="y_pred\\[1\\] = 'nope'"):
        metrics.hierarchical_prf(["fx-a", "fx-a"], ["fx-a", "nope"])
    with pytest.raises(ValueError, match="variant"):
        metrics.hierarchical_prf(["fx-a"], ["fx-a"], variant="loose")
    with pytest.raises(ValueError, match="shape"):
        metrics.evaluate(np.zeros(3, int), np.zeros((3, 5)))
