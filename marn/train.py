"""Train stage: one model of `train.models` on the prepared training split (paper §4.1).

`train_model` writes, under `<out_dir>/<model name>/`:
- `model.pt`: weights with the architecture and data sizes (see `marn.models.persistence`);
- `train_log.csv` and `train_log.json`: the mean of every loss over each `train.log_every` steps;
- `train_metrics.json`: the summary returned by `train_model`;
- `checkpoint.pt` every `train.checkpoint_every` steps while training (removed once training ends); a
  run started again with the checkpoint present resumes from it and ends with the same files as an
  uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from marn import ops
from marn.data.dataset import CTRDataset, make_loader
from marn.data.item_table import ItemTable, load_item_table
from marn.models.base import LOSS_NAMES, Architecture
from marn.models.persistence import ModelFileError, atomic_torch_save, describe_differences, save_model
from marn.models.registry import build_model, check_model_name, model_folder

log = logging.getLogger(__name__)

OPTIMIZERS = ("adagrad", "adam")
# TensorFlow's AdaGrad default, which the paper trained with; from 0 the first update is lr * sign(g) on every weight
ADAGRAD_INITIAL_ACCUMULATOR = 0.1
CHECKPOINT_FORMAT = 1
LOG_FIELDS = ("step", "epoch", "lambda", *(f"loss_{name}" for name in LOSS_NAMES), "loss_total")


def make_optimizer(name: str, parameters: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adagrad":
        return torch.optim.Adagrad(parameters, lr=lr, initial_accumulator_value=ADAGRAD_INITIAL_ACCUMULATOR)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    raise ValueError(f"train.optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")


def adversarial_weight(progress: float, lambda0: float, gamma: float) -> float:
    """lambda = lambda0 * (2 / (1 + exp(-gamma * p)) - 1): 0 at the start, near lambda0 at the end."""
    return lambda0 * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


@dataclass
class TrainingState:
    """Everything besides weights and optimizer that a resumed run needs to continue bit for bit."""

    step: int = 0
    log_rows: list[dict] = field(default_factory=list)
    interval_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*LOSS_NAMES, "total"), 0.0))
    interval_steps: int = 0
    epoch_ctr_sums: list[float] = field(default_factory=list)


def _check_train_config(cfg) -> None:
    train = cfg.train
    positive = {"epochs": train.epochs, "batch_size": train.batch_size, "log_every": train.log_every,
                "checkpoint_every": train.checkpoint_every, "hidden": train.hidden, "embed_dim": train.embed_dim,
                "title_filters": train.title_filters}
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"train.{key} must be at least 1, got {value}")
    if not train.lr > 0:
        raise ValueError(f"train.lr must be positive, got {train.lr}")
    if train.num_threads < 0:
        raise ValueError(f"train.num_threads must be 0 (torch's default) or more, got {train.num_threads}")


def training_fingerprint(cfg, model_name: str, table: ItemTable, n_samples: int) -> dict:
    """The settings a checkpoint must share with the run that resumes it (logging and paths excluded)."""
    train = cfg.train
    return {
        "model": model_name, "seed": int(train.seed), "epochs": int(train.epochs),
        "batch_size": int(train.batch_size), "optimizer": str(train.optimizer), "lr": float(train.lr),
        "lambda0": float(train.lambda0), "gamma": float(train.gamma), "max_len": int(cfg.data.max_len),
        "architecture": Architecture.from_config(cfg).as_dict(), "data": table.shape_summary(),
        "train_samples": n_samples,
    }


def _write_log(model_dir: Path, rows: list[dict]) -> None:
    with open(model_dir / "train_log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (model_dir / "train_log.json").write_text(json.dumps(rows, indent=1))


def _load_checkpoint(path: Path, fingerprint: dict, model, optimizer) -> TrainingState:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"checkpoint {path} has format {checkpoint.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    saved = checkpoint["fingerprint"]
    if saved["model"] != fingerprint["model"]:
        raise ModelFileError(f"checkpoint {path} is from model {saved['model']!r}, not {fingerprint['model']!r}; "
                             "delete it to start over")
    differences = describe_differences(saved, fingerprint)
    if differences:
        raise ModelFileError(f"checkpoint {path} was written with another config ({differences}); "
                             "delete it to start over")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["torch_rng"])
    return TrainingState(**checkpoint["state"])


def _save_checkpoint(path: Path, fingerprint: dict, model, optimizer, state: TrainingState) -> None:
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "model": model.state_dict(),
                       "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                       "state": asdict(state)}, path)


def train_model(cfg, model_name: str, prepared_dir: Path, features_dir: Path, out_dir: Path) -> dict:
    """Train `model_name` with `cfg.train` (and `data.max_len`, `data.time_gap_buckets`, `ops.backend`);
    returns the summary also written to `<out_dir>/<model name>/train_metrics.json`."""
    check_model_name(model_name)
    _check_train_config(cfg)
    ops.configure(cfg.ops)
    train = cfg.train
    if train.num_threads:
        torch.set_num_threads(int(train.num_threads))
    model_dir = model_folder(out_dir, model_name)
    model_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = model_dir / "checkpoint.pt"

    table = load_item_table(prepared_dir, features_dir)
    dataset = CTRDataset(prepared_dir, "train", int(cfg.data.max_len), int(cfg.data.time_gap_buckets))
    if len(dataset) == 0:
        raise ValueError(f"{prepared_dir} has no training samples")
    architecture = Architecture.from_config(cfg)
    torch.manual_seed(int(train.seed))
    model = build_model(model_name, table, architecture)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(str(train.optimizer), trainable, float(train.lr))
    fingerprint = training_fingerprint(cfg, model_name, table, len(dataset))

    state = TrainingState()
    if checkpoint_path.is_file():
        state = _load_checkpoint(checkpoint_path, fingerprint, model, optimizer)
        log.info("%s: resuming from %s at step %d", model_name, checkpoint_path, state.step)

    steps_per_epoch = math.ceil(len(dataset) / int(train.batch_size))
    total_steps = steps_per_epoch * int(train.epochs)
    started, first_step = time.perf_counter(), state.step
    model.train()
    with tqdm(total=total_steps, initial=state.step, desc=model_name, unit="step", mininterval=1.0) as progress:
        for epoch in range(state.step // steps_per_epoch, int(train.epochs)):
            if len(state.epoch_ctr_sums) == epoch:
                state.epoch_ctr_sums.append(0.0)
            loader = make_loader(dataset, int(train.batch_size), shuffle=True, seed=int(train.seed), epoch=epoch)
            done_in_epoch = state.step - epoch * steps_per_epoch
            # the sampler yields index lists without building batches, so skipping done steps is cheap
            for batch_number, indices in enumerate(loader.batch_sampler):
                if batch_number < done_in_epoch:
                    continue
                batch = dataset.__getitems__(indices)
                weight = adversarial_weight(state.step / total_steps, float(train.lambda0), float(train.gamma))
                outputs = model(batch, adversarial_weight=weight)
                loss, parts = model.compute_loss(outputs, batch["label"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                state.step += 1
                values = {name: value.detach().item() for name, value in parts.items()}
                for name in LOSS_NAMES:
                    state.interval_sums[name] += values.get(name, 0.0)
                state.interval_sums["total"] += loss.detach().item()
                state.interval_steps += 1
                state.epoch_ctr_sums[epoch] += values["ctr"]
                progress.update(1)
                if state.step % int(train.log_every) == 0 or state.step == total_steps:
                    row = {"step": state.step, "epoch": epoch + 1, "lambda": weight}
                    row.update({f"loss_{k}": v / state.interval_steps for k, v in state.interval_sums.items()})
                    state.log_rows.append(row)
                    state.interval_sums = dict.fromkeys(state.interval_sums, 0.0)
                    state.interval_steps = 0
                    progress.set_postfix(loss_ctr=f"{row['loss_ctr']:.4f}")
                    _write_log(model_dir, state.log_rows)
                if state.step % int(train.checkpoint_every) == 0 and state.step < total_steps:
                    _save_checkpoint(checkpoint_path, fingerprint, model, optimizer, state)
    seconds = time.perf_counter() - started
    log.info("%s: %d steps in %.1f s (%.2f steps/s)", model_name, state.step - first_step, seconds,
             (state.step - first_step) / max(seconds, 1e-9))

    save_model(model_dir / "model.pt", model_name, model, architecture, table)
    _write_log(model_dir, state.log_rows)
    metrics = {
        "model": model_name,
        "steps": state.step,
        "epochs": int(train.epochs),
        "train_samples": len(dataset),
        "parameters": sum(p.numel() for p in trainable),
        "epoch_loss_ctr": [s / steps_per_epoch for s in state.epoch_ctr_sums],
        "final": {k: v for k, v in state.log_rows[-1].items() if k.startswith("loss_")},
    }
    (model_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
    checkpoint_path.unlink(missing_ok=True)
    return metrics
