"""Classifier heads of the composed model (``model.head``): fused (B, hidden) -> outputs.

Every head subclasses :class:`Head` (the shared trunk: the late-fusion system's Linear, LayerNorm, GELU,
dropout and ``model.head_depth`` pre-norm residual MLP blocks), is registered by name and
has ``from_config(cfg, n_classes) -> head``. ``forward`` returns the output dict that every
model returns (see ``bst_search.models``): "logits" and "embedding" always, "top_logits",
"pred_logits", "proxies" and "top_proxies" where the head has them. To add a head, write
one decorated subclass here (and allow its name in ``model.head``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bst_search.registry import Registry
from bst_search.taxonomy import N_CLASSES, N_TOP, PARENT

HEADS = Registry("model.head")
register_head = HEADS.register


class ResidualMLP(nn.Module):
    """Pre-norm MLP block with an identity shortcut (the late-fusion system's head block)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class Head(nn.Module):
    """The shared trunk; its output is the "embedding" unless a subclass projects further.

    ``hierarchical`` heads index the 23 classes by :data:`~bst_search.taxonomy.PARENT`, so
    they only exist for the task's own class count.
    """

    hierarchical = False

    def __init__(self, hidden: int, n_classes: int, dropout: float, depth: int) -> None:
        super().__init__()
        if self.hierarchical and n_classes != N_CLASSES:
            raise ValueError(f"{type(self).__name__}: the taxonomy has {N_CLASSES} classes, "
                             f"got n_classes={n_classes}")
        self.trunk = nn.Sequential(
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
            *[ResidualMLP(hidden, dropout) for _ in range(depth)],
        )

    @classmethod
    def from_config(cls, cfg: dict, n_classes: int) -> Head:
        m = cfg["model"]
        return cls(m["hidden"], n_classes, m["dropout"], m["head_depth"])

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


@register_head("flat")
class FlatHead(Head):
    """Trunk -> Linear -> fine logits (the late-fusion system's head; the multi-branch system's flat head)."""

    def __init__(self, hidden: int, n_classes: int, dropout: float, depth: int) -> None:
        super().__init__(hidden, n_classes, dropout, depth)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.trunk(z)
        return {"logits": self.classifier(e), "embedding": e}


@register_head("gc")
class GlobalClassifierHead(Head):
    """The multi-branch system's global classifier: parallel Linear outputs for 23 fine and 5 top classes.

    One shared representation is trained for both levels (multi-task); inference uses the
    fine logits only.
    """

    hierarchical = True

    def __init__(self, hidden: int, n_classes: int, dropout: float, depth: int) -> None:
        super().__init__(hidden, n_classes, dropout, depth)
        self.classifier = nn.Linear(hidden, n_classes)
        self.top_classifier = nn.Linear(hidden, N_TOP)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.trunk(z)
        return {"logits": self.classifier(e), "top_logits": self.top_classifier(e),
                "embedding": e}


@register_head("lcl")
class LocalPerLevelHead(Head):
    """The multi-branch system's local classifier per level, with top-down correction at inference.

    Each level has its own small MLP on the trunk output and is trained on its own logits
    ("logits", "top_logits"). Inference multiplies the levels, p(c) ∝ p_top(parent(c)) ·
    p_fine(c), so a fine class outside the predicted top class cannot win; "pred_logits" =
    log_softmax(fine) + log_softmax(top)[:, PARENT], whose softmax is that renormalised
    product.
    """

    hierarchical = True

    def __init__(self, hidden: int, n_classes: int, dropout: float, depth: int) -> None:
        super().__init__(hidden, n_classes, dropout, depth)
        self.fine_branch = self._branch(hidden, n_classes, dropout)
        self.top_branch = self._branch(hidden, N_TOP, dropout)
        self.register_buffer("parent", torch.as_tensor(PARENT, dtype=torch.long), persistent=False)

    @staticmethod
    def _branch(hidden: int, n_out: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout),
                             nn.Linear(hidden, n_out))

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.trunk(z)
        fine, top = self.fine_branch(e), self.top_branch(e)
        pred = F.log_softmax(fine, dim=-1) + F.log_softmax(top, dim=-1)[:, self.parent]
        return {"logits": fine, "top_logits": top, "pred_logits": pred, "embedding": e}


@register_head("proxy")
class ProxyHead(Head):
    """MESH's proxy classifier: cosine similarity to learnable class proxies.

    Trunk -> Linear to ``proxy_dim`` (the "embedding", returned unnormalised); fine proxies
    (23, proxy_dim) and top proxies (5, proxy_dim) are raw parameters, returned as "proxies"
    and "top_proxies" for the proxy losses, which normalise them as the logits here do:
    logits = cos(embedding, proxies) / tau.
    """

    hierarchical = True

    def __init__(self, hidden: int, n_classes: int, dropout: float, depth: int, *,
                 proxy_dim: int = 128, tau: float = 0.07) -> None:
        super().__init__(hidden, n_classes, dropout, depth)
        if tau <= 0:
            raise ValueError(f"proxy head: tau must be > 0, got {tau}")
        self.tau = tau
        self.project = nn.Linear(hidden, proxy_dim)
        # Directions are what count (cosine), so a standard normal gives uniform directions.
        self.proxies = nn.Parameter(torch.randn(n_classes, proxy_dim))
        self.top_proxies = nn.Parameter(torch.randn(N_TOP, proxy_dim))

    @classmethod
    def from_config(cls, cfg: dict, n_classes: int) -> ProxyHead:
        m = cfg["model"]
        return cls(m["hidden"], n_classes, m["dropout"], m["head_depth"],
                   proxy_dim=m["proxy_dim"], tau=m["proxy_tau"])

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.project(self.trunk(z))
        u = F.normalize(e, dim=-1)
        return {"logits": u @ F.normalize(self.proxies, dim=-1).T / self.tau,
                "top_logits": u @ F.normalize(self.top_proxies, dim=-1).T / self.tau,
                "embedding": e, "proxies": self.proxies, "top_proxies": self.top_proxies}
