"""Training losses, registered by name.

A loss class registers itself with :func:`register_loss` and provides
``from_config(cfg, class_counts)``; it is called as ``loss(logits, y, weight=None)`` where
``weight`` holds optional per-sample weights (B,), e.g. annotation confidence.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bst_search.config import ConfigError
from bst_search.registry import Registry
from bst_search.taxonomy import N_CLASSES, N_TOP, PARENT

LOSSES = Registry("loss.name")
register_loss = LOSSES.register


def build_loss(cfg: dict, class_counts: np.ndarray | None) -> nn.Module:
    """Instantiate ``cfg["loss"]["name"]``; ``class_counts`` (23,) are the training part's
    label counts (needed for class weighting, else may be None)."""
    return LOSSES.lookup(cfg["loss"]["name"]).from_config(cfg, class_counts)


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
    """Plain sum of the children's logits (seed 000); favours top levels with many children."""
    return logits @ children.to(logits.dtype).T


COARSE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "logsumexp": _coarse_logsumexp,
    "sum": _coarse_sum,
}


@register_loss("hierarchical_ce")
class HierarchicalCE(nn.Module):
    """Fine CE (label smoothing, optional class weights) + alpha * coarse CE over top levels.

    The coarse term is unweighted: the 5 top levels are far less imbalanced than the 23
    classes. Per-sample weights s_i give sum_i s_i l_i / sum_i s_i w_{y_i} for the fine term
    (PyTorch's weighted mean when s = 1) and sum_i s_i l_i / sum_i s_i for the coarse term.
    """

    def __init__(self, *, label_smoothing: float = 0.0, alpha: float = 0.0,
                 coarse: str = "logsumexp", class_weights: np.ndarray | None = None,
                 parent: np.ndarray = PARENT, n_top: int = N_TOP) -> None:
        super().__init__()
        if coarse not in COARSE:
            raise ConfigError(f"loss.coarse: unknown {coarse!r}; expected one of {', '.join(COARSE)}")
        self.label_smoothing = float(label_smoothing)
        self.alpha = float(alpha)
        self.coarse = coarse
        parent_t = torch.as_tensor(np.asarray(parent), dtype=torch.long)
        self.register_buffer("parent", parent_t, persistent=False)
        self.register_buffer("child_mask", parent_t[None, :] == torch.arange(n_top)[:, None],
                             persistent=False)  # (T, C) bool
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if cw is not None and cw.shape != parent_t.shape:
            raise ValueError(f"class_weights has shape {tuple(cw.shape)}, expected {tuple(parent_t.shape)}")
        self.register_buffer("class_weights", cw, persistent=False)

    @classmethod
    def from_config(cls, cfg: dict, class_counts: np.ndarray | None) -> HierarchicalCE:
        lc = cfg["loss"]
        cw = None
        if lc["class_weights"] == "inverse_freq":
            if class_counts is None:
                raise ValueError("loss.class_weights=inverse_freq needs the training class counts")
            if len(class_counts) != N_CLASSES:
                raise ValueError(f"class_counts has {len(class_counts)} entries, expected {N_CLASSES}")
            cw = inverse_freq_weights(class_counts)
        return cls(label_smoothing=lc["label_smoothing"], alpha=lc["alpha"], coarse=lc["coarse"],
                   class_weights=cw)

    def coarse_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 23) fine logits -> (B, 5) top-level logits."""
        return COARSE[self.coarse](logits, self.child_mask)

    def forward(self, logits: torch.Tensor, y: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        s = torch.ones_like(logits[:, 0]) if weight is None else weight.to(logits.dtype)
        fine = F.cross_entropy(logits, y, weight=self.class_weights,
                               label_smoothing=self.label_smoothing, reduction="none")
        w_y = s if self.class_weights is None else s * self.class_weights[y]
        loss = (s * fine).sum() / w_y.sum().clamp_min(1e-12)
        if self.alpha > 0:
            coarse = F.cross_entropy(self.coarse_logits(logits), self.parent[y],
                                     label_smoothing=self.label_smoothing, reduction="none")
            loss = loss + self.alpha * (s * coarse).sum() / s.sum().clamp_min(1e-12)
        return loss
