// APGRU: input checks, the recurrence (shared with CUDA) and the CPU fused gate kernels.
//
// Per step, with gi = x W_ih^T + b_ih + [0; P_z p; 0] and gh = h W_hh^T + b_hh in r, z, n blocks:
//   r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r * gh_n),
//   h' = (1 - z) * n + z * h.
#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY DEFAULT  // the portable vector code when the build names no instruction set
#endif

#include "apgru.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/stack.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"

namespace marn {
namespace {

constexpr const char* kCell = "marn::apgru_cell";
constexpr const char* kCellBackward = "marn::apgru_cell_backward";
constexpr const char* kSequence = "marn::apgru_sequence";
constexpr const char* kSequenceBackward = "marn::apgru_sequence_backward";

// Returns the longest length: the recurrence stops there.
int64_t check_lengths(const char* op, const at::Tensor& lengths, int64_t batch, int64_t time,
                      const at::Device& device) {
  check_shape(op, "lengths", lengths, {batch}, "[batch]");
  check_dtype(op, "lengths", lengths, at::kLong);
  check_device(op, "lengths", lengths, device);
  check_contiguous(op, "lengths", lengths);
  if (batch == 0) return 0;
  const auto [shortest, longest] = lengths.aminmax();
  const at::Tensor extremes = at::stack({shortest, longest}).cpu();  // one device-to-host copy
  const int64_t min_length = extremes[0].item<int64_t>();
  const int64_t max_length = extremes[1].item<int64_t>();
  TORCH_CHECK_INDEX(min_length >= 0 && max_length <= time, op,
                    ": lengths must lie in [0, time] = [0, ", time, "], got values in [",
                    min_length, ", ", max_length, "]");
  return max_length;
}

struct SequenceSizes {
  int64_t batch, time, input, hidden, property;
  int64_t steps;  // the longest length
};

SequenceSizes check_sequence_inputs(const char* op, const at::Tensor& x, const at::Tensor& prop,
                                    const at::Tensor& lengths, const at::Tensor& h0,
                                    const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                    const at::Tensor& weight_pz) {
  check_dim(op, "x", x, 3, "[batch, time, input]");
  check_dim(op, "h0", h0, 2, "[batch, hidden]");
  check_dim(op, "prop", prop, 3, "[batch, time, property]");
  SequenceSizes s{x.size(0), x.size(1), x.size(2), h0.size(1), prop.size(2), 0};
  check_float_group(op, {{"x", &x},
                         {"prop", &prop},
                         {"h0", &h0},
                         {"weight_ih", &weight_ih},
                         {"weight_hh", &weight_hh},
                         {"weight_pz", &weight_pz}});
  check_shape(op, "h0", h0, {s.batch, s.hidden}, "[batch, hidden]");
  check_shape(op, "prop", prop, {s.batch, s.time, s.property}, "[batch, time, property]");
  check_shape(op, "weight_ih", weight_ih, {3 * s.hidden, s.input}, "[3*hidden, input]");
  check_shape(op, "weight_hh", weight_hh, {3 * s.hidden, s.hidden}, "[3*hidden, hidden]");
  check_shape(op, "weight_pz", weight_pz, {s.hidden, s.property}, "[hidden, property]");
  s.steps = check_lengths(op, lengths, s.batch, s.time, x.device());
  return s;
}

// Rows per parallel chunk: below ~4k elements a thread hand-off costs more than the gate math.
int64_t row_grain(int64_t hidden) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(hidden, 1)); }

template <typename scalar_t>
at::vec::Vectorized<scalar_t> sigmoid(const at::vec::Vectorized<scalar_t>& v) {
  using Vec = at::vec::Vectorized<scalar_t>;
  return Vec(scalar_t(1)) / (Vec(scalar_t(1)) + v.neg().exp());
}

