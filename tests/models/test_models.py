"""Models: registries, the output contract of every encoder x fusion x head combination,
LCL top-down inference, and the parameter counts of the official baseline and the late-fusion system."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from bst_search.config import SCHEMA, ConfigError, load
from bst_search.models import (
    ENCODERS,
    FUSIONS,
    HEADS,
    MODELS,
    build_model,
    inference_logits,
    n_params,
    register_model,
)
from bst_search.models.encoders import EmbeddingEncoder, LinearEncoder, ResidualBlock
from bst_search.models.fusions import AttentionFusion, GatedFusion, HighwayAdapter
from bst_search.registry import Registry
from bst_search.taxonomy import N_CLASSES, N_TOP, PARENT

DIMS = {1: [16], 2: [16, 24], 3: [16, 24, 12]}
MODS = {1: ["audio"], 2: ["audio", "text"], 3: ["audio", "audio", "text"]}
# Backbone subsets of the composed model: dims and modalities, in backbone order.
SUBSETS = {
    "a": ([16], ["audio"]),
    "at": ([16, 24], ["audio", "text"]),
    "aat": ([16, 24, 12], ["audio", "audio", "text"]),
    "aa": ([16, 24], ["audio", "audio"]),
}
HIDDEN, PROXY_DIM, B = 16, 8, 4
TOP_HEADS = {"gc", "lcl", "proxy"}


def small_cfg(name: str, **over: object) -> dict:
    base = {"model.name": name, "model.hidden": 32, "model.heads": 4, "model.res_blocks": 1}
    return load(None, {**base, **over})


def piece_cfg(**over: object) -> dict:
    """A tiny valid ``late_fusion`` config; hierarchical heads get the loss.top they need."""
    base: dict[str, object] = {"model.name": "late_fusion", "model.hidden": HIDDEN,
                               "model.heads": 2, "model.res_blocks": 1, "model.head_depth": 1,
                               "model.proxy_dim": PROXY_DIM}
    base.update(over)
    if base.get("model.head", "flat") != "flat":
        base.setdefault("loss.top", 1.0)
    return load(None, base)


def _inputs(dims: list[int]) -> list[torch.Tensor]:
    return [torch.randn(B, d) for d in dims]


# --- registries ---------------------------------------------------------------------------

def test_registry_has_both_models() -> None:
    assert {"hatr", "late_fusion"} <= set(MODELS)


def test_every_configurable_piece_is_registered() -> None:
    """No allowed config value may fail at build time for want of a registered class."""
    for key, reg in (("model.encoder", ENCODERS), ("model.fusion", FUSIONS),
                     ("model.head", HEADS), ("model.name", MODELS)):
        assert reg.key == key
        assert set(SCHEMA[key].choices or ()) <= set(reg), key


def test_unknown_model_raises_naming_it() -> None:
    cfg = small_cfg("hatr")
    cfg["model"]["name"] = "no_such_net"
    with pytest.raises(ConfigError, match="no_such_net"):
        build_model(cfg, [16], ["audio"])


@pytest.mark.parametrize("leaf,reg", [("encoder", ENCODERS), ("fusion", FUSIONS), ("head", HEADS)])
def test_unknown_piece_raises_naming_it_and_the_registered(leaf: str, reg: Registry) -> None:
    cfg = piece_cfg()
    cfg["model"][leaf] = "no_such_piece"
    with pytest.raises(ConfigError) as ei:
        build_model(cfg, [16], ["audio"])
    msg = str(ei.value)
    assert f"model.{leaf}" in msg and "no_such_piece" in msg
    assert all(name in msg for name in reg)


def test_register_twice_under_one_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="hatr"):
        @register_model("hatr")
        class Other(nn.Module):
            @classmethod
            def from_config(cls, cfg, input_dims, modalities, n_classes):  # pragma: no cover
                return cls()


@pytest.mark.parametrize("reg,name", [(ENCODERS, "linear"), (FUSIONS, "concat"), (HEADS, "flat")])
def test_register_duplicate_piece_is_an_error(reg: Registry, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        @reg.register(name)
        class Other(nn.Module):
            @classmethod
            def from_config(cls, *args):  # pragma: no cover
                return cls()


def test_a_new_fusion_is_one_decorated_class() -> None:
    """What a newcomer writes in fusions.py is enough for build_model to use it."""

    @FUSIONS.register("test_sum")
    class SumFusion(nn.Module):
        @classmethod
        def from_config(cls, cfg: dict, modalities: list[str]) -> SumFusion:
            return cls()

        def forward(self, hs: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(hs).sum(0)

    try:
        cfg = piece_cfg()
        cfg["model"]["fusion"] = "test_sum"
        model = build_model(cfg, [16, 24], ["audio", "text"])
        assert isinstance(model.fusion, SumFusion)
        assert model(_inputs([16, 24]))["logits"].shape == (B, N_CLASSES)
    finally:
        FUSIONS.pop("test_sum")


# --- output contract of every combination -------------------------------------------------

def _check_out(out: dict[str, torch.Tensor], head: str) -> None:
    keys = {"logits", "embedding"}
    if head in TOP_HEADS:
        keys.add("top_logits")
    if head == "lcl":
        keys.add("pred_logits")
    if head == "proxy":
        keys |= {"proxies", "top_proxies"}
    assert set(out) == keys
    assert out["logits"].shape == (B, N_CLASSES)
    assert out["embedding"].dim() == 2 and out["embedding"].shape[0] == B
    if head in TOP_HEADS:
        assert out["top_logits"].shape == (B, N_TOP)
    if head == "lcl":
        assert out["pred_logits"].shape == (B, N_CLASSES)
    if head == "proxy":
        assert out["embedding"].shape == (B, PROXY_DIM)
        assert out["proxies"].shape == (N_CLASSES, PROXY_DIM)
        assert out["top_proxies"].shape == (N_TOP, PROXY_DIM)
    assert inference_logits(out).shape == (B, N_CLASSES)
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("subset", list(SUBSETS))
@pytest.mark.parametrize("head", ["flat", "gc", "lcl", "proxy"])
@pytest.mark.parametrize("fusion", ["concat", "attention", "transformer", "gated"])
@pytest.mark.parametrize("encoder", ["linear", "hatr"])
def test_every_combination_trains_and_predicts(encoder: str, fusion: str, head: str,
                                               subset: str) -> None:
    torch.manual_seed(0)
    dims, mods = SUBSETS[subset]
    model = build_model(piece_cfg(**{"model.encoder": encoder, "model.fusion": fusion,
                                     "model.head": head}), dims, mods)
    xs = _inputs(dims)
    model.train()
    out = model(xs)
    _check_out(out, head)
    sum(v.sum() for v in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not name.startswith("fusion."):
            assert p.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        _check_out(model(xs), head)


@pytest.mark.parametrize("subset", ["a", "aat"])
def test_transformer_cls_pooling(subset: str) -> None:
    torch.manual_seed(0)
    dims, mods = SUBSETS[subset]
    mean = build_model(piece_cfg(), dims, mods)
    model = build_model(piece_cfg(**{"model.pool": "cls"}), dims, mods)
    assert n_params(model) == n_params(mean) + HIDDEN  # the cls token
    out = model(_inputs(dims))
    _check_out(out, "flat")
    out["logits"].sum().backward()
    assert model.fusion.cls.grad is not None and model.fusion.cls.grad.abs().sum() > 0


def test_inference_logits_prefers_pred_logits() -> None:
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert inference_logits({"logits": a}) is a
    assert inference_logits({"logits": a, "pred_logits": b}) is b


# --- LCL top-down inference ---------------------------------------------------------------

def _lcl_head() -> nn.Module:
    torch.manual_seed(0)
    return HEADS.lookup("lcl").from_config(piece_cfg(**{"model.head": "lcl"}), N_CLASSES).eval()


def test_lcl_prediction_is_the_renormalised_product() -> None:
    head = _lcl_head()
    with torch.no_grad():
        out = head(torch.randn(6, HIDDEN))
    p_fine, p_top = out["logits"].softmax(-1), out["top_logits"].softmax(-1)
    prod = p_fine * p_top[:, torch.as_tensor(PARENT)]
    expected = prod / prod.sum(-1, keepdim=True)
    got = inference_logits(out).softmax(-1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(6), atol=1e-6)


def test_lcl_prediction_stays_under_a_confident_top_class() -> None:
    """The fine branch prefers a class of another top level; the sure top branch wins."""
    head = _lcl_head()
    top_t = 2
    outsider = int((PARENT != top_t).nonzero()[0][0])
    with torch.no_grad():
        last_top, last_fine = head.top_branch[-1], head.fine_branch[-1]
        last_top.weight.zero_()
        last_top.bias.fill_(-20.0)
        last_top.bias[top_t] = 20.0
        last_fine.weight.zero_()
        last_fine.bias.zero_()
        last_fine.bias[outsider] = 10.0
        out = head(torch.randn(6, HIDDEN))
    assert (out["logits"].argmax(-1) == outsider).all()
    p = inference_logits(out).softmax(-1)
    assert torch.allclose(p.sum(-1), torch.ones(6), atol=1e-6)
    likely = (p > 1e-6).nonzero()[:, 1].unique()
    assert set(PARENT[likely.numpy()].tolist()) == {top_t}


# --- encoders -----------------------------------------------------------------------------

@pytest.mark.parametrize("n_layers", [1, 2, 4])
def test_linear_encoder_depth(n_layers: int) -> None:
    enc = ENCODERS.lookup("linear").from_config(piece_cfg(**{"model.linear_layers": n_layers}),
                                                20, "audio")
    assert isinstance(enc, LinearEncoder)
    assert sum(isinstance(m, nn.Linear) for m in enc.modules()) == n_layers
    assert enc(torch.randn(B, 20)).shape == (B, HIDDEN)


@pytest.mark.parametrize("res_blocks", [0, 2])
def test_hatr_encoder_depth(res_blocks: int) -> None:
    enc = ENCODERS.lookup("hatr").from_config(piece_cfg(**{"model.res_blocks": res_blocks}),
                                              20, "text")
    assert isinstance(enc, EmbeddingEncoder)
    assert sum(isinstance(m, ResidualBlock) for m in enc.modules()) == res_blocks
    assert sum(isinstance(m, nn.Linear) for m in enc.modules()) == 3 + 2 * res_blocks
    assert enc(torch.randn(B, 20)).shape == (B, HIDDEN)


# --- fusions ------------------------------------------------------------------------------

def test_gated_fusion_single_backbone_is_the_anchor() -> None:
    fusion = GatedFusion.from_config(piece_cfg(), ["audio"]).train()
    h = torch.randn(B, HIDDEN)
    assert torch.equal(fusion([h]), h)


def test_gated_fusion_adapts_text_only() -> None:
    torch.manual_seed(0)
    fusion = GatedFusion.from_config(piece_cfg(), ["audio", "audio", "text"]).train()
    assert fusion.anchor == 0 and fusion.others == [1, 2]
    assert [type(a) for a in fusion.adapters] == [nn.Identity, nn.Identity, HighwayAdapter]
    fusion([torch.randn(B, HIDDEN) for _ in range(3)]).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in fusion.adapters[2].parameters())
    assert not any(isinstance(m, HighwayAdapter)
                   for m in GatedFusion.from_config(piece_cfg(), ["audio", "audio"]).modules())


def test_gated_fusion_anchor_is_the_first_audio_backbone() -> None:
    torch.manual_seed(0)
    fusion = GatedFusion.from_config(piece_cfg(), ["text", "audio"]).eval()
    assert fusion.anchor == 1 and fusion.others == [0]
    for p in fusion.proj.parameters():  # silence the residual: z must be the audio anchor
        nn.init.zeros_(p)
    t, a = torch.randn(B, HIDDEN), torch.randn(B, HIDDEN)
    assert torch.equal(fusion([t, a]), a)


def test_attention_fusion_single_backbone_is_identity() -> None:
    fusion = AttentionFusion.from_config(piece_cfg(), ["text"]).train()
    h = torch.randn(B, HIDDEN)
    assert n_params(fusion) == 0 and torch.equal(fusion([h]), h)


# --- hatr, the official baseline ---------------------------------------------------------

@pytest.mark.parametrize("name", ["hatr", "late_fusion"])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_output_shape(name: str, m: int) -> None:
    torch.manual_seed(0)
    model = build_model(small_cfg(name), DIMS[m], MODS[m])
    xs = [torch.randn(5, d) for d in DIMS[m]]
    model.train()
    assert model(xs)["logits"].shape == (5, 23)
    model.eval()
    out = model(xs)
    assert set(out) == {"logits", "embedding"}
    assert out["logits"].shape == (5, 23) and torch.isfinite(out["logits"]).all()
    if name == "hatr":
        assert out["embedding"].shape == (5, 16)  # the head blocks' width, hidden // 2
        assert model.last_attention is None or model.last_attention.shape == (5, m)


def test_hatr_without_batch_norm_and_blocks() -> None:
    model = build_model(small_cfg("hatr", **{"model.batch_norm": False, "model.res_blocks": 0}),
                        [16, 24], ["audio", "text"])
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert model([torch.randn(1, 16), torch.randn(1, 24)])["logits"].shape == (1, 23)


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


def test_hatr_param_count_of_the_official_two_branch_model() -> None:
    model = build_model(load("baseline_hatr"), [512, 512], ["audio", "text"])
    assert n_params(model) == 7_319_513


# --- the late-fusion system's layout from the late_fusion preset ----------------------------------------

def _seed000_shapes(dims: list[int], h: int, ff: int, n: int = 23) -> list[tuple[int, ...]]:
    """Parameter shapes, in order, of the late-fusion system's model, as its report describes it."""
    s: list[tuple[int, ...]] = []
    for d in dims:  # per-backbone Linear projection to a token
        s += [(h, d), (h,)]
    s += [(3 * h, h), (3 * h,), (h, h), (h,)]  # self-attention
    s += [(ff, h), (ff,), (h, ff), (h,), (h,), (h,), (h,), (h,)]  # feed-forward, 2 LayerNorms
    s += [(h, h), (h,), (h,), (h,)]  # head: Linear, LayerNorm
    for _ in range(2):  # two pre-norm residual MLP blocks
        s += [(h,), (h,), (h, h), (h,), (h, h), (h,)]
    return s + [(n, h), (n,)]


