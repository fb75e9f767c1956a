#include "kernels/attention_probs.h"
#include "kernels/common.cuh"

#include <initializer_list>

namespace ttt::kernels {
namespace {

// One block per row (a row is up to window + mini_batch keys); passes over it re-read L2.
constexpr int kThreads = 256;

// Rows are read and written kVec elements at a time: 4 where every row's start is aligned to
// 4 elements (the key count a multiple of 4, the pointers to 16 bytes), else 1.
constexpr int kWide = 4;

template <typename T, int kVec>
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
  for (int64_t j = threadIdx.x * kVec; j < keys; j += kThreads * kVec) {
    float value[kVec];
    load_pack(s, j, value);
#pragma unroll
    for (int m = 0; m < kVec; ++m) {
      value[m] = j + m >= lo && j + m <= hi ? expf(value[m] - acc.max) * inverse : 0.f;
    }
    store_pack(p32, j, value);
    if (p != nullptr) store_pack(p, j, value);
  }
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    backward_rows(const float* __restrict__ probs32, const T* __restrict__ grad_probs, int64_t keys,
                  T* __restrict__ grad_scores, float* __restrict__ dots) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * keys;
  const float* p = probs32 + base;
  const T* dp = grad_probs + base;
  float partial = 0.f;
  for (int64_t j = threadIdx.x * kVec; j < keys; j += kThreads * kVec) {
    float pv[kVec], dpv[kVec];
    load_pack(p, j, pv);
    load_pack(dp, j, dpv);
#pragma unroll
    for (int m = 0; m < kVec; ++m) partial += pv[m] * dpv[m];
  }
  const float d = block_sum<kThreads>(partial);
  T* out = grad_scores + base;
  for (int64_t j = threadIdx.x * kVec; j < keys; j += kThreads * kVec) {
    float pv[kVec], dpv[kVec];
    load_pack(p, j, pv);
    load_pack(dp, j, dpv);
#pragma unroll
    for (int m = 0; m < kVec; ++m) dpv[m] = pv[m] * (dpv[m] - d);
    store_pack(out, j, dpv);
  }
  if (threadIdx.x == 0) dots[blockIdx.x] = d;
}

// The three row sums of the double backward, reduced together.
struct RowSums {
  float pg, pa, pgdp;  // sum_j P G, sum_j P A, sum_j P G dP
};

__device__ __forceinline__ RowSums shuffle_xor(RowSums v, int offset) {
  return {kernels::shuffle_xor(v.pg, offset), kernels::shuffle_xor(v.pa, offset), kernels::shuffle_xor(v.pgdp, offset)};
}

// One reduction pass and one writing pass: F = sum_j P Q needs no pass of its own, since with
// sum_j P dP = D it is sum_j P A + sum_j P G dP - 2 D E.
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    double_backward_rows(const float* __restrict__ probs32, const T* __restrict__ grad_probs,
                         const float* __restrict__ dots, const T* __restrict__ grad_of_grad_scores,
                         const T* __restrict__ grad_of_probs, int64_t keys, T* __restrict__ grad_of_grad_probs,
                         T* __restrict__ grad_of_scores) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * keys;
  const float* p = probs32 + base;
  const T* dp = grad_probs + base;
  const T* g = grad_of_grad_scores == nullptr ? nullptr : grad_of_grad_scores + base;
  const T* a = grad_of_probs == nullptr ? nullptr : grad_of_probs + base;
  // The row's terms at j .. j + kVec, read by both passes.
  const auto load_terms = [&](int64_t j, float(&pv)[kVec], float(&dpv)[kVec], float(&gv)[kVec], float(&av)[kVec]) {
    load_pack(p, j, pv);
    load_pack(dp, j, dpv);
    load_pack(g, j, gv);
    load_pack(a, j, av);
  };
  RowSums partial{0.f, 0.f, 0.f};
  for (int64_t j = threadIdx.x * kVec; j < keys; j += kThreads * kVec) {
    float pv[kVec], dpv[kVec], gv[kVec], av[kVec];
    load_terms(j, pv, dpv, gv, av);
#pragma unroll
    for (int m = 0; m < kVec; ++m) {
      partial.pg += pv[m] * gv[m];
      partial.pa += pv[m] * av[m];
      partial.pgdp += pv[m] * gv[m] * dpv[m];
    }
  }
  const RowSums sums = block_reduce<kThreads>(
      partial,
      [](RowSums x, RowSums y) {
        return RowSums{x.pg + y.pg, x.pa + y.pa, x.pgdp + y.pgdp};
      },
      RowSums{0.f, 0.f, 0.f});
  const float d = dots[blockIdx.x], e = sums.pg, f = sums.pa + sums.pgdp - 2.f * d * e;
  T* out_s = grad_of_scores + base;
  T* out_dp = g == nullptr ? nullptr : grad_of_grad_probs + base;
  for (int64_t j = threadIdx.x * kVec; j < keys; j += kThreads * kVec) {
    float pv[kVec], dpv[kVec], gv[kVec], av[kVec], of_scores[kVec];
    load_terms(j, pv, dpv, gv, av);
#pragma unroll
    for (int m = 0; m < kVec; ++m) {
      of_scores[m] = pv[m] * (av[m] + gv[m] * (dpv[m] - d) - e * dpv[m] - f);
      gv[m] = pv[m] * (gv[m] - e);  // the gradient of grad_probs
    }
    store_pack(out_s, j, of_scores);
    if (out_dp != nullptr) store_pack(out_dp, j, gv);
  }
}

