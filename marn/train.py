"""Train stage: one model of `train.models` on the prepared training split (paper §4.1).

`train_model` writes, under `<paths.models>/<model name>/`:
- `model.pt`: weights with the architecture and data sizes (see `marn.models.persistence`);
- `train_log.csv` and `train_log.json`: the mean of every loss over each `train.log_every` steps;
- `train_metrics.json`: the summary returned by `train_model`;
- `checkpoint.pt` every `train.checkpoint_every` steps while training (removed once training ends); a
  run started again with the checkpoint present resumes from it and ends with the same files as an
  uninterrupted run, on the same or another number of processes.

With `train.nproc` > 1, `run` starts `python -m marn.pipeline train MODEL` on that many torchrun ranks and every
rank runs `train_model`: `train.batch_size` is the global batch, each rank computes its part of it
(`marn.distributed`), DDP averages the gradients and rank 0 writes every file. The CTR loss, a mean over samples,
then has the gradient of one process on the same global batch. Two kinds of loss do not: the discriminator losses
of the adversarial models are means over the distinct items of a rank's part, so with several ranks they become
the share-weighted mean of the parts' item means, which differs from the item mean of the whole batch where parts
share items; and DIEN's auxiliary loss averages over a part's behaviour pairs and draws its negatives from the
rank's own random stream.

The loop is `fit` (epochs) -> `train_epoch` (global batches) -> `train_step` (one optimizer step on a rank's part);
`LossLog` keeps the loss means it logs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from marn import distributed, ops
from marn.batch import Batch
from marn.config import OPTIMIZERS, PARAMS_ENV, PATH_KEYS, DataConfig, Params, Paths, TrainConfig, write_params
from marn.data.dataset import CTRDataset, load_split, make_loader
from marn.data.item_table import load_item_table
from marn.files import atomic_path, atomic_write_text
from marn.items import ItemTable
from marn.models.base import LOSS_NAMES, Architecture, CTRModel
from marn.models.persistence import (
    ModelFileError, atomic_torch_save, describe_differences, model_file, save_model,
)
from marn.models.registry import build_model, model_folder
from marn.train_params import has_adversary

log = logging.getLogger(__name__)

# TensorFlow's AdaGrad default, which the paper trained with; from 0 the first update is lr * sign(g) on every weight
ADAGRAD_INITIAL_ACCUMULATOR = 0.1
CHECKPOINT_FORMAT = 2
LOG_FIELDS = ("step", "epoch", "lambda", *(f"loss_{name}" for name in LOSS_NAMES), "loss_total")
LOSS_KEYS = (*LOSS_NAMES, "total")  # the losses `train_step` returns, in its order


def make_optimizer(name: str, parameters: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    # torch's fused CPU kernels update each weight in one pass instead of one pass per operation
    parameters = list(parameters)
    fused = all(p.device.type == "cpu" for p in parameters) or None
    if name == "adagrad":
        return torch.optim.Adagrad(parameters, lr=lr, initial_accumulator_value=ADAGRAD_INITIAL_ACCUMULATOR, fused=fused)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, fused=fused)
    raise ValueError(f"train.optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")


def adversarial_weight(progress: float, lambda0: float, gamma: float) -> float:
    """lambda = lambda0 * (2 / (1 + exp(-gamma * p)) - 1): 0 at the start, near lambda0 at the end."""
    return lambda0 * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


def _no_adversary(progress: float) -> float:
    return 0.0


def adversarial_schedule(model_name: str, train: TrainConfig) -> Callable[[float], float]:
    """lambda as a function of training progress; 0 for a model without an adversary, which never reads
    train.lambda0 or train.gamma."""
    if has_adversary(model_name):
        return partial(adversarial_weight, lambda0=train.lambda0, gamma=train.gamma)
    return _no_adversary


@dataclass
class LossLog:
    """The loss bookkeeping: sums over the current log interval (their means become a log row every
    `train.log_every` steps) and the CTR loss summed over each epoch."""

    log_rows: list[dict] = field(default_factory=list)
    interval_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_KEYS, 0.0))
    interval_steps: int = 0
    epoch_ctr_sums: list[float] = field(default_factory=list)

    def start_epoch(self, epoch: int) -> None:
        if len(self.epoch_ctr_sums) == epoch:
            self.epoch_ctr_sums.append(0.0)

    def add(self, epoch: int, losses: dict[str, float]) -> None:
        for name, value in losses.items():
            self.interval_sums[name] += value
        self.interval_steps += 1
        self.epoch_ctr_sums[epoch] += losses["ctr"]

    def close_interval(self, step: int, epoch: int, weight: float) -> dict:
        """The interval's log row (its mean losses), appended to `log_rows`; the next interval starts empty."""
        row = {"step": step, "epoch": epoch + 1, "lambda": weight}
        row.update({f"loss_{k}": v / self.interval_steps for k, v in self.interval_sums.items()})
        self.log_rows.append(row)
        self.interval_sums = dict.fromkeys(self.interval_sums, 0.0)
        self.interval_steps = 0
        return row

    def epoch_means(self, steps_per_epoch: int) -> list[float]:
        return [s / steps_per_epoch for s in self.epoch_ctr_sums]

    def final(self) -> dict[str, float]:
        return {k: v for k, v in self.log_rows[-1].items() if k.startswith("loss_")}


