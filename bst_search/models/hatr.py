"""HATR: the official DCASE 2026 Task 1 baseline classifier, for any number of backbones.

Same layers as ``models.py`` of MTG/dcase2026_task1_baseline (one ``EmbeddingEncoder`` per
embedding, attention fusion, latent projector, two residual blocks, class predictor), with
the two fixed audio/text branches generalised to a list of M backbones. For M = 2 and the
same widths the parameter count is identical to the official model (7,319,513 for two
512-dim inputs, hidden 128, batch norm). Its encoder and fusion are the ``hatr`` encoder and
``attention`` fusion that the composed ``late_fusion`` model can also use.

HATR has two modalities, audio and text, so the ``meta_probs`` input joins the text side: its
encoding (``model.meta_encoder``, width ``hidden``) is concatenated with the first text
embedding before that backbone's encoder; with no text backbone it is the text side alone.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bst_search.models.base import register_model
from bst_search.models.encoders import EmbeddingEncoder, ResidualBlock, meta_encoder
from bst_search.models.fusions import AttentionFusion


@register_model("hatr")
class HATR(nn.Module):
    """Encoders -> attention fusion (M > 1) -> latent projector -> residual head -> logits."""

    def __init__(self, input_dims: list[int], modalities: list[str], n_classes: int, *,
                 hidden: int = 128, dropout: float = 0.1, batch_norm: bool = True,
                 res_blocks: int = 3, meta: nn.Module | None = None) -> None:
        super().__init__()
        if hidden < 8:
            raise ValueError(f"hatr: hidden must be >= 8, got {hidden}")
        h = hidden
        self.modalities = list(modalities)
        self.meta_index = self.modalities.index("meta") if "meta" in self.modalities else None
        if (meta is None) != (self.meta_index is None):
            raise ValueError("hatr: a meta input needs its meta encoder, and only then")
        self.meta = meta
        # the first text backbone carries the meta encoding; without one, meta is the text side
        self.meta_into = next((i for i, m in enumerate(self.modalities) if m == "text"), None)
        self.branches = [i for i, m in enumerate(self.modalities)
                         if m != "meta" or self.meta_into is None]
        joined = self.meta_into if meta is not None else None  # the text input widened by h
        dims = [h if i == self.meta_index else input_dims[i] + (h if i == joined else 0)
                for i in self.branches]
        self.encoders = nn.ModuleList([EmbeddingEncoder(d, h, dropout, batch_norm, res_blocks)
                                       for d in dims])
        self.fusion = AttentionFusion(h, len(dims), dropout) if len(dims) > 1 else None
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
        meta = (meta_encoder(cfg, input_dims[modalities.index("meta")]) if "meta" in modalities
                else None)
        return cls(input_dims, modalities, n_classes, hidden=m["hidden"], dropout=m["dropout"],
                   batch_norm=m["batch_norm"], res_blocks=m["res_blocks"], meta=meta)

    def forward(self, xs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Output dict; its "embedding" is the residual head's output, the classifier's input."""
        if len(xs) != len(self.modalities):
            raise ValueError(f"hatr: expected {len(self.modalities)} inputs, got {len(xs)}")
        hs = [enc(x) for enc, x in zip(self.encoders, self._branch_inputs(xs), strict=True)]
        if self.fusion is None:
            z = hs[0]
        else:
            z = self.fusion(hs)
            self.last_attention = self.fusion.last_weights
        e = self.head_blocks(self.latent(z))
        return {"logits": self.classifier(e), "embedding": e}

    def _branch_inputs(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each encoder's input: the backbones as given, the meta encoding joined to the text."""
        if self.meta is None:
            return xs
        m = self.meta(xs[self.meta_index])
        return [m if i == self.meta_index else
                torch.cat([xs[i], m], dim=-1) if i == self.meta_into else xs[i]
                for i in self.branches]
