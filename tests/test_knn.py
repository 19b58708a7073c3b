"""KNN priors: leave-one-out, weighting, retrieval space, blending."""

from __future__ import annotations

import numpy as np
import pytest

from bst_search.knn import KnnPrior, blend, retrieval_space


def test_retrieval_space_is_unit_norm_mean_cosine() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)) * 10, rng.normal(size=(5, 7))
    z = retrieval_space([a, b])
    assert z.shape == (5, 10) and np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-6)
    cos = lambda u, v: (u @ v) / np.linalg.norm(u) / np.linalg.norm(v)  # noqa: E731
    assert np.isclose(z[0] @ z[1], (cos(a[0], a[1]) + cos(b[0], b[1])) / 2, atol=1e-6)


def test_queries_get_the_label_of_their_neighbours() -> None:
    bank = np.eye(4, dtype=np.float32)
    labels = np.array([0, 1, 2, 2])
    prior = KnnPrior(bank, labels, k=1, tau=0.1).predict(np.array([[0, 0, 1, 0.1]], np.float32))
    assert prior.shape == (1, 23) and prior[0, 2] == pytest.approx(1.0)
    two = KnnPrior(bank, labels, k=2, tau=0.1).predict(np.array([[0.9, 0.8, 0, 0]], np.float32))
    w0 = np.exp(0.9 / 0.1) / (np.exp(0.9 / 0.1) + np.exp(0.8 / 0.1))
    assert two[0, 0] == pytest.approx(w0, rel=1e-5) and two[0, 1] == pytest.approx(1 - w0, rel=1e-4)


def test_leave_one_out_never_uses_the_row_itself() -> None:
    rng = np.random.default_rng(1)
    bank = retrieval_space([rng.normal(size=(50, 8))])
    labels = np.arange(50) % 23  # many singletons: with itself, a row would vote its own label
    loo = KnnPrior(bank, labels, k=1, tau=0.1, chunk=7).predict()
    nearest_other = np.argsort(-(bank @ bank.T - 2 * np.eye(50)), axis=1)[:, 0]
    assert np.array_equal(loo.argmax(axis=1), labels[nearest_other])
    assert np.allclose(loo.sum(axis=1), 1.0, atol=1e-6)


def test_bad_inputs_are_refused() -> None:
    bank = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="disagree"):
        KnnPrior(bank, np.array([0, 1]), k=1, tau=0.1)
    with pytest.raises(ValueError, match="query dim"):
        KnnPrior(bank, np.array([0, 1, 2]), k=1, tau=0.1).predict(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="alpha"):
        blend(np.ones((1, 23)), np.ones((1, 23)), 1.5)


def test_blend() -> None:
    p, q = np.full((2, 23), 1 / 23), np.eye(23)[[0, 1]]
    out = blend(p, q, 0.25)
    assert out.dtype == np.float32 and np.allclose(out, 0.75 * p + 0.25 * q)
