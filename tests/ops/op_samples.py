"""Shared inputs, tolerances and comparisons for the op tests.

MARN_TEST_DEVICE (default cpu) picks the device the op tests run on; benchmarks/device_check.sh sets
it to cuda on a GPU machine.
"""

from __future__ import annotations

import contextlib
import os

import torch

from marn import ops
from marn.ops import backend as op_backend
from marn.ops import extension

DEVICE = torch.device(os.environ.get("MARN_TEST_DEVICE", "cpu"))
COMPILED_BACKEND = "cpp" if DEVICE.type == "cpu" else "cuda"
TRITON_RUNS = DEVICE.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
TRITON_SKIP_REASON = "Triton needs a GPU or TRITON_INTERPRET=1 set before marn.ops is imported"

# Compiled vs reference differ only in GEMM blocking and summation order (packed rows, other shapes).
# Worst |actual - expected| / (1 + |expected|) over 300 cases per APGRU test (weight gradients summing up
# to 17x6 rows of up to 129-term products): 1.8e-6 in float32 (15 ulp), 1.0e-14 in float64 (45 ulp).
# A later run found 5.3e-6 in float32 (weight_ih's gradient, B=17, T=5, I=H=129): against float64 the
# reference is off by 1.6e-6 and the compiled op by 3.7e-6 there, in opposite directions.
TOLERANCES = {
    torch.float32: {"rtol": 1.5e-5, "atol": 1.5e-5},  # ~3x the worst float32 difference seen
    torch.float64: {"rtol": 3e-14, "atol": 3e-14},  # ~3x the worst float64 error seen
}
APGRU_FLOAT_INPUTS = ("x", "prop", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_pz")


def require_loaded(name: str) -> None:
    """A compiled backend a test asks for must have loaded: otherwise the ops would run the reference
    and the test would compare the reference with itself."""
    if name in ("cpp", "cuda"):
        op_backend.require_compiled()
    if name == "cuda" and not extension.load().has_cuda:
        raise RuntimeError(f"marn.ops: the CUDA kernels are not available: {extension.load().problem}")


@contextlib.contextmanager
def backend(name: str):
    require_loaded(name)
    with ops.use_backend(name) as chosen:
        # $MARN_OPS_BACKEND would run another backend than the test compares
        if chosen != name:
            raise RuntimeError(f"{ops.BACKEND_ENV}={chosen} overrides the backend {name!r} this test runs; unset it")
        yield


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(gen: torch.Generator, *shape: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).to(DEVICE)


def apgru_inputs(
    batch: int, time: int, inputs: int, hidden: int, props: int, lengths: list[int], dtype, seed: int
) -> dict[str, torch.Tensor]:
    """APGRU arguments with weights at nn.GRU's init scale, every float tensor requiring grad."""
    gen = generator(seed)
    scale = hidden**-0.5
    tensors = {
        "x": randn(gen, batch, time, inputs, dtype=dtype),
        "prop": randn(gen, batch, time, props, dtype=dtype),
        "lengths": torch.tensor(lengths, dtype=torch.int64, device=DEVICE),
        "h0": randn(gen, batch, hidden, dtype=dtype),
        "weight_ih": randn(gen, 3 * hidden, inputs, dtype=dtype, scale=scale),
        "weight_hh": randn(gen, 3 * hidden, hidden, dtype=dtype, scale=scale),
        "bias_ih": randn(gen, 3 * hidden, dtype=dtype, scale=scale),
        "bias_hh": randn(gen, 3 * hidden, dtype=dtype, scale=scale),
        "weight_pz": randn(gen, hidden, props, dtype=dtype, scale=scale),
    }
    for name in APGRU_FLOAT_INPUTS:
        tensors[name].requires_grad_(True)
    return tensors


def outputs_and_grads(
    outputs: tuple[torch.Tensor, ...], inputs: list[torch.Tensor], seed: int, ignored: list[torch.Tensor | None] | None = None
) -> list[torch.Tensor]:
    """The outputs, then d(loss)/d(input) for a loss that weighs every output element differently
    (inputs it does not reach get zeros). `ignored[k]` marks elements of output k (e.g. padded steps)
    whose weight is NaN instead: an op whose output there is a constant must pass no gradient from them."""
    gen = generator(seed)
    weights = [randn(gen, *out.shape, dtype=out.dtype) for out in outputs]
    for weight, mask in zip(weights, ignored or []):
        if mask is not None:
            weight[mask] = float("nan")
    # An output no input reaches (the reference's out when T = 0) has no graph to differentiate.
    pairs = [(out, weight) for out, weight in zip(outputs, weights) if out.requires_grad]
    if not pairs:
        return [*outputs, *(torch.zeros_like(t) for t in inputs)]
    differentiated, grad_weights = zip(*pairs)
    grads = torch.autograd.grad(differentiated, inputs, grad_weights, allow_unused=True, materialize_grads=True)
    return [*outputs, *grads]


def assert_all_close(
    actual: list[torch.Tensor], expected: list[torch.Tensor], names: list[str], dtype, exact: bool = False
) -> None:
    assert len(actual) == len(expected)
    tolerance = {"rtol": 0.0, "atol": 0.0} if exact else TOLERANCES[dtype]
    for name, a, e in zip(names, actual, expected):
        torch.testing.assert_close(a, e, **tolerance, msg=lambda m, name=name: f"{name}: {m}")


def embedding_inputs(
    num_values: int, statistics: int, bins: list[int], dim: int, value_dtype, table_dtype, seed: int, special_share: float = 0.3
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Values mixing normal draws with boundary values (share `special_share`) and ±inf or NaN (half
    that share); tables requiring grad."""
    gen = generator(seed)
    boundaries = [
        torch.sort(torch.randn(statistics, g - 1, generator=gen, dtype=value_dtype), dim=1).values.to(DEVICE)
        for g in bins
    ]
    values = torch.randn(num_values, statistics, generator=gen, dtype=value_dtype)
    specials = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=value_dtype)
    for k in range(statistics):
        # Statistic k's own boundaries, so that these values sit exactly on one.
        on_boundary = torch.cat([b[k].cpu() for b in boundaries])
        if len(on_boundary):
            pick = torch.randint(len(on_boundary), (num_values,), generator=gen)
            chosen = torch.rand(num_values, generator=gen) < special_share
            values[:, k] = torch.where(chosen, on_boundary[pick], values[:, k])
        pick = torch.randint(len(specials), (num_values,), generator=gen)
        chosen = torch.rand(num_values, generator=gen) < special_share / 2
        values[:, k] = torch.where(chosen, specials[pick], values[:, k])
    values = values.to(DEVICE)
    tables = [randn(gen, statistics * (g + 1), dim, dtype=table_dtype).requires_grad_(True) for g in bins]
    return values, boundaries, tables
