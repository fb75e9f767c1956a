#include "kernels/rms_norm.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace ttt::kernels {
namespace {

// A warp per row (rows are 64 to a few thousand values), four rows per block.
constexpr int kWarps = 4;

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename X, typename Y>
__global__ void __launch_bounds__(32 * kWarps)
    forward_rows(const X* __restrict__ x, const float* __restrict__ gain, int64_t rows, int64_t dim, float eps,
                 Y* __restrict__ y, float* __restrict__ rstd) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const X* in = x + row * dim;
  float squares = 0.f;
  for (int64_t j = lane; j < dim; j += 32) {
    const float v = load(in, j);
    squares += v * v;
  }
  const float r = rsqrtf(warp_sum(squares) / static_cast<float>(dim) + eps);
  Y* out = y + row * dim;
  for (int64_t j = lane; j < dim; j += 32) store(out, j, load(in, j) * r * gain[j]);
  if (lane == 0) rstd[row] = r;
}

template <typename X, typename Y>
__global__ void __launch_bounds__(32 * kWarps)
    backward_rows(const X* __restrict__ x, const float* __restrict__ gain, const float* __restrict__ rstd,
                  const Y* __restrict__ dy, int64_t rows, int64_t dim, X* __restrict__ dx) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const X* in = x + row * dim;
  const Y* grad = dy + row * dim;
  float dot = 0.f;
  for (int64_t j = lane; j < dim; j += 32) dot += gain[j] * load(grad, j) * load(in, j);
  dot = warp_sum(dot);
  const float r = rstd[row], correction = r * r * r / static_cast<float>(dim) * dot;
  X* out = dx + row * dim;
  for (int64_t j = lane; j < dim; j += 32) store(out, j, r * gain[j] * load(grad, j) - correction * load(in, j));
}

const char* launched() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

template <typename X, typename Y>
const char* forward(const void* x, const float* gain, int64_t rows, int64_t dim, double eps, void* y, float* rstd,
                    cudaStream_t stream) {
  const int64_t blocks = (rows + kWarps - 1) / kWarps;
  forward_rows<X, Y><<<blocks, 32 * kWarps, 0, stream>>>(static_cast<const X*>(x), gain, rows, dim,
                                                           static_cast<float>(eps), static_cast<Y*>(y), rstd);
  return launched();
}

template <typename X, typename Y>
const char* backward(const void* x, const float* gain, const float* rstd, const void* dy, int64_t rows, int64_t dim,
                     void* dx, cudaStream_t stream) {
  const int64_t blocks = (rows + kWarps - 1) / kWarps;
  backward_rows<X, Y><<<blocks, 32 * kWarps, 0, stream>>>(static_cast<const X*>(x), gain, rstd,
                                                            static_cast<const Y*>(dy), rows, dim, static_cast<X*>(dx));
  return launched();
}

}  // namespace

const char* rms_norm_forward(const void* x, NormType x_type, const float* gain, int64_t rows, int64_t dim, double eps,
                             void* y, NormType y_type, float* rstd, void* stream) {
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  const bool x16 = x_type == NormType::kBFloat16, y16 = y_type == NormType::kBFloat16;
  if (x16 && y16) return forward<__nv_bfloat16, __nv_bfloat16>(x, gain, rows, dim, eps, y, rstd, s);
  if (x16) return forward<__nv_bfloat16, float>(x, gain, rows, dim, eps, y, rstd, s);
  if (y16) return forward<float, __nv_bfloat16>(x, gain, rows, dim, eps, y, rstd, s);
  return forward<float, float>(x, gain, rows, dim, eps, y, rstd, s);
}

const char* rms_norm_backward(const void* x, NormType x_type, const float* gain, const float* rstd, const void* dy,
                              NormType y_type, int64_t rows, int64_t dim, void* dx, void* stream) {
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  const bool x16 = x_type == NormType::kBFloat16, y16 = y_type == NormType::kBFloat16;
  if (x16 && y16) return backward<__nv_bfloat16, __nv_bfloat16>(x, gain, rstd, dy, rows, dim, dx, s);
  if (x16) return backward<__nv_bfloat16, float>(x, gain, rstd, dy, rows, dim, dx, s);
  if (y16) return backward<float, __nv_bfloat16>(x, gain, rstd, dy, rows, dim, dx, s);
  return backward<float, float>(x, gain, rstd, dy, rows, dim, dx, s);
}

}  // namespace ttt::kernels
