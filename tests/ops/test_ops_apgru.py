"""The compiled APGRU ops (C++ on CPU, CUDA on a GPU) against the reference and against nn.GRU."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from op_samples import (
    APGRU_FLOAT_INPUTS,
    COMPILED_BACKEND,
    DEVICE,
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


@st.composite
def apgru_cases(draw):
    batch = draw(st.sampled_from([1, 3, 17]))
    time = draw(st.integers(1, 6))
    lengths = draw(st.lists(st.integers(0, time), min_size=batch, max_size=batch))
    return {
        "batch": batch,
        "time": time,
        "inputs": draw(ODD_SIZES),
        "hidden": draw(ODD_SIZES),
        "props": draw(st.sampled_from([0, 1, 3])),
        "lengths": lengths,
        "dtype": draw(DTYPES),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def run_sequence(name: str, inputs: dict, seed: int) -> list[torch.Tensor]:
    with backend(name):
        outputs = ops.apgru_sequence(**inputs)
    return outputs_and_grads(outputs, [inputs[n] for n in APGRU_FLOAT_INPUTS], seed)


@settings(max_examples=30, deadline=None)
@given(case=apgru_cases())
def test_sequence_matches_reference(case):
    inputs = apgru_inputs(**case)
    expected = run_sequence("reference", inputs, case["seed"])
    actual = run_sequence(COMPILED_BACKEND, inputs, case["seed"])
    assert_all_close(actual, expected, ["out", "h_last", *APGRU_FLOAT_INPUTS], case["dtype"])


@settings(max_examples=15, deadline=None)
@given(case=apgru_cases())
def test_cell_matches_reference(case):
    inputs = apgru_inputs(**case)
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
    with backend(COMPILED_BACKEND):
        assert torch.autograd.gradcheck(lambda *args: ops.apgru_sequence(**dict(zip(names, args))), tuple(inputs.values()))
        cell_args = (inputs["x"][:, 0].detach().requires_grad_(), inputs["h0"], inputs["prop"][:, 0].detach().requires_grad_(),
                     inputs["weight_ih"], inputs["weight_hh"], inputs["bias_ih"], inputs["bias_hh"], inputs["weight_pz"])
        assert torch.autograd.gradcheck(ops.apgru_cell, cell_args)


def test_opcheck():
    library = apgru_module.library("marn")
    inputs = apgru_inputs(3, 4, 5, 6, 2, [4, 1, 0], torch.float32, seed=3)
    torch.library.opcheck(library.apgru_sequence.default, tuple(inputs.values()))
    gates_in = randn(generator(4), 3, 18).requires_grad_(True)
    torch.library.opcheck(
        library.apgru_cell.default, (gates_in, inputs["h0"], inputs["weight_hh"], inputs["bias_hh"])
    )


@pytest.mark.parametrize("use_property", [False, True])
def test_matches_nn_gru_on_packed_sequences(use_property):
    """With P_z = 0 the APGRU layer is nn.GRU: same outputs, last states and weight gradients."""
    torch.manual_seed(5)
    batch, time, inputs, hidden, props = 5, 7, 9, 17, 3
    gru = torch.nn.GRU(inputs, hidden, batch_first=True, dtype=torch.float64).to(DEVICE)
    layer = APGRU(inputs, hidden, props, use_property=use_property).to(device=DEVICE, dtype=torch.float64)
    layer.load_state_dict(gru.state_dict(), strict=not use_property)
    if use_property:
        torch.nn.init.zeros_(layer.weight_pz)
    x = torch.randn(batch, time, inputs, dtype=torch.float64, device=DEVICE)
    prop = torch.randn(batch, time, props, dtype=torch.float64, device=DEVICE) if use_property else None
    lengths = torch.tensor([7, 1, 4, 7, 2])
    h0 = torch.randn(batch, hidden, dtype=torch.float64, device=DEVICE)

    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    gru_packed, gru_h = gru(packed, h0.unsqueeze(0))
    gru_out, _ = torch.nn.utils.rnn.pad_packed_sequence(gru_packed, batch_first=True, total_length=time)
    with backend(COMPILED_BACKEND):
        out, h_last = layer(x, prop, lengths, h0)
    torch.testing.assert_close(out, gru_out)
    torch.testing.assert_close(h_last, gru_h[0])

    weights = torch.randn(batch, time, hidden, dtype=torch.float64, device=DEVICE)
    (gru_out * weights).sum().backward()
    (out * weights).sum().backward()
    for name, parameter in gru.named_parameters():
        torch.testing.assert_close(getattr(layer, name).grad, parameter.grad, msg=name)


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
    with pytest.raises(ValueError, match=r"workspace must have shape \[3, 4, 24\]"):
        library.apgru_sequence_backward(torch.ones_like(out), torch.ones_like(h_last), x, prop, lengths, h0,
                                        weight_ih, weight_hh, weight_pz, out, workspace)
