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
