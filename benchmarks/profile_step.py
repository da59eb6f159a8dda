"""Where one MARN training step spends its time, part by part, next to its compute floor.

    python benchmarks/profile_step.py [--batch-sizes 32 256] [--steps 8] [--backend cpp] [key=value ...]

The step is the train stage's `train_step` (one process, train.num_threads threads, flush-denormal on)
on --steps distinct training batches of each size, drawn in the seeded order of the train stage.
- Time per part: torch.profiler over --steps steps after a warm-up step. A part's forward is the span
  of its module's forward; its backward is the autograd nodes its forward created (matched by the
  profiler's sequence numbers); loss and optimizer are their own parts; "other" is what is left of
  the step (torch.unique and the gathers that place items in the history, autograd bookkeeping,
  gradient accumulation, the profiler's own cost). Medians over the steps.
- Step (unprofiled): the median wall time of the same steps without the profiler.
- FLOPs: torch.utils.flop_counter's formulas over one step (forward, backward, optimizer) per batch, on a
  copy of the model with the reference ops, whose APGRU is plain matrix products, credited to parts as
  the time is; means over the batches. "Real" FLOPs count the APGRU over the behaviours only (its padded
  FLOPs times sum of lengths / (batch x longest history)).
- Compute floor: real FLOPs / the sgemm rate measured beside the step (a 512^3 float32 matrix product).

The key=value overrides go to params.yaml (e.g. data.prepared_dir=... features.dir=...).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from marn import ops
from marn.batch import Batch
from marn.config import Params, Paths
from marn.data.dataset import CTRDataset, load_split, make_loader
from marn.data.item_table import load_item_table
from marn.items import ItemTable
from marn.models.base import Architecture
from marn.models.registry import build_model
from marn.pipeline import load_params
from marn.train import adversarial_weight, make_optimizer, train_step
from train_throughput import RESULTS_DIR, machine_summary, markdown_table, save_results

MODEL = "MARN"
# (part, the MARN submodule whose forward, and the backward of what that forward created, is the part)
MODULE_PARTS = (
    ("title CNN", "modality_embedding.encoders.title"),
    ("image projection", "modality_embedding.encoders.image"),
    ("statistic embedding", "modality_embedding.encoders.statistics"),
    ("ID embedding", "modality_embedding.encoders.ids"),
    ("fusion (MAF)", "fusion"),
    ("fusion (MAF)", "fusion.specific_projection"),  # also run alone, on detached inputs, for Ds
    ("adversaries (D0, D1, Ds)", "adversary"),
    ("behaviour property", "behaviour_property"),
    ("APGRU", "sequence"),
    ("candidate attention", "candidate_attention"),
    ("prediction MLP", "prediction"),
)
PARTS = (*dict.fromkeys(part for part, _ in MODULE_PARTS), "loss", "optimizer", "other")
TAG = "part::"
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of params.yaml")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--steps", type=int, default=8, help="profiled (and unprofiled) steps per batch size")
    parser.add_argument("--backend", default="cpp", choices=["cpp", "reference"])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "profile_step.json")
    args = parser.parse_args(argv)
    if args.steps < 1 or min(args.batch_sizes) < 1:
        parser.error("--steps and --batch-sizes must be at least 1")
    return args


def sgemm_rate(size: int = 512, repeats: int = 20) -> float:
    """FLOP/s of a size^3 float32 matrix product, median over repeats."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * size ** 3 / statistics.median(times)


