// APGRU CUDA fused gate kernels: one thread per (row, hidden unit) for r, z, n and the update.
// A step covers only the rows still running (a prefix of the length-sorted order).
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
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < a.rows * H;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / H;
    const int64_t j = k % H;
    const scalar_t* gi = a.input_gates.row(i);
    const scalar_t* gh = a.hidden_gates.row(i);
    const scalar_t r = sigmoid(gi[j] + gh[j]);
    const scalar_t z = sigmoid(gi[H + j] + gh[H + j]);
    const scalar_t hidden_n = gh[2 * H + j];
    const scalar_t n = tanh(gi[2 * H + j] + r * hidden_n);
    const scalar_t h = (scalar_t(1) - z) * n + z * a.h_prev.row(i)[j];
    a.h_next.row(i)[j] = h;
    if (a.out.data != nullptr) a.out.row(i, a.t)[j] = h;
    if (a.workspace.data != nullptr) {
      scalar_t* ws = a.workspace.row(i);
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
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < a.rows * H;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / H;
    const int64_t j = k % H;
    scalar_t dh = a.grad_h.row(i)[j];
    if (a.grad_out.data != nullptr) dh += a.grad_out.row(i, a.t)[j];
    const scalar_t* ws = a.workspace.row(i);
    const scalar_t r = ws[j], z = ws[H + j], n = ws[2 * H + j], hidden_n = ws[3 * H + j];
    const scalar_t grad_n = dh * (scalar_t(1) - z) * (scalar_t(1) - n * n);
    const scalar_t grad_z = dh * (a.h_prev.row(i)[j] - n) * z * (scalar_t(1) - z);
    const scalar_t grad_r = grad_n * hidden_n * r * (scalar_t(1) - r);
    scalar_t* grad_gi = a.grad_input_gates.row(i);
    scalar_t* grad_gh = a.grad_hidden_gates.row(i);
    grad_gi[j] = grad_r;
    grad_gi[H + j] = grad_z;
    grad_gi[2 * H + j] = grad_n;
    grad_gh[j] = grad_r;
    grad_gh[H + j] = grad_z;
    grad_gh[2 * H + j] = grad_n * r;
    a.grad_h_prev_direct.row(i)[j] = dh * z;
  }
}

}  // namespace

template <typename scalar_t>
void launch_gates_forward(const GateForwardArgs<scalar_t>& args, cudaStream_t stream) {
  gates_forward_kernel<scalar_t>
      <<<grid_blocks(args.rows * args.hidden), kThreadsPerBlock, 0, stream>>>(args);
}

template <typename scalar_t>
void launch_gates_backward(const GateBackwardArgs<scalar_t>& args, cudaStream_t stream) {
  gates_backward_kernel<scalar_t>
      <<<grid_blocks(args.rows * args.hidden), kThreadsPerBlock, 0, stream>>>(args);
}

template void launch_gates_forward<float>(const GateForwardArgs<float>&, cudaStream_t);
template void launch_gates_forward<double>(const GateForwardArgs<double>&, cudaStream_t);
template void launch_gates_backward<float>(const GateBackwardArgs<float>&, cudaStream_t);
template void launch_gates_backward<double>(const GateBackwardArgs<double>&, cudaStream_t);

}  // namespace marn::cuda
