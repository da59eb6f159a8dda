// Multi-granularity embedding lookup: input checks and the CPU kernels.
#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY DEFAULT  // the portable vector code when the build names no instruction set
#endif

#include "embedding.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "checks.h"

namespace marn {

namespace {

constexpr const char* kLookup = "marn::multi_granularity_embedding";
constexpr const char* kLookupBackward = "marn::multi_granularity_embedding_backward";

// A CPU scan for CPU tensors; elsewhere ATen ops and one device-to-host read.
bool sorted_without_nan(const at::Tensor& b) {
  if (b.numel() == 0) return true;
  if (b.is_cpu()) {
    bool ok = true;
    AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "sorted_without_nan", [&] {
      const scalar_t* data = b.const_data_ptr<scalar_t>();
      for (int64_t k = 0; k < b.size(0) && ok; ++k) {
        const scalar_t* row = data + k * b.size(1);
        for (int64_t i = 0; i < b.size(1) && ok; ++i) {
          ok = !std::isnan(row[i]) && (i == 0 || row[i - 1] <= row[i]);
        }
      }
    });
    return ok;
  }
  at::Tensor ok = (b == b).all();  // false where NaN
  if (b.size(1) > 1) {
    ok = ok.logical_and((b.narrow(1, 1, b.size(1) - 1) >= b.narrow(1, 0, b.size(1) - 1)).all());
  }
  return ok.item<bool>();
}

}  // namespace

EmbeddingLayout check_embedding_inputs(const at::Tensor& values, at::TensorList boundaries,
                                       at::TensorList tables) {
  const char* op = kLookup;
  check_dim(op, "values", values, 2, "[N, statistics]");
  check_float_or_double(op, "values", values);
  check_contiguous(op, "values", values);
  TORCH_CHECK_VALUE(!boundaries.empty(), op, ": boundaries must hold at least one granularity");
  TORCH_CHECK_VALUE(boundaries.size() == tables.size(), op, ": got ", boundaries.size(),
                    " boundary tensors but ", tables.size(), " tables; each granularity needs one of each");
  EmbeddingLayout layout;
  layout.num_values = values.size(0);
  layout.num_statistics = values.size(1);
  layout.num_granularities = static_cast<int64_t>(boundaries.size());
  check_dim(op, "tables[0]", tables[0], 2, "[statistics * (bins + 1), dim]");
  layout.dim = tables[0].size(1);
  for (size_t g = 0; g < boundaries.size(); ++g) {
    const std::string b_name = "boundaries[" + std::to_string(g) + "]";
    const std::string t_name = "tables[" + std::to_string(g) + "]";
    const at::Tensor& b = boundaries[g];
    const at::Tensor& table = tables[g];
    check_dim(op, b_name.c_str(), b, 2, "[statistics, bins - 1]");
    check_dtype(op, b_name.c_str(), b, values.scalar_type());
    check_device(op, b_name.c_str(), b, values.device());
    check_contiguous(op, b_name.c_str(), b);
    TORCH_CHECK_VALUE(b.size(0) == layout.num_statistics, op, ": ", b_name, " has ", b.size(0),
                      " rows but values has ", layout.num_statistics, " statistics");
    const int64_t bins = b.size(1) + 1;
    layout.bins.push_back(bins);
    check_dim(op, t_name.c_str(), table, 2, "[statistics * (bins + 1), dim]");
    check_float_or_double(op, t_name.c_str(), table);
    check_dtype(op, t_name.c_str(), table, tables[0].scalar_type());
    check_device(op, t_name.c_str(), table, values.device());
    check_contiguous(op, t_name.c_str(), table);
    check_shape(op, t_name.c_str(), table, {layout.num_statistics * (bins + 1), layout.dim},
                "[statistics * (bins + 1), dim] (one row per bucket plus one for NaN)");
    TORCH_CHECK_VALUE(sorted_without_nan(b), op, ": every row of ", b_name,
                      " must be sorted ascending and free of NaN");
  }
  return layout;
}

