"""Time the custom ops against their reference and peers; print a table and write CSV and JSON rows.

    python benchmarks/ops.py                                   # CPU: reference, C++, nn.GRU padded and packed
    python benchmarks/ops.py --device cuda --providers reference cuda triton compile gru gru_packed

Providers: `reference` (plain PyTorch), `cpp` / `cuda` / `triton` (marn.ops backends), `compile`
(torch.compile of the reference), `gru` (torch.nn.GRU on the padded batch, APGRU's peer: oneDNN on CPU,
cuDNN on GPU), `gru_packed` (torch.nn.GRU on pack_padded_sequence of the batch, then pad_packed_sequence:
what DIEN implementations run). Both GRUs get the same x, h0 and weights and no property.

APGRU lengths (--lengths): `full` (every row --time steps) and `real` (one batch of history lengths drawn
with a fixed seed from the train split of --prepared, min(pos, --max-len) per sample as the data loader
cuts them, padded to the batch's longest as the loader pads). If --prepared holds no train.npy, the
project's own fetch and prepare functions build the default (params.yaml) data in a temporary folder first.

Each (op, shape, mode) runs its providers in turns until each has --repeats timings or --budget
seconds per provider have passed (at least 3 runs each); p20/p50/p80 are over those runs.
speedup = reference p50 / provider p50; vs_gru = provider p50 / padded nn.GRU p50; vs_packed =
provider p50 / packed nn.GRU p50 (below 1 is faster). For the embedding
forward, GB/s counts the bytes an ideal kernel must move (values in, vectors out), and a
device-to-device copy row gives the bandwidth to compare it with.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from marn import ops
from marn.data.formats import read_samples, samples_file

ALL_PROVIDERS = ("reference", "cpp", "cuda", "triton", "compile", "gru", "gru_packed")
CSV_FIELDS = ("op", "provider", "lengths", "shape", "mode", "p20_ms", "p50_ms", "p80_ms", "speedup", "vs_gru",
              "vs_packed", "gb_per_s", "first_call_s", "runs", "device", "machine", "threads")
LENGTH_SEED = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ops", nargs="+", default=["apgru", "embedding"], choices=["apgru", "embedding"])
    parser.add_argument("--providers", nargs="+", choices=ALL_PROVIDERS,
                        help="default: reference, the device's compiled backend, compile, gru (+ triton on cuda)")
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument("--batch", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--lengths", nargs="+", default=["real", "full"], choices=["real", "full"],
                        help="APGRU history lengths: drawn from the prepared train split, or all --time")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"),
                        help="prepared data whose train split gives the real lengths")
    parser.add_argument("--max-len", type=int, default=20, help="data.max_len: histories are cut to this")
    parser.add_argument("--time", type=int, default=20, help="steps of the full-length case (and embedding rows)")
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--property", type=int, default=16)
    parser.add_argument("--statistics", type=int, default=4)
    parser.add_argument("--bins", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timed runs per provider and row, at most")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--csv", type=Path, default=Path("reports/benchmarks/ops.csv"))
    parser.add_argument("--json", type=Path, default=Path("reports/benchmarks/ops.json"))
    args = parser.parse_args(argv)
    if args.providers is None:
        compiled = "cuda" if args.device.startswith("cuda") else "cpp"
        extra = ["triton", "compile"] if compiled == "cuda" else []
        args.providers = ["reference", compiled, *extra, "gru", "gru_packed"]
    return args


def train_history_lengths(prepared: Path, max_len: int) -> tuple[np.ndarray, str]:
    """Every train sample's history length as the data loader cuts it, and where the data came from."""
    if (prepared / samples_file("train")).is_file():
        return np.minimum(read_samples(prepared, "train")["pos"], max_len), str(prepared)
    from marn.data.fetch import fetch  # noqa: PLC0415 - only needed without prepared data
    from marn.data.prepare import prepare  # noqa: PLC0415
    from marn.pipeline import load_params  # noqa: PLC0415

    data = load_params().data
    with tempfile.TemporaryDirectory(prefix="marn-bench-data-") as folder:
        raw, prepared_now = Path(folder) / "raw", Path(folder) / "prepared"
        print(f"no {prepared / samples_file('train')}: preparing the default data ({data.source}) in {folder}",
              file=sys.stderr)
        fetch(data, raw)
        prepare(data, raw, prepared_now)
        lengths = np.minimum(read_samples(prepared_now, "train")["pos"], max_len)
    return lengths, f"default params.yaml data ({data.source}), prepared afresh"


