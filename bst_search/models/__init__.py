"""Classifiers on frozen embeddings, registered by name.

A model class registers itself with :func:`register_model` and provides
``from_config(cfg, input_dims, modalities, n_classes)``; :func:`build_model` looks the name
up in ``cfg["model"]["name"]`` and applies the shared weight initialisation, so a new
architecture is one decorated class in one file. ``late_fusion`` is itself composed of
registered pieces: :data:`ENCODERS` (``model.encoder``), :data:`FUSIONS` (``model.fusion``)
and :data:`HEADS` (``model.head``).

Output contract: every model's ``forward(xs)`` returns a dict of tensors,

- "logits": (B, n_classes) fine logits, what the training loss terms use;
- "embedding": (B, d) the latent right before the classifier(s);
- "top_logits": (B, 5) the head's own top-level logits (gc, lcl, proxy heads);
- "pred_logits": (B, n_classes) inference logits where they differ from "logits" (lcl);
- "proxies", "top_proxies": (23, d) and (5, d) raw proxy parameters (proxy head).

Prediction and validation read :func:`inference_logits`, never "logits" directly.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bst_search.config import ConfigError
from bst_search.registry import Registry
from bst_search.taxonomy import N_CLASSES

MODELS = Registry("model.name")
register_model = MODELS.register


def init_weights(model: nn.Module, scheme: str) -> None:
    """Re-initialise Linear weights in place; biases and norms keep PyTorch's defaults.

    Applied to every Linear inside the model (``model.apply``-style). Note that the official
    baseline calls its ``init_weights(model)`` on the top module only, which is no Linear, so
    its published runs in fact use PyTorch's default initialisation.
    """
    if scheme == "torch_default":
        return
    if scheme != "xavier_uniform":
        raise ConfigError(f"model.init: unknown scheme {scheme!r}")
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)


def build_model(cfg: dict, input_dims: list[int], modalities: list[str],
                n_classes: int = N_CLASSES) -> nn.Module:
    """Instantiate ``cfg["model"]["name"]`` for backbones of the given input dims.

    ``input_dims[i]`` and ``modalities[i]`` ("audio" or "text") describe backbone
    ``cfg["backbones"][i]``; the model's ``forward(xs)`` takes the embeddings in that order.
    """
    cls = MODELS.lookup(cfg["model"]["name"])
    if not input_dims:
        raise ValueError("build_model: need at least one backbone")
    if len(modalities) != len(input_dims):
        raise ValueError(f"build_model: {len(input_dims)} input dims but {len(modalities)} modalities")
    bad = [m for m in modalities if m not in ("audio", "text")]
    if bad:
        raise ValueError(f"build_model: modalities must be 'audio' or 'text', got {bad}")
    model = cls.from_config(cfg, list(input_dims), list(modalities), n_classes)
    init_weights(model, cfg["model"]["init"])
    return model


def inference_logits(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits to predict from: "pred_logits" where the model has them, else "logits"."""
    return out["pred_logits"] if "pred_logits" in out else out["logits"]


def n_params(model: nn.Module) -> int:
    """Trainable parameters (buffers such as BatchNorm running stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Importing the modules registers their models and pieces.
from bst_search.models import hatr, late_fusion  # noqa: E402, F401
from bst_search.models.encoders import ENCODERS  # noqa: E402
from bst_search.models.fusions import FUSIONS  # noqa: E402
from bst_search.models.heads import HEADS  # noqa: E402

__all__ = ["ENCODERS", "FUSIONS", "HEADS", "MODELS", "build_model", "inference_logits",
           "init_weights", "n_params", "register_model"]
