"""The compiled APGRU ops (C++ on CPU, CUDA on a GPU) against the reference and against nn.GRU on packed input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from op_samples import (
    APGRU_FLOAT_INPUTS,
    COMPILED_BACKEND,
    DEVICE,
    TRITON_RUNS,
    TRITON_SKIP_REASON,
    apgru_inputs,
    assert_all_close,
    backend,
    outputs_and_grads,
    randn,
    generator,
)

from marn import ops
from marn.nn import APGRU
from marn.ops import apgru as apgru_module

ODD_SIZES = st.sampled_from([1, 3, 17, 129])
DTYPES = st.sampled_from([torch.float32, torch.float64])
NON_FINITE = st.sampled_from([None, float("nan"), float("inf"), float("-inf")])


@st.composite
def lengths_for(draw, batch: int, time: int) -> list[int]:
    """Mixed lengths, or every row empty, or every row full."""
    kind = draw(st.sampled_from(["mixed", "mixed", "empty", "full"]))
    if kind == "empty":
        return [0] * batch
    if kind == "full":
        return [time] * batch
    return draw(st.lists(st.integers(0, time), min_size=batch, max_size=batch))


@st.composite
def apgru_cases(draw):
    batch = draw(st.sampled_from([0, 1, 3, 17]))
    time = draw(st.integers(0, 6))
    return {
        "batch": batch,
        "time": time,
        "inputs": draw(ODD_SIZES),
        "hidden": draw(ODD_SIZES),
        "props": draw(st.sampled_from([0, 1, 3])),
        "lengths": draw(lengths_for(batch, time)),
        "dtype": draw(DTYPES),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def padded_mask(lengths: torch.Tensor, time: int) -> torch.Tensor:
    """[B, T] True at padded steps."""
    return torch.arange(time, device=lengths.device) >= lengths.unsqueeze(1)


def fill_padding(inputs: dict, value: float | None) -> torch.Tensor:
    """Writes `value` into x and prop at padded steps (if not None); returns the [B, T] padding mask."""
    padded = padded_mask(inputs["lengths"], inputs["x"].shape[1])
    if value is not None:
        with torch.no_grad():
            inputs["x"][padded] = value
            inputs["prop"][padded] = value
    return padded


def run_sequence(name: str, inputs: dict, seed: int, padded: torch.Tensor | None = None) -> list[torch.Tensor]:
    with backend(name):
        outputs = ops.apgru_sequence(**inputs)
    return outputs_and_grads(outputs, [inputs[n] for n in APGRU_FLOAT_INPUTS], seed, ignored=[padded, None])


@settings(max_examples=60, deadline=None)
@given(case=apgru_cases(), padding_value=NON_FINITE)
def test_sequence_matches_reference(case, padding_value):
    """Outputs and every gradient; NaN/inf in x and prop at padded steps and NaN in the output's gradient
    there reach nothing, on either side."""
    inputs = apgru_inputs(**case)
    padded = fill_padding(inputs, padding_value)
    expected = run_sequence("reference", inputs, case["seed"], padded)
    actual = run_sequence(COMPILED_BACKEND, inputs, case["seed"], padded)
    assert_all_close(actual, expected, ["out", "h_last", *APGRU_FLOAT_INPUTS], case["dtype"])
    for name, value in zip(["out", "h_last", *APGRU_FLOAT_INPUTS], actual):
        assert torch.isfinite(value).all(), f"{name} is not finite"
    out, _, grad_x, grad_prop = actual[0], actual[1], actual[2], actual[3]
    assert not out[padded].any() and not grad_x[padded].any() and not grad_prop[padded].any()


@pytest.mark.parametrize(
    "batch, time, lengths",
    [(0, 4, []), (3, 0, [0, 0, 0]), (0, 0, []), (3, 4, [0, 0, 0]), (3, 4, [4, 4, 4])],
    ids=["B=0", "T=0", "B=0,T=0", "all-empty", "all-full"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sequence_edge_shapes(batch, time, lengths, dtype):
    inputs = apgru_inputs(batch, time, 3, 5, 2, lengths, dtype, seed=11)
    expected = run_sequence("reference", inputs, seed=12)
    actual = run_sequence(COMPILED_BACKEND, inputs, seed=12)
    assert [tuple(t.shape) for t in actual] == [tuple(t.shape) for t in expected]
    assert_all_close(actual, expected, ["out", "h_last", *APGRU_FLOAT_INPUTS], dtype)


@pytest.mark.parametrize("used", [0, 1], ids=["out only", "h_last only"])
def test_loss_of_one_output(used):
    """A loss that reads one output leaves the other's gradient undefined; the backward treats it as zero."""
    inputs = apgru_inputs(4, 5, 3, 6, 2, [5, 0, 2, 3], torch.float64, seed=14)
    leaves = [inputs[n] for n in APGRU_FLOAT_INPUTS]
    grads = {}
    for name in ("reference", COMPILED_BACKEND):
        with backend(name):
            output = ops.apgru_sequence(**inputs)[used]
        grads[name] = torch.autograd.grad((output * output).sum(), leaves, materialize_grads=True)
    assert_all_close(list(grads[COMPILED_BACKEND]), list(grads["reference"]), list(APGRU_FLOAT_INPUTS), torch.float64)


