"""APGRU in Triton: fused gate kernels (forward and backward) behind the `marn_triton::` ops.

Same schemas and layout as the compiled `marn::` ops (see csrc/schema.cpp): the GEMMs (input
projection of the real steps, hidden projection per step, weight gradients) run through torch, each
step's gates and state update in one Triton kernel. The sequence op is length-aware like the
compiled one: rows sorted by length (`pack_plan`), step t over the prefix of rows still running,
projections and weight gradients over the packed real steps, so its work follows the sum of the
lengths and padded positions of x, prop and grad_out are never read. Fake kernels and autograd are
registered in `marn.ops.apgru`.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from marn.ops import checks
from marn.ops.apgru import pack_plan

# The interpreter costs ~3 ms per program whatever its size, so it gets few, large blocks; the GPU
# block is a common default that no measurement here has tuned.
BLOCK = 8192 if os.environ.get("TRITON_INTERPRET") == "1" else 1024


@triton.jit
def _tanh(v):
    # libdevice's tanh does not run in Triton's interpreter; this identity runs everywhere.
    return 2.0 * tl.sigmoid(2.0 * v) - 1.0


@triton.jit
def _apgru_gates_forward_kernel(
    input_gates_ptr, input_gates_row_stride, hidden_gates_ptr, h_prev_ptr, h_next_ptr, order_ptr,
    out_ptr, out_row_stride, workspace_ptr, workspace_row_stride, rows, hidden,
    HAS_OUT: tl.constexpr, HAS_WORKSPACE: tl.constexpr, BLOCK: tl.constexpr,
):
    # Row i of every operand is a running row: the sequence op passes the prefix of rows still running.
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = index < rows * hidden
    i = index // hidden
    j = index % hidden
    gi = input_gates_ptr + i * input_gates_row_stride + j
    gh = hidden_gates_ptr + i * 3 * hidden + j
    h_prev = tl.load(h_prev_ptr + i * hidden + j, mask=mask, other=0.0)
    r = tl.sigmoid(tl.load(gi, mask=mask, other=0.0) + tl.load(gh, mask=mask, other=0.0))
    z = tl.sigmoid(tl.load(gi + hidden, mask=mask, other=0.0) + tl.load(gh + hidden, mask=mask, other=0.0))
    hidden_n = tl.load(gh + 2 * hidden, mask=mask, other=0.0)
    n = _tanh(tl.load(gi + 2 * hidden, mask=mask, other=0.0) + r * hidden_n)
    h = (1.0 - z) * n + z * h_prev
    tl.store(h_next_ptr + i * hidden + j, h, mask=mask)
    if HAS_OUT:
        # Sorted rank i is batch row order[i]; out_ptr already points at this step.
        b = tl.load(order_ptr + i, mask=mask, other=0)
        tl.store(out_ptr + b * out_row_stride + j, h, mask=mask)
    if HAS_WORKSPACE:
        ws = workspace_ptr + i * workspace_row_stride + j
        tl.store(ws, r, mask=mask)
        tl.store(ws + hidden, z, mask=mask)
        tl.store(ws + 2 * hidden, n, mask=mask)
        tl.store(ws + 3 * hidden, hidden_n, mask=mask)


@triton.jit
def _apgru_gates_backward_kernel(
    grad_h_ptr, order_ptr, grad_out_ptr, grad_out_row_stride, h_prev_ptr, h_prev_row_stride, workspace_ptr,
    workspace_row_stride, grad_input_gates_ptr, grad_hidden_gates_ptr, grad_direct_ptr, rows, hidden,
    HAS_GRAD_OUT: tl.constexpr, BLOCK: tl.constexpr,
):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = index < rows * hidden
    i = index // hidden
    j = index % hidden
    dh = tl.load(grad_h_ptr + i * hidden + j, mask=mask, other=0.0)
    if HAS_GRAD_OUT:
        b = tl.load(order_ptr + i, mask=mask, other=0)
        dh += tl.load(grad_out_ptr + b * grad_out_row_stride + j, mask=mask, other=0.0)
    ws = workspace_ptr + i * workspace_row_stride + j
    r = tl.load(ws, mask=mask, other=0.0)
    z = tl.load(ws + hidden, mask=mask, other=0.0)
    n = tl.load(ws + 2 * hidden, mask=mask, other=0.0)
    hidden_n = tl.load(ws + 3 * hidden, mask=mask, other=0.0)
    h_prev = tl.load(h_prev_ptr + i * h_prev_row_stride + j, mask=mask, other=0.0)
    grad_n = dh * (1.0 - z) * (1.0 - n * n)
    grad_z = dh * (h_prev - n) * z * (1.0 - z)
    grad_r = grad_n * hidden_n * r * (1.0 - r)
    gi = grad_input_gates_ptr + i * 3 * hidden + j
    gh = grad_hidden_gates_ptr + i * 3 * hidden + j
    tl.store(gi, grad_r, mask=mask)
    tl.store(gi + hidden, grad_z, mask=mask)
    tl.store(gi + 2 * hidden, grad_n, mask=mask)
    tl.store(gh, grad_r, mask=mask)
    tl.store(gh + hidden, grad_z, mask=mask)
    tl.store(gh + 2 * hidden, grad_n * r, mask=mask)
    tl.store(grad_direct_ptr + i * hidden + j, dh * z, mask=mask)


def _gates_forward(input_gates, hidden_gates, h_prev, h_next, order=None, out=None, workspace=None) -> None:
    """One step over the rows of h_prev [rows, H] (h_next may be h_prev: each element is read, then written)."""
    rows, hidden = h_prev.shape
    if rows * hidden == 0:
        return
    _apgru_gates_forward_kernel[(triton.cdiv(rows * hidden, BLOCK),)](
        input_gates, input_gates.stride(0), hidden_gates, h_prev, h_next,
        order if order is not None else h_next, out if out is not None else h_next, out.stride(0) if out is not None else 0,
        workspace if workspace is not None else h_next, workspace.stride(0) if workspace is not None else 0,
        rows, hidden, HAS_OUT=out is not None, HAS_WORKSPACE=workspace is not None, BLOCK=BLOCK,
    )


def _gates_backward(
    grad_h, h_prev, workspace, grad_input_gates, grad_hidden_gates, grad_direct, order=None, grad_out=None
) -> None:
    """The gate gradients of one step over the rows of grad_h [rows, H] (grad_direct may be grad_h)."""
    rows, hidden = grad_h.shape
    if rows * hidden == 0:
        return
    _apgru_gates_backward_kernel[(triton.cdiv(rows * hidden, BLOCK),)](
        grad_h, order if order is not None else grad_h, grad_out if grad_out is not None else grad_h,
        grad_out.stride(0) if grad_out is not None else 0, h_prev, h_prev.stride(0), workspace, workspace.stride(0),
        grad_input_gates, grad_hidden_gates, grad_direct, rows, hidden, HAS_GRAD_OUT=grad_out is not None, BLOCK=BLOCK,
    )


@torch.library.custom_op("marn_triton::apgru_cell", mutates_args=())
def apgru_cell(
    input_gates: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    checks.check_apgru_cell_args("marn_triton::apgru_cell", input_gates, h, weight_hh, bias_hh)
    batch, hidden = h.shape
    h_new = torch.empty_like(h)
    workspace = h.new_empty(batch, 4 * hidden)
    _gates_forward(input_gates, torch.addmm(bias_hh, h, weight_hh.t()), h, h_new, workspace=workspace)
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
    _gates_backward(grad_h_new, h, workspace, grad_input_gates, grad_hidden_gates, grad_direct)
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
    checks.check_apgru_sequence_inputs(
        "marn_triton::apgru_sequence", x, prop, lengths, h0, weight_ih, weight_hh, bias_ih, bias_hh, weight_pz
    )
    batch, time, inputs = x.shape
    hidden, props = h0.shape[1], prop.shape[2]
    plan = pack_plan(lengths, time)
    out = x.new_zeros(batch, time, hidden)
    workspace = x.new_empty(batch, time, 5 * hidden if save_workspace else 0)
    packed_workspace = workspace.view(batch * time, workspace.shape[2])
    packed_workspace[plan.total :].zero_()
    state = h0[plan.order]
    if plan.total:
        # Input projections of the real steps only, in one GEMM; the property enters the update gate only.
        gates_in = torch.addmm(bias_ih, x.view(batch * time, inputs)[plan.packed_index], weight_ih.t())
        if props:
            gates_in[:, hidden : 2 * hidden].addmm_(prop.view(batch * time, props)[plan.packed_index], weight_pz.t())
        hidden_gates = x.new_empty(batch, 3 * hidden)
        for t, (rows, first) in enumerate(zip(plan.batch_sizes, plan.offsets)):
            running = state[:rows]
            torch.addmm(bias_hh, running, weight_hh.t(), out=hidden_gates[:rows])
            step_workspace = packed_workspace[first : first + rows] if save_workspace else None
            if save_workspace:
                step_workspace[:, 4 * hidden :].copy_(running)
            _gates_forward(
                gates_in[first : first + rows], hidden_gates, running, running, plan.order, out[:, t], step_workspace
            )
    h_last = torch.empty_like(h0)
    h_last[plan.order] = state
    return out, h_last, workspace


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
    workspace: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    op = "marn_triton::apgru_sequence_backward"
    batch, time, inputs = x.shape
    hidden, props = h0.shape[1], prop.shape[2]
    checks.check_apgru_sequence_args(op, x, prop, lengths, h0, weight_ih, weight_hh, weight_pz)
    checks.check_float_group(op, {"x": x, "grad_out": grad_out, "grad_h_last": grad_h_last, "workspace": workspace})
    checks.check_shape(op, "grad_out", grad_out, [batch, time, hidden], "[batch, time, hidden]")
    checks.check_shape(op, "grad_h_last", grad_h_last, [batch, hidden], "[batch, hidden]")
    checks.check_shape(op, "workspace", workspace, [batch, time, 5 * hidden], "[batch, time, 5*hidden]")
    plan = pack_plan(lengths, time)
    packed_workspace = workspace.view(batch * time, 5 * hidden)
    grad_input_gates = x.new_empty(plan.total, 3 * hidden)
    grad_hidden_gates = x.new_empty(plan.total, 3 * hidden)
    # The carried gradient of each sorted row; a row that has finished passes it through unchanged.
    grad_h = grad_h_last[plan.order]
    for t in range(len(plan.batch_sizes) - 1, -1, -1):
        rows, first = plan.batch_sizes[t], plan.offsets[t]
        running = grad_h[:rows]
        step_workspace = packed_workspace[first : first + rows]
        step_grad_hidden_gates = grad_hidden_gates[first : first + rows]
        _gates_backward(
            running, step_workspace[:, 4 * hidden :], step_workspace, grad_input_gates[first : first + rows],
            step_grad_hidden_gates, running, plan.order, grad_out[:, t],
        )
        running.addmm_(step_grad_hidden_gates, weight_hh)
    grad_h0 = torch.empty_like(h0)
    grad_h0[plan.order] = grad_h
    # Input and weight gradients over the real steps only; padded positions get zero.
    grad_update_gate = grad_input_gates[:, hidden : 2 * hidden]
    x_packed = x.view(batch * time, inputs)[plan.packed_index]
    prop_packed = prop.view(batch * time, props)[plan.packed_index]
    grad_x = x.new_zeros(batch * time, inputs).index_copy_(0, plan.packed_index, grad_input_gates.mm(weight_ih))
    grad_prop = x.new_zeros(batch * time, props).index_copy_(0, plan.packed_index, grad_update_gate.mm(weight_pz))
    return (
        grad_x.view(batch, time, inputs),
        grad_prop.view(batch, time, props),
        grad_h0,
        grad_input_gates.t().mm(x_packed),
        grad_hidden_gates.t().mm(packed_workspace[: plan.total, 4 * hidden :]),
        grad_input_gates.sum(0),
        grad_hidden_gates.sum(0),
        grad_update_gate.t().mm(prop_packed),
    )
