import numpy as np
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

from bst_search.folds import assign_folds, fold_fingerprint, train_val_split


def _labels(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return rng.choice(23, n, p=np.linspace(1, 10, 23) / np.linspace(1, 10, 23).sum())


def test_folds_match_the_official_protocol():
    y = _labels()
    fold = assign_folds(y)
    skf = StratifiedKFold(5, shuffle=True, random_state=1821)
    for k, (trval, test) in enumerate(skf.split(np.zeros(len(y)), y)):
        assert np.array_equal(np.flatnonzero(fold == k), np.sort(test))
        sss = StratifiedShuffleSplit(1, test_size=0.2, random_state=1821)
        tr, va = next(sss.split(np.zeros(len(trval)), y[trval]))
        got_tr, got_va = train_val_split(y, fold, k)
        assert np.array_equal(got_tr, trval[tr]) and np.array_equal(got_va, trval[va])
        assert not set(got_tr) & set(test) and not set(got_va) & set(test)


def test_fingerprint_changes_with_assignment():
    y = _labels()
    ids = np.array([str(i) for i in range(len(y))], dtype=object)
    a = fold_fingerprint(ids, assign_folds(y))
    assert a == fold_fingerprint(ids, assign_folds(y))
    assert a != fold_fingerprint(ids, assign_folds(y, seed=7))