class PartTracker:
    """Names the part each forward op and each autograd node belongs to.

    Hooks open a profiler range `part::<name>` around each part's forward (and the loss and the optimizer
    step) and note the autograd sequence numbers the part's forward used, so that a backward node is
    credited to the part whose forward created it.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.open: list[tuple[str, int, record_function]] = []
        self.sequence_ranges: list[tuple[int, int, str]] = []
        modules = dict(model.named_modules())
        for part, module_name in MODULE_PARTS:
            if modules.get(module_name) is not None:
                modules[module_name].register_forward_pre_hook(lambda *_, part=part: self.enter(part))
                modules[module_name].register_forward_hook(lambda *_: self.exit())
        optimizer.register_step_pre_hook(lambda *_: self.enter("optimizer"))
        optimizer.register_step_post_hook(lambda *_: self.exit())
        compute_loss = model.compute_loss

        def tracked_loss(*args, **kwargs):
            self.enter("loss")
            try:
                return compute_loss(*args, **kwargs)
            finally:
                self.exit()

        model.compute_loss = tracked_loss

    @staticmethod
    def next_sequence_nr() -> int:
        """The autograd sequence number the next node gets (this probe node takes one)."""
        return torch.zeros((), requires_grad=True).clone().grad_fn._sequence_nr() + 1

    def enter(self, part: str) -> None:
        """A part called inside another (MAF's specific projection inside MAF) belongs to the outer one."""
        nested = bool(self.open) and self.open[-1] is not None
        self.open.append(None if nested else (part, self.next_sequence_nr(), record_function(TAG + part).__enter__()))

    def exit(self) -> None:
        entry = self.open.pop()
        if entry is not None:
            part, first, profiler_range = entry
            profiler_range.__exit__(None, None, None)
            self.sequence_ranges.append((first, self.next_sequence_nr(), part))

    def current(self) -> str:
        entries = [entry for entry in self.open if entry is not None]
        return entries[-1][0] if entries else "other"

    def part_of(self, sequence_nr: int) -> str:
        for first, end, part in self.sequence_ranges:
            if first <= sequence_nr < end:
                return part
        return "other"


class PartFlopCounter(TorchDispatchMode):
    """FLOPs per part (torch.utils.flop_counter's formulas), backward ops credited through the tracker."""

    def __init__(self, tracker: PartTracker):
        super().__init__()
        self.tracker = tracker
        self.flops = dict.fromkeys(PARTS, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            node = torch._C._current_autograd_node()
            part = self.tracker.part_of(node._sequence_nr()) if node is not None else self.tracker.current()
            self.flops[part] += formula(*args, **kwargs, out_val=out)
        return out


def part_times(events, tracker: PartTracker) -> list[dict[str, list[float]]]:
    """Per profiled step: {part: [forward µs, backward µs]}; "other" takes what the parts leave of the step."""
    steps = []
    for step in (e for e in events if e.name == "step"):
        begin, end = step.time_range.start, step.time_range.end
        times = {part: [0.0, 0.0] for part in PARTS}
        for event in events:
            if not begin <= event.time_range.start < end:
                continue
            if event.name.startswith(TAG):
                times[event.name[len(TAG):]][0] += event.time_range.elapsed_us()
            elif event.name.startswith(BACKWARD_PREFIX) and event.sequence_nr >= 0:
                times[tracker.part_of(event.sequence_nr)][1] += event.time_range.elapsed_us()
        times["other"][0] += (end - begin) - sum(f + b for f, b in times.values())
        steps.append(times)
    return steps


def flop_counts(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, weight: float
                ) -> dict[str, float]:
    """FLOPs of one step per part on the reference ops (APGRU over the padded batch), on copies."""
    model, optimizer = copy.deepcopy((model, optimizer))
    tracker = PartTracker(model, optimizer)
    with ops.use_backend("reference"), PartFlopCounter(tracker) as counter:
        train_step(model, model, optimizer, batch, 1.0, 1, weight)
    return counter.flops


def profile_batch_size(config: Params, table: ItemTable, dataset: CTRDataset, batch_size: int, steps: int,
                       backend: str, weight: float) -> dict:
    train = config.train
    loader = make_loader(dataset, batch_size, shuffle=True, seed=train.seed)
    batches = [dataset.__getitems__(indices) for _, indices in zip(range(steps), loader.batch_sampler)]
    torch.manual_seed(train.seed)
    model = build_model(MODEL, table, Architecture.from_config(train, config.data)).train()
    optimizer = make_optimizer(train.optimizer, [p for p in model.parameters() if p.requires_grad], train.lr)
    # mean FLOPs of a step over the batches; the APGRU's real share: sum of lengths / (batch x longest)
    executed, real = dict.fromkeys(PARTS, 0.0), dict.fromkeys(PARTS, 0.0)
    for batch in batches:
        lengths = batch.hist_len
        real_share = float(lengths.sum()) / (len(lengths) * max(int(lengths.max()), 1))
        for part, count in flop_counts(model, optimizer, batch, weight).items():
            executed[part] += count / len(batches)
            real[part] += count * (real_share if part == "APGRU" else 1.0) / len(batches)
    lengths = torch.cat([batch.hist_len for batch in batches])

    rate = sgemm_rate()  # measured beside the step, as the machine's load changes
    step = lambda batch: train_step(model, model, optimizer, batch, 1.0, 1, weight)  # noqa: E731
    with ops.use_backend(backend):
        step(batches[0])  # warm-up
        wall = []
        for batch in batches:
            started = time.perf_counter()
            step(batch)
            wall.append((time.perf_counter() - started) * 1e3)
        tracker = PartTracker(model, optimizer)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for batch in batches:
                with record_function("step"):
                    step(batch)
    events = profiler.events()
    per_step = part_times(events, tracker)
    profiled_total = statistics.median(e.time_range.elapsed_us() / 1e3 for e in events if e.name == "step")
    rows = []
    for part in PARTS:
        forward = statistics.median(s[part][0] for s in per_step) / 1e3
        backward = statistics.median(s[part][1] for s in per_step) / 1e3
        rows.append({"part": part, "forward_ms": forward, "backward_ms": backward, "total_ms": forward + backward,
                     "share": (forward + backward) / profiled_total,
                     "gflop": real[part] / 1e9, "floor_ms": real[part] / rate * 1e3})
    rows.append({"part": "whole step (profiled)", "forward_ms": "", "backward_ms": "", "total_ms": profiled_total,
                 "share": 1.0, "gflop": sum(real.values()) / 1e9, "floor_ms": sum(real.values()) / rate * 1e3})
    step_ms = statistics.median(wall)
    return {"batch_size": batch_size, "rows": rows, "step_ms": step_ms, "profiled_step_ms": profiled_total,
            "sgemm_gflop_per_s": rate / 1e9,
            "mean_history": float(lengths.float().mean()), "longest_history": int(lengths.max()),
            "gflop_executed_reference": sum(executed.values()) / 1e9, "gflop_real": sum(real.values()) / 1e9,
            "floor_ms": sum(real.values()) / rate * 1e3, "step_over_floor": step_ms / (sum(real.values()) / rate * 1e3)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = load_params(args.overrides)
    paths = Paths.from_params(config)
    torch.set_num_threads(config.train.num_threads or torch.get_num_threads())
    torch.set_flush_denormal(True)
    table = load_item_table(paths.prepared, paths.features)
    dataset = load_split(paths.prepared, "train", config.data)
    weight = adversarial_weight(0.5, config.train.lambda0, config.train.gamma)  # mid-training
    results = [profile_batch_size(config, table, dataset, size, args.steps, args.backend, weight)
               for size in args.batch_sizes]
    payload = {"backend": args.backend, "steps": args.steps,
               "machine": machine_summary(torch.device("cpu")), "batch_sizes": results}
    save_results(args.out, payload)
    print(f"MARN training step, backend {args.backend}, {torch.get_num_threads()} thread(s), "
          f"medians over {args.steps} steps")
    for result in results:
        print(f"\nbatch {result['batch_size']}: step {result['step_ms']:.1f} ms unprofiled "
              f"({result['profiled_step_ms']:.1f} ms profiled), {result['gflop_real']:.2f} GFLOP real "
              f"({result['gflop_executed_reference']:.2f} with the reference's padding), sgemm "
              f"{result['sgemm_gflop_per_s']:.1f} GFLOP/s, floor "
              f"{result['floor_ms']:.1f} ms, step / floor {result['step_over_floor']:.1f}; history mean "
              f"{result['mean_history']:.1f}, longest {result['longest_history']} (over the batches)")
        print(markdown_table(result["rows"], ["part", "forward_ms", "backward_ms", "total_ms", "share", "gflop",
                                              "floor_ms"]))
    print(f"written to {args.out}")
    return payload


if __name__ == "__main__":
    main()