template <typename scalar_t>
void gates_forward_cpu_typed(const GateForwardStep& s) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t batch = s.h_prev.size(0);
  const int64_t hidden = s.h_prev.size(1);
  const int64_t* lengths = s.lengths.defined() ? s.lengths.const_data_ptr<int64_t>() : nullptr;
  at::parallel_for(0, batch, row_grain(hidden), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* gi = s.input_gates.const_data_ptr<scalar_t>() + b * s.input_gates.stride(0);
      const scalar_t* gh = s.hidden_gates.const_data_ptr<scalar_t>() + b * s.hidden_gates.stride(0);
      const scalar_t* h_prev = s.h_prev.const_data_ptr<scalar_t>() + b * s.h_prev.stride(0);
      scalar_t* h_next = s.h_next.mutable_data_ptr<scalar_t>() + b * s.h_next.stride(0);
      scalar_t* out = s.out.defined() ? s.out.mutable_data_ptr<scalar_t>() + b * s.out.stride(0)
                                      : nullptr;
      scalar_t* ws = s.workspace.defined()
                         ? s.workspace.mutable_data_ptr<scalar_t>() + b * s.workspace.stride(0)
                         : nullptr;
      if (lengths != nullptr && s.t >= lengths[b]) {
        std::copy(h_prev, h_prev + hidden, h_next);
        if (out != nullptr) std::fill(out, out + hidden, scalar_t(0));
        if (ws != nullptr) std::fill(ws, ws + 4 * hidden, scalar_t(0));
        continue;
      }
      for (int64_t j = 0; j < hidden; j += Vec::size()) {
        const int64_t count = std::min<int64_t>(Vec::size(), hidden - j);
        const Vec r = sigmoid(Vec::loadu(gi + j, count) + Vec::loadu(gh + j, count));
        const Vec z = sigmoid(Vec::loadu(gi + hidden + j, count) +
                              Vec::loadu(gh + hidden + j, count));
        const Vec hidden_n = Vec::loadu(gh + 2 * hidden + j, count);
        const Vec n = (Vec::loadu(gi + 2 * hidden + j, count) + r * hidden_n).tanh();
        const Vec h = (Vec(scalar_t(1)) - z) * n + z * Vec::loadu(h_prev + j, count);
        h.store(h_next + j, count);
        if (out != nullptr) h.store(out + j, count);
        if (ws != nullptr) {
          r.store(ws + j, count);
          z.store(ws + hidden + j, count);
          n.store(ws + 2 * hidden + j, count);
          hidden_n.store(ws + 3 * hidden + j, count);
        }
      }
    }
  });
}

template <typename scalar_t>
void gates_backward_cpu_typed(const GateBackwardStep& s) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t batch = s.h_prev.size(0);
  const int64_t hidden = s.h_prev.size(1);
  const int64_t* lengths = s.lengths.defined() ? s.lengths.const_data_ptr<int64_t>() : nullptr;
  at::parallel_for(0, batch, row_grain(hidden), [&](int64_t begin, int64_t end) {
    const Vec one(scalar_t(1));
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* grad_h = s.grad_h.const_data_ptr<scalar_t>() + b * s.grad_h.stride(0);
      const scalar_t* grad_out =
          s.grad_out.defined() ? s.grad_out.const_data_ptr<scalar_t>() + b * s.grad_out.stride(0)
                               : nullptr;
      const scalar_t* h_prev = s.h_prev.const_data_ptr<scalar_t>() + b * s.h_prev.stride(0);
      const scalar_t* ws = s.workspace.const_data_ptr<scalar_t>() + b * s.workspace.stride(0);
      scalar_t* grad_gi =
          s.grad_input_gates.mutable_data_ptr<scalar_t>() + b * s.grad_input_gates.stride(0);
      scalar_t* grad_gh =
          s.grad_hidden_gates.mutable_data_ptr<scalar_t>() + b * s.grad_hidden_gates.stride(0);
      scalar_t* grad_direct =
          s.grad_h_prev_direct.mutable_data_ptr<scalar_t>() + b * s.grad_h_prev_direct.stride(0);
      if (lengths != nullptr && s.t >= lengths[b]) {
        // A padded step passes the carried gradient through; its output is a constant zero.
        std::copy(grad_h, grad_h + hidden, grad_direct);
        std::fill(grad_gi, grad_gi + 3 * hidden, scalar_t(0));
        std::fill(grad_gh, grad_gh + 3 * hidden, scalar_t(0));
        continue;
      }
      for (int64_t j = 0; j < hidden; j += Vec::size()) {
        const int64_t count = std::min<int64_t>(Vec::size(), hidden - j);
        Vec dh = Vec::loadu(grad_h + j, count);
        if (grad_out != nullptr) dh = dh + Vec::loadu(grad_out + j, count);
        const Vec r = Vec::loadu(ws + j, count);
        const Vec z = Vec::loadu(ws + hidden + j, count);
        const Vec n = Vec::loadu(ws + 2 * hidden + j, count);
        const Vec hidden_n = Vec::loadu(ws + 3 * hidden + j, count);
        const Vec h = Vec::loadu(h_prev + j, count);
        const Vec grad_n = dh * (one - z) * (one - n * n);
        const Vec grad_z = dh * (h - n) * z * (one - z);
        const Vec grad_r = grad_n * hidden_n * r * (one - r);
        grad_r.store(grad_gi + j, count);
        grad_z.store(grad_gi + hidden + j, count);
        grad_n.store(grad_gi + 2 * hidden + j, count);
        grad_r.store(grad_gh + j, count);
        grad_z.store(grad_gh + hidden + j, count);
        (grad_n * r).store(grad_gh + 2 * hidden + j, count);
        (dh * z).store(grad_direct + j, count);
      }
    }
  });
}

