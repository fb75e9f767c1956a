#include "kernels/attention_probs.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace ttt::kernels {
namespace {

// One block per row (a row is up to window + mini_batch keys); passes over it re-read L2.
constexpr int kThreads = 256;

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

struct MaxSum {
  float max, sum;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.f};
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity) {
  __shared__ T warps[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const auto warp_reduce = [&](T x) {
    for (int offset = 16; offset > 0; offset >>= 1) {
      T other;
      if constexpr (sizeof(T) == sizeof(float)) {
        other = __shfl_xor_sync(0xffffffffu, x, offset);
      } else {
        other = {__shfl_xor_sync(0xffffffffu, x.max, offset), __shfl_xor_sync(0xffffffffu, x.sum, offset)};
      }
      x = op(x, other);
    }
    return x;
  };
  v = warp_reduce(v);
  __syncthreads();  // the shared slots may still be read from a previous reduction
  if (lane == 0) warps[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_reduce(lane < kThreads / 32 ? warps[lane] : identity);
    if (lane == 0) warps[0] = v;
  }
  __syncthreads();
  return warps[0];
}

__device__ float block_sum(float v) {
  return block_reduce(v, [](float a, float b) { return a + b; }, 0.f);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_rows(const T* __restrict__ scores, int64_t queries, int64_t keys, int64_t window,
                 float* __restrict__ probs32, T* __restrict__ probs) {
  const int64_t row = blockIdx.x, i = row % queries, offset = keys - queries;
  const int64_t hi = i + offset, lo = window > 0 ? (hi - window + 1 > 0 ? hi - window + 1 : 0) : 0;
  const T* s = scores + row * keys;
  MaxSum acc{-INFINITY, 0.f};
  for (int64_t j = lo + threadIdx.x; j <= hi; j += kThreads) acc = merge(acc, {load(s, j), 1.f});
  acc = block_reduce(acc, merge, MaxSum{-INFINITY, 0.f});
  const float inverse = 1.f / acc.sum;
  float* p32 = probs32 + row * keys;
  T* p = probs == nullptr ? nullptr : probs + row * keys;
  for (int64_t j = threadIdx.x; j < keys; j += kThreads) {
    const float value = j >= lo && j <= hi ? expf(load(s, j) - acc.max) * inverse : 0.f;
    p32[j] = value;
    if (p != nullptr) store(p, j, value);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_rows(const float* __restrict__ probs32, const T* __restrict__ grad_probs, int64_t keys,
                  T* __restrict__ grad_scores, float* __restrict__ dots) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * keys;
  const float* p = probs32 + base;
  const T* dp = grad_probs + base;
  float partial = 0.f;
  for (int64_t j = threadIdx.x; j < keys; j += kThreads) partial += p[j] * load(dp, j);
  const float d = block_sum(partial);
  T* out = grad_scores + base;
  for (int64_t j = threadIdx.x; j < keys; j += kThreads) store(out, j, p[j] * (load(dp, j) - d));
  if (threadIdx.x == 0) dots[blockIdx.x] = d;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    double_backward_rows(const float* __restrict__ probs32, const T* __restrict__ grad_probs,
                         const float* __restrict__ dots, const T* __restrict__ adjoint, int64_t keys,
                         T* __restrict__ grad_of_scores, T* __restrict__ grad_of_grad_probs) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * keys;
  const float* p = probs32 + base;
  const T* dp = grad_probs + base;
  const T* g = adjoint + base;
  float partial = 0.f;
  for (int64_t j = threadIdx.x; j < keys; j += kThreads) partial += p[j] * load(g, j);
  const float e = block_sum(partial), d = dots[blockIdx.x];
  const auto q = [&](int64_t j) { return load(g, j) * (load(dp, j) - d) - e * load(dp, j); };
  partial = 0.f;
  for (int64_t j = threadIdx.x; j < keys; j += kThreads) partial += p[j] * q(j);
  const float f = block_sum(partial);
  T* out_s = grad_of_scores + base;
  T* out_dp = grad_of_grad_probs + base;
  for (int64_t j = threadIdx.x; j < keys; j += kThreads) {
    store(out_s, j, p[j] * (q(j) - f));
    store(out_dp, j, p[j] * (load(g, j) - e));
  }
}

const char* launched() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace

const char* attention_probs_forward(const void* scores, ScoreType type, int64_t heads, int64_t queries, int64_t keys,
                                    int64_t window, float* probs32, void* probs, void* stream) {
  const int64_t rows = heads * queries;
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  if (type == ScoreType::kBFloat16) {
    forward_rows<<<rows, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(scores), queries, keys, window, probs32,
                                           static_cast<__nv_bfloat16*>(probs));
  } else {
    forward_rows<<<rows, kThreads, 0, s>>>(static_cast<const float*>(scores), queries, keys, window, probs32,
                                           static_cast<float*>(probs));
  }
  return launched();
}

const char* attention_probs_backward(const float* probs32, const void* grad_probs, ScoreType type, int64_t rows,
                                     int64_t keys, void* grad_scores, float* dots, void* stream) {
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  if (type == ScoreType::kBFloat16) {
    backward_rows<<<rows, kThreads, 0, s>>>(probs32, static_cast<const __nv_bfloat16*>(grad_probs), keys,
                                            static_cast<__nv_bfloat16*>(grad_scores), dots);
  } else {
    backward_rows<<<rows, kThreads, 0, s>>>(probs32, static_cast<const float*>(grad_probs), keys,
                                            static_cast<float*>(grad_scores), dots);
  }
  return launched();
}

const char* attention_probs_double_backward(const float* probs32, const void* grad_probs, const float* dots,
                                            const void* adjoint, ScoreType type, int64_t rows, int64_t keys,
                                            void* grad_of_scores, void* grad_of_grad_probs, void* stream) {
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  if (type == ScoreType::kBFloat16) {
    using B = __nv_bfloat16;
    double_backward_rows<<<rows, kThreads, 0, s>>>(probs32, static_cast<const B*>(grad_probs), dots,
                                                   static_cast<const B*>(adjoint), keys, static_cast<B*>(grad_of_scores),
                                                   static_cast<B*>(grad_of_grad_probs));
  } else {
    double_backward_rows<<<rows, kThreads, 0, s>>>(probs32, static_cast<const float*>(grad_probs), dots,
                                                   static_cast<const float*>(adjoint), keys,
                                                   static_cast<float*>(grad_of_scores),
                                                   static_cast<float*>(grad_of_grad_probs));
  }
  return launched();
}

}  // namespace ttt::kernels
