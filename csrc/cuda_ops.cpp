// CUDA implementations of the marn ops: device guard, dtype dispatch and ATen glue around the
// kernels of apgru_kernels.cu and embedding_kernels.cu. The APGRU recurrence is apgru.cpp's.
#include <ATen/Dispatch.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/unique_consecutive.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "apgru.h"
#include "cuda_kernels.h"
#include "embedding.h"

namespace marn {
namespace {

// Inputs on mixed devices still reach a CUDA kernel; the op's checks then name the culprit.
std::optional<at::Device> cuda_device_of(const at::Tensor& t) {
  return t.is_cuda() ? std::optional<at::Device>(t.device()) : std::nullopt;
}

template <typename scalar_t>
cuda::Rows<scalar_t> rows_of(const at::Tensor& t) {
  if (!t.defined()) return {};
  return {const_cast<scalar_t*>(t.const_data_ptr<scalar_t>()), t.stride(0)};
}

template <typename scalar_t>
cuda::Padded<scalar_t> padded_of(const at::Tensor& t, const at::Tensor& order) {
  if (!t.defined()) return {};
  return {const_cast<scalar_t*>(t.const_data_ptr<scalar_t>()), t.stride(0), t.stride(1),
          order.const_data_ptr<int64_t>()};
}

void gates_forward_cuda(const GateForwardStep& s) {
  const int64_t rows = s.h_prev.size(0);
  const int64_t hidden = s.h_prev.size(1);
  if (rows * hidden == 0) return;
  AT_DISPATCH_FLOATING_TYPES(s.h_prev.scalar_type(), "apgru_gates_forward_cuda", [&] {
    cuda::GateForwardArgs<scalar_t> args{
        rows_of<scalar_t>(s.input_gates),       rows_of<scalar_t>(s.hidden_gates),
        rows_of<scalar_t>(s.h_prev),            rows_of<scalar_t>(s.h_next),
        rows_of<scalar_t>(s.workspace),         padded_of<scalar_t>(s.out, s.order),
        s.t,                                    rows,
        hidden};
    cuda::launch_gates_forward(args, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void gates_backward_cuda(const GateBackwardStep& s) {
  const int64_t rows = s.h_prev.size(0);
  const int64_t hidden = s.h_prev.size(1);
  if (rows * hidden == 0) return;
  AT_DISPATCH_FLOATING_TYPES(s.h_prev.scalar_type(), "apgru_gates_backward_cuda", [&] {
    cuda::GateBackwardArgs<scalar_t> args{rows_of<scalar_t>(s.grad_h),
                                          rows_of<scalar_t>(s.h_prev),
                                          rows_of<scalar_t>(s.workspace),
                                          rows_of<scalar_t>(s.grad_input_gates),
                                          rows_of<scalar_t>(s.grad_hidden_gates),
                                          rows_of<scalar_t>(s.grad_h_prev_direct),
                                          padded_of<scalar_t>(s.grad_out, s.order),
                                          s.t,
                                          rows,
                                          hidden};
    cuda::launch_gates_backward(args, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor> apgru_cell_cuda(const at::Tensor& input_gates,
                                                   const at::Tensor& h,
                                                   const at::Tensor& weight_hh,
                                                   const at::Tensor& bias_hh) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device_of(h));
  return apgru_cell_forward(input_gates, h, weight_hh, bias_hh, gates_forward_cuda);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> apgru_cell_backward_cuda(
    const at::Tensor& grad_h_new, const at::Tensor& h, const at::Tensor& weight_hh,
    const at::Tensor& workspace) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device_of(h));
  return apgru_cell_backward(grad_h_new, h, weight_hh, workspace, gates_backward_cuda);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> apgru_sequence_cuda(
    const at::Tensor& x, const at::Tensor& prop, const at::Tensor& lengths, const at::Tensor& h0,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& bias_ih,
    const at::Tensor& bias_hh, const at::Tensor& weight_pz, bool save_workspace) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device_of(x));
  return apgru_sequence_forward(x, prop, lengths, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                                weight_pz, save_workspace, gates_forward_cuda);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
apgru_sequence_backward_cuda(const at::Tensor& grad_out, const at::Tensor& grad_h_last,
                             const at::Tensor& x, const at::Tensor& prop,
                             const at::Tensor& lengths, const at::Tensor& h0,
                             const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                             const at::Tensor& weight_pz, const at::Tensor& workspace) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device_of(x));
  return apgru_sequence_backward(grad_out, grad_h_last, x, prop, lengths, h0, weight_ih,
                                 weight_hh, weight_pz, workspace, gates_backward_cuda);
}

// The granularities' boundaries and tables are packed into flat buffers (they are small:
// K * (G_g + 1) rows each) so that one launch covers them all.
std::tuple<at::Tensor, at::Tensor> lookup_cuda(const at::Tensor& values,
                                               at::TensorList boundaries, at::TensorList tables) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device_of(values));
  const EmbeddingLayout layout = check_embedding_inputs(values, boundaries, tables);
  std::vector<int64_t> meta;
  std::vector<at::Tensor> flat_boundaries;
  int64_t boundary_offset = 0, row_offset = 0;
  for (int64_t g = 0; g < layout.num_granularities; ++g) {
    meta.insert(meta.end(), {layout.bins[g], boundary_offset, row_offset});
    boundary_offset += boundaries[g].numel();
    row_offset += tables[g].size(0);
    flat_boundaries.push_back(boundaries[g].view(-1));
  }
  const at::Tensor meta_device = at::tensor(meta, at::kLong).to(values.device());
  const at::Tensor boundary_buffer = at::cat(flat_boundaries);
  const at::Tensor table_buffer = at::cat(tables);
  at::Tensor out = at::empty({layout.num_values, layout.slots(), layout.dim}, tables[0].options());
  at::Tensor rows =
      at::empty({layout.num_values, layout.slots()}, values.options().dtype(at::kLong));
  if (rows.numel() == 0) return {out, rows};
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "multi_granularity_embedding_cuda", [&] {
    using value_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(tables[0].scalar_type(), "multi_granularity_embedding_cuda", [&] {
      cuda::LookupArgs<value_t, scalar_t> args{
          values.const_data_ptr<value_t>(),      boundary_buffer.const_data_ptr<value_t>(),
          table_buffer.const_data_ptr<scalar_t>(), meta_device.const_data_ptr<int64_t>(),
          layout.num_values,                     layout.num_statistics,
          layout.num_granularities,              layout.dim,
          out.mutable_data_ptr<scalar_t>(),      rows.mutable_data_ptr<int64_t>()};
      cuda::launch_lookup(args, c10::cuda::getCurrentCUDAStream());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, rows};
}

std::vector<at::Tensor> lookup_backward_cuda(const at::Tensor& grad_out, const at::Tensor& rows,
                                             c10::SymIntArrayRef table_rows, bool deterministic) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device_of(grad_out));
  const std::vector<int64_t> sizes = check_embedding_backward_inputs(grad_out, rows, table_rows);
  check_rows_in_range(rows, sizes);
  const int64_t granularities = static_cast<int64_t>(sizes.size());
  const int64_t dim = grad_out.size(2);
  std::vector<int64_t> first_rows;
  int64_t total_rows = 0;
  for (const int64_t size : sizes) {
    first_rows.push_back(total_rows);
    total_rows += size;
  }
  at::Tensor grad_buffer = at::zeros({total_rows, dim}, grad_out.options());
  const int64_t items = rows.numel();
  if (items > 0 && dim > 0) {
    const at::Tensor table_offsets = at::tensor(first_rows, at::kLong).to(grad_out.device());
    AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "multi_granularity_embedding_backward_cuda",
                               [&] {
      const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
      if (!deterministic) {
        cuda::ScatterAtomicArgs<scalar_t> args{
            grad_out.const_data_ptr<scalar_t>(), rows.const_data_ptr<int64_t>(),
            table_offsets.const_data_ptr<int64_t>(), items, granularities, dim,
            grad_buffer.mutable_data_ptr<scalar_t>()};
        cuda::launch_scatter_atomic(args, stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      // A stable sort groups each table row's items in their original order.
      const at::Tensor flat_rows = rows.view({-1, granularities}).add(table_offsets).view(-1);
      const auto [sorted_rows, order] = at::sort(flat_rows, std::optional<bool>(true));
      const auto [run_rows, unused_inverse, run_counts] =
          at::unique_consecutive(sorted_rows, /*return_inverse=*/false, /*return_counts=*/true);
      const at::Tensor run_ends = at::cumsum(run_counts, 0);
      cuda::ScatterSortedArgs<scalar_t> args{
          grad_out.const_data_ptr<scalar_t>(), order.const_data_ptr<int64_t>(),
          run_rows.const_data_ptr<int64_t>(), run_ends.const_data_ptr<int64_t>(),
          run_rows.numel(), dim, grad_buffer.mutable_data_ptr<scalar_t>()};
      cuda::launch_scatter_sorted(args, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  std::vector<at::Tensor> grad_tables;
  for (int64_t g = 0; g < granularities; ++g) {
    grad_tables.push_back(grad_buffer.narrow(0, first_rows[g], sizes[g]).clone());
  }
  return grad_tables;
}

}  // namespace
}  // namespace marn

TORCH_LIBRARY_IMPL(marn, CUDA, m) {
  m.impl("apgru_cell", &marn::apgru_cell_cuda);
  m.impl("apgru_cell_backward", &marn::apgru_cell_backward_cuda);
  m.impl("apgru_sequence", &marn::apgru_sequence_cuda);
  m.impl("apgru_sequence_backward", &marn::apgru_sequence_backward_cuda);
  m.impl("multi_granularity_embedding", &marn::lookup_cuda);
  m.impl("multi_granularity_embedding_backward", &marn::lookup_backward_cuda);
}
