import numpy as np
import pytest

from bst_search import taxonomy as tx


def test_order_and_counts():
    assert tx.TOP_LEVELS == ("m", "is", "sp", "fx", "ss")
    assert len(tx.CODES) == 23
    assert tx.CODES[:3] == ("m-sp", "m-si", "m-m")
    assert tx.CODES[-4:] == ("ss-n", "ss-i", "ss-u", "ss-s")
    assert tx.PROBA_COLUMNS[0] == "p_m-sp"


def test_parent_and_class_idx_are_monotonic():
    # taxonomy order must equal ascending class_idx order (the folds rely on it)
    idx = [tx.CLASS_IDX[c] for c in tx.CODES]
    assert idx == sorted(idx)
    assert list(tx.PARENT) == [tx.TOP_LEVELS.index(c.split("-")[0]) for c in tx.CODES]
    assert tx.CLASS_IDX["fx"] == 400 and tx.CLASS_IDX["fx-other"] == 499


@pytest.mark.parametrize("code,task,excluded", [
    ("fx-a", True, False), ("fx", False, True), ("ss-other", False, True), ("xx-y", False, False)])
def test_exclusion_rule(code, task, excluded):
    assert tx.is_task_code(code) is task
    assert tx.is_excluded_code(code) is excluded


def test_encode_decode_roundtrip_and_error():
    codes = ["fx-el", "m-sp", "ss-s"]
    assert list(tx.decode(tx.encode(codes))) == codes
    with pytest.raises(KeyError, match="fx-zz"):
        tx.encode(["fx-a", "fx-zz"])


def test_description_table_covers_all_codes():
    rows = tx.description_table()
    keys = [r["class_key"] for r in rows]
    assert set(tx.CODES) <= set(keys)
    assert len(keys) == 23 + 5 + 5
    assert np.all(np.diff([r["class_idx"] for r in rows]) > 0)
