"""Training loss: a weighted sum of terms, each switched on by its weight in the config.

Every term is a small ``nn.Module`` registered in :data:`LOSS_TERMS` under the name of its
weight key without ``loss.``: the rule is ``weight = cfg["loss"][name]`` (so the coarse CE
from child logits is registered as ``alpha``, its key being ``loss.alpha``). A term provides
``from_config(cfg, class_counts)`` and ``forward(out, t) -> scalar``, where ``out`` is the
model's output dict and ``t`` the batch's :class:`Targets`.

Model output keys: ``logits`` (B, 23) fine logits and ``embedding`` (B, d) are always there;
``top_logits`` (B, 5) for heads gc, lcl and proxy; ``proxies`` (23, p) and ``top_proxies``
(5, p), the raw learnable proxies of the proxy head, whose ``embedding`` is then the (B, p)
un-normalised proxy-space embedding.

Per-sample weights ``t.weight`` (e.g. annotation confidence) make every per-sample term a
weighted mean; a row of weight 0 counts as absent, also for the batch-level terms (Proxy
Anchor, SupCon).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bst_search.config import ConfigError
from bst_search.registry import Registry
from bst_search.taxonomy import N_CLASSES, N_TOP, PARENT

LOSS_TERMS = Registry("loss")
register_term = LOSS_TERMS.register

_EPS = 1e-12


@dataclass
class Targets:
    """What a batch is trained towards.

    ``y`` (B,) long fine classes; ``weight`` (B,) optional per-sample weights; ``soft``
    (B, 23) optional target distribution (KNN distillation), rows summing to 1; ``prob``
    (B, 23) optional label distribution that replaces the one-hot of ``y`` in the terms that
    can take one (ce, alpha, top, focal, top_penalty): soft pseudo-labels of crowd rows. ``y``
    is then its argmax, which the metric-learning terms read.
    """

    y: torch.Tensor
    weight: torch.Tensor | None = None
    soft: torch.Tensor | None = None
    prob: torch.Tensor | None = None


# ---------------------------------------------------------------------------- helpers


def inverse_freq_weights(class_counts: np.ndarray) -> np.ndarray:
    """w_c = n / (C * count_c), the 'balanced' weights; 0 for a class absent from training
    (it never is a target, and a weight of 0 keeps it out of the smoothing term too)."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"class_counts must be a 1-d array of non-negative counts, got {counts!r}")
    n = counts.sum()
    if n <= 0:
        raise ValueError("class_counts are all zero: no training labels")
    with np.errstate(divide="ignore"):
        w = np.where(counts > 0, n / (len(counts) * np.maximum(counts, 1)), 0.0)
    return w


def _coarse_logsumexp(logits: torch.Tensor, children: torch.Tensor) -> torch.Tensor:
    """log sum_{c in top} exp(logit_c): the log of the unnormalised top-level mass, so
    softmax over it equals summing the children's probabilities."""
    masked = logits.unsqueeze(1).masked_fill(~children, float("-inf"))  # (B, T, C)
    return masked.logsumexp(dim=-1)


def _coarse_sum(logits: torch.Tensor, children: torch.Tensor) -> torch.Tensor:
    """Plain sum of the children's logits (the late-fusion system); favours top levels with many children."""
    return logits @ children.to(logits.dtype).T


COARSE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "logsumexp": _coarse_logsumexp,
    "sum": _coarse_sum,
}


def _class_weights(cfg: dict, class_counts: np.ndarray | None) -> np.ndarray | None:
    """The (23,) class weights asked for by ``loss.class_weights``, or None."""
    if cfg["loss"]["class_weights"] != "inverse_freq":
        return None
    if class_counts is None:
        raise ValueError("loss.class_weights=inverse_freq needs the training class counts")
    if len(class_counts) != N_CLASSES:
        raise ValueError(f"class_counts has {len(class_counts)} entries, expected {N_CLASSES}")
    return inverse_freq_weights(class_counts)


def _need(out: dict[str, torch.Tensor], key: str, term: str, why: str) -> torch.Tensor:
    """``out[key]``, or an error naming the key, the term and how to get it."""
    if key not in out:
        raise ValueError(f"loss.{term} needs the model output {key!r} ({why}); "
                         f"this model's output has {sorted(out)}")
    return out[key]


