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

# importing the model modules registers their models and pieces
from bst_search.models import hatr, late_fusion  # noqa: F401
from bst_search.models.base import (
    MODELS,
    build_model,
    inference_logits,
    init_weights,
    n_params,
    register_model,
)
from bst_search.models.encoders import ENCODERS
from bst_search.models.fusions import FUSIONS
from bst_search.models.heads import HEADS

__all__ = ["ENCODERS", "FUSIONS", "HEADS", "MODELS", "build_model", "inference_logits",
           "init_weights", "n_params", "register_model"]
