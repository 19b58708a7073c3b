"""The tiny synthetic release's development and crowd sets, loaded once for the data tests."""

from __future__ import annotations

import pytest

from bst_search.data import Dataset, load_dataset


@pytest.fixture(scope="session")
def dev(tiny_data) -> Dataset:
    return load_dataset(tiny_data["dev"])


@pytest.fixture(scope="session")
def crowd(tiny_data) -> Dataset:
    return load_dataset(tiny_data["crowd"])
