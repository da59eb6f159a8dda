"""The stage contract: every stage is `run(config: Params, paths: Paths) -> report` (train also takes the model
name), registered once in `STAGES`; `load_params` is the one loader of every entry point.

`python -m marn.pipeline STAGE [MODEL] [key=value ...]` runs one stage without Prefect (the command torchrun
starts on every rank, and the bookkeeping stage `train_params`); `flows/stage.py` runs the same functions as
Prefect flows for `dvc repro`.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from marn import evaluate, train, train_params
from marn.abtest import stage as abtest
from marn.analysis import report
from marn.config import BUILTIN_ARMS, ConfigError, Params, Paths, load_config
from marn.data import fetch, prepare
from marn.features import build as features
from marn.features.images import IMAGE_ENCODERS
from marn.models.registry import MODELS
from marn.ops.backend import BACKENDS


@dataclass(frozen=True)
class Stage:
    name: str
    title: str  # what the stage's report is, in the Prefect UI
    run: Callable[..., dict]
    takes_model: bool = False  # `run(config, paths, model_name)`: one stage per model in dvc.yaml


STAGES = {stage.name: stage for stage in (
    Stage("fetch", "fetch", fetch.run),
    Stage("prepare", "prepare", prepare.run),
    Stage("features", "features", features.run),
    Stage("train_params", "params each model's training reads", train_params.run),
    Stage("train", "train", train.run, takes_model=True),
    Stage("evaluate", "evaluate", evaluate.run),
    Stage("abtest", "abtest (offline simulation of an A/B test)", abtest.run),
    Stage("report", "paper tables and figures", report.run),
)}


def registry_problems(config: Params) -> list[str]:
    """Values that name something only a registry knows: models, op backends, image encoders, Amazon categories."""
    problems = []
    for i, name in enumerate(config.train.models):
        if name not in MODELS:
            problems.append(f"train.models[{i}] must be a known model ({', '.join(MODELS)}), got {name!r}")
    arms = config.abtest.arms
    for key, name in [("abtest.control", arms[0])] + [(f"abtest.treatments[{i}]", n) for i, n in enumerate(arms[1:])]:
        if name not in MODELS and name not in BUILTIN_ARMS:
            problems.append(f"{key}: unknown model {name!r}; known: {', '.join(MODELS)}, "
                            f"and the built-in arms {', '.join(BUILTIN_ARMS)}")
    if config.analysis.tsne_model not in MODELS:
        problems.append(f"analysis.tsne_model must be a known model, got {config.analysis.tsne_model!r}")
    if config.ops.backend not in BACKENDS:
        problems.append(f"ops.backend must be one of {', '.join(BACKENDS)}, got {config.ops.backend!r}")
    if config.features.image_encoder not in IMAGE_ENCODERS:
        problems.append(f"features.image_encoder must be one of {', '.join(IMAGE_ENCODERS)} (vgg16 = the paper's), "
                        f"got {config.features.image_encoder!r}")
    if config.data.source in fetch.AMAZON_RELEASES:
        try:
            fetch.amazon_urls(config.data.source, config.data.category, config.data.base_url)
        except ValueError as err:
            problems.append(str(err))
    return problems


def load_params(overrides: list[str] | None = None, path: str | Path | None = None) -> Params:
    """`marn.config.load_config` plus the registry checks: every value checked before any stage starts."""
    return load_config(overrides, path, more_checks=registry_problems)


def split_arguments(stage: Stage, args: list[str]) -> tuple[list[str], list[str]]:
    """(the stage's own arguments, the Hydra overrides) of a command line after the stage name."""
    if not stage.takes_model:
        return [], args
    if not args or "=" in args[0]:
        raise ConfigError(f"usage: STAGE {stage.name} needs a model name first, one of {', '.join(MODELS)}")
    if args[0] not in MODELS:
        raise ConfigError(f"unknown model {args[0]!r}; known: {', '.join(MODELS)}")
    return args[:1], args[1:]


def parse_command(argv: list[str]) -> tuple[Stage, list[str], list[str]]:
    """`STAGE [MODEL] [key=value ...]` as (stage, its arguments, overrides); a bad name is a ConfigError."""
    if not argv or argv[0] not in STAGES:
        raise ConfigError(f"usage: STAGE [MODEL] [key=value ...] with STAGE one of {', '.join(STAGES)}"
                          + (f"; got {argv[0]!r}" if argv else ""))
    stage = STAGES[argv[0]]
    stage_args, overrides = split_arguments(stage, argv[1:])
    return stage, stage_args, overrides


def main(argv: list[str] | None = None) -> None:
    try:
        stage, stage_args, overrides = parse_command(sys.argv[1:] if argv is None else argv)
        config = load_params(overrides)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = stage.run(config, Paths.from_params(config), *stage_args)
    print(json.dumps(result, indent=1, default=str)[:2000])


if __name__ == "__main__":
    main()
