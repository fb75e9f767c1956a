#include "kernels/common.cuh"
#include "kernels/rms_norm.h"

namespace ttt::kernels {
namespace {

// A warp per row (rows are 64 to a few thousand values), four rows per block.
constexpr int kWarps = 4;

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

// Calls launch(X(), Y()) with the storage types named by the two dtypes.
template <typename Launch>
const char* with_types(Storage x_type, Storage y_type, Launch launch) {
  const bool x16 = x_type == Storage::kBFloat16, y16 = y_type == Storage::kBFloat16;
  if (x16 && y16) return launch(__nv_bfloat16(), __nv_bfloat16());
  if (x16) return launch(__nv_bfloat16(), float());
  if (y16) return launch(float(), __nv_bfloat16());
  return launch(float(), float());
}

}  // namespace

const char* rms_norm_forward(const void* x, Storage x_type, const float* gain, int64_t rows, int64_t dim, double eps,
                             void* y, Storage y_type, float* rstd, void* stream) {
  if (rows == 0) return nullptr;
  if (x_type == Storage::kFloat16 || y_type == Storage::kFloat16) return "rms_norm: fp16 is not supported";
  return with_types(x_type, y_type, [&](auto x_tag, auto y_tag) {
    using X = decltype(x_tag);
    using Y = decltype(y_tag);
    forward_rows<X, Y><<<(rows + kWarps - 1) / kWarps, 32 * kWarps, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const X*>(x), gain, rows, dim, static_cast<float>(eps), static_cast<Y*>(y), rstd);
    return launched();
  });
}

const char* rms_norm_backward(const void* x, Storage x_type, const float* gain, const float* rstd, const void* dy,
                              Storage y_type, int64_t rows, int64_t dim, void* dx, void* stream) {
  if (rows == 0) return nullptr;
  if (x_type == Storage::kFloat16 || y_type == Storage::kFloat16) return "rms_norm: fp16 is not supported";
  return with_types(x_type, y_type, [&](auto x_tag, auto y_tag) {
    using X = decltype(x_tag);
    using Y = decltype(y_tag);
    backward_rows<X, Y><<<(rows + kWarps - 1) / kWarps, 32 * kWarps, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const X*>(x), gain, rstd, static_cast<const Y*>(dy), rows, dim, static_cast<X*>(dx));
    return launched();
  });
}

}  // namespace ttt::kernels