def _wmean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-sample values, weighted by ``weight`` when given."""
    if weight is None:
        return values.mean()
    w = weight.to(values.dtype)
    return (w * values).sum() / w.sum().clamp_min(_EPS)


def _label_distribution(t: Targets, like: torch.Tensor) -> torch.Tensor:
    """(B, 23) ``t.prob``, else the one-hot of ``t.y``, in the dtype of ``like``."""
    return (F.one_hot(t.y, N_CLASSES) if t.prob is None else t.prob).to(like.dtype)


def _top_target(term: nn.Module, t: Targets) -> torch.Tensor:
    """The parent index of ``y``, or the label distribution summed over each top level."""
    return term.parent[t.y] if t.prob is None else t.prob.float() @ term.child_mask.T.float()


def _parent_buffers(module: nn.Module) -> None:
    """parent (C,) long and child_mask (T, C) bool, moved with the module."""
    parent = torch.as_tensor(PARENT, dtype=torch.long)
    module.register_buffer("parent", parent, persistent=False)
    module.register_buffer("child_mask", parent[None, :] == torch.arange(N_TOP)[:, None],
                           persistent=False)


class LossTerm(nn.Module):
    """One term of the training loss; ``forward(out, t)`` returns a scalar >= 0."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ("logits",)  # model output keys it reads

    @classmethod
    def from_config(cls, cfg: dict, class_counts: np.ndarray | None) -> LossTerm:
        return cls()

    def forward(self, out: dict[str, torch.Tensor], t: Targets) -> torch.Tensor:
        raise NotImplementedError


def _term(name: str) -> Callable[[type[LossTerm]], type[LossTerm]]:
    """Register under ``name`` (= the weight key without ``loss.``) and remember the name."""

    def deco(cls: type[LossTerm]) -> type[LossTerm]:
        cls.name = name
        return register_term(name)(cls)

    return deco


# ---------------------------------------------------------------------------- terms


@_term("ce")
class FineCE(LossTerm):
    """Fine CE with label smoothing and optional class weights w.

    Per-sample weights s give sum_i s_i l_i / sum_i s_i w_{y_i} (PyTorch's weighted mean
    when s = 1), so class weights change the balance between classes, not the loss scale.
    """

    def __init__(self, label_smoothing: float = 0.0, class_weights: np.ndarray | None = None) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if cw is not None and cw.shape != (N_CLASSES,):
            raise ValueError(f"class_weights has shape {tuple(cw.shape)}, expected ({N_CLASSES},)")
        self.register_buffer("class_weights", cw, persistent=False)

    @classmethod
    def from_config(cls, cfg: dict, class_counts: np.ndarray | None) -> FineCE:
        return cls(cfg["loss"]["label_smoothing"], _class_weights(cfg, class_counts))

    def forward(self, out: dict[str, torch.Tensor], t: Targets) -> torch.Tensor:
        logits = out["logits"].float()
        q = _label_distribution(t, logits)  # soft targets weigh classes by expectation
        per = F.cross_entropy(logits, t.y if t.prob is None else q, weight=self.class_weights,
                              label_smoothing=self.label_smoothing, reduction="none")
        s = torch.ones_like(per) if t.weight is None else t.weight.to(per.dtype)
        w_y = s if self.class_weights is None else s * (q @ self.class_weights)
        return (s * per).sum() / w_y.sum().clamp_min(_EPS)


@_term("alpha")
class CoarseCE(LossTerm):
    """CE over the 5 top levels of top logits made from the fine logits (the late-fusion system).

    ``logsumexp`` makes softmax over top levels equal to the summed child probabilities;
    ``sum`` is the late-fusion system's plain sum. Unweighted by class: the top levels are far less
    imbalanced than the 23 classes.
    """

    def __init__(self, label_smoothing: float = 0.0, coarse: str = "logsumexp") -> None:
        super().__init__()
        if coarse not in COARSE:
            raise ConfigError(f"loss.coarse: unknown {coarse!r}; expected one of {', '.join(COARSE)}")
        self.label_smoothing = float(label_smoothing)
        self.coarse = coarse
        _parent_buffers(self)

    @classmethod
    def from_config(cls, cfg: dict, class_counts: np.ndarray | None) -> CoarseCE:
        return cls(cfg["loss"]["label_smoothing"], cfg["loss"]["coarse"])

    def coarse_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 23) fine logits -> (B, 5) top-level logits."""
        return COARSE[self.coarse](logits, self.child_mask)

    def forward(self, out: dict[str, torch.Tensor], t: Targets) -> torch.Tensor:
        per = F.cross_entropy(self.coarse_logits(out["logits"].float()), _top_target(self, t),
                              label_smoothing=self.label_smoothing, reduction="none")
        return _wmean(per, t.weight)


@_term("top")
class TopCE(LossTerm):
    """CE on the head's own top-level output ``top_logits`` (heads gc, lcl, proxy)."""

    requires = ("top_logits",)

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        _parent_buffers(self)

    @classmethod
    def from_config(cls, cfg: dict, class_counts: np.ndarray | None) -> TopCE:
        return cls(cfg["loss"]["label_smoothing"])

    def forward(self, out: dict[str, torch.Tensor], t: Targets) -> torch.Tensor:
        top = _need(out, "top_logits", self.name, "model.head gc, lcl or proxy")
        per = F.cross_entropy(top.float(), _top_target(self, t),
                              label_smoothing=self.label_smoothing, reduction="none")
        return _wmean(per, t.weight)


