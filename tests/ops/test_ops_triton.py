"""The Triton kernels (the marn_triton ops) against the reference; on CPU they run in Triton's interpreter,
where each program costs milliseconds, so the cases are few and small enough for one or two programs."""

import pytest
import torch
from op_samples import (
    APGRU_FLOAT_INPUTS,
    TRITON_RUNS,
    TRITON_SKIP_REASON,
    apgru_inputs,
    assert_all_close,
    backend,
    embedding_inputs,
    generator,
    outputs_and_grads,
    randn,
)

from marn import ops

pytestmark = pytest.mark.skipif(not TRITON_RUNS, reason=TRITON_SKIP_REASON)

APGRU_CASES = [
    # batch, time, input, hidden, property, lengths, dtype
    (3, 5, 17, 129, 3, [5, 0, 2], torch.float32),
    (17, 4, 3, 1, 0, [4, 1, 0, 3] * 4 + [2], torch.float64),
]


@pytest.mark.parametrize("case", APGRU_CASES, ids=["f32-odd-sizes", "f64-no-property"])
def test_apgru_sequence_matches_reference(case):
    *sizes, lengths, dtype = case
    inputs = apgru_inputs(*sizes, lengths, dtype, seed=20)
    leaves = [inputs[n] for n in APGRU_FLOAT_INPUTS]
    results = {}
    for name in ("reference", "triton"):
        with backend(name):
            results[name] = outputs_and_grads(ops.apgru_sequence(**inputs), leaves, seed=21)
    assert_all_close(results["triton"], results["reference"], ["out", "h_last", *APGRU_FLOAT_INPUTS], dtype)


def test_apgru_cell_matches_reference():
    inputs = apgru_inputs(3, 1, 5, 17, 2, [1, 1, 1], torch.float32, seed=22)
    cell_inputs = (inputs["x"][:, 0], inputs["h0"], inputs["prop"][:, 0], inputs["weight_ih"], inputs["weight_hh"],
                   inputs["bias_ih"], inputs["bias_hh"], inputs["weight_pz"])
    leaves = [inputs[n] for n in APGRU_FLOAT_INPUTS]
    results = {}
    for name in ("reference", "triton"):
        with backend(name):
            results[name] = outputs_and_grads((ops.apgru_cell(*cell_inputs),), leaves, seed=23)
    assert_all_close(results["triton"], results["reference"], ["h_new", *APGRU_FLOAT_INPUTS], torch.float32)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_embedding_matches_reference(dtype, deterministic):
    values, boundaries, tables = embedding_inputs(37, 3, [10, 100, 1], 8, dtype, dtype, seed=24, special_share=0.4)
    results = {}
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        for name in ("reference", "triton"):
            with backend(name):
                results[name] = outputs_and_grads((ops.multi_granularity_embedding(values, boundaries, tables),), tables, seed=25)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert_all_close(results["triton"], results["reference"], ["out", "grad 10", "grad 100", "grad 1"], dtype)


def test_opcheck():
    from marn.ops import apgru, embedding  # noqa: PLC0415

    inputs = apgru_inputs(2, 3, 4, 5, 2, [3, 1], torch.float32, seed=26)
    torch.library.opcheck(apgru.library("marn_triton").apgru_sequence.default, tuple(inputs.values()))
    gates_in = randn(generator(27), 2, 15).requires_grad_(True)
    torch.library.opcheck(
        apgru.library("marn_triton").apgru_cell.default, (gates_in, inputs["h0"], inputs["weight_hh"], inputs["bias_hh"])
    )
    values, boundaries, tables = embedding_inputs(11, 2, [4, 3], 3, torch.float32, torch.float32, seed=28)
    torch.library.opcheck(embedding.library("marn_triton").multi_granularity_embedding.default, (values, boundaries, tables))
