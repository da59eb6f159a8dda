// APGRU host code shared by the CPU and CUDA kernels: the recurrence loops (GEMMs through ATen)
// call a device's fused gate kernels once per step.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace marn {

// One step's gate computation. Rows with t >= lengths[b] are padding: h carries over, out and
// workspace rows are zeroed. Matrices are [rows, cols] with unit column stride; a row stride larger
// than cols is a time slice of a [B, T, cols] tensor.
struct GateForwardStep {
  at::Tensor input_gates;   // [B, 3H]
  at::Tensor hidden_gates;  // [B, 3H]: h_prev W_hh^T + b_hh
  at::Tensor h_prev;        // [B, H]
  at::Tensor lengths;       // [B] int64; undefined when every row is valid
  int64_t t = 0;
  at::Tensor h_next;     // [B, H], written
  at::Tensor out;        // [B, H], written; may be undefined
  at::Tensor workspace;  // [B, 4H], written: r, z, n, hidden n-gate; may be undefined
};

struct GateBackwardStep {
  at::Tensor grad_h;     // [B, H]: gradient reaching h_t from later steps and h_last
  at::Tensor grad_out;   // [B, H]: gradient of this step's output; may be undefined
  at::Tensor h_prev;     // [B, H]
  at::Tensor workspace;  // [B, 4H]
  at::Tensor lengths;    // [B] int64; undefined when every row is valid
  int64_t t = 0;
  at::Tensor grad_input_gates;   // [B, 3H], written
  at::Tensor grad_hidden_gates;  // [B, 3H], written
  at::Tensor grad_h_prev_direct;  // [B, H], written: the part of dL/dh_{t-1} not through W_hh
};

using GateForwardKernel = void (*)(const GateForwardStep&);
using GateBackwardKernel = void (*)(const GateBackwardStep&);

std::tuple<at::Tensor, at::Tensor> apgru_cell_forward(
    const at::Tensor& input_gates, const at::Tensor& h, const at::Tensor& weight_hh,
    const at::Tensor& bias_hh, GateForwardKernel gates);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> apgru_cell_backward(
    const at::Tensor& grad_h_new, const at::Tensor& h, const at::Tensor& weight_hh,
    const at::Tensor& workspace, GateBackwardKernel gates);

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
    const at::Tensor& out, const at::Tensor& workspace, GateBackwardKernel gates);

}  // namespace marn
