"""Stage `train_params`: per registered model, `data/train_params/<model>.json` with the values of exactly the
params its training reads (marn.config.TRAIN_PARAMS, plus ADVERSARIAL_PARAMS for models with an adversary).

dvc.yaml's train stages take these files as their params, so changing `train.lambda0` retrains MARN and the
other adversarial models, never BaseModel+IDs; this stage reruns on any change and rewrites identical bytes
for the models it does not concern. It is bookkeeping, so a plain command, not a Prefect flow:
`python -m flows.train_params [key=value ...]`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from marn.config import ADVERSARIAL_PARAMS, TRAIN_PARAMS, ConfigError, load_config, resolve_path
from marn.models.marn import ADVERSARIES
from marn.models.registry import MODELS

OUT_DIR = "data/train_params"


def has_adversary(model_name: str) -> bool:
    variant = getattr(MODELS[model_name], "keywords", {}).get("variant")  # MARN variants are partials with one
    return variant is not None and ADVERSARIES.get(variant.fusion) is not None


def params_read_by(cfg, model_name: str) -> dict:
    """{section: {key: value}} of the params `model_name`'s training reads."""
    keys = TRAIN_PARAMS + (ADVERSARIAL_PARAMS if has_adversary(model_name) else ())
    values: dict[str, dict] = {}
    for dotted in keys:
        section, key = dotted.split(".", 1)
        value = OmegaConf.select(cfg, dotted)
        values.setdefault(section, {})[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return values


def write_train_params(cfg, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        path = out_dir / f"{name}.json"
        partial = path.with_name(path.name + ".part")
        partial.write_text(json.dumps(params_read_by(cfg, name), indent=2, sort_keys=True) + "\n")
        os.replace(partial, path)


def main() -> None:
    try:
        cfg = load_config(sys.argv[1:])
    except ConfigError as err:
        sys.exit(f"error: {err}")
    write_train_params(cfg, resolve_path(OUT_DIR))


if __name__ == "__main__":
    main()