std::vector<int64_t> check_embedding_backward_inputs(const at::Tensor& grad_out,
                                                     const at::Tensor& rows,
                                                     c10::SymIntArrayRef table_rows) {
  const char* op = kLookupBackward;
  check_dim(op, "grad_out", grad_out, 3, "[N, slots, dim]");
  check_float_or_double(op, "grad_out", grad_out);
  check_contiguous(op, "grad_out", grad_out);
  check_shape(op, "rows", rows, {grad_out.size(0), grad_out.size(1)}, "[N, slots]");
  check_dtype(op, "rows", rows, at::kLong);
  check_device(op, "rows", rows, grad_out.device());
  check_contiguous(op, "rows", rows);
  const int64_t granularities = static_cast<int64_t>(table_rows.size());
  TORCH_CHECK_VALUE(granularities > 0 && grad_out.size(1) % granularities == 0, op,
                    ": the ", grad_out.size(1), " slots must split evenly over the ",
                    granularities, " granularities");
  std::vector<int64_t> sizes;
  for (const c10::SymInt& size : table_rows) {
    sizes.push_back(size.expect_int());
    TORCH_CHECK_VALUE(sizes.back() >= 0, op, ": table_rows must be >= 0, got ", sizes.back());
  }
  return sizes;
}

void check_rows_in_range(const at::Tensor& rows, const std::vector<int64_t>& table_rows) {
  if (rows.numel() == 0) return;
  const int64_t granularities = static_cast<int64_t>(table_rows.size());
  const at::Tensor by_granularity = rows.view({-1, granularities});
  const at::Tensor lowest = std::get<0>(by_granularity.min(0)).cpu();
  const at::Tensor highest = std::get<0>(by_granularity.max(0)).cpu();
  for (int64_t g = 0; g < granularities; ++g) {
    check_row_in_range(lowest[g].item<int64_t>(), g, table_rows[g]);
    check_row_in_range(highest[g].item<int64_t>(), g, table_rows[g]);
  }
}

