"""Train stage: one model of `train.models` on the prepared training split (paper §4.1).

`train_model` writes, under `<out_dir>/<model name>/`:
- `model.pt`: weights with the architecture and data sizes (see `marn.models.persistence`);
- `train_log.csv` and `train_log.json`: the mean of every loss over each `train.log_every` steps;
- `train_metrics.json`: the summary returned by `train_model`;
- `checkpoint.pt` every `train.checkpoint_every` steps while training (removed once training ends); a
  run started again with the checkpoint present resumes from it and ends with the same files as an
  uninterrupted run, on the same or another number of processes.

Under torchrun (`train.nproc` > 1, or `torchrun ... -m marn.train MODEL`) every rank runs `train_model`:
`train.batch_size` is the global batch, each rank computes its part of it (`marn.distributed`), DDP
averages the gradients and rank 0 writes every file. The CTR loss, a mean over samples, then has the
gradient of one process on the same global batch. Two kinds of loss do not: the discriminator losses of
the adversarial models are means over the distinct items of a rank's part, so with several ranks they
become the share-weighted mean of the parts' item means, which differs from the item mean of the whole
batch where parts share items; and DIEN's auxiliary loss averages over a part's behaviour pairs and draws
its negatives from the rank's own random stream.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from marn import distributed, ops
from marn.config import ConfigError, load_config, resolve_path
from marn.data.dataset import CTRDataset, make_loader
from marn.data.item_table import ItemTable, load_item_table
from marn.models.base import LOSS_NAMES, Architecture, CTRModel
from marn.models.persistence import ModelFileError, atomic_torch_save, describe_differences, save_model
from marn.models.registry import build_model, check_model_name, model_folder

log = logging.getLogger(__name__)

OPTIMIZERS = ("adagrad", "adam")
# TensorFlow's AdaGrad default, which the paper trained with; from 0 the first update is lr * sign(g) on every weight
ADAGRAD_INITIAL_ACCUMULATOR = 0.1
CHECKPOINT_FORMAT = 2
LOG_FIELDS = ("step", "epoch", "lambda", *(f"loss_{name}" for name in LOSS_NAMES), "loss_total")


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


@dataclass
class TrainingState:
    """Everything besides weights and optimizer that a resumed run needs to continue bit for bit."""

    step: int = 0
    samples_seen: int = 0  # global position in the seeded sample order, the same for any number of ranks
    log_rows: list[dict] = field(default_factory=list)
    interval_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*LOSS_NAMES, "total"), 0.0))
    interval_steps: int = 0
    epoch_ctr_sums: list[float] = field(default_factory=list)


def _check_train_config(cfg) -> None:
    train = cfg.train
    positive = {"epochs": train.epochs, "batch_size": train.batch_size, "log_every": train.log_every,
                "checkpoint_every": train.checkpoint_every, "hidden": train.hidden, "embed_dim": train.embed_dim,
                "title_filters": train.title_filters, "nproc": train.nproc}
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
    state = TrainingState(**checkpoint["state"])
    rng_states = checkpoint["rng_states"]
    if len(rng_states) == ranks.world_size:
        torch.set_rng_state(rng_states[ranks.rank]["cpu"])
        if "cuda" in rng_states[ranks.rank] and ranks.device.type == "cuda":
            torch.cuda.set_rng_state(rng_states[ranks.rank]["cuda"], ranks.device)
    else:
        _seed_rank(fingerprint["seed"], ranks.rank, state.samples_seen)
    return state


def _save_checkpoint(path: Path, fingerprint: dict, model, optimizer, state: TrainingState,
                     ranks: distributed.Ranks) -> None:
    rng_states = distributed.gather(_rng_state(ranks.device), ranks)  # every rank takes part in the gather
    if ranks.is_main:
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "model": model.state_dict(),
                           "optimizer": optimizer.state_dict(), "rng_states": rng_states,
                           "state": asdict(state)}, path)


def local_batch(dataset: CTRDataset, global_batch: list[int], ranks: distributed.Ranks
                ) -> tuple[dict[str, torch.Tensor], float]:
    """This rank's part of a global batch as tensors on its device, and the part's share of the global batch."""
    part = distributed.shard(global_batch, ranks.rank, ranks.world_size)
    share = len(part) / len(global_batch)
    # every rank must join the gradient all-reduce: an empty part (a last batch smaller than the ranks)
    # runs one sample that its zero share keeps out of the gradient
    batch = dataset.__getitems__(part or global_batch[:1])
    return {key: value.to(ranks.device, non_blocking=True) for key, value in batch.items()}, share


def train_step(network: torch.nn.Module, model: CTRModel, optimizer: torch.optim.Optimizer,
               batch: dict[str, torch.Tensor], share: float, world_size: int, adversarial_weight: float
               ) -> torch.Tensor:
    """One optimizer step on a rank's part of a global batch (`network` is `model` or its DDP replica).

    Returns the losses `[*LOSS_NAMES, total]` times `share`: summed over the ranks, each is its mean
    over the global batch (the CTR loss exactly, the item-averaged losses as the module docstring says).
    """
    outputs = network(batch, adversarial_weight=adversarial_weight)
    loss, parts = model.compute_loss(outputs, batch["label"])
    optimizer.zero_grad(set_to_none=True)
    # DDP averages the ranks' gradients: scaled by share x ranks they average to the global batch mean's
    (loss * (share * world_size)).backward()
    optimizer.step()
    absent = loss.new_zeros(())
    return torch.stack([*(parts.get(name, absent) for name in LOSS_NAMES), loss]).detach().double() * share


def train_model(cfg, model_name: str, prepared_dir: Path, features_dir: Path, out_dir: Path) -> dict:
    """Train `model_name` with `cfg.train` (and `data.max_len`, `data.time_gap_buckets`, `ops.backend`);
    returns the summary also written to `<out_dir>/<model name>/train_metrics.json`.

    Started by torchrun, every rank calls this with the same arguments and gets the same summary."""
    check_model_name(model_name)
    _check_train_config(cfg)
    ops.configure(cfg.ops)
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    with distributed.process_group(str(cfg.train.device)) as ranks:
        return _train_on_ranks(cfg, model_name, Path(prepared_dir), Path(features_dir), Path(out_dir), ranks)


def _train_on_ranks(cfg, model_name: str, prepared_dir: Path, features_dir: Path, out_dir: Path,
                    ranks: distributed.Ranks) -> dict:
    train = cfg.train
    model_dir = model_folder(out_dir, model_name)
    if ranks.is_main:
        model_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = model_dir / "checkpoint.pt"

    table = load_item_table(prepared_dir, features_dir)
    dataset = CTRDataset(prepared_dir, "train", int(cfg.data.max_len), int(cfg.data.time_gap_buckets))
    if len(dataset) == 0:
        raise ValueError(f"{prepared_dir} has no training samples")
    architecture = Architecture.from_config(cfg)
    torch.manual_seed(int(train.seed))
    model = build_model(model_name, table, architecture).to(ranks.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(str(train.optimizer), trainable, float(train.lr))
    fingerprint = training_fingerprint(cfg, model_name, table, len(dataset))

    state = TrainingState()
    _seed_rank(int(train.seed), ranks.rank, state.samples_seen)
    # rank 0 reads the checkpoint and sends it, so the other ranks need not see rank 0's disk
    checkpoint = distributed.from_main(
        torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if ranks.is_main and checkpoint_path.is_file() else None, ranks)
    if checkpoint is not None:
        state = _restore_checkpoint(checkpoint, checkpoint_path, fingerprint, model, optimizer, ranks)
        if ranks.is_main:
            log.info("%s: resuming from %s at step %d on %d ranks", model_name, checkpoint_path, state.step,
                     ranks.world_size)
    network = distributed.replicate(model, ranks)

    n_samples, batch_size = len(dataset), int(train.batch_size)
    steps_per_epoch = math.ceil(n_samples / batch_size)
    total_steps = steps_per_epoch * int(train.epochs)
    started, first_step = time.perf_counter(), state.step
    model.train()
    with tqdm(total=total_steps, initial=state.step, desc=model_name, unit="step", mininterval=1.0,
              disable=not ranks.is_main) as progress:
        for epoch in range(state.samples_seen // n_samples, int(train.epochs)):
            if len(state.epoch_ctr_sums) == epoch:
                state.epoch_ctr_sums.append(0.0)
            loader = make_loader(dataset, batch_size, shuffle=True, seed=int(train.seed), epoch=epoch)
            done_in_epoch = (state.samples_seen - epoch * n_samples) // batch_size
            # the sampler yields index lists without building batches, so skipping done steps is cheap
            for batch_number, global_batch in enumerate(loader.batch_sampler):
                if batch_number < done_in_epoch:
                    continue
                weight = adversarial_weight(state.step / total_steps, float(train.lambda0), float(train.gamma))
                batch, share = local_batch(dataset, global_batch, ranks)
                shared_losses = train_step(network, model, optimizer, batch, share, ranks.world_size, weight)
                values = dict(zip((*LOSS_NAMES, "total"), distributed.sum_over_ranks(shared_losses, ranks).tolist()))
                state.step += 1
                state.samples_seen += len(global_batch)
                for name, value in values.items():
                    state.interval_sums[name] += value
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
                    if ranks.is_main:
                        _write_log(model_dir, state.log_rows)
                if state.step % int(train.checkpoint_every) == 0 and state.step < total_steps:
                    _save_checkpoint(checkpoint_path, fingerprint, model, optimizer, state, ranks)
    seconds = time.perf_counter() - started
    if ranks.is_main:
        log.info("%s: %d steps on %d ranks in %.1f s (%.2f steps/s)", model_name, state.step - first_step,
                 ranks.world_size, seconds, (state.step - first_step) / max(seconds, 1e-9))

    metrics = {
        "model": model_name,
        "steps": state.step,
        "epochs": int(train.epochs),
        "train_samples": n_samples,
        "parameters": sum(p.numel() for p in trainable),
        "epoch_loss_ctr": [s / steps_per_epoch for s in state.epoch_ctr_sums],
        "final": {k: v for k, v in state.log_rows[-1].items() if k.startswith("loss_")},
    }
    if ranks.is_main:
        save_model(model_dir / "model.pt", model_name, model, architecture, table)
        _write_log(model_dir, state.log_rows)
        (model_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
        checkpoint_path.unlink(missing_ok=True)
    return metrics


def main(argv: list[str] | None = None) -> None:
    """`python -m marn.train MODEL [key=value ...]`: the train stage without Prefect, paths from params;
    the command torchrun starts on every rank."""
    args = sys.argv[1:] if argv is None else argv
    if not args or "=" in args[0]:
        sys.exit("usage: python -m marn.train MODEL_NAME [key=value ...]")
    try:
        cfg = load_config(args[1:])
    except ConfigError as err:
        sys.exit(f"error: {err}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train_model(cfg, args[0], resolve_path(cfg.data.prepared_dir), resolve_path(cfg.features.dir),
                resolve_path(cfg.train.out_dir))


if __name__ == "__main__":
    main()
