"""APGRU (paper §3.4.1): a GRU whose update gate also reads the behaviour property p_t.

    r_t = σ(W_ir x_t + b_ir + W_hr h + b_hr)
    z_t = σ(W_iz x_t + b_iz + P_z p_t + W_hz h + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h + b_hn))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h

Weights follow `torch.nn.GRU` (gate blocks r, z, n), so with P_z = 0 this is nn.GRU on packed input. At
padded steps (t ≥ length) h carries over and the output is zero; values of x, prop and the output's
gradient at padded steps reach nothing (like nn.GRU on a PackedSequence, which never reads them).

The compiled and Triton sequence ops are length-aware: they sort the rows by length once (`pack_plan`)
and run each step's GEMM and gates over the rows still running only, the input projections and weight
gradients over the real (packed) steps only.

This module holds the reference (plain PyTorch, the ground truth), the fake kernels and autograd of
the registered ops (`marn::` compiled, `marn_triton::` Triton; same schemas), and the public functions
that pick one through `marn.ops.backend`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from marn.ops import backend, checks


def input_gates(
    x: torch.Tensor, prop: torch.Tensor, weight_ih: torch.Tensor, bias_ih: torch.Tensor, weight_pz: torch.Tensor
) -> torch.Tensor:
    """x W_ihᵀ + b_ih with P_z p added to the update-gate block: everything a step takes from its inputs."""
    reset, update, new = F.linear(x, weight_ih, bias_ih).chunk(3, dim=-1)
    return torch.cat([reset, update + F.linear(prop, weight_pz), new], dim=-1)


def _gru_step(gates_in: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor) -> torch.Tensor:
    in_r, in_z, in_n = gates_in.chunk(3, dim=-1)
    hid_r, hid_z, hid_n = F.linear(h, weight_hh, bias_hh).chunk(3, dim=-1)
    r = torch.sigmoid(in_r + hid_r)
    z = torch.sigmoid(in_z + hid_z)
    n = torch.tanh(in_n + r * hid_n)
    return (1 - z) * n + z * h


def apgru_cell_reference(x, h, prop, weight_ih, weight_hh, bias_ih, bias_hh, weight_pz) -> torch.Tensor:
    return _gru_step(input_gates(x, prop, weight_ih, bias_ih, weight_pz), h, weight_hh, bias_hh)


def apgru_sequence_reference(
    x, prop, lengths, h0, weight_ih, weight_hh, bias_ih, bias_hh, weight_pz
) -> tuple[torch.Tensor, torch.Tensor]:
    # Padded inputs are replaced before the projection, so that NaN or inf there reaches no output
    # or gradient (torch.where passes no gradient to the side it did not pick).
    real = (torch.arange(x.shape[1], device=lengths.device) < lengths.unsqueeze(1)).unsqueeze(2)
    x, prop = torch.where(real, x, 0.0), torch.where(real, prop, 0.0)
    gates_in = input_gates(x, prop, weight_ih, bias_ih, weight_pz)
    h = h0
    outputs = []
    for t in range(x.shape[1]):
        h_new = _gru_step(gates_in[:, t], h, weight_hh, bias_hh)
        valid = real[:, t]
        h = torch.where(valid, h_new, h)
        outputs.append(torch.where(valid, h_new, 0.0))
    out = torch.stack(outputs, dim=1) if outputs else x.new_zeros(x.shape[0], 0, h0.shape[1])
    return out, h


class PackPlan(NamedTuple):
    """The row order of the length-aware sequence ops (PackedSequence's, see csrc/schema.cpp).

    Sorted rank i is batch row order[i] (lengths descending, ties by batch row); at step t ranks
    [0, batch_sizes[t]) are running and own packed rows [offsets[t], offsets[t] + batch_sizes[t]);
    packed row p is padded position packed_index[p] = b * time + t.
    """

    order: torch.Tensor  # [B] int64, on the lengths' device
    batch_sizes: list[int]
    offsets: list[int]
    packed_index: torch.Tensor  # [sum of lengths] int64, on the lengths' device
    total: int


def pack_plan(lengths: torch.Tensor, time: int) -> PackPlan:
    """The plan for lengths [B] int64 (already checked to lie in [0, time]); one device-to-host copy."""
    host = lengths.cpu()
    order = torch.sort(host, descending=True, stable=True).indices
    sorted_lengths = host[order]
    steps = int(sorted_lengths[0]) if len(host) else 0
    batch_sizes = (sorted_lengths.unsqueeze(0) > torch.arange(steps).unsqueeze(1)).sum(1).tolist()
    offsets = [0]
    for size in batch_sizes[:-1]:
        offsets.append(offsets[-1] + size)
    packed_index = torch.cat(
        [order[:size] * time + t for t, size in enumerate(batch_sizes)] or [host.new_empty(0)]
    )
    return PackPlan(order.to(lengths.device), batch_sizes, offsets[: len(batch_sizes)],
                    packed_index.to(lengths.device), sum(batch_sizes))


# ---- fake kernels and autograd, shared by the compiled and the Triton ops ----


def _cell_fake(input_gates, h, weight_hh, bias_hh):
    checks.check_one_device("apgru_cell", {"input_gates": input_gates, "h": h, "weight_hh": weight_hh, "bias_hh": bias_hh})
    batch, hidden = h.shape
    return h.new_empty(batch, hidden), h.new_empty(batch, 4 * hidden)


def _cell_backward_fake(grad_h_new, h, weight_hh, workspace):
    checks.check_one_device("apgru_cell_backward", {"grad_h_new": grad_h_new, "h": h, "weight_hh": weight_hh, "workspace": workspace})
    batch, hidden = h.shape
    return (
        h.new_empty(batch, 3 * hidden),
        h.new_empty(batch, hidden),
        h.new_empty(3 * hidden, hidden),
        h.new_empty(3 * hidden),
    )


def _sequence_fake(x, prop, lengths, h0, weight_ih, weight_hh, bias_ih, bias_hh, weight_pz, save_workspace=True):
    checks.check_one_device("apgru_sequence", {
        "x": x, "prop": prop, "lengths": lengths, "h0": h0, "weight_ih": weight_ih, "weight_hh": weight_hh,
        "bias_ih": bias_ih, "bias_hh": bias_hh, "weight_pz": weight_pz,
    })
    batch, time, _ = x.shape
    hidden = h0.shape[1]
    workspace = x.new_empty(batch, time, 5 * hidden if save_workspace else 0)
    return x.new_empty(batch, time, hidden), h0.new_empty(batch, hidden), workspace


def _sequence_backward_fake(grad_out, grad_h_last, x, prop, lengths, h0, weight_ih, weight_hh, weight_pz, workspace):
    checks.check_one_device("apgru_sequence_backward", {
        "grad_out": grad_out, "grad_h_last": grad_h_last, "x": x, "prop": prop, "lengths": lengths, "h0": h0,
        "weight_ih": weight_ih, "weight_hh": weight_hh, "weight_pz": weight_pz, "workspace": workspace,
    })
    hidden = h0.shape[1]
    return (
        torch.empty_like(x),
        torch.empty_like(prop),
        torch.empty_like(h0),
        torch.empty_like(weight_ih),
        torch.empty_like(weight_hh),
        x.new_empty(3 * hidden),
        x.new_empty(3 * hidden),
        torch.empty_like(weight_pz),
    )


def _cell_setup_context(ctx, inputs, output):
    _, h, weight_hh, _ = inputs
    _, workspace = output
    ctx.save_for_backward(h, weight_hh, workspace)


def _sequence_setup_context(ctx, inputs, output):
    x, prop, lengths, h0, weight_ih, weight_hh, _, _, weight_pz, *_ = inputs
    _, _, workspace = output
    ctx.save_for_backward(x, prop, lengths, h0, weight_ih, weight_hh, weight_pz, workspace)
    # The workspace gets no gradient; materialised, it would be a [B, T, 5H] fill of zeros per backward.
    ctx.set_materialize_grads(False)


def _refuse_double_backward(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"{op}: the {op}_backward kernels have no derivative, so double backward (create_graph=True, then "
            "backward again) is not supported; select ops backend 'reference' for it"
        )

    return backward


def _register(namespace: str) -> None:
    namespace_ops = getattr(torch.ops, namespace)

    def cell_backward(ctx, grad_h_new, _grad_workspace):
        h, weight_hh, workspace = ctx.saved_tensors
        return namespace_ops.apgru_cell_backward(grad_h_new.contiguous(), h, weight_hh, workspace)

    def sequence_backward(ctx, grad_out, grad_h_last, _grad_workspace):
        x, prop, lengths, h0, weight_ih, weight_hh, weight_pz, workspace = ctx.saved_tensors
        grad_out = x.new_zeros(*x.shape[:2], h0.shape[1]) if grad_out is None else grad_out.contiguous()
        grad_h_last = torch.zeros_like(h0) if grad_h_last is None else grad_h_last.contiguous()
        grad_x, grad_prop, grad_h0, grad_wih, grad_whh, grad_bih, grad_bhh, grad_wpz = namespace_ops.apgru_sequence_backward(
            grad_out, grad_h_last, x, prop, lengths, h0, weight_ih, weight_hh, weight_pz, workspace
        )
        return grad_x, grad_prop, None, grad_h0, grad_wih, grad_whh, grad_bih, grad_bhh, grad_wpz, None

    for name, fake in (
        ("apgru_cell", _cell_fake),
        ("apgru_cell_backward", _cell_backward_fake),
        ("apgru_sequence", _sequence_fake),
        ("apgru_sequence_backward", _sequence_backward_fake),
    ):
        torch.library.register_fake(f"{namespace}::{name}", fake)
    torch.library.register_autograd(f"{namespace}::apgru_cell", cell_backward, setup_context=_cell_setup_context)
    torch.library.register_autograd(
        f"{namespace}::apgru_sequence", sequence_backward, setup_context=_sequence_setup_context
    )
    for op in ("apgru_cell", "apgru_sequence"):
        torch.library.register_autograd(f"{namespace}::{op}_backward", _refuse_double_backward(op))


@functools.cache
def library(namespace: str):
    """torch.ops.<namespace> with this op's fake kernels and autograd registered (marn or marn_triton)."""
    return backend.op_library(namespace, "marn.ops.triton_apgru", _register)


# ---- public functions ----


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run APGRU over x [B,T,I] with properties prop [B,T,P] (P may be 0) and lengths [B] int64 on x's device.

    h0 [B,H]; weight_ih [3H,I], weight_hh [3H,H], bias_ih [3H], bias_hh [3H], weight_pz [H,P].
    Returns out [B,T,H] (zero at padded steps) and h_last [B,H] (the state after each row's last step;
    h0 for length 0). Differentiable in every float input.
    """
    args = [t.contiguous() for t in (x, prop, lengths, h0, weight_ih, weight_hh, bias_ih, bias_hh, weight_pz)]
    x, prop, lengths, h0, weight_ih, weight_hh, bias_ih, bias_hh, weight_pz = args
    namespace = backend.prepared_namespace("apgru_sequence", __name__, x.device)
    if namespace is None:
        checks.check_apgru_sequence_inputs("apgru_sequence", *args)
        return apgru_sequence_reference(*args)
    # The workspace (gates saved for backward) costs as much memory traffic as the gates themselves.
    save_workspace = torch.is_grad_enabled() and any(t.requires_grad for t in args)
    out, h_last, _ = getattr(torch.ops, namespace).apgru_sequence(*args, save_workspace)
    return out, h_last


def apgru_cell(
    x: torch.Tensor,
    h: torch.Tensor,
    prop: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor,
    bias_hh: torch.Tensor,
    weight_pz: torch.Tensor,
) -> torch.Tensor:
    """One APGRU step: x [B,I], h [B,H], prop [B,P] -> h_new [B,H].

    The input projection (`input_gates`) is a plain GEMM outside the registered cell op; the op runs
    the hidden projection (one GEMM) and then the three gates and the state update in one fused pass.
    """
    args = [t.contiguous() for t in (x, h, prop, weight_ih, weight_hh, bias_ih, bias_hh, weight_pz)]
    checks.check_apgru_cell_inputs("apgru_cell", *args)
    x, h, prop, weight_ih, weight_hh, bias_ih, bias_hh, weight_pz = args
    namespace = backend.prepared_namespace("apgru_cell", __name__, x.device)
    if namespace is None:
        return apgru_cell_reference(*args)
    gates_in = input_gates(x, prop, weight_ih, bias_ih, weight_pz)
    h_new, _ = getattr(torch.ops, namespace).apgru_cell(gates_in, h, weight_hh, bias_hh)
    return h_new