@dataclass
class TrainingState:
    """Everything besides weights and optimizer that a resumed run needs to continue bit for bit."""

    step: int = 0
    samples_seen: int = 0  # global position in the seeded sample order, the same for any number of ranks
    losses: LossLog = field(default_factory=LossLog)

    def as_checkpoint(self) -> dict:
        return {"step": self.step, "samples_seen": self.samples_seen, **asdict(self.losses)}

    @classmethod
    def from_checkpoint(cls, values: dict) -> "TrainingState":
        values = dict(values)
        return cls(step=values.pop("step"), samples_seen=values.pop("samples_seen"), losses=LossLog(**values))


def training_fingerprint(model_name: str, train: TrainConfig, data: DataConfig, architecture: Architecture,
                         table: ItemTable, n_samples: int) -> dict:
    """The settings a checkpoint must share with the run that resumes it (logging and paths excluded)."""
    fingerprint = {
        "model": model_name, "seed": train.seed, "epochs": train.epochs, "batch_size": train.batch_size,
        "optimizer": train.optimizer, "lr": train.lr,
    }
    if has_adversary(model_name):
        fingerprint.update(lambda0=train.lambda0, gamma=train.gamma)
    return {**fingerprint, "max_len": data.max_len, "architecture": architecture.as_dict(),
            "data": table.shape_summary(), "train_samples": n_samples}


def _write_log(model_dir: Path, rows: list[dict]) -> None:
    with atomic_path(model_dir / "train_log.csv") as temporary, open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(model_dir / "train_log.json", json.dumps(rows, indent=1))


def _seed_rank(seed: int, rank: int, samples_seen: int) -> None:
    """Each rank its own random stream (dropout and the like), drawn from where training stands."""
    torch.manual_seed(int(np.random.SeedSequence([seed, rank, samples_seen]).generate_state(1)[0]))


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_checkpoint(checkpoint: dict, path: Path, fingerprint: dict, model, optimizer,
                        ranks: distributed.Ranks) -> TrainingState:
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
    state = TrainingState.from_checkpoint(checkpoint["state"])
    rng_states = checkpoint["rng_states"]
    if len(rng_states) == ranks.world_size:
        torch.set_rng_state(rng_states[ranks.rank]["cpu"])
        if "cuda" in rng_states[ranks.rank] and ranks.device.type == "cuda":
            torch.cuda.set_rng_state(rng_states[ranks.rank]["cuda"], ranks.device)
    else:
        _seed_rank(fingerprint["seed"], ranks.rank, state.samples_seen)
    return state


def local_batch(dataset: CTRDataset, global_batch: list[int], ranks: distributed.Ranks) -> tuple[Batch, float]:
    """This rank's part of a global batch on its device, and the part's share of the global batch."""
    part = distributed.shard(global_batch, ranks.rank, ranks.world_size)
    share = len(part) / len(global_batch)
    # every rank must join the gradient all-reduce: an empty part (a last batch smaller than the ranks)
    # runs one sample that its zero share keeps out of the gradient
    return dataset.__getitems__(part or global_batch[:1]).to(ranks.device, non_blocking=True), share


