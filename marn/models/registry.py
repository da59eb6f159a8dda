"""The model names used in `params.yaml` (`train.models`), each mapped to a function that builds the model."""

from __future__ import annotations

from pathlib import Path

from collections.abc import Callable
from functools import partial

from marn.data.item_table import ItemTable
from marn.models.base import Architecture, CTRModel
from marn.models.baselines import BASELINES
from marn.models.marn import MARN, MarnVariant
from marn.nn.modality_embedding import MODALITIES

MODELS: dict[str, Callable[..., CTRModel]] = {
    "BaseModel+IDs": partial(MARN, variant=MarnVariant(("ids",), "sum", use_property=False)),
    "BaseModel+IMAGE": partial(MARN, variant=MarnVariant(("image",), "sum", use_property=False)),
    "BaseModel+CONC": partial(MARN, variant=MarnVariant(MODALITIES, "sum", use_property=False)),
    "BaseModel+MAF": partial(MARN, variant=MarnVariant(MODALITIES, "maf", use_property=False)),
    "BaseModel+MAF+ADV": partial(MARN, variant=MarnVariant(MODALITIES, "maf+adv", use_property=False)),
    "BaseModel+MAF+DDMA": partial(MARN, variant=MarnVariant(MODALITIES, "maf+ddma", use_property=False)),
    "MARN": partial(MARN, variant=MarnVariant(MODALITIES, "maf+ddma", use_property=True)),
    **BASELINES,
}


def check_model_name(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return name


def build_model(name: str, table: ItemTable, architecture: Architecture) -> CTRModel:
    return MODELS[check_model_name(name)](table, architecture)


def model_folder(models_dir: str | Path, name: str) -> Path:
    """Where a model's files live: its registered name as the folder, as `dvc.yaml`'s foreach names it."""
    return Path(models_dir) / check_model_name(name)