// Whether rows of `keys` elements at these addresses take packs of kWide elements.
bool wide_rows(int64_t keys, std::initializer_list<const void*> pointers) {
  if (keys % kWide != 0) return false;
  for (const void* pointer : pointers) {
    if (reinterpret_cast<uintptr_t>(pointer) % (kWide * sizeof(float)) != 0) return false;
  }
  return true;
}

// What `dispatch` hands its launch: the storage type and the pack width, as types.
template <typename T, int kVec>
struct Layout {
  using Type = T;
  static constexpr int kVector = kVec;
};

// Calls launch(Layout<T, kVec>{}) for the storage of `type` (fp32 or bf16) and packs of kWide
// elements where `wide`, else of 1; returns the launch's error text or null.
template <typename Launch>
const char* dispatch(Storage type, bool wide, Launch launch) {
  if (type == Storage::kFloat16) return "fp16 is not supported";
  if (type == Storage::kBFloat16) {
    if (wide) {
      launch(Layout<__nv_bfloat16, kWide>{});
    } else {
      launch(Layout<__nv_bfloat16, 1>{});
    }
  } else if (wide) {
    launch(Layout<float, kWide>{});
  } else {
    launch(Layout<float, 1>{});
  }
  return launched();
}

}  // namespace

const char* attention_probs_forward(const void* scores, Storage type, int64_t heads, int64_t queries, int64_t keys,
                                    int64_t window, float* probs32, void* probs, void* stream) {
  const int64_t rows = heads * queries;
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch(type, wide_rows(keys, {scores, probs32, probs}), [&](auto layout) {
    using T = typename decltype(layout)::Type;
    forward_rows<T, decltype(layout)::kVector><<<rows, kThreads, 0, s>>>(static_cast<const T*>(scores), queries, keys,
                                                                         window, probs32, static_cast<T*>(probs));
  });
}

const char* attention_probs_backward(const float* probs32, const void* grad_probs, Storage type, int64_t rows,
                                     int64_t keys, void* grad_scores, float* dots, void* stream) {
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch(type, wide_rows(keys, {probs32, grad_probs, grad_scores}), [&](auto layout) {
    using T = typename decltype(layout)::Type;
    backward_rows<T, decltype(layout)::kVector><<<rows, kThreads, 0, s>>>(probs32, static_cast<const T*>(grad_probs),
                                                                          keys, static_cast<T*>(grad_scores), dots);
  });
}

const char* attention_probs_double_backward(const float* probs32, const void* grad_probs, const float* dots,
                                            const void* grad_of_grad_scores, const void* grad_of_probs, Storage type,
                                            int64_t rows, int64_t keys, void* grad_of_grad_probs, void* grad_of_scores,
                                            void* stream) {
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  const bool wide =
      wide_rows(keys, {probs32, grad_probs, grad_of_grad_scores, grad_of_probs, grad_of_grad_probs, grad_of_scores});
  return dispatch(type, wide, [&](auto layout) {
    using T = typename decltype(layout)::Type;
    double_backward_rows<T, decltype(layout)::kVector>
        <<<rows, kThreads, 0, s>>>(probs32, static_cast<const T*>(grad_probs), dots,
                                   static_cast<const T*>(grad_of_grad_scores), static_cast<const T*>(grad_of_probs),
                                   keys, static_cast<T*>(grad_of_grad_probs), static_cast<T*>(grad_of_scores));
  });
}

}  // namespace ttt::kernels
