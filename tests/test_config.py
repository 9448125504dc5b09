import pytest

from scarches_api.config import QueryConfig, Settings, build_config, parse_override
from scarches_api.errors import ConfigError

ORIGINAL_KEYS = {
    "model", "output_path", "model_path", "ref_path", "reference_data", "query_data", "webhook", "debug", "async",
    "atlas", "condition_key", "cell_type_key", "unlabeled_key", "n_layers", "encode_covariates",
    "deeply_inject_covariates", "use_layer_norm", "use_batch_norm", "scvi_max_epochs", "scvi_max_epochs_query",
    "scanvi_max_epochs", "scanvi_max_epochs_query", "totalvi_max_epochs_1", "totalvi_max_epochs_2", "max_epochs",
    "n_neighbors", "unwanted_labels", "pre_trained_scVI", "pre_trained_scANVI", "pre_trained_totalVI", "use_gpu",
    "development-mode",
}


def test_every_original_key_is_accepted_with_the_original_default():
    used = build_config().used()
    assert ORIGINAL_KEYS <= set(used)
    assert used["condition_key"] == "study" and used["cell_type_key"] == "cell_type"
    assert used["unlabeled_key"] == "Unknown" and used["unwanted_labels"] == ["leiden"]
    assert (used["scvi_max_epochs"], used["scvi_max_epochs_query"]) == (400, 200)
    assert (used["scanvi_max_epochs"], used["scanvi_max_epochs_query"]) == (20, 100)
    assert (used["totalvi_max_epochs_1"], used["totalvi_max_epochs_2"]) == (400, 200)
    assert used["async"] is False and used["development-mode"] is False


@pytest.mark.parametrize("cls", [QueryConfig, Settings])
def test_every_setting_is_documented(cls):
    undocumented = [name for name, field in cls.model_fields.items() if not (field.description or "").strip()]
    assert undocumented == []


def test_user_keys_win_over_defaults_and_aliases_work():
    config = build_config({"model": "scanvi", "async": True, "development-mode": True, "n_layers": 3})
    assert config.model == "scANVI" and config.async_ and config.development_mode and config.n_layers == 3


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'modle'") as info:
        build_config({"modle": "scVI"})
    assert info.value.status_code == 422 and info.value.details["keys"] == ["modle"]


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="key 'n_layers'"):
        build_config({"n_layers": "two"})


def test_unknown_model_name_is_an_error_naming_the_choices():
    with pytest.raises(ConfigError, match="key 'model'.*scVI.*scANVI.*totalVI"):
        build_config({"model": "scGPT"})


def test_atlas_supplies_its_keys_and_the_user_still_wins():
    lung = build_config({"atlas": "Human lung cell atlas"})
    assert (lung.cell_type_key, lung.condition_key, lung.unlabeled_key) == ("scanvi_label", "dataset", "unlabeled")
    assert build_config({"atlas": "human lung cell atlas", "condition_key": "sample"}).condition_key == "sample"
    with pytest.raises(ConfigError, match="unknown atlas 'Mars'"):
        build_config({"atlas": "Mars"})


def test_body_must_be_an_object():
    with pytest.raises(ConfigError, match="JSON object"):
        build_config(["model", "scVI"])  # type: ignore[arg-type]


def test_parse_override_reads_json_values():
    assert parse_override("n_layers=3") == ("n_layers", 3)
    assert parse_override("unwanted_labels=[\"a\"]") == ("unwanted_labels", ["a"])
    assert parse_override("model=scANVI") == ("model", "scANVI")
    with pytest.raises(ConfigError):
        parse_override("model")


def test_settings_read_the_original_environment_names(monkeypatch):
    monkeypatch.setenv("WORKERS", "5")
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("AWS_BUCKET", "atlas")
    settings = Settings()
    assert (settings.workers, settings.threads, settings.port, settings.aws_bucket) == (5, 8, 9000, "atlas")
