"""hierarchical_ce: coarse logits, smoothing, class and per-sample weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bst_search.config import ConfigError, load
from bst_search.losses import LOSSES, HierarchicalCE, build_loss, inverse_freq_weights
from bst_search.taxonomy import N_CLASSES, PARENT


def cfg(**over: object) -> dict:
    return load(None, over)


def test_registry_and_unknown_name() -> None:
    assert "hierarchical_ce" in LOSSES
    c = cfg()
    c["loss"]["name"] = "nope_loss"
    with pytest.raises(ConfigError, match="nope_loss"):
        build_loss(c, None)


def test_coarse_logits_by_hand() -> None:
    logits = torch.arange(N_CLASSES, dtype=torch.float64).unsqueeze(0) / 10
    lse = HierarchicalCE(coarse="logsumexp").coarse_logits(logits)[0]
    summed = HierarchicalCE(coarse="sum").coarse_logits(logits)[0]
    row = logits[0].tolist()
    for t in range(5):
        kids = [row[c] for c in range(N_CLASSES) if PARENT[c] == t]
        assert lse[t].item() == pytest.approx(math.log(sum(math.exp(v) for v in kids)))
        assert summed[t].item() == pytest.approx(sum(kids))
    assert not torch.allclose(lse, summed)
    # logsumexp: softmax over top levels = summed children probabilities
    p = logits.softmax(1)[0]
    for t in range(5):
        assert lse.softmax(0)[t].item() == pytest.approx(p[torch.as_tensor(PARENT == t)].sum().item())


def test_alpha_zero_is_plain_smoothed_ce() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(17, N_CLASSES), torch.randint(0, N_CLASSES, (17,))
    loss = build_loss(cfg(**{"loss.alpha": 0.0, "loss.label_smoothing": 0.1}), None)
    assert loss(logits, y).item() == pytest.approx(
        F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-6)


@pytest.mark.parametrize("coarse", ["logsumexp", "sum"])
def test_alpha_adds_coarse_ce(coarse: str) -> None:
    torch.manual_seed(1)
    logits, y = torch.randn(9, N_CLASSES), torch.randint(0, N_CLASSES, (9,))
    loss = build_loss(cfg(**{"loss.alpha": 0.3, "loss.label_smoothing": 0.05, "loss.coarse": coarse}), None)
    parent = torch.as_tensor(PARENT)
    onehot = (parent[None, :] == torch.arange(5)[:, None]).double()
    zc = (torch.logsumexp(logits[:, None, :].double().masked_fill(onehot == 0, -1e30), -1)
          if coarse == "logsumexp" else logits.double() @ onehot.T)
    expect = (F.cross_entropy(logits, y, label_smoothing=0.05)
              + 0.3 * F.cross_entropy(zc, parent[y], label_smoothing=0.05))
    assert loss(logits, y).item() == pytest.approx(expect.item(), rel=1e-5)


def test_inverse_freq_weights() -> None:
    counts = np.zeros(N_CLASSES)
    counts[:3] = [10, 30, 60]
    w = inverse_freq_weights(counts)
    assert w[:3] == pytest.approx([100 / (23 * 10), 100 / (23 * 30), 100 / (23 * 60)])
    assert (w[3:] == 0).all()
    assert (w[:3] * counts[:3]).sum() == pytest.approx(3 * 100 / 23)  # each class same total


def test_class_weighted_loss_matches_torch_and_survives_absent_classes() -> None:
    counts = np.zeros(N_CLASSES, dtype=np.int64)
    counts[[0, 4, 9]] = [5, 50, 20]
    torch.manual_seed(2)
    y = torch.as_tensor(np.random.default_rng(0).choice([0, 4, 9], 32))
    logits = torch.randn(32, N_CLASSES)
    loss = build_loss(cfg(**{"loss.class_weights": "inverse_freq", "loss.label_smoothing": 0.1}), counts)
    w = torch.as_tensor(inverse_freq_weights(counts), dtype=torch.float32)
    expect = F.cross_entropy(logits, y, weight=w, label_smoothing=0.1)
    got = loss(logits, y)
    assert torch.isfinite(got) and got.item() == pytest.approx(expect.item(), rel=1e-5)


def test_per_sample_weights_are_a_weighted_mean() -> None:
    torch.manual_seed(3)
    logits, y = torch.randn(6, N_CLASSES), torch.randint(0, N_CLASSES, (6,))
    loss = build_loss(cfg(**{"loss.alpha": 0.5, "loss.label_smoothing": 0.0}), None)
    s = torch.tensor([1.0, 0.0, 2.0, 0.5, 0.0, 1.0])
    per = torch.stack([loss(logits[i:i + 1], y[i:i + 1]) for i in range(6)])
    assert loss(logits, y, s).item() == pytest.approx(((s * per).sum() / s.sum()).item(), rel=1e-5)
    assert loss(logits, y, torch.ones(6)).item() == pytest.approx(loss(logits, y).item())
    # rows with weight 0 do not matter
    logits2 = logits.clone()
    logits2[[1, 4]] = 100 * torch.randn(2, N_CLASSES)
    assert loss(logits2, y, s).item() == pytest.approx(loss(logits, y, s).item(), rel=1e-6)
