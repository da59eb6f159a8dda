"""The train stage: every model learns, same seed gives the same result, a killed run resumes exactly."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch

from marn.models.baselines import BASELINES
from marn.models.persistence import ModelFileError
from marn.models.registry import MODELS
from marn.train import LOG_FIELDS, adversarial_weight
from marn.train_params import has_adversary
from tests.training_support import Killed, model_weights, stop_optimizer_when, train_tiny


def test_adversarial_weight_follows_the_schedule():
    assert adversarial_weight(0.0, 0.05, 10.0) == 0.0
    assert adversarial_weight(0.5, 0.05, 10.0) == pytest.approx(0.05 * (2 / (1 + math.exp(-5)) - 1))
    assert adversarial_weight(1.0, 0.05, 10.0) == pytest.approx(0.05, abs=1e-5)


@pytest.mark.parametrize("name", [name for name in MODELS if name not in BASELINES])  # baselines: test_baselines.py
def test_every_model_trains_with_decreasing_ctr_loss(name, tiny_data, tmp_path):
    metrics = train_tiny(tiny_data, tmp_path, name, epochs=4)
    first, *_, last = metrics["epoch_loss_ctr"]
    assert last < 0.8 * first, metrics["epoch_loss_ctr"]
    model_dir = tmp_path / name
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "model.pt", "train_log.csv", "train_log.json", "train_metrics.json"]
    rows = json.loads((model_dir / "train_log.json").read_text())
    assert rows[-1]["step"] == metrics["steps"] and list(rows[0]) == list(LOG_FIELDS)
    with open(model_dir / "train_log.csv") as f:
        assert list(csv.DictReader(f))[-1]["step"] == str(metrics["steps"])
    adversarial = has_adversary(name)
    assert (rows[-1]["loss_adv"] > 0) == adversarial
    assert (rows[-1]["lambda"] > 0) == adversarial  # a model without an adversary never reads train.lambda0


def test_same_seed_gives_the_same_model_and_metrics(tiny_data, tmp_path):
    first = train_tiny(tiny_data, tmp_path / "a", epochs=1)
    second = train_tiny(tiny_data, tmp_path / "b", epochs=1)
    assert first == second
    torch.testing.assert_close(model_weights(tmp_path / "a/MARN/model.pt"), model_weights(tmp_path / "b/MARN/model.pt"),
                               rtol=0, atol=0)


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_data, tmp_path, monkeypatch):
    uninterrupted = train_tiny(tiny_data, tmp_path / "whole", epochs=2, batch_size=64)
    steps_before_kill = 12  # past the checkpoint at step 10 and the log row at 12, inside the second epoch
    steps_per_epoch = uninterrupted["steps"] // 2
    assert steps_per_epoch < 10 < steps_before_kill < 2 * steps_per_epoch

    stop_optimizer_when(monkeypatch, lambda steps_done: steps_done == steps_before_kill)
    with pytest.raises(Killed):
        train_tiny(tiny_data, tmp_path / "resumed", epochs=2, batch_size=64)
    checkpoint = tmp_path / "resumed/MARN/checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["state"]["step"] == 10
    monkeypatch.undo()

    resumed = train_tiny(tiny_data, tmp_path / "resumed", epochs=2, batch_size=64)
    assert resumed == uninterrupted
    assert not checkpoint.exists()
    for name in ("train_log.csv", "train_log.json", "train_metrics.json"):
        assert (tmp_path / "resumed/MARN" / name).read_text() == (tmp_path / "whole/MARN" / name).read_text()
    torch.testing.assert_close(model_weights(tmp_path / "resumed/MARN/model.pt"),
                               model_weights(tmp_path / "whole/MARN/model.pt"), rtol=0, atol=0)


def test_checkpoint_of_another_model_or_config_is_refused(tiny_data, tmp_path, monkeypatch):
    stop_optimizer_when(monkeypatch, lambda steps_done: (tmp_path / "MARN/checkpoint.pt").exists())
    with pytest.raises(Killed):
        train_tiny(tiny_data, tmp_path, epochs=2)
    monkeypatch.undo()

    with pytest.raises(ModelFileError, match=r"another config \(lr: 0.1 -> 0.05\)"):
        train_tiny(tiny_data, tmp_path, epochs=2, lr=0.05)
    (tmp_path / "BaseModel+MAF+DDMA").mkdir()
    shutil.copy(tmp_path / "MARN/checkpoint.pt", tmp_path / "BaseModel+MAF+DDMA/checkpoint.pt")
    with pytest.raises(ModelFileError, match="is from model 'MARN', not 'BaseModel\\+MAF\\+DDMA'"):
        train_tiny(tiny_data, tmp_path, "BaseModel+MAF+DDMA", epochs=2)


@pytest.mark.parametrize("override, message", [
    ({"optimizer": "sgd"}, "train.optimizer 'sgd' is not one of adagrad, adam"),
    ({"batch_size": 0}, "train.batch_size must be at least 1, got 0"),
    ({"lr": -1.0}, "train.lr must be positive, got -1.0"),
])
def test_bad_train_config_is_named(override, message, tiny_data, tmp_path):
    with pytest.raises(ValueError, match=message):
        train_tiny(tiny_data, tmp_path, **override)