void gates_forward_cpu(const GateForwardStep& s) {
  AT_DISPATCH_FLOATING_TYPES(s.h_prev.scalar_type(), "apgru_gates_forward_cpu",
                             [&] { gates_forward_cpu_typed<scalar_t>(s); });
}

void gates_backward_cpu(const GateBackwardStep& s) {
  AT_DISPATCH_FLOATING_TYPES(s.h_prev.scalar_type(), "apgru_gates_backward_cpu",
                             [&] { gates_backward_cpu_typed<scalar_t>(s); });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> apgru_cell_forward(const at::Tensor& input_gates,
                                                      const at::Tensor& h,
                                                      const at::Tensor& weight_hh,
                                                      const at::Tensor& bias_hh,
                                                      GateForwardKernel gates) {
  check_dim(kCell, "h", h, 2, "[batch, hidden]");
  const int64_t batch = h.size(0);
  const int64_t hidden = h.size(1);
  check_float_group(kCell, {{"input_gates", &input_gates},
                            {"h", &h},
                            {"weight_hh", &weight_hh},
                            {"bias_hh", &bias_hh}});
  check_shape(kCell, "input_gates", input_gates, {batch, 3 * hidden}, "[batch, 3*hidden]");
  check_shape(kCell, "weight_hh", weight_hh, {3 * hidden, hidden}, "[3*hidden, hidden]");
  check_shape(kCell, "bias_hh", bias_hh, {3 * hidden}, "[3*hidden]");
  GateForwardStep step;
  step.input_gates = input_gates;
  step.hidden_gates = at::addmm(bias_hh, h, weight_hh.t());
  step.h_prev = h;
  step.h_next = at::empty({batch, hidden}, h.options());
  step.workspace = at::empty({batch, 4 * hidden}, h.options());
  gates(step);
  return {step.h_next, step.workspace};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> apgru_cell_backward(
    const at::Tensor& grad_h_new, const at::Tensor& h, const at::Tensor& weight_hh,
    const at::Tensor& workspace, GateBackwardKernel gates) {
  check_dim(kCellBackward, "h", h, 2, "[batch, hidden]");
  const int64_t batch = h.size(0);
  const int64_t hidden = h.size(1);
  check_float_group(kCellBackward, {{"grad_h_new", &grad_h_new},
                                    {"h", &h},
                                    {"weight_hh", &weight_hh},
                                    {"workspace", &workspace}});
  check_shape(kCellBackward, "grad_h_new", grad_h_new, {batch, hidden}, "[batch, hidden]");
  check_shape(kCellBackward, "weight_hh", weight_hh, {3 * hidden, hidden}, "[3*hidden, hidden]");
  check_shape(kCellBackward, "workspace", workspace, {batch, 4 * hidden}, "[batch, 4*hidden]");
  GateBackwardStep step;
  step.grad_h = grad_h_new;
  step.h_prev = h;
  step.workspace = workspace;
  step.grad_input_gates = at::empty({batch, 3 * hidden}, h.options());
  step.grad_hidden_gates = at::empty({batch, 3 * hidden}, h.options());
  step.grad_h_prev_direct = at::empty({batch, hidden}, h.options());
  gates(step);
  const at::Tensor& grad_hidden_gates = step.grad_hidden_gates;
  return {step.grad_input_gates, at::addmm(step.grad_h_prev_direct, grad_hidden_gates, weight_hh),
          grad_hidden_gates.t().mm(h), grad_hidden_gates.sum(0)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> apgru_sequence_forward(
    const at::Tensor& x, const at::Tensor& prop, const at::Tensor& lengths, const at::Tensor& h0,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& bias_ih,
    const at::Tensor& bias_hh, const at::Tensor& weight_pz, bool save_workspace,
    GateForwardKernel gates) {
  const SequenceSizes s =
      check_sequence_inputs(kSequence, x, prop, lengths, h0, weight_ih, weight_hh, weight_pz);
  check_float_group(kSequence, {{"x", &x}, {"bias_ih", &bias_ih}, {"bias_hh", &bias_hh}});
  check_shape(kSequence, "bias_ih", bias_ih, {3 * s.hidden}, "[3*hidden]");
  check_shape(kSequence, "bias_hh", bias_hh, {3 * s.hidden}, "[3*hidden]");

  const int64_t steps = s.steps;
  at::Tensor out = at::empty({s.batch, s.time, s.hidden}, x.options());
  at::Tensor workspace =
      at::empty({s.batch, s.time, save_workspace ? 4 * s.hidden : 0}, x.options());
  out.narrow(1, steps, s.time - steps).zero_();
  workspace.narrow(1, steps, s.time - steps).zero_();
  at::Tensor h = h0.clone();
  if (steps == 0) return {out, h, workspace};

  // Input projections of every step in one GEMM; the property enters the update-gate block only.
  const at::Tensor input_gates =
      at::addmm(bias_ih, x.view({s.batch * s.time, s.input}), weight_ih.t());
  if (s.property > 0) {
    input_gates.narrow(1, s.hidden, s.hidden)
        .addmm_(prop.view({s.batch * s.time, s.property}), weight_pz.t());
  }
  const at::Tensor input_gates_by_step = input_gates.view({s.batch, s.time, 3 * s.hidden});

  GateForwardStep step;
  step.hidden_gates = at::empty({s.batch, 3 * s.hidden}, x.options());
  step.h_next = at::empty_like(h);
  step.lengths = lengths;
  for (int64_t t = 0; t < steps; ++t) {
    step.t = t;
    step.h_prev = h;
    at::addmm_out(step.hidden_gates, bias_hh, h, weight_hh.t());
    step.input_gates = input_gates_by_step.select(1, t);
    step.out = out.select(1, t);
    if (save_workspace) step.workspace = workspace.select(1, t);
    gates(step);
    std::swap(h, step.h_next);
  }
  return {out, h, workspace};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
apgru_sequence_backward(const at::Tensor& grad_out, const at::Tensor& grad_h_last,
                        const at::Tensor& x, const at::Tensor& prop, const at::Tensor& lengths,
                        const at::Tensor& h0, const at::Tensor& weight_ih,
                        const at::Tensor& weight_hh, const at::Tensor& weight_pz,
                        const at::Tensor& out, const at::Tensor& workspace,
                        GateBackwardKernel gates) {
  const char* op = kSequenceBackward;
  const SequenceSizes s =
      check_sequence_inputs(op, x, prop, lengths, h0, weight_ih, weight_hh, weight_pz);
  check_float_group(op, {{"x", &x},
                         {"grad_out", &grad_out},
                         {"grad_h_last", &grad_h_last},
                         {"out", &out},
                         {"workspace", &workspace}});
  check_shape(op, "grad_out", grad_out, {s.batch, s.time, s.hidden}, "[batch, time, hidden]");
  check_shape(op, "grad_h_last", grad_h_last, {s.batch, s.hidden}, "[batch, hidden]");
  check_shape(op, "out", out, {s.batch, s.time, s.hidden}, "[batch, time, hidden]");
  check_shape(op, "workspace", workspace, {s.batch, s.time, 4 * s.hidden},
              "[batch, time, 4*hidden]");

  const int64_t rows = s.batch * s.time;
  at::Tensor grad_input_gates = at::empty({s.batch, s.time, 3 * s.hidden}, x.options());
  at::Tensor grad_hidden_gates = at::empty({s.batch, s.time, 3 * s.hidden}, x.options());
  // The step kernels write every row of steps [0, s.steps); later steps carry no gradient.
  grad_input_gates.narrow(1, s.steps, s.time - s.steps).zero_();
  grad_hidden_gates.narrow(1, s.steps, s.time - s.steps).zero_();
  at::Tensor grad_h = grad_h_last.clone();
  GateBackwardStep step;
  step.grad_h_prev_direct = at::empty_like(grad_h);
  step.lengths = lengths;
  for (int64_t t = s.steps - 1; t >= 0; --t) {
    step.t = t;
    step.grad_h = grad_h;
    step.grad_out = grad_out.select(1, t);
    // A step t < length[b] follows only valid steps, so h_{t-1} is the previous output.
    step.h_prev = t == 0 ? h0 : out.select(1, t - 1);
    step.workspace = workspace.select(1, t);
    step.grad_input_gates = grad_input_gates.select(1, t);
    step.grad_hidden_gates = grad_hidden_gates.select(1, t);
    gates(step);
    at::addmm_out(grad_h, step.grad_h_prev_direct, step.grad_hidden_gates, weight_hh);
  }

  const at::Tensor grad_gi = grad_input_gates.view({rows, 3 * s.hidden});
  const at::Tensor grad_gh = grad_hidden_gates.view({rows, 3 * s.hidden});
  const at::Tensor grad_update_gate = grad_gi.narrow(1, s.hidden, s.hidden);
  const at::Tensor h_prev_all =
      s.time == 0 ? at::empty({0, s.hidden}, x.options())
                  : at::cat({h0.unsqueeze(1), out.narrow(1, 0, s.time - 1)}, 1).view({rows, s.hidden});
  return {grad_gi.mm(weight_ih).view({s.batch, s.time, s.input}),
          grad_update_gate.mm(weight_pz).view({s.batch, s.time, s.property}),
          grad_h,
          grad_gi.t().mm(x.view({rows, s.input})),
          grad_gh.t().mm(h_prev_all),
          grad_gi.sum(0),
          grad_gh.sum(0),
          grad_update_gate.t().mm(prop.view({rows, s.property}))};
}

namespace {

std::tuple<at::Tensor, at::Tensor> apgru_cell_cpu(const at::Tensor& input_gates,
                                                  const at::Tensor& h, const at::Tensor& weight_hh,
                                                  const at::Tensor& bias_hh) {
  return apgru_cell_forward(input_gates, h, weight_hh, bias_hh, gates_forward_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> apgru_cell_backward_cpu(
    const at::Tensor& grad_h_new, const at::Tensor& h, const at::Tensor& weight_hh,
    const at::Tensor& workspace) {
  return apgru_cell_backward(grad_h_new, h, weight_hh, workspace, gates_backward_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> apgru_sequence_cpu(
    const at::Tensor& x, const at::Tensor& prop, const at::Tensor& lengths, const at::Tensor& h0,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& bias_ih,
    const at::Tensor& bias_hh, const at::Tensor& weight_pz, bool save_workspace) {
  return apgru_sequence_forward(x, prop, lengths, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                                weight_pz, save_workspace, gates_forward_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
apgru_sequence_backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad_h_last,
                            const at::Tensor& x, const at::Tensor& prop,
                            const at::Tensor& lengths, const at::Tensor& h0,
                            const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                            const at::Tensor& weight_pz, const at::Tensor& out,
                            const at::Tensor& workspace) {
  return apgru_sequence_backward(grad_out, grad_h_last, x, prop, lengths, h0, weight_ih,
                                 weight_hh, weight_pz, out, workspace, gates_backward_cpu);
}

}  // namespace
}  // namespace marn

TORCH_LIBRARY_IMPL(marn, CPU, m) {
  m.impl("apgru_cell", &marn::apgru_cell_cpu);
  m.impl("apgru_cell_backward", &marn::apgru_cell_backward_cpu);
  m.impl("apgru_sequence", &marn::apgru_sequence_cpu);
  m.impl("apgru_sequence_backward", &marn::apgru_sequence_backward_cpu);
}
