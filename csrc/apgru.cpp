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
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "checks.h"

namespace marn {
namespace {

constexpr const char* kCell = "marn::apgru_cell";
constexpr const char* kCellBackward = "marn::apgru_cell_backward";
constexpr const char* kSequence = "marn::apgru_sequence";
constexpr const char* kSequenceBackward = "marn::apgru_sequence_backward";

// The row order of the length-aware recurrence (PackedSequence's): sorted rank i is batch row
// order[i]; at step t ranks [0, batch_sizes[t]) are still running and own packed rows
// [offsets[t], offsets[t] + batch_sizes[t]); packed row p is padded position packed_index[p] = b*T + t.
struct PackPlan {
  std::vector<int64_t> batch_sizes, offsets;
  int64_t total = 0;        // the sum of the lengths
  at::Tensor order;         // [B] int64, on the inputs' device
  at::Tensor packed_index;  // [total] int64, on the inputs' device
};

// Checks the lengths' values (one device-to-host copy) and plans the rows.
PackPlan plan_rows(const char* op, const at::Tensor& lengths, int64_t time) {
  const at::Tensor host_lengths = lengths.to(at::kCPU);
  const int64_t* length = host_lengths.const_data_ptr<int64_t>();
  const int64_t batch = host_lengths.numel();
  if (batch > 0) {
    const auto [shortest, longest] = std::minmax_element(length, length + batch);
    TORCH_CHECK_INDEX(*shortest >= 0 && *longest <= time, op,
                      ": lengths must lie in [0, time] = [0, ", time, "], got values in [",
                      *shortest, ", ", *longest, "]");
  }
  PackPlan plan;
  at::Tensor order = at::empty({batch}, at::kLong);
  int64_t* rank_row = order.mutable_data_ptr<int64_t>();
  std::iota(rank_row, rank_row + batch, int64_t{0});
  std::stable_sort(rank_row, rank_row + batch,
                   [&](int64_t a, int64_t b) { return length[a] > length[b]; });
  const int64_t steps = batch > 0 ? length[rank_row[0]] : 0;
  int64_t running = batch;
  for (int64_t t = 0; t < steps; ++t) {
    while (length[rank_row[running - 1]] <= t) --running;
    plan.offsets.push_back(plan.total);
    plan.batch_sizes.push_back(running);
    plan.total += running;
  }
  at::Tensor packed_index = at::empty({plan.total}, at::kLong);
  int64_t* index = packed_index.mutable_data_ptr<int64_t>();
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t i = 0; i < plan.batch_sizes[t]; ++i) {
      index[plan.offsets[t] + i] = rank_row[i] * time + t;
    }
  }
  plan.order = order.to(lengths.device());
  plan.packed_index = packed_index.to(lengths.device());
  return plan;
}

struct SequenceSizes {
  int64_t batch, time, input, hidden, property;
};

SequenceSizes check_sequence_inputs(const char* op, const at::Tensor& x, const at::Tensor& prop,
                                    const at::Tensor& lengths, const at::Tensor& h0,
                                    const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                    const at::Tensor& weight_pz) {
  check_dim(op, "x", x, 3, "[batch, time, input]");
  check_dim(op, "h0", h0, 2, "[batch, hidden]");
  check_dim(op, "prop", prop, 3, "[batch, time, property]");
  SequenceSizes s{x.size(0), x.size(1), x.size(2), h0.size(1), prop.size(2)};
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
  check_shape(op, "lengths", lengths, {s.batch}, "[batch]");
  check_dtype(op, "lengths", lengths, at::kLong);
  check_device(op, "lengths", lengths, x.device());
  check_contiguous(op, "lengths", lengths);
  return s;
}

// Rows per parallel chunk: below ~4k elements a thread hand-off costs more than the gate math.
int64_t row_grain(int64_t hidden) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(hidden, 1)); }

template <typename scalar_t>
at::vec::Vectorized<scalar_t> sigmoid(const at::vec::Vectorized<scalar_t>& v) {
  using Vec = at::vec::Vectorized<scalar_t>;
  return Vec(scalar_t(1)) / (Vec(scalar_t(1)) + v.neg().exp());
}

// The row of a [B, T, H] tensor at (order[i], t), or null when the step has none.
template <typename scalar_t>
scalar_t* row_at(const at::Tensor& padded, const int64_t* order, int64_t i, int64_t t) {
  if (!padded.defined()) return nullptr;
  return const_cast<scalar_t*>(padded.const_data_ptr<scalar_t>()) + order[i] * padded.stride(0) +
         t * padded.stride(1);
}

