"""The `features` section of params.yaml and `FeaturesConfig` name the same keys."""

import dataclasses

import yaml

from marn.config import PROJECT_ROOT, FeaturesConfig, load_config


def _keys(schema) -> set[str]:
    keys = set()
    for field in dataclasses.fields(schema):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):
            keys |= {f"{field.name}.{key}" for key in _keys(type(default))}
        else:
            keys.add(field.name)
    return keys


def _yaml_keys(section: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in section.items():
        keys |= _yaml_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else {f"{prefix}{name}"}
    return keys


def test_params_features_section_matches_the_schema():
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert _yaml_keys(params["features"]) == _keys(FeaturesConfig)
    features = load_config().features
    assert features.word_vectors == "word2vec" and features.image_size == 224 and features.word2vec.min_count >= 1
