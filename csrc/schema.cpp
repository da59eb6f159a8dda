// The marn operator schemas, registered once; each device's kernels register in their own file.
#include <torch/library.h>

TORCH_LIBRARY(marn, m) {
  // One APGRU step from the precomputed input projection (x W_ih^T + b_ih, with P_z p added to the
  // update-gate block). workspace holds r, z, n and the hidden n-gate (h W_hn^T + b_hn) for backward.
  m.def(
      "apgru_cell(Tensor input_gates, Tensor h, Tensor weight_hh, Tensor bias_hh)"
      " -> (Tensor h_new, Tensor workspace)");
  m.def(
      "apgru_cell_backward(Tensor grad_h_new, Tensor h, Tensor weight_hh, Tensor workspace)"
      " -> (Tensor grad_input_gates, Tensor grad_h, Tensor grad_weight_hh, Tensor grad_bias_hh)");
  // Length-aware: rows run sorted by length (descending, stable), each step over the rows still
  // running; padded positions of x, prop and grad_out are never read. The workspace is
  // [B, T, 5H] viewed as [B*T, 5H]: packed row p (PackedSequence's time-major order, one per real
  // step) holds r, z, n, the hidden n-gate and h_prev; rows past the sum of lengths are zero.
  // Without save_workspace (inference) it is [B, T, 0] and backward cannot run.
  m.def(
      "apgru_sequence(Tensor x, Tensor prop, Tensor lengths, Tensor h0, Tensor weight_ih,"
      " Tensor weight_hh, Tensor bias_ih, Tensor bias_hh, Tensor weight_pz,"
      " bool save_workspace=True) -> (Tensor out, Tensor h_last, Tensor workspace)");
  m.def(
      "apgru_sequence_backward(Tensor grad_out, Tensor grad_h_last, Tensor x, Tensor prop,"
      " Tensor lengths, Tensor h0, Tensor weight_ih, Tensor weight_hh, Tensor weight_pz,"
      " Tensor workspace)"
      " -> (Tensor grad_x, Tensor grad_prop, Tensor grad_h0, Tensor grad_weight_ih,"
      " Tensor grad_weight_hh, Tensor grad_bias_ih, Tensor grad_bias_hh, Tensor grad_weight_pz)");
  // rows[n, k*G + g] is the row of statistic k's bucket in table g, saved for backward.
  m.def(
      "multi_granularity_embedding(Tensor values, Tensor[] boundaries, Tensor[] tables)"
      " -> (Tensor out, Tensor rows)");
  m.def(
      "multi_granularity_embedding_backward(Tensor grad_out, Tensor rows, SymInt[] table_rows,"
      " bool deterministic) -> Tensor[]");
}
