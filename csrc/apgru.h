// APGRU host code shared by the CPU and CUDA kernels: the recurrence loops (GEMMs through ATen)
// call a device's fused gate kernels once per step.
//
// The sequence op is length-aware: rows are sorted by length once (descending, stable), so the rows
// still running at step t are a prefix of that order, and every GEMM and gate kernel covers only
// them. Packed rows (one per real step, PackedSequence's time-major order) hold the input
// projections, the workspace and the gate gradients; padded positions are never read.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace marn {

// One step's gate computation over n rows. Matrices are [n, cols] with unit column stride; a row
// stride larger than cols is a column block of a wider matrix.
struct GateForwardStep {
  at::Tensor input_gates;   // [n, 3H]
  at::Tensor hidden_gates;  // [n, 3H]: h_prev W_hh^T + b_hh
  at::Tensor h_prev;        // [n, H]
  at::Tensor h_next;        // [n, H], written; may be h_prev itself (each element is read first)
  at::Tensor workspace;     // [n, 4H], written: r, z, n, hidden n-gate; may be undefined
  // Row i's state is also written to out[order[i], t]; both undefined for a single cell.
  at::Tensor out;    // [B, T, H]
  at::Tensor order;  // [>= n] int64
  int64_t t = 0;
};

struct GateBackwardStep {
  at::Tensor grad_h;     // [n, H]: gradient reaching h_t from later steps and h_last
  at::Tensor h_prev;     // [n, H]
  at::Tensor workspace;  // [n, 4H]
  at::Tensor grad_input_gates;    // [n, 3H], written
  at::Tensor grad_hidden_gates;   // [n, 3H], written
  at::Tensor grad_h_prev_direct;  // [n, H], written: the part of dL/dh_{t-1} not through W_hh;
                                  // may be grad_h itself (each element is read first)
  // grad_out[order[i], t] is added to row i's grad_h; both undefined for a single cell.
  at::Tensor grad_out;  // [B, T, H]
  at::Tensor order;     // [>= n] int64
  int64_t t = 0;
};

using GateForwardKernel = void (*)(const GateForwardStep&);
using GateBackwardKernel = void (*)(const GateBackwardStep&);

std::tuple<at::Tensor, at::Tensor> apgru_cell_forward(
    const at::Tensor& input_gates, const at::Tensor& h, const at::Tensor& weight_hh,
    const at::Tensor& bias_hh, GateForwardKernel gates);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> apgru_cell_backward(
    const at::Tensor& grad_h_new, const at::Tensor& h, const at::Tensor& weight_hh,
    const at::Tensor& workspace, GateBackwardKernel gates);

// workspace: [B, T, 5H] (r, z, n, hidden n-gate, h_prev of packed row p in its row p, rows past
// the sum of lengths zero), or [B, T, 0] without save_workspace.
std::tuple<at::Tensor, at::Tensor, at::Tensor> apgru_sequence_forward(
    const at::Tensor& x, const at::Tensor& prop, const at::Tensor& lengths, const at::Tensor& h0,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& bias_ih,
    const at::Tensor& bias_hh, const at::Tensor& weight_pz, bool save_workspace,
    GateForwardKernel gates);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
apgru_sequence_backward(
    const at::Tensor& grad_out, const at::Tensor& grad_h_last, const at::Tensor& x,
    const at::Tensor& prop, const at::Tensor& lengths, const at::Tensor& h0,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& weight_pz,
    const at::Tensor& workspace, GateBackwardKernel gates);

}  // namespace marn
