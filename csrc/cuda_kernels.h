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

// A [B, T, cols] tensor read or written at (order[i], t) for the i-th row of a step.
template <typename scalar_t>
struct Padded {
  scalar_t* data = nullptr;
  int64_t batch_stride = 0, time_stride = 0;
  const int64_t* order = nullptr;
  MARN_HOST_DEVICE scalar_t* row(int64_t i, int64_t t) const {
    return data + order[i] * batch_stride + t * time_stride;
  }
};

// h_next may alias h_prev (each element is read before it is written); workspace may be null.
template <typename scalar_t>
struct GateForwardArgs {
  Rows<scalar_t> input_gates, hidden_gates, h_prev, h_next, workspace;
  Padded<scalar_t> out;  // null for a single cell
  int64_t t, rows, hidden;
};

// grad_h_prev_direct may alias grad_h.
template <typename scalar_t>
struct GateBackwardArgs {
  Rows<scalar_t> grad_h, h_prev, workspace, grad_input_gates, grad_hidden_gates,
      grad_h_prev_direct;
  Padded<scalar_t> grad_out;  // null for a single cell
  int64_t t, rows, hidden;
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
