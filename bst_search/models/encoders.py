"""Per-backbone encoders of the composed model (``model.encoder``): embedding -> (B, hidden).

Every encoder is one registered class with
``from_config(cfg, dim, modality) -> encoder``, where ``dim`` is the width of its backbone's
embedding and ``modality`` is "audio", "text" or "meta" (given so that a modality-specific
encoder needs no other plumbing). ``late_fusion`` builds one encoder per backbone; the official
baseline (``hatr``) reuses :class:`EmbeddingEncoder` directly.

The ``meta_probs`` branch (23 text-model class probabilities + a no-text flag) has its own
choice, ``model.meta_encoder``, from :data:`META_ENCODERS`: ``linear`` (the class above) or
``class_embedding``. Both models build it with :func:`meta_encoder`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bst_search.registry import Registry

ENCODERS = Registry("model.encoder")
register_encoder = ENCODERS.register
META_ENCODERS = Registry("model.meta_encoder")
register_meta_encoder = META_ENCODERS.register


@register_meta_encoder("linear")
@register_encoder("linear")
class LinearEncoder(nn.Module):
    """``n_layers`` Linear layers to ``hidden`` with GELU + dropout between (the late-fusion system and MESH).

    One layer is exactly the late-fusion system's modality-specific projection to a token, so the late
    fusion preset keeps its layout; more layers give a deeper per-backbone adapter.
    """

    def __init__(self, dim: int, hidden: int, n_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"linear encoder: need at least one layer, got {n_layers}")
        layers: list[nn.Module] = [nn.Linear(dim, hidden)]
        for _ in range(n_layers - 1):
            layers += [nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)]
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg: dict, dim: int, modality: str) -> LinearEncoder:
        m = cfg["model"]
        return cls(dim, m["hidden"], m["linear_layers"], m["dropout"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualBlock(nn.Module):
    """dim -> width -> dim with BN, LeakyReLU and an identity shortcut (official baseline)."""

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


@register_encoder("hatr")
class EmbeddingEncoder(nn.Module):
    """The official HATR baseline's encoder: one backbone's embedding -> ``hidden``.

    Works at width max(dim, 2*hidden) so that small embeddings are widened, not squeezed,
    before the residual stack. Layer names are those of the ``hatr`` model's encoders.
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

    @classmethod
    def from_config(cls, cfg: dict, dim: int, modality: str) -> EmbeddingEncoder:
        m = cfg["model"]
        return cls(dim, m["hidden"], m["dropout"], m["batch_norm"], m["res_blocks"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_norm(self.out_proj(self.blocks(self.in_proj(self.in_norm(x)))))


@register_meta_encoder("class_embedding")
class ClassEmbeddingEncoder(nn.Module):
    """The winning system's metadata branch: m = qᵀE, E a learned (23, hidden) matrix of class
    embeddings, so m is the probability-weighted mixture of the class vectors (rank one in q:
    no bias, no non-linearity), plus a learned vector for a sound flagged as having no text
    (whose q is the training part's class prior).

    Input: (B, 24), the 23 probabilities then the flag. E and the no-text vector are the
    columns of one bias-free Linear, so ``model.init`` initialises them like any layer.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.E = nn.Linear(dim, hidden, bias=False)  # rows of E.weight.T: class vectors, no-text vector

    @classmethod
    def from_config(cls, cfg: dict, dim: int, modality: str) -> ClassEmbeddingEncoder:
        return cls(dim, cfg["model"]["hidden"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.E(x)


def meta_encoder(cfg: dict, dim: int) -> nn.Module:
    """The ``meta_probs`` branch's encoder, ``model.meta_encoder``: (B, dim) -> (B, hidden)."""
    return META_ENCODERS.lookup(cfg["model"]["meta_encoder"]).from_config(cfg, dim, "meta")