def batch_lengths(args, batch: int, kind: str, population: np.ndarray | None) -> list[int]:
    if kind == "full":
        return [args.time] * batch
    rng = np.random.default_rng(LENGTH_SEED)
    return [int(v) for v in rng.choice(population, size=batch)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(calls: dict[str, Callable[[], object]], device: torch.device, repeats: int, budget: float):
    """Per provider: first-call seconds (compilation included) and per-run milliseconds.

    Providers take turns run by run, so that load from other processes spreads over all of them.
    """
    first_call = {name: timed(fn, device) for name, fn in calls.items()}
    for fn in calls.values():
        fn()  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in calls}
    deadline = time.perf_counter() + budget
    while any(len(r) < repeats for r in runs.values()) and (min(map(len, runs.values())) < 3 or time.perf_counter() < deadline):
        for name, fn in calls.items():
            runs[name].append(timed(fn, device) * 1e3)
    return first_call, runs


def apgru_callables(
    args, lengths_list: list[int], device: torch.device, providers: list[str]
) -> dict[str, Callable[[bool], Callable[[], object]]]:
    """provider -> (backward?) -> a call that runs the forward, and the backward when asked."""
    gen = torch.Generator().manual_seed(0)
    batch, time_steps = len(lengths_list), max(lengths_list)
    gru = torch.nn.GRU(args.input, args.hidden, batch_first=True).to(device)
    x = torch.randn(batch, time_steps, args.input, generator=gen).to(device).requires_grad_()
    prop = torch.randn(batch, time_steps, args.property, generator=gen).to(device).requires_grad_()
    h0 = torch.zeros(batch, args.hidden, device=device, requires_grad=True)
    weight_pz = (torch.randn(args.hidden, args.property, generator=gen) * args.hidden**-0.5).to(device).requires_grad_()
    lengths = torch.tensor(lengths_list, dtype=torch.int64, device=device)
    lengths_cpu = lengths.cpu()  # pack_padded_sequence takes them on the CPU
    weights = [gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0, weight_pz]
    apgru_leaves = [x, prop, h0, *weights]
    gru_leaves = [x, h0, *weights[:4]]
    grad_out = torch.randn(batch, time_steps, args.hidden, generator=gen).to(device)

    def gru_packed():
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths_cpu, batch_first=True, enforce_sorted=False)
        out, h_n = gru(packed, h0.unsqueeze(0))
        padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=time_steps)
        return padded, h_n[0]
    compiled_reference = torch.compile(ops.apgru_sequence_reference)

    def runner(forward: Callable[[], tuple[torch.Tensor, torch.Tensor]], leaves: list[torch.Tensor]):
        def make(backward: bool) -> Callable[[], object]:
            if not backward:
                return lambda: _no_grad(forward)
            return lambda: torch.autograd.grad(forward(), leaves, (grad_out, torch.ones_like(h0)))
        return make

    def op_backend(name: str):
        return lambda: _with_backend(name, lambda: ops.apgru_sequence(x, prop, lengths, h0, *weights))

    factories = {
        "reference": runner(op_backend("reference"), apgru_leaves),
        "compile": runner(lambda: compiled_reference(x, prop, lengths, h0, *weights), apgru_leaves),
        "gru": runner(lambda: _squeeze_state(gru(x, h0.unsqueeze(0))), gru_leaves),
        "gru_packed": runner(gru_packed, gru_leaves),
    }
    for name in ("cpp", "cuda", "triton"):
        factories[name] = runner(op_backend(name), apgru_leaves)
    return {p: factories[p] for p in providers}


def embedding_callables(args, batch: int, device: torch.device, providers: list[str]):
    gen = torch.Generator().manual_seed(1)
    num_values = batch * args.time
    values = torch.randn(num_values, args.statistics, generator=gen)
    values[torch.rand(values.shape, generator=gen) < 0.05] = float("nan")
    values = values.to(device)
    boundaries = [torch.sort(torch.randn(args.statistics, g - 1, generator=gen), dim=1).values.to(device) for g in args.bins]
    tables = [torch.randn(args.statistics * (g + 1), args.dim, generator=gen).to(device).requires_grad_() for g in args.bins]
    grad_out = torch.randn(num_values, args.statistics * len(args.bins), args.dim, generator=gen).to(device)
    compiled_reference = torch.compile(ops.multi_granularity_embedding_reference)

    def runner(forward):
        def make(backward: bool):
            if not backward:
                return lambda: _no_grad(forward)
            return lambda: torch.autograd.grad(forward(), tables, grad_out)
        return make

    factories = {"compile": runner(lambda: compiled_reference(values, boundaries, tables))}
    for name in ("reference", "cpp", "cuda", "triton"):
        factories[name] = runner(
            lambda name=name: _with_backend(name, lambda: ops.multi_granularity_embedding(values, boundaries, tables))
        )
    ideal_bytes = values.numel() * values.element_size() + grad_out.numel() * grad_out.element_size()
    return {p: factories[p] for p in providers if not p.startswith("gru")}, ideal_bytes


def _no_grad(fn):
    with torch.no_grad():
        return fn()


