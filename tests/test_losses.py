"""Loss terms: values, gradients, that each one can be optimised, and the weighted sum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bst_search.config import LOSS_WEIGHTS, ConfigError, load
from bst_search.losses import (
    LOSS_TERMS,
    CoarseCE,
    HierarchicalProxy,
    Targets,
    TrainingLoss,
    build_loss,
    inverse_freq_weights,
)
from bst_search.taxonomy import N_CLASSES, N_TOP, PARENT

B, P = 64, 16
PROXY = {"model.name": "late_fusion", "model.head": "proxy"}
# the model output keys each term reads (and must send gradients to)
USES = {
    "ce": ("logits",), "alpha": ("logits",), "focal": ("logits",), "top_penalty": ("logits",),
    "knn_distill": ("logits",), "top": ("top_logits",), "supcon": ("embedding",),
    "proxy": ("embedding", "proxies", "top_proxies"), "proxy_anchor": ("embedding", "proxies"),
}
TERMS = sorted(USES)


def cfg(**over: object) -> dict:
    return load(None, over)


def term_cfg(name: str) -> dict:
    """A valid configuration with the term ``name`` on (alone where the rules allow)."""
    over: dict[str, object] = {f"loss.{name}": 1.0}
    if name in ("proxy", "proxy_anchor", "top"):
        over.update(PROXY)
    return load(None, over)


def make_term(name: str, counts: np.ndarray | None = None) -> nn.Module:
    return LOSS_TERMS[name].from_config(term_cfg(name), counts)


def outputs(seed: int = 0, n: int = B) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"logits": torch.randn(n, N_CLASSES, generator=g),
            "embedding": torch.randn(n, P, generator=g),
            "top_logits": torch.randn(n, N_TOP, generator=g),
            "proxies": torch.randn(N_CLASSES, P, generator=g),
            "top_proxies": torch.randn(N_TOP, P, generator=g)}


def targets(seed: int = 0, n: int = B, weight: bool = False) -> Targets:
    g = torch.Generator().manual_seed(seed + 100)
    y = torch.arange(n) % N_CLASSES
    soft = (torch.randn(n, N_CLASSES, generator=g) * 2).softmax(1)
    w = torch.rand(n, generator=g) + 0.1 if weight else None
    return Targets(y=y, weight=w, soft=soft)


def test_term_names_are_the_weight_keys() -> None:
    assert set(LOSS_TERMS) == {k.removeprefix("loss.") for k in LOSS_WEIGHTS} == set(USES)
    for name, cls in LOSS_TERMS.items():
        assert cls.name == name


@pytest.mark.parametrize("name", TERMS)
def test_finite_nonnegative_and_differentiable(name: str) -> None:
    out = {k: v.requires_grad_() for k, v in outputs().items()}
    for weight in (False, True):
        value = make_term(name)(out, targets(weight=weight))
        assert value.ndim == 0 and torch.isfinite(value) and value.item() >= 0
    value.backward()
    for k, v in out.items():
        if k in USES[name]:
            assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0, k
        else:
            assert v.grad is None, f"{name} touched {k}"


def _fit(term: nn.Module, t: Targets, steps: int = 150, lr: float = 0.05) -> tuple[float, float]:
    params = nn.ParameterDict({k: nn.Parameter(v) for k, v in outputs(seed=1).items()})
    opt = torch.optim.Adam(params.parameters(), lr=lr)
    first = last = 0.0
    for i in range(steps + 1):
        loss = term(dict(params), t)
        if i == 0:
            first = loss.item()
        last = loss.item()
        if i < steps:
            opt.zero_grad()
            loss.backward()
            opt.step()
    return first, last


def _supcon_floor(t: Targets) -> float:
    """SupCon cannot go below mean_i log|P(i)| (all positives collapsed, negatives far)."""
    top = PARENT[t.y.numpy()]
    n_pos = np.array([(top == top[i]).sum() - 1 for i in range(len(top))])
    return float(np.log(n_pos[n_pos > 0]).mean())


@pytest.mark.parametrize("name", TERMS)
def test_optimising_the_outputs_makes_the_term_fall(name: str) -> None:
    t = targets(seed=2)
    first, last = _fit(make_term(name), t)
    floor = _supcon_floor(t) if name == "supcon" else 0.0
    assert last - floor < 0.5 * (first - floor), (first, last, floor)


# ---------------------------------------------------------------------------- ce, alpha, focal


def test_ce_equals_torch() -> None:
    out, t = outputs(), targets()
    c = cfg(**{"loss.label_smoothing": 0.0})
    got = LOSS_TERMS["ce"].from_config(c, None)(out, t)
    assert got.item() == pytest.approx(F.cross_entropy(out["logits"], t.y).item(), rel=1e-6)
    c = cfg(**{"loss.label_smoothing": 0.1})
    got = LOSS_TERMS["ce"].from_config(c, None)(out, t)
    assert got.item() == pytest.approx(F.cross_entropy(out["logits"], t.y, label_smoothing=0.1).item(),
                                       rel=1e-6)


def test_coarse_logits_by_hand() -> None:
    logits = torch.arange(N_CLASSES, dtype=torch.float64).unsqueeze(0) / 10
    lse = CoarseCE(coarse="logsumexp").coarse_logits(logits)[0]
    summed = CoarseCE(coarse="sum").coarse_logits(logits)[0]
    row = logits[0].tolist()
    for t in range(N_TOP):
        kids = [row[c] for c in range(N_CLASSES) if PARENT[c] == t]
        assert lse[t].item() == pytest.approx(math.log(sum(math.exp(v) for v in kids)))
        assert summed[t].item() == pytest.approx(sum(kids))
    assert not torch.allclose(lse, summed)
    # logsumexp: up to the normaliser, the log of the summed child probabilities
    p = logits.softmax(1)[0]
    for t in range(N_TOP):
        assert lse.softmax(0)[t].item() == pytest.approx(p[torch.as_tensor(PARENT == t)].sum().item())
        assert (lse[t] - logits[0].logsumexp(0)).item() == pytest.approx(
            math.log(p[torch.as_tensor(PARENT == t)].sum().item()))
    with pytest.raises(ConfigError, match="loss.coarse"):
        CoarseCE(coarse="mean")


@pytest.mark.parametrize("coarse", ["logsumexp", "sum"])
def test_ce_plus_alpha_is_fine_plus_coarse_ce(coarse: str) -> None:
    torch.manual_seed(1)
    logits, y = torch.randn(9, N_CLASSES), torch.randint(0, N_CLASSES, (9,))
    loss = build_loss(cfg(**{"loss.alpha": 0.3, "loss.label_smoothing": 0.05, "loss.coarse": coarse}), None)
    parent = torch.as_tensor(PARENT)
    onehot = (parent[None, :] == torch.arange(N_TOP)[:, None]).double()
    zc = (torch.logsumexp(logits[:, None, :].double().masked_fill(onehot == 0, -1e30), -1)
          if coarse == "logsumexp" else logits.double() @ onehot.T)
    expect = (F.cross_entropy(logits, y, label_smoothing=0.05)
              + 0.3 * F.cross_entropy(zc, parent[y], label_smoothing=0.05))
    assert loss({"logits": logits}, Targets(y)).item() == pytest.approx(expect.item(), rel=1e-5)


def test_inverse_freq_weights() -> None:
    counts = np.zeros(N_CLASSES)
    counts[:3] = [10, 30, 60]
    w = inverse_freq_weights(counts)
    assert w[:3] == pytest.approx([100 / (23 * 10), 100 / (23 * 30), 100 / (23 * 60)])
    assert (w[3:] == 0).all()
    assert (w[:3] * counts[:3]).sum() == pytest.approx(3 * 100 / 23)  # each class same total
    with pytest.raises(ValueError, match="all zero"):
        inverse_freq_weights(np.zeros(N_CLASSES))


def test_class_weighted_ce_matches_torch_and_survives_absent_classes() -> None:
    counts = np.zeros(N_CLASSES, dtype=np.int64)
    counts[[0, 4, 9]] = [5, 50, 20]
    torch.manual_seed(2)
    y = torch.as_tensor(np.random.default_rng(0).choice([0, 4, 9], 32))
    logits = torch.randn(32, N_CLASSES)
    c = cfg(**{"loss.class_weights": "inverse_freq", "loss.label_smoothing": 0.1})
    w = torch.as_tensor(inverse_freq_weights(counts), dtype=torch.float32)
    got = LOSS_TERMS["ce"].from_config(c, counts)({"logits": logits}, Targets(y))
    expect = F.cross_entropy(logits, y, weight=w, label_smoothing=0.1)
    assert torch.isfinite(got) and got.item() == pytest.approx(expect.item(), rel=1e-5)
    with pytest.raises(ValueError, match="class counts"):
        build_loss(c, None)


def test_focal_gamma_zero_is_ce_and_gamma_down_weights_easy_rows() -> None:
    counts = np.arange(1, N_CLASSES + 1)
    out, t = outputs(), targets(weight=True)
    c0 = cfg(**{"loss.focal": 1.0, "loss.focal_gamma": 0.0, "loss.label_smoothing": 0.0,
                "loss.class_weights": "inverse_freq"})
    focal0 = LOSS_TERMS["focal"].from_config(c0, counts)(out, t)
    ce = LOSS_TERMS["ce"].from_config(c0, counts)(out, t)
    assert focal0.item() == pytest.approx(ce.item(), rel=1e-5)
    focal2 = LOSS_TERMS["focal"].from_config(cfg(**{"loss.focal_gamma": 2.0}), None)
    logits = torch.zeros(2, N_CLASSES)
    logits[0, 0] = 5.0  # row 0 easy
    y = torch.tensor([0, 0])
    logp = logits.log_softmax(1)[:, 0]
    expect = (-(1 - logp.exp()) ** 2 * logp).mean()
    assert focal2({"logits": logits}, Targets(y)).item() == pytest.approx(expect.item(), rel=1e-5)


def test_per_sample_weights_are_a_weighted_mean() -> None:
    torch.manual_seed(3)
    logits, y = torch.randn(6, N_CLASSES), torch.randint(0, N_CLASSES, (6,))
    loss = build_loss(cfg(**{"loss.alpha": 0.5, "loss.label_smoothing": 0.0}), None)
    s = torch.tensor([1.0, 0.0, 2.0, 0.5, 0.0, 1.0])
    per = torch.stack([loss({"logits": logits[i:i + 1]}, Targets(y[i:i + 1])) for i in range(6)])
    assert loss({"logits": logits}, Targets(y, s)).item() == pytest.approx(
        ((s * per).sum() / s.sum()).item(), rel=1e-5)
    assert loss({"logits": logits}, Targets(y, torch.ones(6))).item() == pytest.approx(
        loss({"logits": logits}, Targets(y)).item())


@pytest.mark.parametrize("name", TERMS)
def test_a_zero_weight_row_counts_as_absent(name: str) -> None:
    out, t = outputs(seed=4), targets(seed=4, weight=True)
    drop = torch.zeros(B, dtype=torch.bool)
    drop[[1, 5, 30, 31]] = True
    w = t.weight.masked_fill(drop, 0.0)
    keep = ~drop
    out2 = dict(out)
    for k in ("logits", "embedding", "top_logits"):
        out2[k] = out[k].clone()
        out2[k][drop] = 50 * torch.randn(int(drop.sum()), out[k].shape[1])
    term = make_term(name, np.full(N_CLASSES, 3))
    full = term(out2, Targets(t.y, w, t.soft))
    sub = term({k: v[keep] if v.shape[0] == B else v for k, v in out.items()},
               Targets(t.y[keep], w[keep], t.soft[keep]))
    assert full.item() == pytest.approx(sub.item(), rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------- top, top_penalty


def test_top_ce_is_ce_on_top_logits() -> None:
    out, t = outputs(), targets()
    c = load(None, {**PROXY, "loss.top": 1.0, "loss.label_smoothing": 0.1})
    got = LOSS_TERMS["top"].from_config(c, None)(out, t)
    expect = F.cross_entropy(out["top_logits"], torch.as_tensor(PARENT)[t.y], label_smoothing=0.1)
    assert got.item() == pytest.approx(expect.item(), rel=1e-6)


def test_top_penalty_by_hand() -> None:
    logits = torch.tensor([[math.log(v) for v in [0.1, 0.2] + [0.7 / 21] * 21]])
    # classes 0 and 1 are m-sp and m-si (top m, index 0); m has three children: 0, 1, 2
    assert list(np.flatnonzero(PARENT == 0)) == [0, 1, 2]
    term = make_term("top_penalty")
    got = term({"logits": logits}, Targets(torch.tensor([1])))
    assert got.item() == pytest.approx(1 - (0.1 + 0.2 + 0.7 / 21), rel=1e-5)
    got = term({"logits": logits.repeat(2, 1)}, Targets(torch.tensor([1, 22]), torch.tensor([1.0, 3.0])))
    p_ss = 4 * 0.7 / 21  # ss has four children, none of them 0 or 1
    expect = (1 * (1 - (0.3 + 0.7 / 21)) + 3 * (1 - p_ss)) / 4
    assert got.item() == pytest.approx(expect, rel=1e-5)


# ---------------------------------------------------------------------------- supcon


def test_supcon_without_positives_is_zero_and_by_hand() -> None:
    term = make_term("supcon")
    emb = torch.randn(N_TOP, P, requires_grad=True)
    y = torch.tensor([int(np.flatnonzero(PARENT == k)[0]) for k in range(N_TOP)])  # one per top
    value = term({"embedding": emb}, Targets(y))
    assert value.item() == 0.0
    value.backward()  # still has a graph: safe as the only term
    assert torch.isfinite(emb.grad).all()
    assert term({"embedding": emb[:1]}, Targets(y[:1])).item() == 0.0
    # by hand: 3 rows, rows 0 and 1 share a top, row 2 not
    z = F.normalize(torch.randn(3, P), dim=1)
    y3 = torch.tensor([0, 1, 3])  # m, m, is
    tau = term.tau
    s = z @ z.T / tau
    l0 = -(s[0, 1] - torch.logsumexp(s[0, [1, 2]], 0))
    l1 = -(s[1, 0] - torch.logsumexp(s[1, [0, 2]], 0))
    got = term({"embedding": 3 * z}, Targets(y3))
    assert got.item() == pytest.approx(((l0 + l1) / 2).item(), rel=1e-5)


# ---------------------------------------------------------------------------- knn_distill


def test_knn_distill_zero_at_target_and_kl_by_hand() -> None:
    term = make_term("knn_distill")
    t = targets()
    assert term({"logits": t.soft.log()}, t).item() == pytest.approx(0.0, abs=1e-6)
    out = outputs()
    p = out["logits"].softmax(1)
    expect = (t.soft * (t.soft.log() - p.log())).sum(1).mean()
    assert term(out, t).item() == pytest.approx(expect.item(), rel=1e-5)


# ---------------------------------------------------------------------------- proxy terms


def _proxy_term(margin: float = 0.0) -> HierarchicalProxy:
    return LOSS_TERMS["proxy"].from_config(load(None, {**PROXY, "loss.proxy": 1.0,
                                                       "loss.proxy_margin": margin}), None)


def test_proxy_parts_by_hand_and_zero_for_perfect_configurations() -> None:
    term = _proxy_term()
    out, t = outputs(), targets()
    parts = term.parts(out, t)
    assert list(parts) == ["second", "top", "align", "sibling", "top_sep"]
    assert term(out, t).item() == pytest.approx(sum(v.item() for v in parts.values()), rel=1e-6)
    e = F.normalize(out["embedding"], dim=1)
    pf, pt = F.normalize(out["proxies"], dim=1), F.normalize(out["top_proxies"], dim=1)
    parent = torch.as_tensor(PARENT)
    assert parts["second"].item() == pytest.approx(F.cross_entropy(e @ pf.T / 0.07, t.y).item(), rel=1e-5)
    assert parts["top"].item() == pytest.approx(F.cross_entropy(e @ pt.T / 0.07, parent[t.y]).item(),
                                                rel=1e-5)

    # top proxies orthogonal, fine proxies equal to their parent's (scaled: raw, not unit)
    eye = torch.eye(P)
    top = 2 * eye[:N_TOP]
    perfect = {"embedding": out["embedding"], "top_proxies": top, "proxies": 3 * top[parent]}
    p = term.parts(perfect, t)
    assert p["align"].item() == pytest.approx(0.0, abs=1e-6)
    assert p["top_sep"].item() == pytest.approx(0.0, abs=1e-6)
    assert p["sibling"].item() == pytest.approx(1.0, abs=1e-6)  # siblings equal: the worst case
    # siblings orthogonal: sibling term 0 (margin 0); and with margin 1 never positive
    # all 28 proxies mutually orthogonal (width 28): sibling term 0
    eye28 = torch.eye(N_TOP + N_CLASSES)
    fine_orth = {"embedding": torch.randn(B, N_TOP + N_CLASSES), "top_proxies": eye28[:N_TOP],
                 "proxies": eye28[N_TOP:]}
    assert term.parts(fine_orth, t)["sibling"].item() == pytest.approx(0.0, abs=1e-6)
    assert _proxy_term(1.0).parts(perfect, t)["sibling"].item() == pytest.approx(0.0, abs=1e-6)
    # top proxies all equal: separation at its maximum 1 - m
    same = {**perfect, "top_proxies": torch.ones(N_TOP, P)}
    assert term.parts(same, t)["top_sep"].item() == pytest.approx(1.0, abs=1e-6)
    assert _proxy_term(0.25).parts(same, t)["top_sep"].item() == pytest.approx(0.75, abs=1e-6)


@pytest.mark.parametrize("part", ["align", "sibling", "top_sep"])
def test_proxy_regularisers_fall_when_optimised(part: str) -> None:
    term = _proxy_term()
    g = torch.Generator().manual_seed(5)
    base = torch.randn(1, P, generator=g)  # all proxies start close: every part is large
    pf = nn.Parameter(base + 0.3 * torch.randn(N_CLASSES, P, generator=g))
    pt = nn.Parameter(base + 0.3 * torch.randn(N_TOP, P, generator=g))
    opt = torch.optim.Adam([pf, pt], lr=0.05)
    t = targets()
    emb = torch.randn(B, P, generator=g)
    values = []
    for _ in range(60):
        v = term.parts({"embedding": emb, "proxies": pf, "top_proxies": pt}, t)[part]
        values.append(v.item())
        opt.zero_grad()
        v.backward()
        opt.step()
    assert values[-1] < 0.5 * values[0], values[::10]


def test_proxy_anchor_by_hand() -> None:
    c = load(None, {**PROXY, "loss.proxy_anchor": 1.0, "loss.pa_margin": 0.1, "loss.pa_alpha": 16.0})
    term = LOSS_TERMS["proxy_anchor"].from_config(c, None)
    out, t = outputs(n=10), targets(n=10)  # classes 0..9 positive, 10..22 not
    e, p = F.normalize(out["embedding"], dim=1), F.normalize(out["proxies"], dim=1)
    s = e @ p.T
    pos_terms, neg_terms = [], []
    for c_ in range(N_CLASSES):
        is_pos = t.y == c_
        if is_pos.any():
            pos_terms.append(torch.log1p(torch.exp(-16 * (s[is_pos, c_] - 0.1)).sum()))
        neg_terms.append(torch.log1p(torch.exp(16 * (s[~is_pos, c_] + 0.1)).sum()))
    expect = torch.stack(pos_terms).mean() + torch.stack(neg_terms).mean()
    assert term(out, t).item() == pytest.approx(expect.item(), rel=1e-5)


def test_proxy_width_mismatch_is_an_error() -> None:
    out = outputs()
    out["proxies"] = torch.randn(N_CLASSES, P + 1)
    with pytest.raises(ValueError, match="widths differ"):
        make_term("proxy_anchor")(out, targets())


# ---------------------------------------------------------------------------- missing inputs


@pytest.mark.parametrize(("name", "key"), [("top", "top_logits"), ("proxy", "proxies"),
                                           ("proxy", "top_proxies"), ("proxy_anchor", "proxies")])
def test_missing_output_key_is_named(name: str, key: str) -> None:
    out = outputs()
    del out[key]
    with pytest.raises(ValueError, match=f"loss.{name} needs the model output '{key}'"):
        make_term(name)(out, targets())


def test_missing_soft_targets_is_named() -> None:
    with pytest.raises(ValueError, match="loss.knn_distill needs the soft targets 'soft'"):
        make_term("knn_distill")(outputs(), Targets(targets().y))


# ---------------------------------------------------------------------------- build_loss


def test_build_loss_is_the_weighted_sum_of_its_terms() -> None:
    weights = {"ce": 1.0, "alpha": 0.3, "focal": 0.5, "top_penalty": 0.2, "supcon": 0.7,
               "knn_distill": 0.4, "top": 0.6, "proxy": 0.8, "proxy_anchor": 0.25}
    c = load(None, {**PROXY, **{f"loss.{k}": v for k, v in weights.items()}})
    loss = build_loss(c, np.full(N_CLASSES, 5))
    assert isinstance(loss, TrainingLoss) and set(loss.terms) == set(weights)
    assert loss.needs_soft_targets
    out, t = outputs(), targets(weight=True)
    total = loss(out, t)
    manual = sum(w * LOSS_TERMS[k].from_config(c, np.full(N_CLASSES, 5))(out, t) for k, w in weights.items())
    assert total.item() == pytest.approx(manual.item(), rel=1e-5)
    assert set(loss.last) == set(weights)
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in loss.last.values())
    assert sum(weights[k] * v.item() for k, v in loss.last.items()) == pytest.approx(total.item(), rel=1e-5)


def test_build_loss_default_and_zero_weights() -> None:
    loss = build_loss(cfg(), None)
    assert list(loss.terms) == ["ce"] and not loss.needs_soft_targets
    c = cfg(**{"loss.alpha": 0.0})
    c["loss"]["ce"] = 0.0  # past validation, which refuses it too
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        build_loss(c, None)


SOFT_TERMS = ("ce", "alpha", "top", "focal", "top_penalty")  # the terms that take Targets.prob


@pytest.mark.parametrize("name", SOFT_TERMS)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "class-and-row-weights"])
def test_a_one_hot_label_distribution_is_the_hard_label(name: str, weighted: bool) -> None:
    counts = np.arange(1, N_CLASSES + 1) * 3 if weighted else None
    c = term_cfg(name)
    if weighted and name in ("ce", "focal"):
        c["loss"]["class_weights"] = "inverse_freq"
    c["loss"]["label_smoothing"] = 0.1
    term = LOSS_TERMS[name].from_config(c, counts)
    out, t = outputs(3), targets(3, weight=weighted)
    soft = Targets(y=t.y, weight=t.weight, prob=F.one_hot(t.y, N_CLASSES).float())
    assert torch.allclose(term(out, soft), term(out, t), atol=1e-6)


@pytest.mark.parametrize("name", SOFT_TERMS)
def test_a_label_distribution_is_the_mixture_of_its_hard_labels(name: str) -> None:
    """Without class weights every soft term is linear in the label distribution: a 30/70
    mixture of two labels costs 0.3 and 0.7 of each label's loss, row by row."""
    term = make_term(name)
    out = outputs(4, n=1)
    a, b = torch.tensor([2]), torch.tensor([19])  # classes under different top levels
    mix = 0.3 * F.one_hot(a, N_CLASSES).float() + 0.7 * F.one_hot(b, N_CLASSES).float()
    got = term(out, Targets(y=b, prob=mix))
    want = 0.3 * term(out, Targets(y=a)) + 0.7 * term(out, Targets(y=b))
    assert torch.allclose(got, want, atol=1e-6)
