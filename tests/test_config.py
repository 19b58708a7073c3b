import pytest
import yaml

from bst_search import config


def test_presets_load_and_are_valid():
    assert {"baseline_hatr", "late_fusion"} <= set(config.presets())
    base = config.load("baseline_hatr")
    assert base["model"]["name"] == "hatr" and base["backbones"] == ["clap_audio", "clap_text"]
    assert base["train"]["batch_size"] == 64 and base["train"]["mask_p"] == 0.7
    lf = config.load("late_fusion")
    assert lf["model"]["name"] == "late_fusion" and lf["loss"]["coarse"] == "sum"
    assert lf["backbones"] == ["clap_audio", "panns", "clap_text"]


def test_overrides_are_typed_and_applied():
    cfg = config.load("baseline_hatr", ["model.name=late_fusion", "train.max_epochs=20",
                                        "train.lr=3e-4", "backbones=clap_audio,panns",
                                        "train.drop_last=false"])
    assert cfg["model"]["name"] == "late_fusion"
    assert cfg["train"]["max_epochs"] == 20 and cfg["train"]["lr"] == 3e-4
    assert cfg["backbones"] == ["clap_audio", "panns"]
    assert cfg["train"]["drop_last"] is False


def test_yaml_file_source(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"model": {"hidden": 64}, "seed": 3}))
    cfg = config.load(p)
    assert cfg["model"]["hidden"] == 64 and cfg["seed"] == 3
    assert cfg["train"]["lr"] == config.SCHEMA["train.lr"].default


@pytest.mark.parametrize("override,needle", [
    ("model.fusoin=concat", "model.fusoin"),
    ("model.name=resnet", "model.name"),
    ("train.lr=abc", "train.lr"),
    ("train.max_epochs=0", "train.max_epochs"),
    ("loss.alpha=-1", "loss.alpha"),
    ("train.drop_last=maybe", "train.drop_last"),
    ("backbones=a,a", "backbones"),
    ("no_equals_sign", "KEY=VALUE"),
])
def test_bad_keys_and_values_are_named(override, needle):
    with pytest.raises(config.ConfigError, match=needle.replace(".", r"\.")):
        config.load("baseline_hatr", [override])


def test_unknown_nested_key_and_bad_source(tmp_path):
    with pytest.raises(config.ConfigError, match="train.epochz"):
        config.validate({"train": {"epochz": 3}})
    with pytest.raises(config.ConfigError, match="neither a file nor a preset"):
        config.load("no_such_preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(bad)


def test_flatten_roundtrip_matches_schema_keys():
    cfg = config.defaults()
    flat = config.flatten(cfg)
    assert set(flat) == set(config.SCHEMA)
    assert config.unflatten(flat) == cfg


@pytest.mark.parametrize("over, match", [
    ({"model.head": "gc"}, "late_fusion"),  # hatr has a fixed layout
    ({"model.name": "late_fusion", "model.head": "gc"}, "loss.top"),  # gc without its top loss
    ({"model.name": "late_fusion", "loss.top": 1.0}, "top-level output"),  # flat head has none
    ({"model.name": "late_fusion", "model.head": "gc", "loss.top": 1.0, "loss.proxy": 1.0}, "head=proxy"),
    ({"loss.ce": 0.0}, "every loss weight is 0"),
    ({"model.name": "late_fusion", "model.hidden": 30, "model.heads": 4}, "divisible"),
    ({"data.crowd": "union", "data.crowd_a": "el2n", "data.crowd_b": "el2n"}, "both 'el2n'"),
    ({"data.two_stage": True}, "data.crowd"),
])
def test_cross_key_rules_name_the_keys(over: dict, match: str) -> None:
    with pytest.raises(config.ConfigError, match=match):
        config.load(None, over)


def test_unknown_option_values_list_the_valid_ones() -> None:
    for key in ("model.fusion", "model.head", "model.encoder", "data.crowd"):
        with pytest.raises(config.ConfigError) as e:
            config.load(None, {key: "nope"})
        assert all(str(c) in str(e.value) for c in config.SCHEMA[key].choices)


def test_every_option_combination_in_the_mesh_space_validates() -> None:
    cfg = config.load(None, {"model.name": "late_fusion", "model.head": "proxy", "loss.top": 0.5,
                             "loss.proxy": 1.0, "loss.proxy_anchor": 0.5, "loss.ce": 0.0,
                             "data.crowd": "intersection", "data.crowd_b": "uploader_cap",
                             "data.two_stage": True, "post.knn_alpha": 0.2, "post.ckpt_avg": 3})
    assert cfg["post"] == {"knn_alpha": 0.2, "knn_k": 10, "knn_tau": 0.1, "ckpt_avg": 3}


def test_active_keys_drop_what_a_trial_does_not_use() -> None:
    hatr = config.active_keys(config.load("baseline_hatr"))
    assert hatr["model.name"] == "hatr"
    for key in ("model.fusion", "model.head", "model.encoder", "model.heads", "model.pool",
                "model.proxy_tau", "loss.coarse", "loss.focal_gamma", "data.crowd_a",
                "data.pretrain_epochs", "post.knn_k", "train.plateau_patience"):
        assert key not in hatr, key
    assert {"model.res_blocks", "model.batch_norm", "train.step_size", "train.gamma",
            "loss.label_smoothing", "data.crowd"} <= set(hatr)

    late = config.active_keys(config.load("late_fusion", {
        "model.fusion": "attention", "model.head": "proxy", "loss.proxy": 1.0,
        "train.schedule": "plateau", "data.crowd": "union", "data.crowd_a": "uploader_cap",
        "data.crowd_b": "el2n", "post.knn_alpha": 0.2, "train.mask_mode": "none"}))
    assert {"model.fusion", "model.head", "model.proxy_tau", "loss.proxy_margin",
            "train.plateau_patience", "train.gamma", "data.crowd_per_uploader",
            "data.el2n_drop", "data.two_stage", "post.knn_k"} <= set(late)
    for key in ("model.heads", "model.layers", "train.step_size", "train.mask_p",
                "data.pretrain_epochs", "loss.pa_margin", "model.res_blocks"):
        assert key not in late, key
    everything = config.flatten(config.load("late_fusion"))
    assert set(config.active_keys(config.load("late_fusion"))) < set(everything)
    assert set(config.ACTIVE_WHEN) <= set(config.SCHEMA)


def test_active_keys_need_a_resolved_configuration() -> None:
    with pytest.raises(config.ConfigError, match="resolved configuration"):
        config.active_keys({"model": {"name": "hatr"}})


def test_meta_keys_are_active_only_with_meta_probs() -> None:
    keys = ("meta.model", "meta.C", "model.meta_encoder")
    plain = config.active_keys(config.load("baseline_hatr"))
    assert not set(keys) & set(plain)
    meta = config.active_keys(config.load("baseline_hatr", {
        "backbones": ["clap_audio", "clap_text", "meta_probs"]}))
    assert set(keys) <= set(meta) and "model.linear_layers" in meta  # the linear meta encoder
    embedded = config.active_keys(config.load("baseline_hatr", {
        "backbones": ["clap_audio", "meta_probs"], "model.meta_encoder": "class_embedding"}))
    assert "model.linear_layers" not in embedded
    assert config.backbone_modality("meta_probs") == "meta" and config.is_text_backbone("meta_probs")
    with pytest.raises(config.ConfigError, match="meta.model"):
        config.load("late_fusion", ["meta.model=bert"])