def _with_backend(name: str, fn):
    with ops.use_backend(name):
        return fn()


def _squeeze_state(result):
    out, h_n = result
    return out, h_n[0]


def copy_bandwidth(device: torch.device, repeats: int, budget: float) -> float:
    """GB/s of a device-to-device copy of 256 MiB (bytes read + bytes written)."""
    source = torch.empty(64 * 2**20, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    _, runs = measure({"copy": lambda: target.copy_(source)}, device, repeats, budget)
    return 2 * source.numel() * 4 / (statistics.median(runs["copy"]) * 1e-3) / 1e9


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_flush_denormal(True)  # denormals slowed CPU steps up to 2x; every provider runs with this
    if args.threads:
        torch.set_num_threads(args.threads)
    common = {"device": str(device), "machine": machine(device), "threads": torch.get_num_threads()}
    load_before = os.getloadavg()[0]  # other processes' load: the ratios hold under it, the times do not
    rows: list[dict] = []
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as handle:
        # Rows are written as they finish, so a run stopped by a time limit keeps what it measured.
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in measure_all(args, device, common):
            writer.writerow({key: row.get(key, "") for key in CSV_FIELDS})
            handle.flush()
            rows.append(row)
    print_table(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": " ".join(sys.argv), "lengths_from": getattr(args, "length_source", None),
                                       "load_average_1min": [load_before, os.getloadavg()[0]],
                                       "cpu_count": os.cpu_count(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.csv} and {args.json}", file=sys.stderr)
    return rows


def cases(args: argparse.Namespace, device: torch.device):
    """(op, lengths kind, shape, provider callables, ideal bytes) per measured case."""
    population = None
    if "apgru" in args.ops and "real" in args.lengths:
        population, source = train_history_lengths(args.prepared, args.max_len)
        args.length_source = (f"{source}: {len(population)} train samples, mean {population.mean():.2f}, "
                              f"median {np.median(population):.0f}, max_len {args.max_len}")
        print(f"real lengths from {args.length_source}", file=sys.stderr)
    for batch in args.batch:
        for op in args.ops:
            if op == "embedding":
                callables, ideal_bytes = embedding_callables(args, batch, device, args.providers)
                shape = f"N={batch * args.time} K={args.statistics} bins={'/'.join(map(str, args.bins))} d={args.dim}"
                yield op, "", shape, callables, ideal_bytes
                continue
            for kind in args.lengths:
                lengths = batch_lengths(args, batch, kind, population)
                shape = (f"B={batch} T={max(lengths)} sum_len={sum(lengths)} I={args.input} H={args.hidden} "
                         f"P={args.property}")
                yield op, kind, shape, apgru_callables(args, lengths, device, args.providers), None


def measure_all(args: argparse.Namespace, device: torch.device, common: dict):
    """Yields the result rows of one (op, shape, mode) at a time."""
    for op, kind, shape, callables, ideal_bytes in cases(args, device):
        for mode in args.modes:
            calls = {provider: make(mode == "fwd+bwd") for provider, make in callables.items()}
            first_calls, runs = measure(calls, device, args.repeats, args.budget * len(calls))
            results = {}
            for provider in calls:
                p20, p50, p80 = (statistics.quantiles(runs[provider], n=10)[i] for i in (1, 4, 7))
                results[provider] = {"op": op, "provider": provider, "lengths": kind, "shape": shape, "mode": mode,
                                     "p20_ms": p20, "p50_ms": p50, "p80_ms": p80,
                                     "first_call_s": first_calls[provider], "runs": len(runs[provider]), **common}
                if ideal_bytes is not None and mode == "fwd":
                    results[provider]["gb_per_s"] = ideal_bytes / (p50 * 1e-3) / 1e9
                print(f"  {op} {shape} {mode} {provider}: p50 {p50:.3f} ms", file=sys.stderr, flush=True)
            for result in results.values():
                if "reference" in results:
                    result["speedup"] = results["reference"]["p50_ms"] / result["p50_ms"]
                if "gru" in results:
                    result["vs_gru"] = result["p50_ms"] / results["gru"]["p50_ms"]
                if "gru_packed" in results:
                    result["vs_packed"] = result["p50_ms"] / results["gru_packed"]["p50_ms"]
            yield from results.values()
    if "embedding" in args.ops:
        yield {"op": "copy", "provider": "torch", "shape": "256 MiB", "mode": "fwd",
               "gb_per_s": copy_bandwidth(device, args.repeats, args.budget), **common}


def print_table(rows: list[dict]) -> None:
    header = ("op", "provider", "lengths", "shape", "mode", "p20_ms", "p50_ms", "p80_ms", "speedup", "vs_gru",
              "vs_packed", "gb_per_s")
    cells = [[_cell(row.get(key)) for key in header] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
