#include "kernels/softmax_grad.h"

#include <cuda_runtime.h>

namespace ttt::kernels {
namespace {

// One block per row (a row is up to window + mini_batch scores); two passes, the row read
// again from L2.
constexpr int kThreads = 256;

__device__ float block_sum(float v) {
  __shared__ float warps[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (lane == 0) warps[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? warps[lane] : 0.f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) warps[0] = v;
  }
  __syncthreads();
  return warps[0];
}

__global__ void __launch_bounds__(kThreads)
    backward_rows(const float* __restrict__ probs, const float* __restrict__ grad_probs, int64_t cols,
                  float* __restrict__ grad_scores, float* __restrict__ dots) {
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * cols;
  const float* p = probs + offset;
  const float* dp = grad_probs + offset;
  float partial = 0.f;
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) partial += p[j] * dp[j];
  const float d = block_sum(partial);
  float* out = grad_scores + offset;
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) out[j] = p[j] * (dp[j] - d);
  if (threadIdx.x == 0) dots[blockIdx.x] = d;
}

__global__ void __launch_bounds__(kThreads)
    double_backward_rows(const float* __restrict__ probs, const float* __restrict__ grad_probs,
                         const float* __restrict__ dots, const float* __restrict__ adjoint, int64_t cols,
                         float* __restrict__ grad_of_probs, float* __restrict__ grad_of_grad_probs) {
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * cols;
  const float* p = probs + offset;
  const float* dp = grad_probs + offset;
  const float* g = adjoint + offset;
  float partial = 0.f;
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) partial += p[j] * g[j];
  const float e = block_sum(partial), d = dots[blockIdx.x];
  float* out_p = grad_of_probs + offset;
  float* out_dp = grad_of_grad_probs + offset;
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) {
    const float gj = g[j], dpj = dp[j];
    out_p[j] = gj * (dpj - d) - e * dpj;
    out_dp[j] = p[j] * (gj - e);
  }
}

const char* launched() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace

const char* softmax_backward(const float* probs, const float* grad_probs, int64_t rows, int64_t cols,
                             float* grad_scores, float* dots, void* stream) {
  if (rows == 0) return nullptr;
  backward_rows<<<rows, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(probs, grad_probs, cols, grad_scores, dots);
  return launched();
}

const char* softmax_double_backward(const float* probs, const float* grad_probs, const float* dots,
                                    const float* adjoint, int64_t rows, int64_t cols, float* grad_of_probs,
                                    float* grad_of_grad_probs, void* stream) {
  if (rows == 0) return nullptr;
  double_backward_rows<<<rows, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      probs, grad_probs, dots, adjoint, cols, grad_of_probs, grad_of_grad_probs);
  return launched();
}

}  // namespace ttt::kernels
