#include "kernels/attention_probs.h"
#include "kernels/common.cuh"

#include <initializer_list>

namespace ttt::kernels {
namespace {

// One block per row (a row is up to window + mini_batch keys); passes over it re-read L2.
constexpr int kThreads = 256;
constexpr float kLog2e = 1.4426950408889634f;

// Row `row`'s band: query i = row % queries sees keys lo..hi (offset = keys - queries: the
// cached keys come first), and its probabilities are exp(s - lse) there, 0 elsewhere.
struct Band {
  int64_t lo, hi;
  float lse_log2e;  // lse * log2(e): the probability as 2^(s log2(e) - lse log2(e)), one FMA
};

__device__ __forceinline__ Band band_of(int64_t row, int64_t queries, int64_t keys, int64_t window, float lse) {
  const int64_t hi = row % queries + keys - queries;
  return {window > 0 && hi - window + 1 > 0 ? hi - window + 1 : 0, hi, lse * kLog2e};
}

// The probabilities [j, j + kVec) of a row recomputed from its scores s (fp32).
template <int kVec, typename T>
__device__ __forceinline__ void load_probs(const T* s, int64_t j, const Band& band, float (&p)[kVec]) {
  load_pack(s, j, p);
#pragma unroll
  for (int m = 0; m < kVec; ++m) {
    p[m] = j + m >= band.lo && j + m <= band.hi ? exp2f(fmaf(p[m], kLog2e, -band.lse_log2e)) : 0.f;
  }
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    forward_rows(const T* __restrict__ scores, int64_t queries, int64_t keys, int64_t window, float* __restrict__ lse,
                 T* __restrict__ probs) {
  const int64_t row = blockIdx.x;
  const T* s = scores + row * keys;
  Band band = band_of(row, queries, keys, window, 0.f);
  MaxSum acc{-INFINITY, 0.f};
  for (int64_t j = band.lo + threadIdx.x; j <= band.hi; j += kThreads) acc = merge(acc, {load(s, j), 1.f});
  acc = block_reduce<kThreads>(acc, merge, MaxSum{-INFINITY, 0.f});
  const float row_lse = acc.max + logf(acc.sum);
  band.lse_log2e = row_lse * kLog2e;
  T* p = probs + row * keys;
  for (int64_t j = threadIdx.x * kVec; j < keys; j += kThreads * kVec) {
    float value[kVec];
    load_probs(s, j, band, value);
    store_pack(p, j, value);
  }
  if (threadIdx.x == 0 && lse != nullptr) lse[row] = row_lse;
}

// The backward kernels read the probabilities the forward wrote (0 outside the band), so the
// scores need not outlive the forward.
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    backward_rows(const T* __restrict__ probs, const T* __restrict__ grad_probs, int64_t keys,
                  T* __restrict__ grad_scores, float* __restrict__ dots) {
  const int64_t row = blockIdx.x, base = row * keys;
  const T* p = probs + base;
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
  if (threadIdx.x == 0) dots[row] = d;
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
    double_backward_rows(const T* __restrict__ probs, const T* __restrict__ grad_probs, const float* __restrict__ dots,
                         const T* __restrict__ grad_of_grad_scores, const T* __restrict__ grad_of_probs, int64_t keys,
                         T* __restrict__ grad_of_grad_probs, T* __restrict__ grad_of_scores) {
  const int64_t row = blockIdx.x, base = row * keys;
  const T* p = probs + base;
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
  const float d = dots[row], e = sums.pg, f = sums.pa + sums.pgdp - 2.f * d * e;
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

// What `dispatch` hands its launch: the storage type and the pack width, as types.
template <typename T, int kVec>
struct Layout {
  using Type = T;
  static constexpr int kVector = kVec;
};

// Rows are read and written kVec elements at a time. Calls launch(Layout<T, kVec>{}) for the
// storage of `type` (fp32 or bf16) with the widest packs, 8, 4 or 1 elements, that rows of
// `keys` elements at these addresses allow (every row's start aligned to the pack); returns
// the launch's error text or null.
template <typename Launch>
const char* dispatch(Storage type, int64_t keys, std::initializer_list<const void*> pointers, Launch launch) {
  if (type == Storage::kFloat16) return "fp16 is not supported";
  const auto widest = [&](auto tag) {
    using T = decltype(tag);
    if (packs_fit<T>(pointers, keys, 8)) {
      launch(Layout<T, 8>{});
    } else if (packs_fit<T>(pointers, keys, 4)) {
      launch(Layout<T, 4>{});
    } else {
      launch(Layout<T, 1>{});
    }
  };
  if (type == Storage::kBFloat16) {
    widest(__nv_bfloat16());
  } else {
    widest(float());
  }
  return launched();
}

}  // namespace

const char* attention_probs_forward(const void* scores, Storage type, int64_t heads, int64_t queries, int64_t keys,
                                    int64_t window, float* lse, void* probs, void* stream) {
  const int64_t rows = heads * queries;
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch(type, keys, {scores, probs}, [&](auto layout) {
    using T = typename decltype(layout)::Type;
    forward_rows<T, decltype(layout)::kVector>
        <<<rows, kThreads, 0, s>>>(static_cast<const T*>(scores), queries, keys, window, lse, static_cast<T*>(probs));
  });
}

const char* attention_probs_backward(const void* probs, const void* grad_probs, Storage type, int64_t rows,
                                     int64_t keys, void* grad_scores, float* dots, void* stream) {
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch(type, keys, {probs, grad_probs, grad_scores}, [&](auto layout) {
    using T = typename decltype(layout)::Type;
    backward_rows<T, decltype(layout)::kVector><<<rows, kThreads, 0, s>>>(
        static_cast<const T*>(probs), static_cast<const T*>(grad_probs), keys, static_cast<T*>(grad_scores), dots);
  });
}

const char* attention_probs_double_backward(const void* probs, const void* grad_probs, const float* dots,
                                            const void* grad_of_grad_scores, const void* grad_of_probs, Storage type,
                                            int64_t rows, int64_t keys, void* grad_of_grad_probs, void* grad_of_scores,
                                            void* stream) {
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  const std::initializer_list<const void*> rows_of = {probs,         grad_probs,         grad_of_grad_scores,
                                                      grad_of_probs, grad_of_grad_probs, grad_of_scores};
  return dispatch(type, keys, rows_of, [&](auto layout) {
    using T = typename decltype(layout)::Type;
    double_backward_rows<T, decltype(layout)::kVector>
        <<<rows, kThreads, 0, s>>>(static_cast<const T*>(probs), static_cast<const T*>(grad_probs), dots,
                                   static_cast<const T*>(grad_of_grad_scores), static_cast<const T*>(grad_of_probs),
                                   keys, static_cast<T*>(grad_of_grad_probs), static_cast<T*>(grad_of_scores));
  });
}

}  // namespace ttt::kernels
