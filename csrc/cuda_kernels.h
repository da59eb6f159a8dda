// The CUDA kernels' launchers, declared with plain types so that only the .cu files need nvcc and
// the ATen glue (dtype dispatch, allocation, checks) stays in cuda_ops.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#ifdef __CUDACC__
#define MARN_HOST_DEVICE __host__ __device__
#else
#define MARN_HOST_DEVICE
#endif

namespace marn::cuda {

constexpr int kThreadsPerBlock = 256;

// Grid-stride loops cover any size; the cap keeps the grid within every device's limits.
inline unsigned int grid_blocks(int64_t items) {
  const int64_t blocks = (items + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

// A [rows, cols] matrix with unit column stride; row stride may exceed cols (a time slice).
template <typename scalar_t>
struct Rows {
  scalar_t* data = nullptr;
  int64_t stride = 0;
  MARN_HOST_DEVICE scalar_t* row(int64_t b) const { return data + b * stride; }
};

template <typename scalar_t>
struct GateForwardArgs {
  Rows<scalar_t> input_gates, hidden_gates, h_prev, h_next, out, workspace;  // out, workspace may be null
  const int64_t* lengths;  // null when every row is valid
  int64_t t, batch, hidden;
};

template <typename scalar_t>
struct GateBackwardArgs {
  Rows<scalar_t> grad_h, grad_out, h_prev, workspace, grad_input_gates, grad_hidden_gates,
      grad_h_prev_direct;  // grad_out may be null
  const int64_t* lengths;  // null when every row is valid
  int64_t t, batch, hidden;
};

template <typename value_t, typename table_t>
struct LookupArgs {
  const value_t* values;      // [N, K]
  const value_t* boundaries;  // every granularity's [K, G_g - 1] boundaries, flattened, concatenated
  const table_t* tables;      // every granularity's table, concatenated along rows
  const int64_t* meta;        // [|G|, 3]: bins G_g, offset of its boundaries, offset of its first row
  int64_t num_values, statistics, granularities, dim;
  table_t* out;   // [N, K * |G|, d]
  int64_t* rows;  // [N, K * |G|]
};

template <typename scalar_t>
struct ScatterAtomicArgs {
  const scalar_t* grad_out;      // [items, d], item = n * slots + slot
  const int64_t* rows;           // [items]
  const int64_t* table_offsets;  // [|G|]: first row of each table in grad_tables
  int64_t items, granularities, dim;
  scalar_t* grad_tables;  // every table's gradient, concatenated along rows
};

// Items sorted by target row: run r covers sorted positions [run_ends[r-1], run_ends[r]).
template <typename scalar_t>
struct ScatterSortedArgs {
  const scalar_t* grad_out;  // [items, d]
  const int64_t* order;      // item at each sorted position
  const int64_t* run_rows;   // target row of each run
  const int64_t* run_ends;
  int64_t runs, dim;
  scalar_t* grad_tables;
};

template <typename scalar_t>
void launch_gates_forward(const GateForwardArgs<scalar_t>& args, cudaStream_t stream);
template <typename scalar_t>
void launch_gates_backward(const GateBackwardArgs<scalar_t>& args, cudaStream_t stream);
template <typename value_t, typename table_t>
void launch_lookup(const LookupArgs<value_t, table_t>& args, cudaStream_t stream);
template <typename scalar_t>
void launch_scatter_atomic(const ScatterAtomicArgs<scalar_t>& args, cudaStream_t stream);
template <typename scalar_t>
void launch_scatter_sorted(const ScatterSortedArgs<scalar_t>& args, cudaStream_t stream);

}  // namespace marn::cuda