template <typename scalar_t>
void gates_forward_cpu_typed(const GateForwardStep& s) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t rows = s.h_prev.size(0);
  const int64_t hidden = s.h_prev.size(1);
  const int64_t* order = s.order.defined() ? s.order.const_data_ptr<int64_t>() : nullptr;
  at::parallel_for(0, rows, row_grain(hidden), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* gi = s.input_gates.const_data_ptr<scalar_t>() + i * s.input_gates.stride(0);
      const scalar_t* gh = s.hidden_gates.const_data_ptr<scalar_t>() + i * s.hidden_gates.stride(0);
      const scalar_t* h_prev = s.h_prev.const_data_ptr<scalar_t>() + i * s.h_prev.stride(0);
      scalar_t* h_next = s.h_next.mutable_data_ptr<scalar_t>() + i * s.h_next.stride(0);
      scalar_t* out = row_at<scalar_t>(s.out, order, i, s.t);
      scalar_t* ws = s.workspace.defined()
                         ? s.workspace.mutable_data_ptr<scalar_t>() + i * s.workspace.stride(0)
                         : nullptr;
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
  const int64_t rows = s.h_prev.size(0);
  const int64_t hidden = s.h_prev.size(1);
  const int64_t* order = s.order.defined() ? s.order.const_data_ptr<int64_t>() : nullptr;
  at::parallel_for(0, rows, row_grain(hidden), [&](int64_t begin, int64_t end) {
    const Vec one(scalar_t(1));
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* grad_h = s.grad_h.const_data_ptr<scalar_t>() + i * s.grad_h.stride(0);
      const scalar_t* grad_out = row_at<scalar_t>(s.grad_out, order, i, s.t);
      const scalar_t* h_prev = s.h_prev.const_data_ptr<scalar_t>() + i * s.h_prev.stride(0);
      const scalar_t* ws = s.workspace.const_data_ptr<scalar_t>() + i * s.workspace.stride(0);
      scalar_t* grad_gi =
          s.grad_input_gates.mutable_data_ptr<scalar_t>() + i * s.grad_input_gates.stride(0);
      scalar_t* grad_gh =
          s.grad_hidden_gates.mutable_data_ptr<scalar_t>() + i * s.grad_hidden_gates.stride(0);
      scalar_t* grad_direct =
          s.grad_h_prev_direct.mutable_data_ptr<scalar_t>() + i * s.grad_h_prev_direct.stride(0);
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
  const PackPlan plan = plan_rows(kSequence, lengths, s.time);
  const int64_t H = s.hidden;

  at::Tensor out = at::zeros({s.batch, s.time, H}, x.options());
  at::Tensor workspace = at::empty({s.batch, s.time, save_workspace ? 5 * H : 0}, x.options());
  // Nothing reads the rows past the sum of lengths; they are zeroed so that every output is determined.
  const at::Tensor packed_workspace = workspace.view({s.batch * s.time, workspace.size(2)});
  packed_workspace.narrow(0, plan.total, s.batch * s.time - plan.total).zero_();
  // The state of sorted rank i in row i: the rows still running are always a prefix.
  at::Tensor state = h0.index_select(0, plan.order);

  // Input projections of the real steps only, in one GEMM; the property enters the update gate.
  const at::Tensor input_gates = at::addmm(
      bias_ih, x.view({s.batch * s.time, s.input}).index_select(0, plan.packed_index),
      weight_ih.t());
  if (s.property > 0) {
    input_gates.narrow(1, H, H).addmm_(
        prop.view({s.batch * s.time, s.property}).index_select(0, plan.packed_index),
        weight_pz.t());
  }

  const at::Tensor hidden_gates = at::empty({s.batch, 3 * H}, x.options());
  GateForwardStep step;
  step.out = out;
  step.order = plan.order;
  for (size_t t = 0; t < plan.batch_sizes.size(); ++t) {
    const int64_t rows = plan.batch_sizes[t];
    const int64_t first = plan.offsets[t];
    step.t = static_cast<int64_t>(t);
    step.h_prev = step.h_next = state.narrow(0, 0, rows);
    step.hidden_gates = hidden_gates.narrow(0, 0, rows);
    at::addmm_out(step.hidden_gates, bias_hh, step.h_prev, weight_hh.t());
    step.input_gates = input_gates.narrow(0, first, rows);
    if (save_workspace) {
      const at::Tensor step_workspace = packed_workspace.narrow(0, first, rows);
      step_workspace.narrow(1, 4 * H, H).copy_(step.h_prev);
      step.workspace = step_workspace.narrow(1, 0, 4 * H);
    }
    gates(step);
  }
  return {out, at::empty_like(h0).index_copy_(0, plan.order, state), workspace};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
apgru_sequence_backward(const at::Tensor& grad_out, const at::Tensor& grad_h_last,
                        const at::Tensor& x, const at::Tensor& prop, const at::Tensor& lengths,
                        const at::Tensor& h0, const at::Tensor& weight_ih,
                        const at::Tensor& weight_hh, const at::Tensor& weight_pz,
                        const at::Tensor& workspace, GateBackwardKernel gates) {
  const char* op = kSequenceBackward;
  const SequenceSizes s =
      check_sequence_inputs(op, x, prop, lengths, h0, weight_ih, weight_hh, weight_pz);
  check_float_group(op, {{"x", &x},
                         {"grad_out", &grad_out},
                         {"grad_h_last", &grad_h_last},
                         {"workspace", &workspace}});
  check_shape(op, "grad_out", grad_out, {s.batch, s.time, s.hidden}, "[batch, time, hidden]");
  check_shape(op, "grad_h_last", grad_h_last, {s.batch, s.hidden}, "[batch, hidden]");
  check_shape(op, "workspace", workspace, {s.batch, s.time, 5 * s.hidden},
              "[batch, time, 5*hidden] (saved by apgru_sequence with save_workspace=True)");
  const PackPlan plan = plan_rows(op, lengths, s.time);
  const int64_t H = s.hidden;
  const at::Tensor packed_workspace = workspace.view({s.batch * s.time, 5 * H});

  at::Tensor grad_state = grad_h_last.index_select(0, plan.order);
  const at::Tensor grad_input_gates = at::empty({plan.total, 3 * H}, x.options());
  const at::Tensor grad_hidden_gates = at::empty({plan.total, 3 * H}, x.options());
  GateBackwardStep step;
  step.grad_out = grad_out;
  step.order = plan.order;
  for (int64_t t = static_cast<int64_t>(plan.batch_sizes.size()) - 1; t >= 0; --t) {
    const int64_t rows = plan.batch_sizes[t];
    const int64_t first = plan.offsets[t];
    const at::Tensor step_workspace = packed_workspace.narrow(0, first, rows);
    step.t = t;
    step.grad_h = step.grad_h_prev_direct = grad_state.narrow(0, 0, rows);
    step.workspace = step_workspace.narrow(1, 0, 4 * H);
    step.h_prev = step_workspace.narrow(1, 4 * H, H);
    step.grad_input_gates = grad_input_gates.narrow(0, first, rows);
    step.grad_hidden_gates = grad_hidden_gates.narrow(0, first, rows);
    gates(step);
    step.grad_h.addmm_(step.grad_hidden_gates, weight_hh);
  }

  // Gradients of the inputs land on the real positions; padded positions get zero.
  const at::Tensor x_packed = x.view({s.batch * s.time, s.input}).index_select(0, plan.packed_index);
  const at::Tensor prop_packed =
      prop.view({s.batch * s.time, s.property}).index_select(0, plan.packed_index);
  const at::Tensor grad_update_gate = grad_input_gates.narrow(1, H, H);
  at::Tensor grad_x = at::zeros_like(x);
  grad_x.view({s.batch * s.time, s.input})
      .index_copy_(0, plan.packed_index, grad_input_gates.mm(weight_ih));
  at::Tensor grad_prop = at::zeros_like(prop);
  grad_prop.view({s.batch * s.time, s.property})
      .index_copy_(0, plan.packed_index, grad_update_gate.mm(weight_pz));
  const at::Tensor h_prev_packed = packed_workspace.narrow(0, 0, plan.total).narrow(1, 4 * H, H);
  return {grad_x,
          grad_prop,
          at::empty_like(h0).index_copy_(0, plan.order, grad_state),
          grad_input_gates.t().mm(x_packed),
          grad_hidden_gates.t().mm(h_prev_packed),
          grad_input_gates.sum(0),
          grad_hidden_gates.sum(0),
          grad_update_gate.t().mm(prop_packed)};
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
                            const at::Tensor& weight_pz, const at::Tensor& workspace) {
  return apgru_sequence_backward(grad_out, grad_h_last, x, prop, lengths, h0, weight_ih,
                                 weight_hh, weight_pz, workspace, gates_backward_cpu);
}

}  // namespace
}  // namespace marn

TORCH_LIBRARY_IMPL(marn, CPU, m) {
  m.impl("apgru_cell", &marn::apgru_cell_cpu);
  m.impl("apgru_cell_backward", &marn::apgru_cell_backward_cpu);
  m.impl("apgru_sequence", &marn::apgru_sequence_cpu);
  m.impl("apgru_sequence_backward", &marn::apgru_sequence_backward_cpu);
}
