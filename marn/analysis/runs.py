"""Where the repeated training runs live: the folders that dvc.yaml's `train_seeds` and `lambda0` stages write.

The `train` stage's run (seed `train.seed`, `train.lambda0`) is `<train.out_dir>/<model>/`; a run with seed S
is `<train.out_dir>/seed-S/<model>/`, a MARN run with lambda0 v is `<train.out_dir>/lambda0-<v>/MARN/`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from marn.config import TrainConfig

LAMBDA0_MODEL = "MARN"
LAMBDA0_PREFIX = "lambda0-"


@dataclass(frozen=True)
class Run:
    models_dir: Path  # holds <model name>/model.pt
    seed: int
    lambda0: float


def seed_folder(models_root: Path, seed: int) -> Path:
    return Path(models_root) / f"seed-{seed}"


def seed_runs(train: TrainConfig, models_root: Path) -> list[Run]:
    """The train stage's run, then one run per distinct seed of `train.seeds` other than `train.seed`
    (a run with `train.seed` again would only repeat the train stage's run)."""
    main_seed, main_lambda0 = train.seed, train.lambda0
    runs = [Run(Path(models_root), main_seed, main_lambda0)]
    for seed in dict.fromkeys(train.seeds):
        if seed != main_seed:
            runs.append(Run(seed_folder(models_root, seed), seed, main_lambda0))
    return runs


def lambda0_folder(models_root: Path, value: float) -> Path:
    """The folder of the lambda0 run for `value`. dvc.yaml names it by the value as written in params.yaml
    (`1`, `1.0` or `1e0`), so the folder is found by the number its name holds."""
    models_root = Path(models_root)
    for folder in sorted(models_root.glob(f"{LAMBDA0_PREFIX}*")):
        try:
            written = float(folder.name[len(LAMBDA0_PREFIX):])
        except ValueError:
            continue
        if math.isclose(written, value, rel_tol=1e-9, abs_tol=0.0):
            return folder
    raise FileNotFoundError(f"no {models_root}/{LAMBDA0_PREFIX}<v> folder for analysis.lambda0_grid value {value}: "
                            "run the lambda0 stage (dvc repro) first")


def lambda0_runs(train: TrainConfig, grid: list[float], models_root: Path) -> list[Run]:
    """The train stage's run at `train.lambda0`, then one run per other value of `analysis.lambda0_grid`,
    in increasing lambda0."""
    main_seed, main_lambda0 = train.seed, train.lambda0
    runs = {main_lambda0: Run(Path(models_root), main_seed, main_lambda0)}
    for value in grid:
        if value < 0:
            raise ValueError(f"analysis.lambda0_grid holds {value}; lambda0 must be 0 or more")
        if value not in runs:
            runs[value] = Run(lambda0_folder(models_root, value), main_seed, value)
    return [runs[value] for value in sorted(runs)]
