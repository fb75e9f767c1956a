#include "kernels/common.cuh"
#include "kernels/rope.h"

namespace ttt::kernels {
namespace {

constexpr int kThreads = 256;

// One thread per pair; the _rn intrinsics keep every product and sum rounded on its own.
__global__ void __launch_bounds__(kThreads)
    rotate(const float2* __restrict__ x, const float* __restrict__ cos, const float* __restrict__ sin, int64_t pairs,
           int64_t heads, int64_t half, bool inverse, float2* __restrict__ y) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (p >= pairs) return;
  const int64_t j = p % half, t = p / (half * heads);
  const float c = cos[t * half + j], s = sin[t * half + j];
  const float2 v = x[p];
  float2 out;
  if (!inverse) {
    out.x = __fsub_rn(__fmul_rn(v.x, c), __fmul_rn(v.y, s));
    out.y = __fadd_rn(__fmul_rn(v.x, s), __fmul_rn(v.y, c));
  } else {
    out.x = __fadd_rn(__fmul_rn(v.x, c), __fmul_rn(v.y, s));
    out.y = __fsub_rn(__fmul_rn(v.y, c), __fmul_rn(v.x, s));
  }
  y[p] = out;
}

}  // namespace

const char* rope_forward(const float* x, const float* cos, const float* sin, int64_t tokens, int64_t heads,
                         int64_t head_dim, bool inverse, float* y, void* stream) {
  const int64_t half = head_dim / 2, pairs = tokens * heads * half;
  if (pairs == 0) return nullptr;
  const int64_t blocks = (pairs + kThreads - 1) / kThreads;
  rotate<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const float2*>(x), cos, sin, pairs, heads, half, inverse, reinterpret_cast<float2*>(y));
  return launched();
}

}  // namespace ttt::kernels
