#include "kernels/attention_probs.h"
#include "kernels/common.cuh"

namespace ttt::kernels {
namespace {

// One block per row (a row is up to window + mini_batch keys); passes over it re-read L2.
constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_rows(const T* __restrict__ scores, int64_t queries, int64_t keys, int64_t window,
                 float* __restrict__ probs32, T* __restrict__ probs) {
  const int64_t row = blockIdx.x, i = row % queries, offset = keys - queries;
  const int64_t hi = i + offset, lo = window > 0 ? (hi - window + 1 > 0 ? hi - window + 1 : 0) : 0;
  const T* s = scores + row * keys;
  MaxSum acc{-INFINITY, 0.f};
  for (int64_t j = lo + threadIdx.x; j <= hi; j += kThreads) acc = merge(acc, {load(s, j), 1.f});
  acc = block_reduce<kThreads>(acc, merge, MaxSum{-INFINITY, 0.f});
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
  const float d = block_sum<kThreads>(partial);
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
  const float e = block_sum<kThreads>(partial), d = dots[blockIdx.x];
  const auto q = [&](int64_t j) { return load(g, j) * (load(dp, j) - d) - e * load(dp, j); };
  partial = 0.f;
  for (int64_t j = threadIdx.x; j < keys; j += kThreads) partial += p[j] * q(j);
  const float f = block_sum<kThreads>(partial);
  T* out_s = grad_of_scores + base;
  T* out_dp = grad_of_grad_probs + base;
  for (int64_t j = threadIdx.x; j < keys; j += kThreads) {
    store(out_s, j, p[j] * (q(j) - f));
    store(out_dp, j, p[j] * (load(g, j) - e));
  }
}

}  // namespace

const char* attention_probs_forward(const void* scores, Storage type, int64_t heads, int64_t queries, int64_t keys,
                                    int64_t window, float* probs32, void* probs, void* stream) {
  const int64_t rows = heads * queries;
  if (rows == 0) return nullptr;
  if (type == Storage::kFloat16) return "fp16 is not supported";
  const auto s = static_cast<cudaStream_t>(stream);
  if (type == Storage::kBFloat16) {
    forward_rows<<<rows, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(scores), queries, keys, window, probs32,
                                           static_cast<__nv_bfloat16*>(probs));
  } else {
    forward_rows<<<rows, kThreads, 0, s>>>(static_cast<const float*>(scores), queries, keys, window, probs32,
                                           static_cast<float*>(probs));
  }
  return launched();
}

const char* attention_probs_backward(const float* probs32, const void* grad_probs, Storage type, int64_t rows,
                                     int64_t keys, void* grad_scores, float* dots, void* stream) {
  if (rows == 0) return nullptr;
  if (type == Storage::kFloat16) return "fp16 is not supported";
  const auto s = static_cast<cudaStream_t>(stream);
  if (type == Storage::kBFloat16) {
    backward_rows<<<rows, kThreads, 0, s>>>(probs32, static_cast<const __nv_bfloat16*>(grad_probs), keys,
                                            static_cast<__nv_bfloat16*>(grad_scores), dots);
  } else {
    backward_rows<<<rows, kThreads, 0, s>>>(probs32, static_cast<const float*>(grad_probs), keys,
                                            static_cast<float*>(grad_scores), dots);
  }
  return launched();
}

const char* attention_probs_double_backward(const float* probs32, const void* grad_probs, const float* dots,
                                            const void* adjoint, Storage type, int64_t rows, int64_t keys,
                                            void* grad_of_scores, void* grad_of_grad_probs, void* stream) {
  if (rows == 0) return nullptr;
  if (type == Storage::kFloat16) return "fp16 is not supported";
  const auto s = static_cast<cudaStream_t>(stream);
  if (type == Storage::kBFloat16) {
    using B = __nv_bfloat16;
    double_backward_rows<<<rows, kThreads, 0, s>>>(
        probs32, static_cast<const B*>(grad_probs), dots, static_cast<const B*>(adjoint), keys,
        static_cast<B*>(grad_of_scores), static_cast<B*>(grad_of_grad_probs));
  } else {
    double_backward_rows<<<rows, kThreads, 0, s>>>(
        probs32, static_cast<const float*>(grad_probs), dots, static_cast<const float*>(adjoint), keys,
        static_cast<float*>(grad_of_scores), static_cast<float*>(grad_of_grad_probs));
  }
  return launched();
}

}  // namespace ttt::kernels
