"""Bad calls raise the promised Python exceptions, naming the problem, on every backend."""

import pytest
import torch
from op_samples import COMPILED_BACKEND, DEVICE, TRITON_RUNS, apgru_inputs, backend, embedding_inputs

from marn import ops
from marn.ops import apgru, embedding

BACKENDS = [
    COMPILED_BACKEND,
    pytest.param("triton", marks=pytest.mark.skipif(not TRITON_RUNS, reason="Triton cannot run here")),
    "reference",
]


def good_apgru_inputs() -> dict:
    return {k: v.detach() for k, v in apgru_inputs(2, 3, 4, 5, 2, [3, 1], torch.float32, seed=30).items()}


APGRU_BAD_CALLS = {
    "weight_hh shape": ({"weight_hh": torch.zeros(15, 4)}, ValueError, "weight_hh must have shape [15, 5]"),
    "x not 3-D": ({"x": torch.zeros(2, 3)}, ValueError, "x must be a 3-D"),
    "h0 batch": ({"h0": torch.zeros(3, 5)}, ValueError, "h0 must have shape [2, 5]"),
    "mixed dtypes": ({"prop": torch.zeros(2, 3, 2, dtype=torch.float64)}, TypeError, "prop has dtype torch.float64"),
    "integer x": ({"x": torch.zeros(2, 3, 4, dtype=torch.int64)}, TypeError, "x must be float32 or float64"),
    "lengths past time": ({"lengths": torch.tensor([4, 1])}, IndexError, "lengths must lie in [0, time] = [0, 3], got values in [1, 4]"),
    "negative lengths": ({"lengths": torch.tensor([-1, 1])}, IndexError, "lengths must lie in [0, time] = [0, 3], got values in [-1, 1]"),
    "lengths dtype": ({"lengths": torch.tensor([3, 1], dtype=torch.int32)}, TypeError, "lengths must have dtype torch.int64"),
    "lengths size": ({"lengths": torch.tensor([3, 1, 2])}, ValueError, "lengths must have shape [2]"),
}


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("bad", APGRU_BAD_CALLS.values(), ids=APGRU_BAD_CALLS.keys())
def test_apgru_sequence_rejects(name, bad):
    replacement, error, message = bad
    inputs = {**good_apgru_inputs(), **{k: v.to(DEVICE) for k, v in replacement.items()}}
    with backend(name), pytest.raises(error, match=rf"apgru_sequence: {_escaped(message)}"):
        ops.apgru_sequence(**inputs)


@pytest.mark.parametrize("namespace", ["marn", pytest.param("marn_triton", marks=pytest.mark.skipif(not TRITON_RUNS, reason="Triton cannot run here"))])
def test_registered_ops_reject_non_contiguous_and_out_of_range(namespace):
    inputs = good_apgru_inputs()
    inputs["x"] = inputs["x"].transpose(0, 1).contiguous().transpose(0, 1)
    with pytest.raises(ValueError, match="x must be contiguous"):
        apgru.library(namespace).apgru_sequence(*inputs.values())
    h = torch.zeros(2, 5, device=DEVICE)
    with pytest.raises(ValueError, match=r"input_gates must have shape \[2, 15\]"):
        apgru.library(namespace).apgru_cell(torch.zeros(2, 14, device=DEVICE), h, torch.zeros(15, 5, device=DEVICE), torch.zeros(15, device=DEVICE))
    grad_out = torch.zeros(3, 4, 2, device=DEVICE)
    rows = torch.tensor([[0, 0, 1, 2]] * 2 + [[0, 9, 1, 2]], device=DEVICE)
    with pytest.raises(IndexError, match=r"rows of granularity 1 must lie in \[0, 8\), got 9"):
        embedding.library(namespace).multi_granularity_embedding_backward(grad_out, rows, [8, 8], False)


def good_embedding_inputs():
    values, boundaries, tables = embedding_inputs(5, 2, [4, 3], 3, torch.float32, torch.float32, seed=31)
    return values, boundaries, [t.detach() for t in tables]


def unsorted(values, boundaries, tables):
    boundaries[1] = boundaries[1].flip(1).contiguous()
    return values, boundaries, tables


def nan_boundary(values, boundaries, tables):
    boundaries[0] = boundaries[0].clone()
    boundaries[0][1, 0] = float("nan")
    return values, boundaries, tables


EMBEDDING_BAD_CALLS = {
    "unsorted boundaries": (unsorted, ValueError, "every row of boundaries[1] must be sorted ascending and free of NaN"),
    "NaN boundary": (nan_boundary, ValueError, "every row of boundaries[0] must be sorted ascending and free of NaN"),
    "table rows": (lambda v, b, t: (v, b, [t[0], t[1][:-1]]), ValueError, "tables[1] must have shape [8, 3]"),
    "boundary dtype": (lambda v, b, t: (v, [b[0].double(), b[1]], t), TypeError, "boundaries[0] must have dtype torch.float32"),
    "table dtype": (lambda v, b, t: (v, b, [t[0], t[1].double()]), TypeError, "tables[1] must have dtype torch.float32"),
    "granularity count": (lambda v, b, t: (v, b, t[:1]), ValueError, "got 2 boundary tensors but 1 tables"),
    "statistics": (lambda v, b, t: (v[:, :1].contiguous(), b, t), ValueError, "boundaries[0] has 2 rows but values has 1 statistics"),
    "values not 2-D": (lambda v, b, t: (v[:, 0].contiguous(), b, t), ValueError, "values must be a 2-D"),
    "integer values": (lambda v, b, t: (v.long(), b, t), TypeError, "values must be float32 or float64"),
}


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("bad", EMBEDDING_BAD_CALLS.values(), ids=EMBEDDING_BAD_CALLS.keys())
def test_embedding_rejects(name, bad):
    spoil, error, message = bad
    args = spoil(*good_embedding_inputs())
    with backend(name), pytest.raises(error, match=rf"multi_granularity_embedding: {_escaped(message)}"):
        ops.multi_granularity_embedding(*args)


def _escaped(message: str) -> str:
    import re  # noqa: PLC0415

    return re.escape(message)
