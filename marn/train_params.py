"""Stage `train_params`: per registered model, `<train.params_dir>/<model>.json` with the values of exactly the
params its training reads (`TRAIN_PARAMS`, plus `ADVERSARIAL_PARAMS` for models with an adversary).

dvc.yaml's train stages take these files as their params, so changing `train.lambda0` retrains MARN and the
other adversarial models, never BaseModel+IDs; this stage reruns on any change and rewrites identical bytes
for the models it does not concern. tests/test_stage_params.py checks these lists against what training reads.
"""

from __future__ import annotations

import json

from marn.config import Params, Paths
from marn.files import atomic_write_text
from marn.models.marn import ADVERSARIES
from marn.models.registry import MODELS

TRAIN_PARAMS = (
    "data.max_len", "data.time_gap_buckets", "ops.backend", "train.seed", "train.epochs", "train.batch_size",
    "train.optimizer", "train.lr", "train.hidden", "train.embed_dim", "train.title_filters", "train.prediction_mlp",
    "train.freeze_word_vectors", "train.log_every", "train.checkpoint_every", "train.num_threads", "train.nproc",
    "train.device",
)
ADVERSARIAL_PARAMS = ("train.lambda0", "train.gamma")


def has_adversary(model_name: str) -> bool:
    variant = getattr(MODELS[model_name], "keywords", {}).get("variant")  # MARN variants are partials with one
    return variant is not None and ADVERSARIES.get(variant.fusion) is not None


def keys_read_by(model_name: str) -> tuple[str, ...]:
    """The dotted params `model_name`'s training reads."""
    return TRAIN_PARAMS + (ADVERSARIAL_PARAMS if has_adversary(model_name) else ())


def params_read_by(config: Params, model_name: str) -> dict:
    """{section: {key: value}} of the params `model_name`'s training reads."""
    values: dict[str, dict] = {}
    for dotted in keys_read_by(model_name):
        section, key = dotted.split(".")
        values.setdefault(section, {})[key] = getattr(getattr(config, section), key)
    return values


def run(config: Params, paths: Paths) -> dict:
    """Writes one file per registered model; returns {model: file name}."""
    written = {}
    for name in MODELS:
        path = paths.train_params / f"{name}.json"
        atomic_write_text(path, json.dumps(params_read_by(config, name), indent=2, sort_keys=True) + "\n")
        written[name] = path.name
    return written
