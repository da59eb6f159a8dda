"""APGRU in Triton: fused gate kernels (forward and backward) behind the `marn_triton::` ops.

Same schemas and layout as the compiled `marn::` ops (see csrc/schema.cpp): the GEMMs (input
projection of all steps, hidden projection per step, weight gradients) run through torch, each
step's gates and state update in one Triton kernel. Fake kernels and autograd are registered in
`marn.ops.apgru`.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from marn.ops import checks

# The interpreter costs ~3 ms per program whatever its size, so it gets few, large blocks; the GPU
# block is a common default that no measurement here has tuned.
BLOCK = 8192 if os.environ.get("TRITON_INTERPRET") == "1" else 1024


@triton.jit
def _tanh(v):
    # libdevice's tanh does not run in Triton's interpreter; this identity runs everywhere.
    return 2.0 * tl.sigmoid(2.0 * v) - 1.0


@triton.jit(do_not_specialize=["t"])
def _apgru_gates_forward_kernel(
    input_gates_ptr, input_gates_row_stride, hidden_gates_ptr, h_prev_ptr, lengths_ptr, t,
    h_next_ptr, out_ptr, out_row_stride, workspace_ptr, workspace_row_stride, batch, hidden,
    HAS_LENGTHS: tl.constexpr, HAS_OUT: tl.constexpr, HAS_WORKSPACE: tl.constexpr, BLOCK: tl.constexpr,
):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = index < batch * hidden
    b = index // hidden
    j = index % hidden
    if HAS_LENGTHS:
        valid = mask & (t < tl.load(lengths_ptr + b, mask=mask, other=0))
    else:
        valid = mask
    gi = input_gates_ptr + b * input_gates_row_stride + j
    gh = hidden_gates_ptr + b * 3 * hidden + j
    h_prev = tl.load(h_prev_ptr + b * hidden + j, mask=mask, other=0.0)
    r = tl.sigmoid(tl.load(gi, mask=valid, other=0.0) + tl.load(gh, mask=valid, other=0.0))
    z = tl.sigmoid(tl.load(gi + hidden, mask=valid, other=0.0) + tl.load(gh + hidden, mask=valid, other=0.0))
    hidden_n = tl.load(gh + 2 * hidden, mask=valid, other=0.0)
    n = _tanh(tl.load(gi + 2 * hidden, mask=valid, other=0.0) + r * hidden_n)
    h = (1.0 - z) * n + z * h_prev
    tl.store(h_next_ptr + b * hidden + j, tl.where(valid, h, h_prev), mask=mask)
    if HAS_OUT:
        tl.store(out_ptr + b * out_row_stride + j, tl.where(valid, h, 0.0), mask=mask)
    if HAS_WORKSPACE:
        ws = workspace_ptr + b * workspace_row_stride + j
        tl.store(ws, tl.where(valid, r, 0.0), mask=mask)
        tl.store(ws + hidden, tl.where(valid, z, 0.0), mask=mask)
        tl.store(ws + 2 * hidden, tl.where(valid, n, 0.0), mask=mask)
        tl.store(ws + 3 * hidden, tl.where(valid, hidden_n, 0.0), mask=mask)


@triton.jit(do_not_specialize=["t"])
def _apgru_gates_backward_kernel(
    grad_h_ptr, grad_out_ptr, grad_out_row_stride, h_prev_ptr, h_prev_row_stride, workspace_ptr,
    workspace_row_stride, lengths_ptr, t, grad_input_gates_ptr, grad_hidden_gates_ptr, gates_row_stride,
    grad_direct_ptr, batch, hidden,
    HAS_LENGTHS: tl.constexpr, HAS_GRAD_OUT: tl.constexpr, BLOCK: tl.constexpr,
):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = index < batch * hidden
    b = index // hidden
    j = index % hidden
    if HAS_LENGTHS:
        valid = mask & (t < tl.load(lengths_ptr + b, mask=mask, other=0))
    else:
        valid = mask
    carried = tl.load(grad_h_ptr + b * hidden + j, mask=mask, other=0.0)
    dh = carried
    if HAS_GRAD_OUT:
        dh += tl.load(grad_out_ptr + b * grad_out_row_stride + j, mask=valid, other=0.0)
    ws = workspace_ptr + b * workspace_row_stride + j
    r = tl.load(ws, mask=valid, other=0.0)
    z = tl.load(ws + hidden, mask=valid, other=0.0)
    n = tl.load(ws + 2 * hidden, mask=valid, other=0.0)
    hidden_n = tl.load(ws + 3 * hidden, mask=valid, other=0.0)
    h_prev = tl.load(h_prev_ptr + b * h_prev_row_stride + j, mask=valid, other=0.0)
    grad_n = tl.where(valid, dh * (1.0 - z) * (1.0 - n * n), 0.0)
    grad_z = tl.where(valid, dh * (h_prev - n) * z * (1.0 - z), 0.0)
    grad_r = tl.where(valid, grad_n * hidden_n * r * (1.0 - r), 0.0)
    gi = grad_input_gates_ptr + b * gates_row_stride + j
    gh = grad_hidden_gates_ptr + b * gates_row_stride + j
    tl.store(gi, grad_r, mask=mask)
    tl.store(gi + hidden, grad_z, mask=mask)
    tl.store(gi + 2 * hidden, grad_n, mask=mask)
    tl.store(gh, grad_r, mask=mask)
    tl.store(gh + hidden, grad_z, mask=mask)
    tl.store(gh + 2 * hidden, grad_n * r, mask=mask)
    # A padded step passes the carried gradient through; its output is a constant zero.
    tl.store(grad_direct_ptr + b * hidden + j, tl.where(valid, dh * z, carried), mask=mask)


def _gates_forward(input_gates, hidden_gates, h_prev, lengths, t, h_next, out, workspace) -> None:
    batch, hidden = h_prev.shape
    if batch * hidden == 0:
        return
    _apgru_gates_forward_kernel[(triton.cdiv(batch * hidden, BLOCK),)](
        input_gates, input_gates.stride(0), hidden_gates, h_prev,
        lengths if lengths is not None else h_prev, t,
        h_next, out if out is not None else h_next, out.stride(0) if out is not None else 0,
        workspace if workspace is not None else h_next, workspace.stride(0) if workspace is not None else 0,
        batch, hidden,
        HAS_LENGTHS=lengths is not None, HAS_OUT=out is not None, HAS_WORKSPACE=workspace is not None, BLOCK=BLOCK,
    )


def _gates_backward(grad_h, grad_out, h_prev, workspace, lengths, t, grad_input_gates, grad_hidden_gates, grad_direct) -> None:
    batch, hidden = grad_h.shape
    if batch * hidden == 0:
        return
    _apgru_gates_backward_kernel[(triton.cdiv(batch * hidden, BLOCK),)](
        grad_h, grad_out if grad_out is not None else grad_h, grad_out.stride(0) if grad_out is not None else 0,
        h_prev, h_prev.stride(0), workspace, workspace.stride(0),
        lengths if lengths is not None else grad_h, t,
        grad_input_gates, grad_hidden_gates, grad_input_gates.stride(0), grad_direct, batch, hidden,
        HAS_LENGTHS=lengths is not None, HAS_GRAD_OUT=grad_out is not None, BLOCK=BLOCK,
    )


@torch.library.custom_op("marn_triton::apgru_cell", mutates_args=())
def apgru_cell(
    input_gates: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    checks.check_apgru_cell_args("marn_triton::apgru_cell", input_gates, h, weight_hh, bias_hh)
    batch, hidden = h.shape
    h_new = torch.empty_like(h)
    workspace = h.new_empty(batch, 4 * hidden)
    _gates_forward(input_gates, torch.addmm(bias_hh, h, weight_hh.t()), h, None, 0, h_new, None, workspace)
    return h_new, workspace


@torch.library.custom_op("marn_triton::apgru_cell_backward", mutates_args=())
def apgru_cell_backward(
    grad_h_new: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, workspace: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    op = "marn_triton::apgru_cell_backward"
    checks.check_dim(op, "h", h, 2, "[batch, hidden]")
    batch, hidden = h.shape
    checks.check_float_group(op, {"grad_h_new": grad_h_new, "h": h, "weight_hh": weight_hh, "workspace": workspace})
    checks.check_shape(op, "grad_h_new", grad_h_new, [batch, hidden], "[batch, hidden]")
    checks.check_shape(op, "weight_hh", weight_hh, [3 * hidden, hidden], "[3*hidden, hidden]")
    checks.check_shape(op, "workspace", workspace, [batch, 4 * hidden], "[batch, 4*hidden]")
    grad_input_gates = h.new_empty(batch, 3 * hidden)
    grad_hidden_gates = h.new_empty(batch, 3 * hidden)
    grad_direct = torch.empty_like(h)
    _gates_backward(grad_h_new, None, h, workspace, None, 0, grad_input_gates, grad_hidden_gates, grad_direct)
    return (
        grad_input_gates,
        torch.addmm(grad_direct, grad_hidden_gates, weight_hh),
        grad_hidden_gates.t().mm(h),
        grad_hidden_gates.sum(0),
    )


@torch.library.custom_op("marn_triton::apgru_sequence", mutates_args=())
def apgru_sequence(
    x: torch.Tensor,
    prop: torch.Tensor,
    lengths: torch.Tensor,
    h0: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor,
    bias_hh: torch.Tensor,
    weight_pz: torch.Tensor,
    save_workspace: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    op = "marn_triton::apgru_sequence"
    checks.check_apgru_sequence_args(op, x, prop, lengths, h0, weight_ih, weight_hh, weight_pz)
    checks.check_apgru_biases(op, x, bias_ih, bias_hh, h0.shape[1])
    batch, time, inputs = x.shape
    hidden, props = h0.shape[1], prop.shape[2]
    steps = int(lengths.max()) if batch else 0
    out = x.new_empty(batch, time, hidden)
    workspace = x.new_empty(batch, time, 4 * hidden if save_workspace else 0)
    out[:, steps:].zero_()
    workspace[:, steps:].zero_()
    h = h0.clone()
    if steps == 0:
        return out, h, workspace
    # Input projections of every step in one GEMM; the property enters the update-gate block only.
    gates_in = torch.addmm(bias_ih, x.view(batch * time, inputs), weight_ih.t())
    if props:
        gates_in[:, hidden : 2 * hidden].addmm_(prop.view(batch * time, props), weight_pz.t())
    gates_in = gates_in.view(batch, time, 3 * hidden)
    hidden_gates = x.new_empty(batch, 3 * hidden)
    h_next = torch.empty_like(h)
    for t in range(steps):
        torch.addmm(bias_hh, h, weight_hh.t(), out=hidden_gates)
        _gates_forward(
            gates_in[:, t], hidden_gates, h, lengths, t, h_next, out[:, t], workspace[:, t] if save_workspace else None
        )
        h, h_next = h_next, h
    return out, h, workspace


@torch.library.custom_op("marn_triton::apgru_sequence_backward", mutates_args=())
def apgru_sequence_backward(
    grad_out: torch.Tensor,
    grad_h_last: torch.Tensor,
    x: torch.Tensor,
    prop: torch.Tensor,
    lengths: torch.Tensor,
    h0: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    weight_pz: torch.Tensor,
    out: torch.Tensor,
    workspace: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    op = "marn_triton::apgru_sequence_backward"
    batch, time, inputs = x.shape
    hidden, props = h0.shape[1], prop.shape[2]
    checks.check_apgru_sequence_args(op, x, prop, lengths, h0, weight_ih, weight_hh, weight_pz)
    checks.check_float_group(op, {"x": x, "grad_out": grad_out, "grad_h_last": grad_h_last, "out": out, "workspace": workspace})
    checks.check_shape(op, "grad_out", grad_out, [batch, time, hidden], "[batch, time, hidden]")
    checks.check_shape(op, "grad_h_last", grad_h_last, [batch, hidden], "[batch, hidden]")
    checks.check_shape(op, "out", out, [batch, time, hidden], "[batch, time, hidden]")
    checks.check_shape(op, "workspace", workspace, [batch, time, 4 * hidden], "[batch, time, 4*hidden]")
    rows = batch * time
    steps = int(lengths.max()) if batch else 0
    grad_input_gates = x.new_empty(batch, time, 3 * hidden)
    grad_hidden_gates = x.new_empty(batch, time, 3 * hidden)
    # The step kernels write every row of steps [0, steps); later steps carry no gradient.
    grad_input_gates[:, steps:].zero_()
    grad_hidden_gates[:, steps:].zero_()
    grad_h = grad_h_last.clone()
    grad_direct = torch.empty_like(grad_h)
    for t in range(steps - 1, -1, -1):
        # A step t < length[b] follows only valid steps, so h_{t-1} is the previous output.
        h_prev = h0 if t == 0 else out[:, t - 1]
        _gates_backward(
            grad_h, grad_out[:, t], h_prev, workspace[:, t], lengths, t,
            grad_input_gates[:, t], grad_hidden_gates[:, t], grad_direct,
        )
        torch.addmm(grad_direct, grad_hidden_gates[:, t], weight_hh, out=grad_h)
    grad_gi = grad_input_gates.view(rows, 3 * hidden)
    grad_gh = grad_hidden_gates.view(rows, 3 * hidden)
    grad_update_gate = grad_gi[:, hidden : 2 * hidden]
    h_prev_all = torch.cat([h0.unsqueeze(1), out[:, :-1]], dim=1).view(rows, hidden) if time else out.view(0, hidden)
    return (
        grad_gi.mm(weight_ih).view(batch, time, inputs),
        grad_update_gate.mm(weight_pz).view(batch, time, props),
        grad_h,
        grad_gi.t().mm(x.view(rows, inputs)),
        grad_gh.t().mm(h_prev_all),
        grad_gi.sum(0),
        grad_gh.sum(0),
        grad_update_gate.t().mm(prop.view(rows, props)),
    )
