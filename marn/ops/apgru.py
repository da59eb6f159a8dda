"""APGRU (paper §3.4.1): a GRU whose update gate also reads the behaviour property p_t.

    r_t = σ(W_ir x_t + b_ir + W_hr h + b_hr)
    z_t = σ(W_iz x_t + b_iz + P_z p_t + W_hz h + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h + b_hn))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h

Weights follow `torch.nn.GRU` (gate blocks r, z, n), so with P_z = 0 this is nn.GRU. At padded steps
(t ≥ length) h carries over and the output is zero.

This module holds the reference (plain PyTorch, the ground truth), the fake kernels and autograd of
the registered ops (`marn::` compiled, `marn_triton::` Triton; same schemas), and the public functions
that pick one through `marn.ops.backend`.
"""

from __future__ import annotations

import functools

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
    gates_in = input_gates(x, prop, weight_ih, bias_ih, weight_pz)
    h = h0
    outputs = []
    for t in range(x.shape[1]):
        h_new = _gru_step(gates_in[:, t], h, weight_hh, bias_hh)
        valid = (t < lengths).unsqueeze(1)
        h = torch.where(valid, h_new, h)
        outputs.append(torch.where(valid, h_new, torch.zeros_like(h_new)))
    out = torch.stack(outputs, dim=1) if outputs else x.new_zeros(x.shape[0], 0, h0.shape[1])
    return out, h


# ---- fake kernels and autograd, shared by the compiled and the Triton ops ----


def _cell_fake(input_gates, h, weight_hh, bias_hh):
    batch, hidden = h.shape
    return h.new_empty(batch, hidden), h.new_empty(batch, 4 * hidden)


def _cell_backward_fake(grad_h_new, h, weight_hh, workspace):
    batch, hidden = h.shape
    return (
        h.new_empty(batch, 3 * hidden),
        h.new_empty(batch, hidden),
        h.new_empty(3 * hidden, hidden),
        h.new_empty(3 * hidden),
    )


def _sequence_fake(x, prop, lengths, h0, weight_ih, weight_hh, bias_ih, bias_hh, weight_pz, save_workspace=True):
    batch, time, _ = x.shape
    hidden = h0.shape[1]
    workspace = x.new_empty(batch, time, 4 * hidden if save_workspace else 0)
    return x.new_empty(batch, time, hidden), h0.new_empty(batch, hidden), workspace


def _sequence_backward_fake(grad_out, grad_h_last, x, prop, lengths, h0, weight_ih, weight_hh, weight_pz, out, workspace):
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
    out, _, workspace = output
    ctx.save_for_backward(x, prop, lengths, h0, weight_ih, weight_hh, weight_pz, out, workspace)


def _register(namespace: str) -> None:
    namespace_ops = getattr(torch.ops, namespace)

    def cell_backward(ctx, grad_h_new, _grad_workspace):
        h, weight_hh, workspace = ctx.saved_tensors
        return namespace_ops.apgru_cell_backward(grad_h_new.contiguous(), h, weight_hh, workspace)

    def sequence_backward(ctx, grad_out, grad_h_last, _grad_workspace):
        x, prop, lengths, h0, weight_ih, weight_hh, weight_pz, out, workspace = ctx.saved_tensors
        grad_x, grad_prop, grad_h0, grad_wih, grad_whh, grad_bih, grad_bhh, grad_wpz = namespace_ops.apgru_sequence_backward(
            grad_out.contiguous(), grad_h_last.contiguous(), x, prop, lengths, h0, weight_ih, weight_hh, weight_pz, out, workspace
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
    namespace = backend.namespace_for(x.device)
    if namespace is None:
        checks.check_apgru_sequence_args("apgru_sequence", x, prop, lengths, h0, weight_ih, weight_hh, weight_pz)
        checks.check_apgru_biases("apgru_sequence", x, bias_ih, bias_hh, h0.shape[1])
        return apgru_sequence_reference(*args)
    # The workspace (gates saved for backward) costs as much memory traffic as the gates themselves.
    save_workspace = torch.is_grad_enabled() and any(t.requires_grad for t in args)
    out, h_last, _ = library(namespace).apgru_sequence(*args, save_workspace)
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
    namespace = backend.namespace_for(x.device)
    if namespace is None:
        return apgru_cell_reference(x, h, prop, weight_ih, weight_hh, bias_ih, bias_hh, weight_pz)
    gates_in = input_gates(x, prop, weight_ih, bias_ih, weight_pz)
    h_new, _ = library(namespace).apgru_cell(gates_in.contiguous(), h.contiguous(), weight_hh.contiguous(), bias_hh.contiguous())
    return h_new