def test_late_fusion_preset_is_seed_000_layer_for_layer() -> None:
    cfg = load("late_fusion")
    assert (cfg["model"]["hidden"], cfg["model"]["heads"], cfg["model"]["layers"],
            cfg["model"]["ff_mult"]) == (512, 8, 1, 4)
    model = build_model(cfg, [512, 2048, 512], ["audio", "audio", "text"])
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == _seed000_shapes([512, 2048, 512], 512, 2048)
    assert n_params(model) == sum(math.prod(s) for s in shapes) == 6_054_935
    assert sum(isinstance(m, nn.TransformerEncoderLayer) for m in model.modules()) == 1
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == 5


# --- the meta_probs branch ---------------------------------------------------------------

META_DIM = N_CLASSES + 1  # 23 probabilities + the no-text flag


def _meta_inputs(dims: list[int]) -> list[torch.Tensor]:
    xs = _inputs(dims)
    xs[-1] = torch.cat([torch.softmax(torch.randn(B, N_CLASSES), dim=1),
                        torch.tensor([[0.0], [1.0], [0.0], [0.0]])], dim=1)
    return xs


def test_meta_encoders_match_the_schema() -> None:
    from bst_search.models.encoders import META_ENCODERS

    assert set(META_ENCODERS) == set(SCHEMA["model.meta_encoder"].choices)