def test_recurrence_runs_only_real_steps():
    """Every GEMM row is a real step: the input projections cover sum(lengths) rows, and the per-step hidden
    GEMMs of forward and backward as many rows as are still running at that step, not batch x longest."""
    lengths = [9, 1, 2, 0, 1, 3]
    running = [5, 3, 2, 1, 1, 1, 1, 1, 1]  # rows with length > t
    inputs = apgru_inputs(6, 9, 4, 8, 2, lengths, torch.float32, seed=13)
    with backend(COMPILED_BACKEND):
        with torch.profiler.profile(record_shapes=True) as forward:
            out, h_last = ops.apgru_sequence(**inputs)
        with torch.profiler.profile(record_shapes=True) as backward:
            torch.autograd.grad((out.sum() + h_last.sum()), [inputs[n] for n in APGRU_FLOAT_INPUTS])

    def gemm_rows(profile, names):
        return [event.input_shapes[1][0] for event in profile.events() if event.name in names]

    projection_rows, property_rows, *step_rows = gemm_rows(forward, ("aten::addmm", "aten::addmm_"))
    assert projection_rows == property_rows == sum(lengths)
    assert step_rows == running
    assert gemm_rows(backward, ("aten::addmm_",)) == running[::-1]


@settings(max_examples=15, deadline=None)
@given(case=apgru_cases())
def test_cell_matches_reference(case):
    inputs = apgru_inputs(**{**case, "time": 1, "lengths": [1] * case["batch"]})
    cell_inputs = {
        "x": inputs["x"][:, 0],
        "h": inputs["h0"],
        "prop": inputs["prop"][:, 0],
        **{n: inputs[n] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_pz")},
    }
    leaves = [inputs[n] for n in APGRU_FLOAT_INPUTS]
    with backend("reference"):
        expected = outputs_and_grads((ops.apgru_cell(**cell_inputs),), leaves, case["seed"])
    with backend(COMPILED_BACKEND):
        actual = outputs_and_grads((ops.apgru_cell(**cell_inputs),), leaves, case["seed"])
    assert_all_close(actual, expected, ["h_new", *APGRU_FLOAT_INPUTS], case["dtype"])


def test_lengths_zero_and_full_keep_padding_semantics():
    inputs = apgru_inputs(4, 5, 3, 17, 2, [0, 5, 2, 0], torch.float32, seed=1)
    with backend(COMPILED_BACKEND):
        out, h_last = ops.apgru_sequence(**inputs)
    assert torch.equal(h_last[0], inputs["h0"][0]) and torch.equal(h_last[3], inputs["h0"][3])
    assert not out[0].any() and not out[2, 2:].any()
    assert torch.equal(h_last[2], out[2, 1]) and torch.equal(h_last[1], out[1, 4])


def test_gradcheck_float64():
    inputs = apgru_inputs(3, 4, 3, 5, 2, [4, 0, 2], torch.float64, seed=2)
    names = list(inputs)
    # Central differences with gradcheck's step 1e-6 in float64: rounding ~eps*|f|/step ~ 1e-10 dominates.
    tolerance = {"atol": 1e-8, "rtol": 1e-6}
    with backend(COMPILED_BACKEND):
        assert torch.autograd.gradcheck(
            lambda *args: ops.apgru_sequence(**dict(zip(names, args))), tuple(inputs.values()), **tolerance
        )
        cell_args = (inputs["x"][:, 0].detach().contiguous().requires_grad_(), inputs["h0"],
                     inputs["prop"][:, 0].detach().contiguous().requires_grad_(),
                     inputs["weight_ih"], inputs["weight_hh"], inputs["bias_ih"], inputs["bias_hh"], inputs["weight_pz"])
        assert torch.autograd.gradcheck(ops.apgru_cell, cell_args, **tolerance)


def test_opcheck():
    library = apgru_module.library("marn")
    inputs = apgru_inputs(3, 4, 5, 6, 2, [4, 1, 0], torch.float32, seed=3)
    torch.library.opcheck(library.apgru_sequence.default, tuple(inputs.values()))
    gates_in = randn(generator(4), 3, 18).requires_grad_(True)
    torch.library.opcheck(
        library.apgru_cell.default, (gates_in, inputs["h0"], inputs["weight_hh"], inputs["bias_hh"])
    )


@st.composite
def gru_cases(draw):
    batch = draw(st.integers(1, 6))
    time = draw(st.integers(1, 6))
    return {
        "batch": batch,
        "time": time,
        "inputs": draw(st.sampled_from([1, 4, 9])),
        "hidden": draw(st.sampled_from([1, 5, 17])),
        "lengths": draw(lengths_for(batch, time)),
        "use_property": draw(st.booleans()),
        "padding_value": draw(NON_FINITE),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def gru_packed_reference(gru: torch.nn.GRU, x: torch.Tensor, lengths: torch.Tensor, h0: torch.Tensor):
    """nn.GRU on pack_padded_sequence; rows of length 0 (which packing refuses) keep h0 and output zeros."""
    batch, time, _ = x.shape
    running = (lengths > 0).nonzero().squeeze(1)
    out = x.new_zeros(batch, time, gru.hidden_size)
    h_last = h0.clone()
    if len(running):
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x[running], lengths[running].cpu(), batch_first=True, enforce_sorted=False
        )
        gru_packed, gru_h = gru(packed, h0[running].unsqueeze(0))
        out[running], _ = torch.nn.utils.rnn.pad_packed_sequence(gru_packed, batch_first=True, total_length=time)
        h_last[running] = gru_h[0]
    return out, h_last


@settings(max_examples=40, deadline=None)
@given(case=gru_cases())
def test_matches_nn_gru_on_packed_sequences(case):
    """With P_z = 0 the APGRU layer is nn.GRU on packed input (cuDNN's on a GPU): outputs, last states and the
    gradients of x, h0 and every nn.GRU weight, for any lengths (zero included) and whatever sits in the padding."""
    check_matches_nn_gru(COMPILED_BACKEND, case)


@pytest.mark.skipif(not TRITON_RUNS, reason=TRITON_SKIP_REASON)
@settings(max_examples=40 if DEVICE.type == "cuda" else 12, deadline=None)  # the interpreter costs ms per program
@given(case=gru_cases())
def test_triton_matches_nn_gru_on_packed_sequences(case):
    check_matches_nn_gru("triton", case)


def check_matches_nn_gru(backend_name: str, case: dict) -> None:
    torch.manual_seed(case["seed"])
    batch, time, hidden = case["batch"], case["time"], case["hidden"]
    gru = torch.nn.GRU(case["inputs"], hidden, batch_first=True, dtype=torch.float64).to(DEVICE)
    layer = APGRU(case["inputs"], hidden, 3, use_property=case["use_property"]).to(device=DEVICE, dtype=torch.float64)
    layer.load_state_dict(gru.state_dict(), strict=not case["use_property"])
    if case["use_property"]:
        torch.nn.init.zeros_(layer.weight_pz)
    x = torch.randn(batch, time, case["inputs"], dtype=torch.float64, device=DEVICE)
    prop = torch.randn(batch, time, 3, dtype=torch.float64, device=DEVICE) if case["use_property"] else None
    lengths = torch.tensor(case["lengths"], device=DEVICE)
    padded = padded_mask(lengths, time)
    if case["padding_value"] is not None:
        x[padded] = case["padding_value"]
    x.requires_grad_(True)
    h0 = torch.randn(batch, hidden, dtype=torch.float64, device=DEVICE, requires_grad=True)

    gru_weights = [p for _, p in gru.named_parameters()]
    layer_weights = [getattr(layer, name) for name, _ in gru.named_parameters()]
    names = ["out", "h_last", "x", "h0", *(name for name, _ in gru.named_parameters())]
    expected = outputs_and_grads(gru_packed_reference(gru, x, lengths, h0), [x, h0, *gru_weights], case["seed"], [padded, None])
    with backend(backend_name):
        actual = outputs_and_grads(layer(x, prop, lengths, h0), [x, h0, *layer_weights], case["seed"], [padded, None])
    assert_all_close(actual, expected, names, torch.float64)


def test_module_parameter_names_follow_nn_gru():
    layer = APGRU(4, 6, 2)
    assert {name: tuple(p.shape) for name, p in layer.named_parameters()} == {
        "weight_ih_l0": (18, 4),
        "weight_hh_l0": (18, 6),
        "bias_ih_l0": (18,),
        "bias_hh_l0": (18,),
        "weight_pz": (6, 2),
    }
    assert "weight_pz" not in dict(APGRU(4, 6, 2, use_property=False).named_parameters())


def test_inference_saves_no_workspace_and_backward_refuses_it():
    inputs = apgru_inputs(3, 4, 5, 6, 2, [4, 2, 0], torch.float32, seed=6)
    library = apgru_module.library("marn")
    args = [t.detach() for t in inputs.values()]
    out, h_last, workspace = library.apgru_sequence(*args, False)
    with backend(COMPILED_BACKEND), torch.no_grad():
        expected_out, expected_h = ops.apgru_sequence(**inputs)
    assert workspace.shape == (3, 4, 0)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    torch.testing.assert_close(h_last, expected_h, rtol=0, atol=0)
    x, prop, lengths, h0, weight_ih, weight_hh, _, _, weight_pz = args
    with pytest.raises(ValueError, match=r"workspace must have shape \[3, 4, 30\]"):
        library.apgru_sequence_backward(torch.ones_like(out), torch.ones_like(h_last), x, prop, lengths, h0,
                                        weight_ih, weight_hh, weight_pz, workspace)