namespace {

// Rows of values per parallel chunk: each row costs K * |G| binary searches and copies.
constexpr int64_t kLookupGrain = 256;

// The number of sorted boundaries strictly below v (std::lower_bound's index) by a branchless
// binary search: random values make lower_bound's branches mispredict at every step (measured 3x
// slower at 10 and 100 bins; a vectorized linear count was no faster than this at 100).
template <typename value_t>
int64_t count_below(const value_t* boundaries, int64_t size, value_t v) {
  if (size == 0) return 0;
  const value_t* base = boundaries;
  while (size > 1) {
    const int64_t half = size / 2;
    base = base[half] < v ? base + half : base;
    size -= half;
  }
  return (base - boundaries) + (*base < v);
}

template <typename value_t, typename table_t>
void lookup_cpu_typed(const at::Tensor& values, at::TensorList boundaries, at::TensorList tables,
                      const EmbeddingLayout& layout, at::Tensor& out, at::Tensor& rows) {
  const int64_t statistics = layout.num_statistics;
  const int64_t granularities = layout.num_granularities;
  const int64_t slots = layout.slots();
  const int64_t dim = layout.dim;
  std::vector<const value_t*> boundary_data;
  std::vector<const table_t*> table_data;
  for (int64_t g = 0; g < granularities; ++g) {
    boundary_data.push_back(boundaries[g].const_data_ptr<value_t>());
    table_data.push_back(tables[g].const_data_ptr<table_t>());
  }
  const value_t* value_data = values.const_data_ptr<value_t>();
  table_t* out_data = out.mutable_data_ptr<table_t>();
  int64_t* row_data = rows.mutable_data_ptr<int64_t>();
  at::parallel_for(0, layout.num_values, kLookupGrain, [&](int64_t begin, int64_t end) {
    using Vec = at::vec::Vectorized<table_t>;
    // Slot by slot, so that the inner loop over values keeps the slot's pointers in registers.
    for (int64_t k = 0; k < statistics; ++k) {
      for (int64_t g = 0; g < granularities; ++g) {
        const int64_t bins = layout.bins[g];
        const value_t* first = boundary_data[g] + k * (bins - 1);
        const table_t* table = table_data[g] + k * (bins + 1) * dim;
        const int64_t slot = k * granularities + g;
        for (int64_t n = begin; n < end; ++n) {
          const value_t v = value_data[n * statistics + k];
          const int64_t bucket = std::isnan(v) ? bins : count_below(first, bins - 1, v);
          row_data[n * slots + slot] = k * (bins + 1) + bucket;
          const table_t* source = table + bucket * dim;
          table_t* target = out_data + (n * slots + slot) * dim;
          for (int64_t j = 0; j < dim; j += Vec::size()) {
            const int64_t count = std::min<int64_t>(Vec::size(), dim - j);
            Vec::loadu(source + j, count).store(target + j, count);
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> lookup_cpu(const at::Tensor& values,
                                              at::TensorList boundaries, at::TensorList tables) {
  const EmbeddingLayout layout = check_embedding_inputs(values, boundaries, tables);
  at::Tensor out = at::empty({layout.num_values, layout.slots(), layout.dim}, tables[0].options());
  at::Tensor rows =
      at::empty({layout.num_values, layout.slots()}, values.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "multi_granularity_embedding_cpu", [&] {
    using value_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(tables[0].scalar_type(), "multi_granularity_embedding_cpu", [&] {
      lookup_cpu_typed<value_t, scalar_t>(values, boundaries, tables, layout, out, rows);
    });
  });
  return {out, rows};
}

// Rows of grad_out per partial sum. Fixed, so the summation order does not depend on the thread
// count; at most kMaxPartials partial tables bound the extra memory.
constexpr int64_t kScatterChunk = 2048;
constexpr int64_t kMaxPartials = 64;

// Chunks of rows scatter into their own partial tables in one pass over grad_out; the partials are
// then added in chunk order. Deterministic without atomics, whatever `deterministic` says.
std::vector<at::Tensor> lookup_backward_cpu(const at::Tensor& grad_out, const at::Tensor& rows,
                                            c10::SymIntArrayRef table_rows,
                                            bool /*deterministic*/) {
  const std::vector<int64_t> sizes = check_embedding_backward_inputs(grad_out, rows, table_rows);
  const int64_t num_values = grad_out.size(0);
  const int64_t slots = grad_out.size(1);
  const int64_t dim = grad_out.size(2);
  const int64_t granularities = static_cast<int64_t>(sizes.size());
  std::vector<int64_t> first_rows;
  int64_t total_rows = 0;
  for (const int64_t size : sizes) {
    first_rows.push_back(total_rows);
    total_rows += size;
  }
  const int64_t chunk = std::max(kScatterChunk, (num_values + kMaxPartials - 1) / kMaxPartials);
  const int64_t chunks = std::max<int64_t>(1, (num_values + chunk - 1) / chunk);
  at::Tensor partials = at::zeros({chunks, total_rows, dim}, grad_out.options());
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "multi_granularity_embedding_backward_cpu",
                             [&] {
    using Vec = at::vec::Vectorized<scalar_t>;
    const scalar_t* grad_data = grad_out.const_data_ptr<scalar_t>();
    const int64_t* row_data = rows.const_data_ptr<int64_t>();
    scalar_t* partial_data = partials.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t first_value = c * chunk;
        const int64_t last_value = std::min(num_values, first_value + chunk);
        // Slot by slot, so that the inner loop over values keeps the slot's pointers in registers.
        for (int64_t slot = 0; slot < slots; ++slot) {
          const int64_t granularity = slot % granularities;
          const int64_t rows_in_table = sizes[granularity];
          scalar_t* table = partial_data + (c * total_rows + first_rows[granularity]) * dim;
          for (int64_t n = first_value; n < last_value; ++n) {
            const int64_t row = row_data[n * slots + slot];
            check_row_in_range(row, granularity, rows_in_table);
            scalar_t* target = table + row * dim;
            const scalar_t* source = grad_data + (n * slots + slot) * dim;
            for (int64_t j = 0; j < dim; j += Vec::size()) {
              const int64_t count = std::min<int64_t>(Vec::size(), dim - j);
              (Vec::loadu(target + j, count) + Vec::loadu(source + j, count)).store(target + j, count);
            }
          }
        }
      }
    });
    for (int64_t c = 1; c < chunks; ++c) {
      const scalar_t* partial = partial_data + c * total_rows * dim;
      for (int64_t i = 0; i < total_rows * dim; ++i) partial_data[i] += partial[i];
    }
  });
  std::vector<at::Tensor> grad_tables;
  for (int64_t g = 0; g < granularities; ++g) {
    grad_tables.push_back(partials[0].narrow(0, first_rows[g], sizes[g]).clone());
  }
  return grad_tables;
}

}  // namespace
}  // namespace marn

TORCH_LIBRARY_IMPL(marn, CPU, m) {
  m.impl("multi_granularity_embedding", &marn::lookup_cpu);
  m.impl("multi_granularity_embedding_backward", &marn::lookup_backward_cpu);
}
