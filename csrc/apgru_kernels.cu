// APGRU CUDA fused gate kernels: one thread per (row, hidden unit) for r, z, n and the update.
#include "cuda_kernels.h"

namespace marn::cuda {
namespace {

template <typename scalar_t>
__device__ scalar_t sigmoid(scalar_t v) {
  return scalar_t(1) / (scalar_t(1) + exp(-v));
}

template <typename scalar_t>
__global__ void gates_forward_kernel(GateForwardArgs<scalar_t> a) {
  const int64_t H = a.hidden;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < a.batch * H;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / H;
    const int64_t j = i % H;
    scalar_t* ws = a.workspace.data != nullptr ? a.workspace.row(b) : nullptr;
    if (a.lengths != nullptr && a.t >= a.lengths[b]) {
      a.h_next.row(b)[j] = a.h_prev.row(b)[j];
      if (a.out.data != nullptr) a.out.row(b)[j] = scalar_t(0);
      if (ws != nullptr) ws[j] = ws[H + j] = ws[2 * H + j] = ws[3 * H + j] = scalar_t(0);
      continue;
    }
    const scalar_t* gi = a.input_gates.row(b);
    const scalar_t* gh = a.hidden_gates.row(b);
    const scalar_t r = sigmoid(gi[j] + gh[j]);
    const scalar_t z = sigmoid(gi[H + j] + gh[H + j]);
    const scalar_t hidden_n = gh[2 * H + j];
    const scalar_t n = tanh(gi[2 * H + j] + r * hidden_n);
    const scalar_t h = (scalar_t(1) - z) * n + z * a.h_prev.row(b)[j];
    a.h_next.row(b)[j] = h;
    if (a.out.data != nullptr) a.out.row(b)[j] = h;
    if (ws != nullptr) {
      ws[j] = r;
      ws[H + j] = z;
      ws[2 * H + j] = n;
      ws[3 * H + j] = hidden_n;
    }
  }
}

template <typename scalar_t>
__global__ void gates_backward_kernel(GateBackwardArgs<scalar_t> a) {
  const int64_t H = a.hidden;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < a.batch * H;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / H;
    const int64_t j = i % H;
    scalar_t* grad_gi = a.grad_input_gates.row(b);
    scalar_t* grad_gh = a.grad_hidden_gates.row(b);
    if (a.lengths != nullptr && a.t >= a.lengths[b]) {
      // A padded step passes the carried gradient through; its output is a constant zero.
      a.grad_h_prev_direct.row(b)[j] = a.grad_h.row(b)[j];
      grad_gi[j] = grad_gi[H + j] = grad_gi[2 * H + j] = scalar_t(0);
      grad_gh[j] = grad_gh[H + j] = grad_gh[2 * H + j] = scalar_t(0);
      continue;
    }
    scalar_t dh = a.grad_h.row(b)[j];
    if (a.grad_out.data != nullptr) dh += a.grad_out.row(b)[j];
    const scalar_t* ws = a.workspace.row(b);
    const scalar_t r = ws[j], z = ws[H + j], n = ws[2 * H + j], hidden_n = ws[3 * H + j];
    const scalar_t grad_n = dh * (scalar_t(1) - z) * (scalar_t(1) - n * n);
    const scalar_t grad_z = dh * (a.h_prev.row(b)[j] - n) * z * (scalar_t(1) - z);
    const scalar_t grad_r = grad_n * hidden_n * r * (scalar_t(1) - r);
    grad_gi[j] = grad_r;
    grad_gi[H + j] = grad_z;
    grad_gi[2 * H + j] = grad_n;
    grad_gh[j] = grad_r;
    grad_gh[H + j] = grad_z;
    grad_gh[2 * H + j] = grad_n * r;
    a.grad_h_prev_direct.row(b)[j] = dh * z;
  }
}

}  // namespace

template <typename scalar_t>
void launch_gates_forward(const GateForwardArgs<scalar_t>& args, cudaStream_t stream) {
  gates_forward_kernel<scalar_t>
      <<<grid_blocks(args.batch * args.hidden), kThreadsPerBlock, 0, stream>>>(args);
}

template <typename scalar_t>
void launch_gates_backward(const GateBackwardArgs<scalar_t>& args, cudaStream_t stream) {
  gates_backward_kernel<scalar_t>
      <<<grid_blocks(args.batch * args.hidden), kThreadsPerBlock, 0, stream>>>(args);
}

template void launch_gates_forward<float>(const GateForwardArgs<float>&, cudaStream_t);
template void launch_gates_forward<double>(const GateForwardArgs<double>&, cudaStream_t);
template void launch_gates_backward<float>(const GateBackwardArgs<float>&, cudaStream_t);
template void launch_gates_backward<double>(const GateBackwardArgs<double>&, cudaStream_t);

}  // namespace marn::cuda
