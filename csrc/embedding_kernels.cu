// Multi-granularity embedding lookup: CUDA kernels for the lookup and the two backward scatters.
#include "cuda_kernels.h"

namespace marn::cuda {
namespace {

template <typename value_t, typename table_t>
__global__ void lookup_kernel(LookupArgs<value_t, table_t> a) {
  const int64_t slots = a.statistics * a.granularities;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < a.num_values * slots;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / slots;
    const int64_t k = (i % slots) / a.granularities;
    const int64_t g = (i % slots) % a.granularities;
    const int64_t bins = a.meta[3 * g];
    const value_t* first = a.boundaries + a.meta[3 * g + 1] + k * (bins - 1);
    const value_t v = a.values[n * a.statistics + k];
    int64_t bucket = bins;
    if (!isnan(v)) {
      int64_t low = 0, high = bins - 1;  // the count of boundaries strictly below v
      while (low < high) {
        const int64_t mid = (low + high) / 2;
        if (first[mid] < v) {
          low = mid + 1;
        } else {
          high = mid;
        }
      }
      bucket = low;
    }
    const int64_t row = k * (bins + 1) + bucket;
    a.rows[i] = row;
    const table_t* source = a.tables + (a.meta[3 * g + 2] + row) * a.dim;
    for (int64_t j = 0; j < a.dim; ++j) a.out[i * a.dim + j] = source[j];
  }
}

template <typename scalar_t>
__global__ void scatter_atomic_kernel(ScatterAtomicArgs<scalar_t> a) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < a.items * a.dim;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t item = i / a.dim;
    const int64_t row = a.rows[item] + a.table_offsets[item % a.granularities];
    atomicAdd(a.grad_tables + row * a.dim + i % a.dim, a.grad_out[i]);
  }
}

// One thread per (table row, column) sums its run of items in sorted order: deterministic.
template <typename scalar_t>
__global__ void scatter_sorted_kernel(ScatterSortedArgs<scalar_t> a) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < a.runs * a.dim;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t run = i / a.dim;
    const int64_t j = i % a.dim;
    scalar_t sum = 0;
    for (int64_t p = run == 0 ? 0 : a.run_ends[run - 1]; p < a.run_ends[run]; ++p) {
      sum += a.grad_out[a.order[p] * a.dim + j];
    }
    a.grad_tables[a.run_rows[run] * a.dim + j] = sum;
  }
}

}  // namespace

template <typename value_t, typename table_t>
void launch_lookup(const LookupArgs<value_t, table_t>& args, cudaStream_t stream) {
  const int64_t items = args.num_values * args.statistics * args.granularities;
  lookup_kernel<value_t, table_t><<<grid_blocks(items), kThreadsPerBlock, 0, stream>>>(args);
}

template <typename scalar_t>
void launch_scatter_atomic(const ScatterAtomicArgs<scalar_t>& args, cudaStream_t stream) {
  scatter_atomic_kernel<scalar_t>
      <<<grid_blocks(args.items * args.dim), kThreadsPerBlock, 0, stream>>>(args);
}

template <typename scalar_t>
void launch_scatter_sorted(const ScatterSortedArgs<scalar_t>& args, cudaStream_t stream) {
  scatter_sorted_kernel<scalar_t>
      <<<grid_blocks(args.runs * args.dim), kThreadsPerBlock, 0, stream>>>(args);
}

template void launch_lookup<float, float>(const LookupArgs<float, float>&, cudaStream_t);
template void launch_lookup<float, double>(const LookupArgs<float, double>&, cudaStream_t);
template void launch_lookup<double, float>(const LookupArgs<double, float>&, cudaStream_t);
template void launch_lookup<double, double>(const LookupArgs<double, double>&, cudaStream_t);
template void launch_scatter_atomic<float>(const ScatterAtomicArgs<float>&, cudaStream_t);
template void launch_scatter_atomic<double>(const ScatterAtomicArgs<double>&, cudaStream_t);
template void launch_scatter_sorted<float>(const ScatterSortedArgs<float>&, cudaStream_t);
template void launch_scatter_sorted<double>(const ScatterSortedArgs<double>&, cudaStream_t);

}  // namespace marn::cuda
