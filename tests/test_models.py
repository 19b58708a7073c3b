"""Model registry, output shapes and the HATR parameter count of the official baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bst_search.config import ConfigError, load
from bst_search.models import MODELS, build_model, n_params, register_model

DIMS = {1: [16], 2: [16, 24], 3: [16, 24, 12]}
MODS = {1: ["audio"], 2: ["audio", "text"], 3: ["audio", "audio", "text"]}


def small_cfg(name: str, **over: object) -> dict:
    base = {"model.name": name, "model.hidden": 32, "model.heads": 4, "model.res_blocks": 1}
    return load(None, {**base, **over})


def test_registry_has_both_models() -> None:
    assert {"hatr", "late_fusion"} <= set(MODELS)


def test_unknown_model_raises_naming_it() -> None:
    cfg = small_cfg("hatr")
    cfg["model"]["name"] = "no_such_net"
    with pytest.raises(ConfigError, match="no_such_net"):
        build_model(cfg, [16], ["audio"])


def test_register_twice_under_one_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="hatr"):
        @register_model("hatr")
        class Other(nn.Module):
            @classmethod
            def from_config(cls, cfg, input_dims, modalities, n_classes):  # pragma: no cover
                return cls()


@pytest.mark.parametrize("name", ["hatr", "late_fusion"])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_output_shape(name: str, m: int) -> None:
    torch.manual_seed(0)
    model = build_model(small_cfg(name), DIMS[m], MODS[m])
    xs = [torch.randn(5, d) for d in DIMS[m]]
    model.train()
    assert model(xs).shape == (5, 23)
    model.eval()
    out = model(xs)
    assert out.shape == (5, 23) and torch.isfinite(out).all()


def test_hatr_without_batch_norm_and_blocks() -> None:
    model = build_model(small_cfg("hatr", **{"model.batch_norm": False, "model.res_blocks": 0}),
                        [16, 24], ["audio", "text"])
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert model([torch.randn(1, 16), torch.randn(1, 24)]).shape == (1, 23)


def test_late_fusion_heads_must_divide_hidden() -> None:
    with pytest.raises(ConfigError, match="model.heads"):
        build_model(small_cfg("late_fusion", **{"model.heads": 5}), [16], ["audio"])


def test_xavier_init_differs_from_default() -> None:
    torch.manual_seed(0)
    a = build_model(small_cfg("hatr", **{"model.init": "torch_default"}), [16], ["audio"])
    torch.manual_seed(0)
    b = build_model(small_cfg("hatr", **{"model.init": "xavier_uniform"}), [16], ["audio"])
    wa, wb = a.encoders[0].in_proj[0].weight, b.encoders[0].in_proj[0].weight
    bound = (6 / (wb.shape[0] + wb.shape[1])) ** 0.5
    assert not torch.equal(wa, wb) and wb.abs().max() <= bound


def _hatr_params_official(dims: list[int], h: int, n_classes: int = 23, blocks: int = 3) -> int:
    """Parameter count of the official BaseClassifier (models.py of
    MTG/dcase2026_task1_baseline) with batch norm, written out layer by layer."""

    def lin(i: int, o: int) -> int:
        return i * o + o

    def bn(c: int) -> int:
        return 2 * c

    def res(d: int, w: int) -> int:  # ResidualBlock(input_size=d, hidden_size=w)
        return lin(d, w) + bn(w) + lin(w, d) + bn(d)

    total = 0
    for d in dims:  # EmbeddingEncoder(d, h)
        w = max(d, 2 * h)
        total += bn(d) + lin(d, w) + blocks * res(w, 2 * w)
        total += lin(w, w // 2) + lin(w // 2, h) + bn(h)
    m = len(dims)
    if m > 1:  # AttentionFusion
        total += lin(m * h, h) + lin(h, m)
    total += lin(h, 2 * h) + lin(2 * h, h) + lin(h, h // 2)  # latent projector
    total += 2 * res(h // 2, h)  # residual classifier
    total += lin(h // 2, h // 4) + lin(h // 4, n_classes)  # class predictor
    return total


@pytest.mark.parametrize("dims", [[512, 512], [512], [512, 2048, 512]])
def test_hatr_param_count_matches_official(dims: list[int]) -> None:
    cfg = load("baseline_hatr")
    model = build_model(cfg, dims, ["audio"] * len(dims))
    assert n_params(model) == _hatr_params_official(dims, 128)
