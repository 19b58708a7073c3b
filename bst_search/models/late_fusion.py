"""The composed model: one encoder per backbone -> a fusion -> a head.

``model.encoder``, ``model.fusion`` and ``model.head`` name registered pieces
(:mod:`~bst_search.models.encoders`, :mod:`~bst_search.models.fusions`,
:mod:`~bst_search.models.heads`), so the seeds' architectures are points of one search
space. The defaults (linear encoder, transformer fusion with mean pooling, flat head of
depth 2) are exactly the late-fusion system's late fusion model, layer for layer. The
``meta_probs`` input is one more branch whose encoder is ``model.meta_encoder``; every fusion
takes it as one more encoding of width ``hidden``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bst_search.models.base import register_model
from bst_search.models.encoders import ENCODERS, meta_encoder
from bst_search.models.fusions import FUSIONS
from bst_search.models.heads import HEADS


@register_model("late_fusion")
class LateFusion(nn.Module):
    """encoders[i](xs[i]) -> fusion([...]) -> head -> output dict."""

    def __init__(self, encoders: list[nn.Module], fusion: nn.Module, head: nn.Module,
                 modalities: list[str]) -> None:
        super().__init__()
        if len(encoders) != len(modalities):
            raise ValueError(f"late_fusion: {len(encoders)} encoders but "
                             f"{len(modalities)} modalities")
        self.modalities = list(modalities)
        self.encoders = nn.ModuleList(encoders)
        self.fusion = fusion
        self.head = head

    @classmethod
    def from_config(cls, cfg: dict, input_dims: list[int], modalities: list[str],
                    n_classes: int) -> LateFusion:
        m = cfg["model"]
        enc = ENCODERS.lookup(m["encoder"])
        encoders = [meta_encoder(cfg, d) if mod == "meta" else enc.from_config(cfg, d, mod)
                    for d, mod in zip(input_dims, modalities, strict=True)]
        fusion = FUSIONS.lookup(m["fusion"]).from_config(cfg, list(modalities))
        head = HEADS.lookup(m["head"]).from_config(cfg, n_classes)
        return cls(encoders, fusion, head, modalities)

    def forward(self, xs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(xs) != len(self.encoders):
            raise ValueError(f"late_fusion: expected {len(self.encoders)} inputs, got {len(xs)}")
        hs = [enc(x) for enc, x in zip(self.encoders, xs, strict=True)]
        return self.head(self.fusion(hs))