def train_step(network: torch.nn.Module, model: CTRModel, optimizer: torch.optim.Optimizer, batch: Batch,
               share: float, world_size: int, adversarial_weight: float) -> torch.Tensor:
    """One optimizer step on a rank's part of a global batch (`network` is `model` or its DDP replica).

    Returns the losses `LOSS_KEYS` times `share`: summed over the ranks, each is its mean over the global
    batch (the CTR loss exactly, the item-averaged losses as the module docstring says).
    """
    outputs = network(batch, adversarial_weight=adversarial_weight)
    loss, parts = model.compute_loss(outputs, batch.label)
    optimizer.zero_grad(set_to_none=True)
    # DDP averages the ranks' gradients: scaled by share x ranks they average to the global batch mean's
    (loss * (share * world_size)).backward()
    optimizer.step()
    absent = loss.new_zeros(())
    return torch.stack([*(parts.get(name, absent) for name in LOSS_NAMES), loss]).detach().double() * share


@dataclass
class Training:
    """One model's training on this rank: what `fit`, `train_epoch` and `train_step` share."""

    model_name: str
    train: TrainConfig
    model: CTRModel
    optimizer: torch.optim.Optimizer
    dataset: CTRDataset
    ranks: distributed.Ranks
    weight_at: Callable[[float], float]  # lambda at a training progress in [0, 1]
    model_dir: Path
    fingerprint: dict

    @property
    def checkpoint_path(self) -> Path:
        return self.model_dir / "checkpoint.pt"

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.dataset) / self.train.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.train.epochs

    def save_checkpoint(self, state: TrainingState) -> None:
        rng_states = distributed.gather(_rng_state(self.ranks.device), self.ranks)  # every rank joins the gather
        if self.ranks.is_main:
            atomic_torch_save({"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint,
                               "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                               "rng_states": rng_states, "state": state.as_checkpoint()}, self.checkpoint_path)

    def resume(self) -> TrainingState:
        """The state of the checkpoint in the model folder (weights and optimizer loaded), or a fresh one."""
        state = TrainingState()
        _seed_rank(self.train.seed, self.ranks.rank, state.samples_seen)
        # rank 0 reads the checkpoint and sends it, so the other ranks need not see rank 0's disk
        checkpoint = distributed.from_main(
            torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
            if self.ranks.is_main and self.checkpoint_path.is_file() else None, self.ranks)
        if checkpoint is not None:
            state = _restore_checkpoint(checkpoint, self.checkpoint_path, self.fingerprint, self.model,
                                        self.optimizer, self.ranks)
            if self.ranks.is_main:
                log.info("%s: resuming from %s at step %d on %d ranks", self.model_name, self.checkpoint_path,
                         state.step, self.ranks.world_size)
        return state


def train_epoch(training: Training, network: torch.nn.Module, state: TrainingState, epoch: int,
                progress: tqdm) -> None:
    """The global batches of `epoch` not done yet, one `train_step` each, logging and checkpointing on the way;
    `network` is the model or its DDP replica."""
    train, ranks, n_samples = training.train, training.ranks, len(training.dataset)
    state.losses.start_epoch(epoch)
    loader = make_loader(training.dataset, train.batch_size, shuffle=True, seed=train.seed, epoch=epoch)
    done_in_epoch = (state.samples_seen - epoch * n_samples) // train.batch_size
    # the sampler yields index lists without building batches, so skipping done steps is cheap
    for batch_number, global_batch in enumerate(loader.batch_sampler):
        if batch_number < done_in_epoch:
            continue
        weight = training.weight_at(state.step / training.total_steps)
        batch, share = local_batch(training.dataset, global_batch, ranks)
        shared_losses = train_step(network, training.model, training.optimizer, batch, share,
                                   ranks.world_size, weight)
        state.losses.add(epoch, dict(zip(LOSS_KEYS, distributed.sum_over_ranks(shared_losses, ranks).tolist())))
        state.step += 1
        state.samples_seen += len(global_batch)
        progress.update(1)
        if state.step % train.log_every == 0 or state.step == training.total_steps:
            row = state.losses.close_interval(state.step, epoch, weight)
            progress.set_postfix(loss_ctr=f"{row['loss_ctr']:.4f}")
            if ranks.is_main:
                _write_log(training.model_dir, state.losses.log_rows)
        if state.step % train.checkpoint_every == 0 and state.step < training.total_steps:
            training.save_checkpoint(state)


def fit(training: Training, state: TrainingState) -> None:
    """The epochs from where `state` stands to `train.epochs`."""
    # built after `resume` loaded the weights: DDP copies rank 0's weights to the other ranks when built
    network = distributed.replicate(training.model, training.ranks)
    training.model.train()
    with tqdm(total=training.total_steps, initial=state.step, desc=training.model_name, unit="step",
              mininterval=1.0, disable=not training.ranks.is_main) as progress:
        for epoch in range(state.samples_seen // len(training.dataset), training.train.epochs):
            train_epoch(training, network, state, epoch, progress)


def train_model(model_name: str, train: TrainConfig, data: DataConfig, paths: Paths) -> dict:
    """Train `model_name` on `paths.prepared` and `paths.features` into `paths.models` with the ops backend the
    caller entered; returns the summary also written to `<paths.models>/<model name>/train_metrics.json`.

    Started by torchrun, every rank calls this with the same arguments and gets the same summary."""
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    with distributed.process_group(train.device) as ranks:
        return _train_on_ranks(model_name, train, data, paths, ranks)


def _train_on_ranks(model_name: str, train: TrainConfig, data: DataConfig, paths: Paths,
                    ranks: distributed.Ranks) -> dict:
    model_dir = model_folder(paths.models, model_name)
    if ranks.is_main:
        model_dir.mkdir(parents=True, exist_ok=True)
    table = load_item_table(paths.prepared, paths.features)
    dataset = load_split(paths.prepared, "train", data)
    architecture = Architecture.from_config(train, data)
    torch.manual_seed(train.seed)
    model = build_model(model_name, table, architecture).to(ranks.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(train.optimizer, trainable, train.lr)
    fingerprint = training_fingerprint(model_name, train, data, architecture, table, len(dataset))
    training = Training(model_name, train, model, optimizer, dataset, ranks, adversarial_schedule(model_name, train),
                        model_dir, fingerprint)
    state = training.resume()

    started, first_step = time.perf_counter(), state.step
    fit(training, state)
    seconds = time.perf_counter() - started
    if ranks.is_main:
        log.info("%s: %d steps on %d ranks in %.1f s (%.2f steps/s)", model_name, state.step - first_step,
                 ranks.world_size, seconds, (state.step - first_step) / max(seconds, 1e-9))

    metrics = {
        "model": model_name,
        "steps": state.step,
        "epochs": train.epochs,
        "train_samples": len(dataset),
        "parameters": sum(p.numel() for p in trainable),
        "epoch_loss_ctr": state.losses.epoch_means(training.steps_per_epoch),
        "final": state.losses.final(),
    }
    if ranks.is_main:
        save_model(model_file(paths.models, model_name), model_name, model, architecture, table)
        _write_log(model_dir, state.losses.log_rows)
        atomic_write_text(model_dir / "train_metrics.json", json.dumps(metrics, indent=2))
        training.checkpoint_path.unlink(missing_ok=True)
    return metrics


def train_on_torchrun(config: Params, paths: Paths, model_name: str) -> dict:
    """`python -m marn.pipeline train MODEL` on `train.nproc` torchrun ranks, reading `config` from a params
    file and `paths` from overrides of its path keys; returns the summary rank 0 wrote."""
    path_overrides = [f"{key}='{getattr(paths, name)}'" for name, key in PATH_KEYS.items()]
    with tempfile.TemporaryDirectory(prefix="marn-torchrun-params-") as folder:
        params = Path(folder) / "params.yaml"
        write_params(config, params)
        distributed.run_with_torchrun(config.train.nproc, "marn.pipeline", ["train", model_name, *path_overrides],
                                      env={PARAMS_ENV: str(params)})
    return json.loads((model_folder(paths.models, model_name) / "train_metrics.json").read_text())


def run(config: Params, paths: Paths, model_name: str) -> dict:
    """The train stage of `model_name`: on `train.nproc` torchrun ranks, or in this process (as each rank does)."""
    if config.train.nproc > 1 and not distributed.started_by_torchrun():
        return train_on_torchrun(config, paths, model_name)
    with ops.use_backend(config.ops.backend):
        return train_model(model_name, config.train, config.data, paths)
