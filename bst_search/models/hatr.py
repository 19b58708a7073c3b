"""HATR: the official DCASE 2026 Task 1 baseline classifier, for any number of backbones.

Same layers as ``models.py`` of MTG/dcase2026_task1_baseline (one ``EmbeddingEncoder`` per
embedding, attention fusion, latent projector, two residual blocks, class predictor), with
the two fixed audio/text branches generalised to a list of M backbones. For M = 2 and the
same widths the parameter count is identical to the official model (7,319,513 for two
512-dim inputs, hidden 128, batch norm).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bst_search.models import register_model


class ResidualBlock(nn.Module):
    """dim -> width -> dim with BN, LeakyReLU and an identity shortcut."""

    def __init__(self, dim: int, width: int, dropout: float, batch_norm: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, width)
        self.bn1 = nn.BatchNorm1d(width) if batch_norm else nn.Identity()
        self.fc2 = nn.Linear(width, dim)
        self.bn2 = nn.BatchNorm1d(dim) if batch_norm else nn.Identity()
        self.act = nn.LeakyReLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.act(self.bn1(self.fc1(x))))
        return self.act(self.bn2(self.fc2(h)) + x)


class EmbeddingEncoder(nn.Module):
    """One backbone's embedding -> ``hidden`` features.

    Works at width max(dim, 2*hidden) so that small embeddings are widened, not squeezed,
    before the residual stack.
    """

    def __init__(self, dim: int, hidden: int, dropout: float, batch_norm: bool,
                 res_blocks: int) -> None:
        super().__init__()
        w = max(dim, 2 * hidden)
        self.in_norm = nn.BatchNorm1d(dim) if batch_norm else nn.Identity()
        self.in_proj = nn.Sequential(nn.Linear(dim, w), nn.LeakyReLU(), nn.Dropout(dropout))
        self.blocks = nn.Sequential(*[ResidualBlock(w, 2 * w, dropout, batch_norm)
                                      for _ in range(res_blocks)])
        self.out_proj = nn.Sequential(nn.Linear(w, w // 2), nn.LeakyReLU(), nn.Dropout(dropout),
                                      nn.Linear(w // 2, hidden))
        self.out_norm = nn.BatchNorm1d(hidden) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_norm(self.out_proj(self.blocks(self.in_proj(self.in_norm(x)))))


class AttentionFusion(nn.Module):
    """Per-sample softmax weights over the M encoded backbones, then their weighted sum."""

    def __init__(self, hidden: int, n_inputs: int, dropout: float) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(n_inputs * hidden, hidden), nn.Tanh(),
                                   nn.Linear(hidden, n_inputs))
        self.drop = nn.Dropout(dropout)

    def forward(self, hs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.score(torch.cat(hs, dim=-1)).softmax(dim=-1)  # (B, M)
        fused = (torch.stack(hs, dim=1) * a.unsqueeze(-1)).sum(dim=1)
        return self.drop(fused), a


@register_model("hatr")
class HATR(nn.Module):
    """Encoders -> attention fusion (M > 1) -> latent projector -> residual head -> logits."""

    def __init__(self, input_dims: list[int], modalities: list[str], n_classes: int, *,
                 hidden: int = 128, dropout: float = 0.1, batch_norm: bool = True,
                 res_blocks: int = 3) -> None:
        super().__init__()
        if hidden < 8:
            raise ValueError(f"hatr: hidden must be >= 8, got {hidden}")
        h = hidden
        self.modalities = list(modalities)
        self.encoders = nn.ModuleList([EmbeddingEncoder(d, h, dropout, batch_norm, res_blocks)
                                       for d in input_dims])
        self.fusion = AttentionFusion(h, len(input_dims), dropout) if len(input_dims) > 1 else None
        self.latent = nn.Sequential(
            nn.Linear(h, 2 * h), nn.LeakyReLU(), nn.Dropout(dropout),
            nn.Linear(2 * h, h), nn.LeakyReLU(), nn.Dropout(dropout),
            nn.Linear(h, h // 2), nn.LeakyReLU(), nn.Dropout(dropout / 2),
        )
        self.head_blocks = nn.Sequential(*[ResidualBlock(h // 2, h, dropout / 2, batch_norm)
                                           for _ in range(2)])
        self.classifier = nn.Sequential(nn.Linear(h // 2, h // 4), nn.LeakyReLU(),
                                        nn.Dropout(dropout / 4), nn.Linear(h // 4, n_classes))
        self.last_attention: torch.Tensor | None = None  # (B, M) of the latest forward

    @classmethod
    def from_config(cls, cfg: dict, input_dims: list[int], modalities: list[str],
                    n_classes: int) -> HATR:
        m = cfg["model"]
        return cls(input_dims, modalities, n_classes, hidden=m["hidden"], dropout=m["dropout"],
                   batch_norm=m["batch_norm"], res_blocks=m["res_blocks"])

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if len(xs) != len(self.encoders):
            raise ValueError(f"hatr: expected {len(self.encoders)} inputs, got {len(xs)}")
        hs = [enc(x) for enc, x in zip(self.encoders, xs, strict=True)]
        if self.fusion is None:
            z = hs[0]
        else:
            z, a = self.fusion(hs)
            self.last_attention = a.detach()
        return self.classifier(self.head_blocks(self.latent(z)))