@pytest.mark.parametrize("meta_encoder", ["linear", "class_embedding"])
@pytest.mark.parametrize("fusion", ["concat", "attention", "transformer", "gated"])
def test_every_fusion_takes_the_meta_branch(fusion: str, meta_encoder: str) -> None:
    torch.manual_seed(0)
    dims, mods = [16, 24, META_DIM], ["audio", "text", "meta"]
    model = build_model(piece_cfg(**{"model.fusion": fusion, "model.meta_encoder": meta_encoder}),
                        dims, mods)
    model.train()
    out = model(_meta_inputs(dims))
    _check_out(out, "flat")
    out["logits"].sum().backward()
    grads = [p.grad for p in model.encoders[2].parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_class_embedding_is_a_mixture_of_class_vectors() -> None:
    from bst_search.models.encoders import ClassEmbeddingEncoder

    enc = ClassEmbeddingEncoder(META_DIM, HIDDEN)
    x = _meta_inputs([META_DIM])[0]
    E = enc.E.weight.T  # (24, hidden): 23 class vectors, then the no-text vector
    assert torch.allclose(enc(x), x[:, :N_CLASSES] @ E[:N_CLASSES] + x[:, N_CLASSES:] * E[N_CLASSES])
    assert n_params(enc) == META_DIM * HIDDEN  # no bias, no non-linearity


def test_hatr_joins_the_meta_encoding_to_its_text_side() -> None:
    torch.manual_seed(0)
    cfg = small_cfg("hatr", **{"model.meta_encoder": "class_embedding"})
    model = build_model(cfg, [16, 24, META_DIM], ["audio", "text", "meta"])
    assert len(model.encoders) == 2  # audio and text, as the official model
    assert model.encoders[1].in_norm.num_features == 24 + 32  # text embedding + meta encoding
    out = model(_meta_inputs([16, 24, META_DIM]))
    assert out["logits"].shape == (B, N_CLASSES) and model.last_attention.shape == (B, 2)
    alone = build_model(cfg, [16, META_DIM], ["audio", "meta"])  # no text: meta is the text side
    assert len(alone.encoders) == 2 and alone.encoders[1].in_norm.num_features == 32
    assert alone(_meta_inputs([16, META_DIM]))["logits"].shape == (B, N_CLASSES)
    with pytest.raises(ValueError, match="at most one meta"):
        build_model(cfg, [16, META_DIM, META_DIM], ["audio", "meta", "meta"])