@_term("focal")
class FocalLoss(LossTerm):
    """Focal loss -(1 - p_t)^gamma log p_t on the fine logits (Lin et al. 2017; MESH):
    down-weights the easy rows. Class and sample weights are normalised as in ``ce``."""

    def __init__(self, gamma: float = 2.0, class_weights: np.ndarray | None = None) -> None:
        super().__init__()
        self.gamma = float(gamma)
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if cw is not None and cw.shape != (N_CLASSES,):
            raise ValueError(f"class_weights has shape {tuple(cw.shape)}, expected ({N_CLASSES},)")
        self.register_buffer("class_weights", cw, persistent=False)

    @classmethod
    def from_config(cls, cfg: dict, class_counts: np.ndarray | None) -> FocalLoss:
        return cls(cfg["loss"]["focal_gamma"], _class_weights(cfg, class_counts))

    def forward(self, out: dict[str, torch.Tensor], t: Targets) -> torch.Tensor:
        logp = out["logits"].float().log_softmax(1)
        # clamp: d/dp (1-p)^gamma is infinite at p = 1 for gamma < 1
        focal = -(1.0 - logp.exp()).clamp_min(_EPS).pow(self.gamma) * logp
        cq = _label_distribution(t, logp)  # the expectation over a label distribution
        if self.class_weights is not None:
            cq = cq * self.class_weights
        s = torch.ones_like(logp[:, 0]) if t.weight is None else t.weight.to(logp.dtype)
        return (s * (cq * focal).sum(1)).sum() / (s * cq.sum(1)).sum().clamp_min(_EPS)


def _proxy_inputs(out: dict[str, torch.Tensor], term: str,
                  keys: tuple[str, ...]) -> list[torch.Tensor]:
    """The proxy head's outputs, L2-normalised, with their widths checked."""
    got = [_need(out, k, term, "model.head=proxy") for k in keys]
    widths = {k: v.shape[-1] for k, v in zip(keys, got, strict=True)}
    if len(set(widths.values())) != 1:
        raise ValueError(f"loss.{term}: widths differ between {widths}")
    return [F.normalize(v.float(), dim=-1) for v in got]


@_term("proxy")
class HierarchicalProxy(LossTerm):
    """MESH's hierarchical proxy loss (HProxy), the sum of five equally weighted parts.

    With e, P_fine, P_top L2-normalised, tau = model.proxy_tau, m = loss.proxy_margin:
    ``second`` CE(cos(e, P_fine)/tau, y); ``top`` CE(cos(e, P_top)/tau, parent(y));
    ``align`` mean_c 1 - cos(P_fine[c], P_top[parent(c)]); ``sibling`` mean over sibling
    pairs (same parent, c != c') of relu(cos(P_fine[c], P_fine[c']) - m); ``top_sep`` mean
    over pairs of top proxies of relu(cos - m). MESH gives the parts coefficients but no
    values, so they are all 1; the loss's own weight is loss.proxy.
    """

    requires = ("embedding", "proxies", "top_proxies")

    def __init__(self, tau: float = 0.07, margin: float = 0.0) -> None:
        super().__init__()
        self.tau = float(tau)
        self.margin = float(margin)
        _parent_buffers(self)
        same = self.parent[:, None] == self.parent[None, :]
        self.register_buffer("sibling_pairs", same & ~torch.eye(N_CLASSES, dtype=torch.bool),
                             persistent=False)
        self.register_buffer("top_pairs", ~torch.eye(N_TOP, dtype=torch.bool), persistent=False)

    @classmethod
    def from_config(cls, cfg: dict, class_counts: np.ndarray | None) -> HierarchicalProxy:
        return cls(cfg["model"]["proxy_tau"], cfg["loss"]["proxy_margin"])

    def parts(self, out: dict[str, torch.Tensor], t: Targets) -> dict[str, torch.Tensor]:
        """The five parts by name (second, top, align, sibling, top_sep)."""
        e, pf, pt = _proxy_inputs(out, self.name, self.requires)
        second = F.cross_entropy(e @ pf.T / self.tau, t.y, reduction="none")
        top = F.cross_entropy(e @ pt.T / self.tau, self.parent[t.y], reduction="none")
        align = 1.0 - (pf * pt[self.parent]).sum(-1)
        sib = (pf @ pf.T - self.margin).relu()
        sep = (pt @ pt.T - self.margin).relu()
        return {
            "second": _wmean(second, t.weight),
            "top": _wmean(top, t.weight),
            "align": align.mean(),
            "sibling": sib[self.sibling_pairs].mean(),
            "top_sep": sep[self.top_pairs].mean(),
        }

    def forward(self, out: dict[str, torch.Tensor], t: Targets) -> torch.Tensor:
        return torch.stack(list(self.parts(out, t).values())).sum()


