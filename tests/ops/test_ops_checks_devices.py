"""Ops refuse arguments on mixed devices and the public cell checks its inputs, on every backend.

One argument on `meta` sends a registered op to its fake kernel, which used to return uninitialised
tensors on the other arguments' device; now the fake kernels check devices too.
"""

import re

import pytest
import torch
from op_samples import COMPILED_BACKEND, DEVICE, TRITON_RUNS, apgru_inputs, backend, embedding_inputs

from marn import ops
from marn.ops import apgru, embedding

TRITON = pytest.param("triton", marks=pytest.mark.skipif(not TRITON_RUNS, reason="Triton cannot run here"))
BACKENDS = [COMPILED_BACKEND, TRITON, "reference"]
NAMESPACES = ["marn", pytest.param("marn_triton", marks=pytest.mark.skipif(not TRITON_RUNS, reason="Triton cannot run here"))]
SEQUENCE_ARGS = ("weight_hh", "lengths", "h0", "prop", "bias_ih")
CELL_ARGS = ("h", "weight_hh", "bias_hh", "prop")


def sequence_inputs() -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in apgru_inputs(2, 3, 4, 5, 2, [3, 1], torch.float32, seed=40).items()}


def cell_inputs() -> dict[str, torch.Tensor]:
    s = sequence_inputs()
    return {"x": s["x"][:, 0].contiguous(), "h": s["h0"], "prop": s["prop"][:, 0].contiguous(),
            **{k: s[k] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_pz")}}


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(("op", "meta_arg"), [
    *(("apgru_sequence", arg) for arg in SEQUENCE_ARGS),
    *(("apgru_cell", arg) for arg in CELL_ARGS),
])
def test_apgru_ops_refuse_one_meta_argument(name, op, meta_arg):
    inputs = {"apgru_sequence": sequence_inputs, "apgru_cell": cell_inputs}[op]()
    inputs[meta_arg] = inputs[meta_arg].to("meta")
    with backend(name), pytest.raises(ValueError, match=f"{op}: {meta_arg} is on meta but x is on {DEVICE.type}"):
        getattr(ops, op)(**inputs)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("spoil", ["boundaries", "tables"])
def test_embedding_refuses_one_meta_argument(name, spoil):
    values, boundaries, tables = embedding_inputs(5, 2, [4, 3], 3, torch.float32, torch.float32, seed=41)
    tables = [t.detach() for t in tables]
    spoiled = boundaries if spoil == "boundaries" else tables
    spoiled[1] = spoiled[1].to("meta")
    with backend(name), pytest.raises(ValueError, match=rf"multi_granularity_embedding: {spoil}\[1\] is on meta but "):
        ops.multi_granularity_embedding(values, boundaries, tables)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_registered_ops_and_their_backward_refuse_one_meta_argument(namespace):
    """The registered forward and backward ops, called directly, on every namespace (meta -> fake kernel)."""
    with backend(COMPILED_BACKEND if namespace == "marn" else "triton"):
        lib = apgru.library(namespace)
        s = sequence_inputs()
        args = list(s.values())
        args[5] = args[5].to("meta")  # weight_hh
        with pytest.raises(ValueError, match="apgru_sequence: weight_hh is on meta but x is on"):
            lib.apgru_sequence(*args)
        batch, time, hidden = 2, 3, 5
        workspace = torch.zeros(batch, time, 5 * hidden, device=DEVICE)
        backward_args = [torch.zeros(batch, time, hidden, device=DEVICE), torch.zeros(batch, hidden, device="meta"),
                         s["x"], s["prop"], s["lengths"], s["h0"], s["weight_ih"], s["weight_hh"], s["weight_pz"], workspace]
        with pytest.raises(ValueError, match="apgru_sequence_backward: grad_h_last is on meta but grad_out is on"):
            lib.apgru_sequence_backward(*backward_args)
        h = torch.zeros(batch, hidden, device=DEVICE)
        with pytest.raises(ValueError, match="apgru_cell: bias_hh is on meta but input_gates is on"):
            lib.apgru_cell(torch.zeros(batch, 3 * hidden, device=DEVICE), h, s["weight_hh"], s["bias_hh"].to("meta"))
        with pytest.raises(ValueError, match="apgru_cell_backward: workspace is on meta but grad_h_new is on"):
            lib.apgru_cell_backward(h, h, s["weight_hh"], torch.zeros(batch, 4 * hidden, device="meta"))
        rows = torch.zeros(3, 4, dtype=torch.int64, device="meta")
        with pytest.raises(ValueError, match="multi_granularity_embedding_backward: rows is on meta but grad_out is on"):
            embedding.library(namespace).multi_granularity_embedding_backward(torch.zeros(3, 4, 2, device=DEVICE), rows, [8, 8], False)


def test_all_meta_arguments_still_give_shapes():
    """Meta tensors throughout are shape inference, not a device mix: the reference answers with shapes."""
    inputs = {k: v.to("meta") for k, v in sequence_inputs().items()}
    with backend("reference"):
        out, h_last = ops.apgru_sequence(**inputs)
    assert (out.device.type, list(out.shape), list(h_last.shape)) == ("meta", [2, 3, 5], [2, 5])


CELL_BAD_CALLS = {
    "float16": ({"x": torch.float16}, TypeError, "apgru_cell: x must be float32 or float64, got torch.float16"),
    "float16 state": ({"h": torch.float16}, TypeError, "apgru_cell: h has dtype torch.float16 but x has torch.float32"),
    "1-D x": ({"x": [4]}, ValueError, "apgru_cell: x must be a 2-D [batch, input] tensor, got shape [4]"),
    "1-D h": ({"h": [5]}, ValueError, "apgru_cell: h must be a 2-D [batch, hidden] tensor, got shape [5]"),
    "1-D prop": ({"prop": [2]}, ValueError, "apgru_cell: prop must be a 2-D [batch, property] tensor, got shape [2]"),
    "prop batch": ({"prop": [3, 2]}, ValueError, "apgru_cell: prop must have shape [2, 2] [batch, property], got [3, 2]"),
    "weight_pz": ({"weight_pz": [5, 3]}, ValueError, "apgru_cell: weight_pz must have shape [5, 2] [hidden, property], got [5, 3]"),
    "bias_ih": ({"bias_ih": [14]}, ValueError, "apgru_cell: bias_ih must have shape [15] [3*hidden], got [14]"),
}


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("bad", CELL_BAD_CALLS.values(), ids=CELL_BAD_CALLS.keys())
def test_apgru_cell_checks_its_inputs(name, bad):
    change, error, message = bad
    inputs = cell_inputs()
    for arg, how in change.items():
        inputs[arg] = inputs[arg].to(how) if isinstance(how, torch.dtype) else torch.zeros(how, device=DEVICE)
    with backend(name), pytest.raises(error, match=re.escape(message)):
        ops.apgru_cell(**inputs)
