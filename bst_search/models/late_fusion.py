"""Late fusion of modality tokens with a small Transformer (seed 000, Sharma & Sharma).

Each backbone is projected to one ``hidden``-dim token; a Transformer encoder lets the
tokens attend to each other, the tokens are mean-pooled and a residual MLP head gives the
23 logits. The fusion sees modalities as a set, so adding a backbone adds one token.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bst_search.config import ConfigError
from bst_search.models import register_model


class ResidualMLP(nn.Module):
    """Pre-norm MLP block with an identity shortcut."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


@register_model("late_fusion")
class LateFusion(nn.Module):
    """Per-backbone Linear -> tokens (B, M, h) -> TransformerEncoder -> mean -> MLP head."""

    def __init__(self, input_dims: list[int], modalities: list[str], n_classes: int, *,
                 hidden: int = 512, dropout: float = 0.3, heads: int = 8, layers: int = 1,
                 ff_mult: int = 4) -> None:
        super().__init__()
        if hidden % heads:
            raise ConfigError(f"late_fusion: model.hidden={hidden} is not divisible by "
                             f"model.heads={heads}")
        self.modalities = list(modalities)
        self.proj = nn.ModuleList([nn.Linear(d, hidden) for d in input_dims])
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=ff_mult * hidden,
                                           dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
            ResidualMLP(hidden, dropout), ResidualMLP(hidden, dropout),
            nn.Linear(hidden, n_classes),
        )

    @classmethod
    def from_config(cls, cfg: dict, input_dims: list[int], modalities: list[str],
                    n_classes: int) -> LateFusion:
        m = cfg["model"]
        return cls(input_dims, modalities, n_classes, hidden=m["hidden"], dropout=m["dropout"],
                   heads=m["heads"], layers=m["layers"], ff_mult=m["ff_mult"])

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if len(xs) != len(self.proj):
            raise ValueError(f"late_fusion: expected {len(self.proj)} inputs, got {len(xs)}")
        tokens = torch.stack([p(x) for p, x in zip(self.proj, xs, strict=True)], dim=1)
        return self.head(self.encoder(tokens).mean(dim=1))
