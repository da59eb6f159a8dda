"""The model names used in `params.yaml` (`train.models`), each mapped to a function that builds the model."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from marn.items import ItemTable
from marn.models.base import Architecture, CTRModel
from marn.models.baselines import BASELINES
from marn.models.marn import MARN, MarnVariant
from marn.nn.modality_embedding import MODALITIES


def _marn(modalities: tuple[str, ...], fusion: str, property_gate: bool = False,
          candidate_attention: bool = False) -> Callable[..., CTRModel]:
    return partial(MARN, variant=MarnVariant(modalities, fusion, property_gate, candidate_attention))


# Table 3 (paper §4.5): BaseModel reads the behaviours with a plain GRU; each row below it changes one thing.
# The two rows after MAF+DDMA are ours: they split APGRU's gain into its property gate and its candidate attention.
ABLATIONS: dict[str, Callable[..., CTRModel]] = {
    "BaseModel+IDs": _marn(("ids",), "sum"),
    "BaseModel+IMAGE": _marn(("image",), "sum"),
    "BaseModel+CONC": _marn(MODALITIES, "sum"),
    "BaseModel+MAF": _marn(MODALITIES, "maf"),
    "BaseModel+MAF+ADV": _marn(MODALITIES, "maf+adv"),
    "BaseModel+MAF+DDMA": _marn(MODALITIES, "maf+ddma"),
    "BaseModel+MAF+DDMA+PropertyGate": _marn(MODALITIES, "maf+ddma", property_gate=True),
    "BaseModel+MAF+DDMA+CandidateAttention": _marn(MODALITIES, "maf+ddma", candidate_attention=True),
    "MARN": _marn(MODALITIES, "maf+ddma", property_gate=True, candidate_attention=True),
}
# The paper's claimed ordering of Table 3, each step one change: IDs < CONC < MAF < MAF+ADV < MAF+DDMA < MARN.
TABLE3_LADDER = ("BaseModel+IDs", "BaseModel+CONC", "BaseModel+MAF", "BaseModel+MAF+ADV", "BaseModel+MAF+DDMA", "MARN")

MODELS: dict[str, Callable[..., CTRModel]] = {**ABLATIONS, **BASELINES}


def check_model_name(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return name


def build_model(name: str, table: ItemTable, architecture: Architecture) -> CTRModel:
    return MODELS[check_model_name(name)](table, architecture)


def model_folder(models_dir: str | Path, name: str) -> Path:
    """Where a model's files live: its registered name as the folder, as `dvc.yaml`'s foreach names it."""
    return Path(models_dir) / check_model_name(name)
