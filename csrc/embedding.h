// Multi-granularity embedding lookup: checks and layout shared by the CPU and CUDA kernels.
//
// values [N, K]; per granularity g a boundary tensor [K, G_g - 1] (sorted rows) and a table
// [K * (G_g + 1), d]. Slot s = k * |G| + g of output row n holds table g's row
// k * (G_g + 1) + bucket, bucket = number of boundaries below the value (torch.bucketize with
// right=False), and bucket G_g for NaN.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/Exception.h>

#include <vector>

namespace marn {

struct EmbeddingLayout {
  int64_t num_values = 0;        // N
  int64_t num_statistics = 0;    // K
  int64_t num_granularities = 0;  // |G|
  int64_t dim = 0;               // d
  std::vector<int64_t> bins;     // G_g for each granularity

  int64_t slots() const { return num_statistics * num_granularities; }
};

EmbeddingLayout check_embedding_inputs(const at::Tensor& values, at::TensorList boundaries,
                                       at::TensorList tables);

// Checks the shapes of grad_out [N, S, d] and rows [N, S]; returns the table row counts.
std::vector<int64_t> check_embedding_backward_inputs(const at::Tensor& grad_out,
                                                     const at::Tensor& rows,
                                                     c10::SymIntArrayRef table_rows);

inline void check_row_in_range(int64_t row, int64_t granularity, int64_t table_rows) {
  TORCH_CHECK_INDEX(row >= 0 && row < table_rows,
                    "marn::multi_granularity_embedding_backward: rows of granularity ",
                    granularity, " must lie in [0, ", table_rows, "), got ", row);
}

// Reads every row (ATen ops, one device-to-host copy) before a kernel scatters into the tables.
void check_rows_in_range(const at::Tensor& rows, const std::vector<int64_t>& table_rows);

}  // namespace marn
