"""The Triton kernels (the marn_triton ops) against the reference; on CPU they run in Triton's interpreter,
where each program costs milliseconds, so the cases are few and small enough for one or two programs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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
from test_ops_apgru import NON_FINITE, fill_padding, lengths_for, run_sequence

from marn import ops

pytestmark = pytest.mark.skipif(not TRITON_RUNS, reason=TRITON_SKIP_REASON)

# Triton's sigmoid and the tanh identity 2σ(2v) − 1 round differently from torch's, and the packed GEMMs
# sum in another order; max |a − e| / (1 + |e|) over 201 random cases (H up to 129) was 2.2e-6 in float32
# and 6.2e-15 in float64, so each tolerance is about twice that.
TRITON_TOLERANCES = {
    torch.float32: {"rtol": 5e-6, "atol": 5e-6},
    torch.float64: {"rtol": 1.5e-14, "atol": 1.5e-14},
}
APGRU_NAMES = ["out", "h_last", *APGRU_FLOAT_INPUTS]


@st.composite
def small_apgru_cases(draw):
    """Shapes small enough for the interpreter (each step costs one or two ~3 ms programs)."""
    batch = draw(st.sampled_from([1, 3, 6]))
    time = draw(st.integers(1, 4))
    return {
        "batch": batch,
        "time": time,
        "inputs": draw(st.sampled_from([1, 5])),
        "hidden": draw(st.sampled_from([1, 3, 9])),
        "props": draw(st.sampled_from([0, 2])),
        "lengths": draw(lengths_for(batch, time)),
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def assert_matches_reference(inputs: dict, seed: int, dtype, padded: torch.Tensor | None = None) -> list[torch.Tensor]:
    expected = run_sequence("reference", inputs, seed, padded)
    actual = run_sequence("triton", inputs, seed, padded)
    assert [tuple(t.shape) for t in actual] == [tuple(t.shape) for t in expected]
    for name, a, e in zip(APGRU_NAMES, actual, expected):
        torch.testing.assert_close(a, e, **TRITON_TOLERANCES[dtype], msg=lambda m, name=name: f"{name}: {m}")
    return actual


@settings(max_examples=25, deadline=None)
@given(case=small_apgru_cases(), padding_value=NON_FINITE)
def test_apgru_sequence_matches_reference(case, padding_value):
    """Outputs and every gradient, for lengths with all-zero and all-full rows; NaN/inf in x and prop at
    padded steps and NaN in the output's gradient there reach nothing."""
    inputs = apgru_inputs(**case)
    padded = fill_padding(inputs, padding_value)
    actual = assert_matches_reference(inputs, case["seed"], case["dtype"], padded)
    for name, value in zip(APGRU_NAMES, actual):
        assert torch.isfinite(value).all(), f"{name} is not finite"
    out, grad_x, grad_prop = actual[0], actual[2], actual[3]
    assert not out[padded].any() and not grad_x[padded].any() and not grad_prop[padded].any()


@pytest.mark.parametrize(
    "case",
    [
        # batch, time, input, hidden, property, lengths, dtype: one or two programs per step
        (3, 5, 17, 129, 3, [5, 0, 2], torch.float32),
        (17, 4, 3, 1, 0, [4, 1, 0, 3] * 4 + [2], torch.float64),
        (0, 4, 3, 5, 2, [], torch.float64),
        (3, 0, 3, 5, 2, [0, 0, 0], torch.float64),
        (3, 4, 3, 5, 2, [0, 0, 0], torch.float32),
        (3, 4, 3, 5, 2, [4, 4, 4], torch.float32),
    ],
    ids=["f32-odd-sizes", "f64-no-property", "B=0", "T=0", "all-empty", "all-full"],
)
def test_apgru_sequence_cases(case):
    *sizes, lengths, dtype = case
    assert_matches_reference(apgru_inputs(*sizes, lengths, dtype, seed=20), seed=21, dtype=dtype)


def test_apgru_sequence_runs_the_triton_kernels_over_real_steps_only(monkeypatch):
    """The Triton backend runs its own kernels (never the reference), each step over the rows still running:
    the kernels see sum(lengths) rows forward and backward, and the GEMMs of the input projection and of
    the weight gradients sum(lengths) rows."""
    from marn.ops import triton_apgru  # noqa: PLC0415

    rows_seen = {"forward": [], "backward": []}
    # The rows a launch covers: h_prev (argument 2) forward, grad_h (argument 0) backward.
    for direction, launcher, rows_argument in (("forward", "_gates_forward", 2), ("backward", "_gates_backward", 0)):
        original = getattr(triton_apgru, launcher)

        def counting(*args, _original=original, _rows=rows_seen[direction], _argument=rows_argument, **kwargs):
            _rows.append(args[_argument].shape[0])
            return _original(*args, **kwargs)

        monkeypatch.setattr(triton_apgru, launcher, counting)
    lengths = [4, 1, 2, 0, 1, 3]
    inputs = apgru_inputs(6, 4, 3, 5, 2, lengths, torch.float32, seed=22)
    with backend("triton"), torch.profiler.profile(record_shapes=True) as profile:
        out, h_last = ops.apgru_sequence(**inputs)
        (out.sum() + h_last.sum()).backward()
    assert rows_seen == {"forward": [5, 3, 2, 1], "backward": [1, 2, 3, 5]}
    projection_rows = [e.input_shapes[1][0] for e in profile.events() if e.name == "aten::addmm" and e.input_shapes[1][1:] == [3]]
    assert projection_rows == [sum(lengths)]


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