@_term("proxy_anchor")
class ProxyAnchor(LossTerm):
    """Proxy Anchor loss (Kim et al., CVPR 2020; MESH) on the fine proxies.

    With s(x, p) the cosine of embedding and proxy, delta = loss.pa_margin, a = loss.pa_alpha:
    mean over proxies with a positive in the batch of log(1 + sum_{x pos} exp(-a (s - delta)))
    + mean over all proxies of log(1 + sum_{x neg} exp(a (s + delta))). A per-sample weight
    scales that sample's exp(...) inside the sums (0 = absent).
    """

    requires = ("embedding", "proxies")

    def __init__(self, margin: float = 0.1, alpha: float = 32.0) -> None:
        super().__init__()
        self.margin = float(margin)
        self.alpha = float(alpha)

    @classmethod
    def from_config(cls, cfg: dict, class_counts: np.ndarray | None) -> ProxyAnchor:
        return cls(cfg["loss"]["pa_margin"], cfg["loss"]["pa_alpha"])

    @staticmethod
    def _log1p_sum_exp(a: torch.Tensor, keep: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
        """Per column: log(1 + sum_{rows kept} w exp(a)), stable; 0 for an empty column."""
        a = torch.where(keep, a + log_w[:, None], torch.full_like(a, float("-inf")))
        a = torch.cat([torch.zeros_like(a[:1]), a], 0)  # the "1 +": never all -inf
        return a.logsumexp(0)

    def forward(self, out: dict[str, torch.Tensor], t: Targets) -> torch.Tensor:
        e, p = _proxy_inputs(out, self.name, self.requires)
        cos = e @ p.T  # (B, C)
        pos = F.one_hot(t.y, p.shape[0]).bool()
        if t.weight is None:
            present = torch.ones_like(t.y, dtype=torch.bool)
            log_w = torch.zeros_like(cos[:, 0])
        else:
            w = t.weight.to(cos.dtype)
            present = w > 0
            log_w = w.clamp_min(_EPS).log()
        pos = pos & present[:, None]
        neg = ~pos & present[:, None]
        pos_term = self._log1p_sum_exp(-self.alpha * (cos - self.margin), pos, log_w)
        neg_term = self._log1p_sum_exp(self.alpha * (cos + self.margin), neg, log_w)
        with_pos = pos.any(0)
        pos_mean = (pos_term * with_pos).sum() / with_pos.sum().clamp_min(1)
        return pos_mean + neg_term.mean()


@_term("supcon")
class SupConTop(LossTerm):
    """Supervised contrastive loss (Khosla et al. 2020) on TOP-level labels (the hierarchical multimodal system, eq. 6).

    On the L2-normalised ``embedding``, temperature tau = loss.supcon_tau: anchors without a
    positive in the batch are skipped (0 if none has one); the anchors' losses are averaged
    with their sample weights; a row of weight 0 is neither anchor, positive nor negative.
    """

    requires = ("embedding",)

    def __init__(self, tau: float = 0.5) -> None:
        super().__init__()
        self.tau = float(tau)
        _parent_buffers(self)

    @classmethod
    def from_config(cls, cfg: dict, class_counts: np.ndarray | None) -> SupConTop:
        return cls(cfg["loss"]["supcon_tau"])

    def forward(self, out: dict[str, torch.Tensor], t: Targets) -> torch.Tensor:
        z = F.normalize(out["embedding"].float(), dim=-1)
        top = self.parent[t.y]
        n = z.shape[0]
        present = torch.ones(n, dtype=torch.bool, device=z.device) if t.weight is None else t.weight > 0
        others = ~torch.eye(n, dtype=torch.bool, device=z.device) & present[None, :]  # the a != i
        pos = (top[:, None] == top[None, :]) & others
        # a finite fill, not -inf: a row with no other member must not make NaN gradients
        sim = (z @ z.T / self.tau).masked_fill(~others, -1e9)
        log_prob = sim - sim.logsumexp(1, keepdim=True)
        n_pos = pos.sum(1)
        per = -torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1) / n_pos.clamp_min(1)
        anchor = (n_pos > 0) & present
        s = anchor.to(per.dtype) if t.weight is None else t.weight.to(per.dtype) * anchor
        return (s * per).sum() / s.sum().clamp_min(_EPS)  # 0 (with a graph) when no anchor


