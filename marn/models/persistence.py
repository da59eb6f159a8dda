"""Trained model files: weights plus what is needed to rebuild the model, loadable with `weights_only=True`."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from marn.items import ItemTable
from marn.models.base import Architecture, CTRModel
from marn.models.registry import build_model, model_folder

MODEL_FILE = "model.pt"
MODEL_FILE_FORMAT = 1


class ModelFileError(ValueError):
    """A model or checkpoint file that does not belong to this model, config or data."""


def model_file(models_dir: Path, name: str) -> Path:
    """The trained model file of the registered model `name` under `models_dir`."""
    return model_folder(models_dir, name) / MODEL_FILE


def atomic_torch_save(obj, path: Path) -> None:
    """Write to a temporary file and rename, so a killed process never leaves a half-written file."""
    # Not marn.files.atomic_path: torch.save names the folder inside its zip after the file it writes
    # (less the last suffix), so the temporary must be `<name>.tmp` for the bytes not to depend on it.
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_model(path: Path, model_name: str, model: CTRModel, architecture: Architecture, table: ItemTable) -> None:
    atomic_torch_save({"format": MODEL_FILE_FORMAT, "model_name": model_name,
                       "architecture": architecture.as_dict(), "data": table.shape_summary(),
                       "state_dict": model.state_dict()}, path)


def load_model(path: Path, model_name: str, table: ItemTable) -> CTRModel:
    """The model saved at `path`, rebuilt on `table`, in eval mode; fails naming what does not match."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train {model_name!r} first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("format") != MODEL_FILE_FORMAT:
        raise ModelFileError(f"{path} has format {saved.get('format')!r}, expected {MODEL_FILE_FORMAT}")
    if saved["model_name"] != model_name:
        raise ModelFileError(f"{path} holds model {saved['model_name']!r}, not {model_name!r}")
    differences = describe_differences(saved["data"], table.shape_summary())
    if differences:
        raise ModelFileError(f"{path} was trained on other data: {differences}")
    model = build_model(model_name, table, Architecture.from_dict(saved["architecture"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def describe_differences(saved: dict, current: dict) -> str:
    """'key: saved -> current' for each differing key, '' when equal."""
    keys = sorted(set(saved) | set(current))
    return ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k))
