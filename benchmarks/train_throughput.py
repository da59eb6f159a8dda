"""Training throughput, end to end: samples/s of the training step loop for MARN with the fused ops,
MARN with the reference ops, and DIEN from the peer library deepctr-torch, on the same prepared batches.

    pip install -e '.[peers]'                                # deepctr-torch, for the DIEN row only
    python benchmarks/train_throughput.py [--batch-sizes 32 256] [--lengths real full] [--batches 20]
        [--rounds 3] [key=value ...]

The key=value overrides go to params.yaml, as for the stages. For each batch size and each length case,
every provider steps the same optimizer (train.optimizer, train.lr) over the same --batches global batches,
built before timing; after a warm-up pass the providers take turns, one pass each per round, so the
machine's load falls on all alike, and a provider's samples/s is the median over the rounds. Speeds are
compared as ratios measured in one run, never as absolute seconds; flush-denormal is set for all.

Length cases: `real` draws the batches in the train stage's seeded order, so history lengths follow the
prepared data's distribution; `full` draws them (seeded, with replacement) from the training samples whose
history fills data.max_len, so every step runs the whole recurrence.

DIEN (Zhou et al., 2019) is deepctr-torch's `DIEN` with the paper's AUGRU and MARN's prediction MLP sizes,
fed the IDs MARN embeds (item, category, brand where present). Its GRUs are as wide as its concatenated
ID embeddings, so these are sized to make them as wide as MARN's APGRU (train.hidden): category and brand
at MARN's sizes, the item embedding the rest. One step is its `fit` loop body (summed log loss +
regularisation + auxiliary loss, backward, optimizer step) without the DataLoader; it has no
negative-sampled auxiliary loss, as MARN has none.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from marn import ops
from marn.batch import Batch
from marn.config import Params, Paths
from marn.data.dataset import CTRDataset, load_split, make_loader
from marn.data.item_table import load_item_table
from marn.items import ItemTable
from marn.models.base import Architecture
from marn.models.registry import build_model
from marn.nn.modality_embedding import BRAND_DIM, CATEGORY_DIM
from marn.ops.backend import require_compiled
from marn.pipeline import load_params
from marn.train import adversarial_weight, make_optimizer, train_step

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODEL = "MARN"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of params.yaml")
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="global batch sizes; default train.batch_size")
    parser.add_argument("--lengths", nargs="+", default=["real", "full"], choices=["real", "full"],
                        help="history lengths: the prepared data's (real) or all data.max_len (full)")
    parser.add_argument("--batches", type=int, default=20, help="global batches per case, built before timing")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the batches per provider")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = train.num_threads")
    parser.add_argument("--providers", nargs="+", default=["marn-fused", "marn-reference", "deepctr-dien"],
                        choices=["marn-fused", "marn-reference", "deepctr-dien"])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "train_throughput.json")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.rounds < 1 or min(args.batch_sizes or [1]) < 1:
        parser.error(f"--batches, --rounds and --batch-sizes must be at least 1, got {args.batches}, "
                     f"{args.rounds} and {args.batch_sizes}")
    return args


def machine_summary(device: torch.device) -> dict:
    return {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def save_results(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def marn_steps(config: Params, table: ItemTable, device: torch.device, backend: str) -> Callable[[Batch], object]:
    """One MARN training step per call on `backend` (the train stage's step, one process)."""
    torch.manual_seed(config.train.seed)
    model = build_model(MODEL, table, Architecture.from_config(config.train, config.data)).to(device).train()
    optimizer = make_optimizer(config.train.optimizer, [p for p in model.parameters() if p.requires_grad],
                               config.train.lr)
    weight = adversarial_weight(0.5, config.train.lambda0, config.train.gamma)  # mid-training

    def step(batch: Batch) -> object:
        with ops.use_backend(backend):
            return train_step(model, model, optimizer, batch, 1.0, 1, weight)

    return step


def dien_steps(config: Params, table: ItemTable, batches: list[Batch], device: torch.device
               ) -> tuple[Callable[[dict], object], list[dict]]:
    """deepctr-torch's DIEN on MARN's ID features, and the batches in its input layout."""
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DIEN

    max_len, width = config.data.max_len, config.train.hidden
    id_features = [("category", table.n_categories, CATEGORY_DIM)]
    if table.has_brands:
        id_features.append(("brand", table.n_brands, BRAND_DIM))
    item_dim = width - sum(dim for _, _, dim in id_features)
    if item_dim < 1:
        raise ValueError(f"train.hidden {width} leaves DIEN no item embedding beside category and brand")
    id_features.insert(0, ("item", table.n_items, item_dim))
    columns = [SparseFeat(name, size, dim) for name, size, dim in id_features]
    columns += [VarLenSparseFeat(SparseFeat(f"hist_{name}", size, dim, embedding_name=name), maxlen=max_len,
                                 length_name="hist_len") for name, size, dim in id_features]
    torch.manual_seed(config.train.seed)
    model = DIEN(columns, [name for name, _, _ in id_features], gru_type="AUGRU", use_negsampling=False,
                 dnn_hidden_units=tuple(config.train.prediction_mlp), device=str(device),
                 seed=config.train.seed)
    model.train()
    optimizer = make_optimizer(config.train.optimizer, list(model.parameters()), config.train.lr)
    # item index -> the ID each feature embeds; row 0 (padding) maps to 0 in every vocabulary
    id_of = {"item": torch.arange(table.n_items), "category": table.category, "brand": table.brand}
    n_columns = max(end for _, end in model.feature_index.values())

    def to_dien(batch: Batch) -> dict:
        """deepctr-torch's input: one float matrix, each feature in its `feature_index` columns."""
        inputs = torch.zeros(len(batch), n_columns)
        history = torch.zeros(len(batch), max_len, dtype=torch.int64)
        history[:, :batch.hist_items.shape[1]] = batch.hist_items.cpu()
        values = {"hist_len": batch.hist_len.cpu().unsqueeze(1)}
        for name, _, _ in id_features:
            values[name] = id_of[name][batch.target_item.cpu()].unsqueeze(1)
            values[f"hist_{name}"] = id_of[name][history]
        for name, (start, end) in model.feature_index.items():
            inputs[:, start:end] = values[name].float()
        return {"inputs": inputs.to(device), "label": batch.label}

    def step(batch: dict) -> object:
        predicted = model(batch["inputs"]).squeeze(-1)
        loss = F.binary_cross_entropy(predicted, batch["label"], reduction="sum")
        total = loss + model.get_regularization_loss() + model.aux_loss
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        return total.detach()

    return step, [to_dien(batch) for batch in batches]


def index_batches(dataset: CTRDataset, batch_size: int, lengths: str, count: int, seed: int) -> list[list[int]]:
    """`count` batches of sample indices: the train stage's seeded order (real) or full histories only (full)."""
    if lengths == "real":
        loader = make_loader(dataset, batch_size, shuffle=True, seed=seed)
        return [indices for _, indices in zip(range(count), loader.batch_sampler)]
    full = torch.from_numpy(np.flatnonzero(np.asarray(dataset.samples["pos"]) >= dataset.max_len))
    if not len(full):
        raise ValueError(f"no training sample has a history of data.max_len = {dataset.max_len} behaviours")
    generator = torch.Generator().manual_seed(seed)
    return [full[torch.randint(len(full), (batch_size,), generator=generator)].tolist() for _ in range(count)]


def time_providers(config: Params, table: ItemTable, batches: list[Batch], names: list[str], device: torch.device,
                   rounds: int) -> dict[str, list[float]]:
    """samples/s of each provider's pass over `batches`, per round, the providers taking turns."""
    fused_backend = "cuda" if device.type == "cuda" else "cpp"
    providers: dict[str, tuple[Callable, list]] = {}
    for name in names:
        if name == "deepctr-dien":
            providers[name] = dien_steps(config, table, batches, device)
        else:
            backend = fused_backend if name == "marn-fused" else "reference"
            providers[name] = (marn_steps(config, table, device, backend), batches)
    samples_per_pass = sum(len(batch) for batch in batches)

    def one_pass(step: Callable, provider_batches: list) -> float:
        synchronize(device)
        started = time.perf_counter()
        for batch in provider_batches:
            step(batch)
        synchronize(device)
        return samples_per_pass / (time.perf_counter() - started)

    for step, provider_batches in providers.values():
        one_pass(step, provider_batches)  # warm-up: allocations, kernel caches, lazy initialisation
    rates: dict[str, list[float]] = {name: [] for name in providers}
    for _ in range(rounds):
        for name, (step, provider_batches) in providers.items():
            rates[name].append(one_pass(step, provider_batches))
    return rates


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = load_params(args.overrides)
    paths = Paths.from_params(config)
    torch.set_num_threads(args.threads or config.train.num_threads or torch.get_num_threads())
    torch.set_flush_denormal(True)  # for every provider alike: denormal floats would slow some and not others
    device = torch.device(args.device)
    if "marn-fused" in args.providers:
        require_compiled()

    table = load_item_table(paths.prepared, paths.features)
    dataset = load_split(paths.prepared, "train", config.data)
    rows, each_round = [], []
    for batch_size in args.batch_sizes or [config.train.batch_size]:
        for lengths in args.lengths:
            indices = index_batches(dataset, batch_size, lengths, args.batches, config.train.seed)
            batches = [dataset.__getitems__(part).to(device) for part in indices]
            mean_history = float(torch.cat([batch.hist_len.float().cpu() for batch in batches]).mean())
            rates = time_providers(config, table, batches, args.providers, device, args.rounds)
            median = {name: statistics.median(values) for name, values in rates.items()}
            for name in rates:
                row = {"batch_size": batch_size, "lengths": lengths, "mean_history": mean_history,
                       "provider": name, "samples_per_s": median[name]}
                for reference in ("marn-reference", "deepctr-dien"):
                    row[f"vs_{reference}"] = median[name] / median[reference] if reference in median else ""
                rows.append(row)
            each_round.append({"batch_size": batch_size, "lengths": lengths, "samples_per_s": rates})
    columns = ["batch_size", "lengths", "mean_history", "provider", "samples_per_s", "vs_marn-reference",
               "vs_deepctr-dien"]
    settings = {"batch_sizes": args.batch_sizes or [config.train.batch_size], "lengths": args.lengths,
                "batches": args.batches, "rounds": args.rounds, "max_len": config.data.max_len,
                "hidden": config.train.hidden, "optimizer": config.train.optimizer,
                "train_samples": len(dataset), "items": table.n_items}
    payload = {"settings": settings, "machine": machine_summary(device), "rows": rows,
               "samples_per_s_each_round": each_round}
    save_results(args.out, payload)
    print(f"training throughput, median of {args.rounds} interleaved rounds over {args.batches} batches per case "
          f"({payload['machine']['threads']} threads, {device})")
    print(markdown_table(rows, columns))
    print(f"written to {args.out}")
    return payload


if __name__ == "__main__":
    main()