@_term("top_penalty")
class TopPenalty(LossTerm):
    """The hierarchical multimodal system's top-class penalty, made differentiable: the expected top-level error
    1 - P(true top), P(top T) = sum of softmax(logits) over T's children."""

    def __init__(self) -> None:
        super().__init__()
        _parent_buffers(self)

    def forward(self, out: dict[str, torch.Tensor], t: Targets) -> torch.Tensor:
        p = out["logits"].float().softmax(1)  # the expected error under a label distribution
        top = self.child_mask.T.float()
        per = 1.0 - ((p @ top) * (_label_distribution(t, p) @ top)).sum(1)
        return _wmean(per, t.weight)


@_term("knn_distill")
class KnnDistill(LossTerm):
    """KNN distillation (the multi-branch system, eq. 7): KL(t.soft || softmax(logits)) per sample; the
    trainer builds ``t.soft`` (see :attr:`TrainingLoss.needs_soft_targets`)."""

    def forward(self, out: dict[str, torch.Tensor], t: Targets) -> torch.Tensor:
        if t.soft is None:
            raise ValueError("loss.knn_distill needs the soft targets 'soft' (Targets.soft, the KNN "
                             "target distribution); the trainer gave none")
        logits = out["logits"].float()
        if t.soft.shape != logits.shape:
            raise ValueError(f"loss.knn_distill: soft targets {tuple(t.soft.shape)} do not match "
                             f"logits {tuple(logits.shape)}")
        per = F.kl_div(logits.log_softmax(1), t.soft.float(), reduction="none").sum(1)
        return _wmean(per, t.weight)


# ---------------------------------------------------------------------------- the sum


class TrainingLoss(nn.Module):
    """sum_name weight_name * term_name(out, t) over the terms whose weight is > 0.

    After each call, :attr:`last` maps each term's name to its detached (unweighted) value
    as a tensor; converting it (``.item()``) is the caller's choice, so a batch costs no
    host synchronisation.
    """

    def __init__(self, terms: dict[str, LossTerm], weights: dict[str, float]) -> None:
        super().__init__()
        if not terms:
            raise ConfigError(f"every loss weight is 0 (loss.{', loss.'.join(LOSS_TERMS)}): nothing to train")
        if set(terms) != set(weights):
            raise ValueError(f"terms {sorted(terms)} and weights {sorted(weights)} differ")
        self.terms = nn.ModuleDict(terms)
        self.weights = {k: float(weights[k]) for k in terms}
        self.last: dict[str, torch.Tensor] = {}

    @property
    def needs_soft_targets(self) -> bool:
        """True when a term reads ``Targets.soft`` (KNN distillation is on)."""
        return "knn_distill" in self.terms

    def forward(self, out: dict[str, torch.Tensor], t: Targets) -> torch.Tensor:
        total: torch.Tensor | None = None
        last = {}
        for name, term in self.terms.items():
            value = term(out, t)
            last[name] = value.detach()
            total = self.weights[name] * value if total is None else total + self.weights[name] * value
        self.last = last
        assert total is not None
        return total

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={w:g}" for k, w in self.weights.items())


def build_loss(cfg: dict, class_counts: np.ndarray | None) -> TrainingLoss:
    """The terms whose weight ``cfg["loss"][name]`` is > 0; ``class_counts`` (23,) are the
    training part's label counts (needed for loss.class_weights=inverse_freq, else may be
    None)."""
    lc = cfg["loss"]
    weights = {name: float(lc[name]) for name in LOSS_TERMS if float(lc[name]) > 0}
    terms = {name: LOSS_TERMS[name].from_config(cfg, class_counts) for name in weights}
    return TrainingLoss(terms, weights)
