import pytest

from asd.config import ConfigError, apply_overrides, load_train_config

from .conftest import CONFIG


def test_overrides_reach_nested_settings_and_parse_yaml_scalars():
    config = load_train_config(CONFIG, ["training.epochs=3", "model.n_ffts=[512, 2048]", "features.n_mels=64", "name=fan"])
    assert config.training.epochs == 3 and config.model["n_ffts"] == [512, 2048]
    assert config.feature_config().n_mels == 64 and config.name == "fan"


def test_data_dir_expands_environment_variables(monkeypatch):
    monkeypatch.setenv("ASD_DATA_DIR", "/data/x")
    assert str(load_train_config(CONFIG).data_dir) == "/data/x/dcase2023t2/dev_data/ToyCar"


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epochs=0", "training.epochs"),
        ("training.epoch=3", "training.epoch: Extra inputs are not permitted"),
        ("features.nmels=3", "unknown feature settings: nmels"),
        ("threshold.quantile=1.5", "threshold.quantile"),
        ("epochs", "not key=value"),
        ("model.filter=[8]", "filter"),
        ("detector=nope", "unknown detector kind 'nope'"),
    ],
)
def test_bad_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(CONFIG, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config(tmp_path / "none.yaml")


def test_apply_overrides_does_not_mutate_the_input():
    values = {"training": {"epochs": 5}}
    assert apply_overrides(values, ["training.epochs=2"]) == {"training": {"epochs": 2}}
    assert values == {"training": {"epochs": 5}}
