"""What several test modules share about training tiny models (fixtures live in tests/conftest.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

import marn.train
from marn.config import PARAMS_ENV, Params, write_params
from tests.tiny_data import TinyData, tiny_config, tiny_paths

MAX_LEN, HIDDEN = 6, 16  # tiny_config's data.max_len and train.hidden
# the same float32 math in other batch shapes (one GRU row instead of one per candidate): measured up to 5e-7
# on logits of magnitude 4; dropping the time gaps moves them by 7e-5
SAME_SCORES = {"rtol": 1e-5, "atol": 1e-5}


def train_tiny(data: TinyData, out_dir: Path, name: str = "MARN", **train_overrides) -> dict:
    """The train stage of `name` on `data` into `out_dir` with `tiny_config(**train_overrides)`."""
    return marn.train.run(tiny_config(**train_overrides), tiny_paths(data, out_dir), name)


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


class Killed(Exception):
    """The training process stopped from outside, as by a kill."""


def stop_optimizer_when(monkeypatch, should_stop) -> None:
    """Make the training loop's optimizer raise `Killed` before a step once `should_stop(steps done)` holds."""
    make_optimizer = marn.train.make_optimizer

    def stopping_optimizer(*args, **kwargs):
        optimizer = make_optimizer(*args, **kwargs)
        step, steps_done = optimizer.step, [0]

        def step_or_stop(*step_args, **step_kwargs):
            if should_stop(steps_done[0]):
                raise Killed
            steps_done[0] += 1
            return step(*step_args, **step_kwargs)

        optimizer.step = step_or_stop
        return optimizer

    monkeypatch.setattr(marn.train, "make_optimizer", stopping_optimizer)


def use_params_file(data: TinyData, out_dir: Path, monkeypatch, ops_backend: str = "auto",
                    **train_overrides) -> Params:
    """`tiny_config(**train_overrides)` with `ops_backend` on `data` and `out_dir` as the params file ($MARN_PARAMS)
    that entry points read; returns the config written."""
    config = tiny_config(**train_overrides)
    config = dataclasses.replace(
        config, ops=dataclasses.replace(config.ops, backend=ops_backend),
        data=dataclasses.replace(config.data, prepared_dir=str(data.prepared_dir)),
        features=dataclasses.replace(config.features, dir=str(data.features_dir)),
        train=dataclasses.replace(config.train, out_dir=str(out_dir)))
    write_params(config, out_dir / "params.yaml")
    monkeypatch.setenv(PARAMS_ENV, str(out_dir / "params.yaml"))
    return config
