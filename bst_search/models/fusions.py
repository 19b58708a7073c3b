"""Fusions of the composed model (``model.fusion``): M encodings (B, hidden) -> (B, hidden).

A fusion is one registered class with ``from_config(cfg, modalities) -> fusion`` and
``forward(hs: list[Tensor]) -> Tensor``; ``modalities[i]`` ("audio", "text" or "meta") describes
``hs[i]`` and is fixed at construction, the width of every ``hs[i]`` is ``model.hidden``.
Every fusion accepts any M >= 1, so a trial over a single backbone runs with any fusion. To
add a fusion, write one decorated class here (and allow its name in ``model.fusion``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bst_search.registry import Registry

FUSIONS = Registry("model.fusion")
register_fusion = FUSIONS.register


@register_fusion("concat")
class ConcatFusion(nn.Module):
    """[h_1; ...; h_M] -> Linear to hidden -> GELU -> dropout.

    The simplest mixing of all backbones at once; for M = 1 it is a learned hidden -> hidden
    layer, kept so that ``concat`` means the same layer type whatever M is.
    """

    def __init__(self, hidden: int, n_inputs: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_inputs * hidden, hidden), nn.GELU(),
                                 nn.Dropout(dropout))

    @classmethod
    def from_config(cls, cfg: dict, modalities: list[str]) -> ConcatFusion:
        m = cfg["model"]
        return cls(m["hidden"], len(modalities), m["dropout"])

    def forward(self, hs: list[torch.Tensor]) -> torch.Tensor:
        return self.net(torch.cat(hs, dim=-1))


@register_fusion("attention")
class AttentionFusion(nn.Module):
    """Per-sample softmax weights over the M encoded backbones, then their weighted sum.

    The official HATR baseline's fusion with its two fixed modalities generalised to
    M; the ``hatr`` model uses this class. For M = 1 the only weight is 1, so the fusion is
    the identity and has no parameters (as ``hatr``, which skips fusion for one backbone).
    ``last_weights`` keeps the (B, M) weights of the latest forward for inspection.
    """

    def __init__(self, hidden: int, n_inputs: int, dropout: float) -> None:
        super().__init__()
        self.n_inputs = n_inputs
        self.score = (nn.Sequential(nn.Linear(n_inputs * hidden, hidden), nn.Tanh(),
                                    nn.Linear(hidden, n_inputs)) if n_inputs > 1 else None)
        self.drop = nn.Dropout(dropout)
        self.last_weights: torch.Tensor | None = None

    @classmethod
    def from_config(cls, cfg: dict, modalities: list[str]) -> AttentionFusion:
        m = cfg["model"]
        return cls(m["hidden"], len(modalities), m["dropout"])

    def forward(self, hs: list[torch.Tensor]) -> torch.Tensor:
        if self.score is None:
            self.last_weights = hs[0].new_ones(hs[0].shape[0], 1)
            return hs[0]
        a = self.score(torch.cat(hs, dim=-1)).softmax(dim=-1)  # (B, M)
        self.last_weights = a.detach()
        return self.drop((torch.stack(hs, dim=1) * a.unsqueeze(-1)).sum(dim=1))


@register_fusion("transformer")
class TransformerFusion(nn.Module):
    """Token fusion of the late-fusion system: (B, M, hidden) -> TransformerEncoder -> pooled (B, hidden).

    ``pool="mean"`` averages the M output tokens (the late-fusion system's choice); ``pool="cls"``
    prepends a learnable token and returns its output (the variant the late-fusion system also tried).
    With M = 1 the encoder still runs over the one token (plus the cls token).
    """

    def __init__(self, hidden: int, heads: int, layers: int, ff_mult: int, dropout: float,
                 pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ValueError(f"transformer fusion: pool must be 'mean' or 'cls', got {pool!r}")
        self.pool = pool
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=ff_mult * hidden,
                                           dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02) if pool == "cls" else None

    @classmethod
    def from_config(cls, cfg: dict, modalities: list[str]) -> TransformerFusion:
        m = cfg["model"]
        return cls(m["hidden"], m["heads"], m["layers"], m["ff_mult"], m["dropout"], m["pool"])

    def forward(self, hs: list[torch.Tensor]) -> torch.Tensor:
        tokens = torch.stack(hs, dim=1)  # (B, M, hidden)
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
            return self.encoder(tokens)[:, 0]
        return self.encoder(tokens).mean(dim=1)


class HighwayAdapter(nn.Module):
    """The multi-branch system's text adapter: t' = t + g ⊙ Δt, g = sigmoid(W_g t), Δt = small MLP(t).

    The gate keeps the pretrained text embedding and lets training add a task-specific
    refinement. Its bias starts at -1 (as in Highway networks) so that g is small at first
    and t' starts close to t.
    """

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.delta = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.GELU(), nn.Dropout(dropout),
                                   nn.Linear(hidden // 2, hidden))
        self.gate = nn.Linear(hidden, hidden)
        nn.init.constant_(self.gate.bias, -1.0)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t + torch.sigmoid(self.gate(t)) * self.delta(t)


@register_fusion("gated")
class GatedFusion(nn.Module):
    """The multi-branch system's highway-gated text adapter and gated residual fusion, for M backbones.

    The anchor ``a`` is the first audio backbone's encoding (the first backbone when none is
    audio). Text encodings first pass their own :class:`HighwayAdapter` (a text anchor too);
    audio ones and the ``meta_probs`` encoding (already a learned map of probabilities, nothing
    pretrained to keep) enter unchanged. Every other backbone ``o'_i`` is added to the anchor through a
    gated residual: z = a + Σ_i h_i ⊙ W_i o'_i with h_i = sigmoid(U_i [a; o'_i]), so each
    extra backbone can only refine the anchor, per feature and per sample. With M = 1
    (an audio backbone) z = a.
    """

    def __init__(self, hidden: int, modalities: list[str], dropout: float) -> None:
        super().__init__()
        self.anchor = modalities.index("audio") if "audio" in modalities else 0
        self.others = [i for i in range(len(modalities)) if i != self.anchor]
        self.adapters = nn.ModuleList([HighwayAdapter(hidden, dropout) if m == "text"
                                       else nn.Identity() for m in modalities])
        self.proj = nn.ModuleList([nn.Linear(hidden, hidden) for _ in self.others])
        self.gates = nn.ModuleList([nn.Linear(2 * hidden, hidden) for _ in self.others])
        self.drop = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, cfg: dict, modalities: list[str]) -> GatedFusion:
        m = cfg["model"]
        return cls(m["hidden"], list(modalities), m["dropout"])

    def forward(self, hs: list[torch.Tensor]) -> torch.Tensor:
        a = self.adapters[self.anchor](hs[self.anchor])
        z = a
        for i, w, u in zip(self.others, self.proj, self.gates, strict=True):
            o = self.adapters[i](hs[i])
            h = torch.sigmoid(u(torch.cat([a, o], dim=-1)))
            z = z + h * self.drop(w(o))
        return z
