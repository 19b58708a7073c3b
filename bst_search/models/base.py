"""The model registry and what every model shares: build from a configuration, initialise,
read the logits to predict from. The model classes themselves live beside this module."""


from __future__ import annotations

import torch
import torch.nn as nn

from bst_search.config import ConfigError
from bst_search.registry import Registry
from bst_search.taxonomy import N_CLASSES

MODELS = Registry("model.name")
MODALITIES = ("audio", "text", "meta")
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

    ``input_dims[i]`` and ``modalities[i]`` ("audio", "text", or "meta" for ``meta_probs``,
    see :func:`bst_search.config.backbone_modality`) describe backbone ``cfg["backbones"][i]``;
    the model's ``forward(xs)`` takes the embeddings in that order.
    """
    cls = MODELS.lookup(cfg["model"]["name"])
    if not input_dims:
        raise ValueError("build_model: need at least one backbone")
    if len(modalities) != len(input_dims):
        raise ValueError(f"build_model: {len(input_dims)} input dims but {len(modalities)} modalities")
    bad = [m for m in modalities if m not in MODALITIES]
    if bad:
        raise ValueError(f"build_model: modalities must be one of {', '.join(MODALITIES)}, got {bad}")
    if modalities.count("meta") > 1:
        raise ValueError("build_model: at most one meta (meta_probs) input")
    model = cls.from_config(cfg, list(input_dims), list(modalities), n_classes)
    init_weights(model, cfg["model"]["init"])
    return model


def inference_logits(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits to predict from: "pred_logits" where the model has them, else "logits"."""
    return out["pred_logits"] if "pred_logits" in out else out["logits"]


def n_params(model: nn.Module) -> int:
    """Trainable parameters (buffers such as BatchNorm running stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
