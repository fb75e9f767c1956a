#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/token_nll.h"

namespace ttt::kernels {
namespace {

// One block per row: a row of the 128K vocabulary is 256 KB of bf16, enough to keep a
// block's loads in flight, and the row's reduction stays in the block.
constexpr int kThreads = 256;

constexpr float kLog2e = 1.4426950408889634f;

// Values per 16-byte load.
template <typename T>
constexpr int kPerLoad = 16 / sizeof(T);

template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    nll_forward(const T* __restrict__ logits, const int64_t* __restrict__ targets, int64_t vocab,
                float* __restrict__ nll, float* __restrict__ lse) {
  const int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  MaxSum acc{-INFINITY, 0.f};
  if constexpr (kVector) {
    // Two packs in flight a thread; the running maximum rescales the sum only when it grows.
    constexpr int kPer = kPerLoad<T>, kUnroll = 2;
    const uint4* packs = reinterpret_cast<const uint4*>(x);
    const int64_t count = vocab / kPer;
    for (int64_t first = threadIdx.x; first < count; first += kUnroll * kThreads) {
      uint4 loaded[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = first + u * kThreads;
        loaded[u] = i < count ? packs[i] : uint4{};
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (first + u * kThreads >= count) break;
        const T* e = reinterpret_cast<const T*>(&loaded[u]);
        float values[kPer], m = acc.max;
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
          values[j] = to_float(e[j]);
          m = fmaxf(m, values[j]);
        }
        if (m == -INFINITY) continue;
        float sum = m == acc.max ? acc.sum : acc.sum * expf(acc.max - m);  // exp(-inf) = 0: no sum yet
        // exp(v - m) as 2^(v log2(e) - m log2(e)): one FMA and the hardware's exp2 a value (the
        // instruction count, not memory, bounds this loop).
        const float shift = m * kLog2e;
#pragma unroll
        for (int j = 0; j < kPer; ++j) sum += exp2f(fmaf(values[j], kLog2e, -shift));
        acc = {m, sum};
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
      const float value = to_float(x[i]);
      if (value != -INFINITY) acc = merge(acc, {value, 1.f});
    }
  }
  acc = block_reduce<kThreads>(acc, merge, MaxSum{-INFINITY, 0.f});
  if (threadIdx.x == 0) {
    const float row_lse = acc.max + logf(acc.sum);
    const int64_t target = targets[row];
    lse[row] = row_lse;
    nll[row] = target >= 0 && target < vocab ? row_lse - to_float(x[target]) : NAN;
  }
}

template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    nll_backward(const T* __restrict__ logits, const int64_t* __restrict__ targets, const float* __restrict__ lse,
                 const float* __restrict__ grad_nll, int64_t vocab, T* __restrict__ grad) {
  const int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  T* g = grad + row * vocab;
  const float row_lse = lse[row], scale = grad_nll[row];
  const int64_t target = targets[row];
  const auto one = [&](float value, int64_t v) { return scale * (expf(value - row_lse) - (v == target ? 1.f : 0.f)); };
  if constexpr (kVector) {
    constexpr int kPer = kPerLoad<T>;
    const uint4* packs = reinterpret_cast<const uint4*>(x);
    uint4* out_packs = reinterpret_cast<uint4*>(g);
    for (int64_t i = threadIdx.x; i < vocab / kPer; i += kThreads) {
      const uint4 pack = packs[i];
      const T* e = reinterpret_cast<const T*>(&pack);
      uint4 out;
      T* o = reinterpret_cast<T*>(&out);
#pragma unroll
      for (int j = 0; j < kPer; ++j) o[j] = from_float<T>(one(to_float(e[j]), i * kPer + j));
      out_packs[i] = out;
    }
  } else {
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) g[i] = from_float<T>(one(to_float(x[i]), i));
  }
}

// Two passes over the row: s = <p, u>, then the gradient (the row stays in L2 between them),
// with the first-order terms of `outer` and `first_order` (either null: none) from the same
// pass.
template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    nll_double_backward(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                        const float* __restrict__ lse, const float* __restrict__ grad_nll,
                        const T* __restrict__ adjoint, const float* __restrict__ outer, int64_t vocab,
                        T* __restrict__ grad, T* __restrict__ first_order, float* __restrict__ grad_scale) {
  const int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  const T* u = adjoint + row * vocab;
  T* g = grad + row * vocab;
  T* f = first_order != nullptr ? first_order + row * vocab : nullptr;
  const float row_lse = lse[row], scale = grad_nll[row], outer_scale = outer != nullptr ? outer[row] : 0.f;
  const int64_t target = targets[row];
  float partial = 0.f;
  if constexpr (kVector) {
    constexpr int kPer = kPerLoad<T>;
    const uint4* x_packs = reinterpret_cast<const uint4*>(x);
    const uint4* u_packs = reinterpret_cast<const uint4*>(u);
    for (int64_t i = threadIdx.x; i < vocab / kPer; i += kThreads) {
      const uint4 xp = x_packs[i], up = u_packs[i];
      const T* xe = reinterpret_cast<const T*>(&xp);
      const T* ue = reinterpret_cast<const T*>(&up);
#pragma unroll
      for (int j = 0; j < kPer; ++j) partial += expf(to_float(xe[j]) - row_lse) * to_float(ue[j]);
    }
  } else {
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) partial += expf(to_float(x[i]) - row_lse) * to_float(u[i]);
  }
  const float s = block_sum<kThreads>(partial);
  // p - [v == target] at probability p of entry v.
  const auto residual = [&](float p, int64_t v) { return p - (v == target ? 1.f : 0.f); };
  const auto one = [&](float p, float adj, int64_t v) {
    const float second = scale * p * (adj - s);
    return outer != nullptr ? second + outer_scale * residual(p, v) : second;
  };
  if constexpr (kVector) {
    constexpr int kPer = kPerLoad<T>;
    const uint4* x_packs = reinterpret_cast<const uint4*>(x);
    const uint4* u_packs = reinterpret_cast<const uint4*>(u);
    uint4* out_packs = reinterpret_cast<uint4*>(g);
    uint4* first_packs = reinterpret_cast<uint4*>(f);
    for (int64_t i = threadIdx.x; i < vocab / kPer; i += kThreads) {
      const uint4 xp = x_packs[i], up = u_packs[i];
      const T* xe = reinterpret_cast<const T*>(&xp);
      const T* ue = reinterpret_cast<const T*>(&up);
      uint4 out, first;
      T* o = reinterpret_cast<T*>(&out);
      T* fo = reinterpret_cast<T*>(&first);
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const float p = expf(to_float(xe[j]) - row_lse);
        o[j] = from_float<T>(one(p, to_float(ue[j]), i * kPer + j));
        if (f != nullptr) fo[j] = from_float<T>(scale * residual(p, i * kPer + j));
      }
      out_packs[i] = out;
      if (f != nullptr) first_packs[i] = first;
    }
  } else {
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
      const float p = expf(to_float(x[i]) - row_lse);
      g[i] = from_float<T>(one(p, to_float(u[i]), i));
      if (f != nullptr) f[i] = from_float<T>(scale * residual(p, i));
    }
  }
  if (threadIdx.x == 0 && grad_scale != nullptr) {
    grad_scale[row] = target >= 0 && target < vocab ? s - to_float(u[target]) : NAN;
  }
}

// Rows of whole 16-byte loads, or the scalar loop.
template <typename T>
bool vectorizable(const void* data, int64_t vocab) {
  return (vocab * static_cast<int64_t>(sizeof(T))) % 16 == 0 && reinterpret_cast<uintptr_t>(data) % 16 == 0;
}

template <typename T>
const char* forward(const void* logits, const int64_t* targets, int64_t rows, int64_t vocab, float* nll, float* lse,
                    cudaStream_t stream) {
  const T* x = static_cast<const T*>(logits);
  if (vectorizable<T>(logits, vocab)) {
    nll_forward<T, true><<<rows, kThreads, 0, stream>>>(x, targets, vocab, nll, lse);
  } else {
    nll_forward<T, false><<<rows, kThreads, 0, stream>>>(x, targets, vocab, nll, lse);
  }
  return launched();
}

template <typename T>
const char* backward(const void* logits, const int64_t* targets, const float* lse, const float* grad_nll, int64_t rows,
                     int64_t vocab, void* grad_logits, cudaStream_t stream) {
  const T* x = static_cast<const T*>(logits);
  T* g = static_cast<T*>(grad_logits);
  if (vectorizable<T>(logits, vocab) && vectorizable<T>(grad_logits, vocab)) {
    nll_backward<T, true><<<rows, kThreads, 0, stream>>>(x, targets, lse, grad_nll, vocab, g);
  } else {
    nll_backward<T, false><<<rows, kThreads, 0, stream>>>(x, targets, lse, grad_nll, vocab, g);
  }
  return launched();
}

template <typename T>
const char* double_backward(const void* logits, const int64_t* targets, const float* lse, const float* grad_nll,
                            const void* adjoint, const float* outer, int64_t rows, int64_t vocab, void* grad_logits,
                            void* first_order, float* grad_scale, cudaStream_t stream) {
  const T* x = static_cast<const T*>(logits);
  const T* u = static_cast<const T*>(adjoint);
  T* g = static_cast<T*>(grad_logits);
  T* f = static_cast<T*>(first_order);
  if (vectorizable<T>(logits, vocab) && vectorizable<T>(adjoint, vocab) && vectorizable<T>(grad_logits, vocab) &&
      (f == nullptr || vectorizable<T>(first_order, vocab))) {
    nll_double_backward<T, true>
        <<<rows, kThreads, 0, stream>>>(x, targets, lse, grad_nll, u, outer, vocab, g, f, grad_scale);
  } else {
    nll_double_backward<T, false>
        <<<rows, kThreads, 0, stream>>>(x, targets, lse, grad_nll, u, outer, vocab, g, f, grad_scale);
  }
  return launched();
}

}  // namespace

const char* token_nll_forward(const void* logits, Storage type, const int64_t* targets, int64_t rows, int64_t vocab,
                              float* nll, float* lse, void* stream) {
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (type) {
    case Storage::kFloat32:
      return forward<float>(logits, targets, rows, vocab, nll, lse, s);
    case Storage::kBFloat16:
      return forward<__nv_bfloat16>(logits, targets, rows, vocab, nll, lse, s);
    case Storage::kFloat16:
      return forward<__half>(logits, targets, rows, vocab, nll, lse, s);
  }
  return "token_nll_forward: unknown logits type";
}

const char* token_nll_backward(const void* logits, Storage type, const int64_t* targets, const float* lse,
                               const float* grad_nll, int64_t rows, int64_t vocab, void* grad_logits, void* stream) {
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (type) {
    case Storage::kFloat32:
      return backward<float>(logits, targets, lse, grad_nll, rows, vocab, grad_logits, s);
    case Storage::kBFloat16:
      return backward<__nv_bfloat16>(logits, targets, lse, grad_nll, rows, vocab, grad_logits, s);
    case Storage::kFloat16:
      return backward<__half>(logits, targets, lse, grad_nll, rows, vocab, grad_logits, s);
  }
  return "token_nll_backward: unknown logits type";
}

const char* token_nll_double_backward(const void* logits, Storage type, const int64_t* targets, const float* lse,
                                      const float* grad_nll, const void* adjoint, const float* outer_grad_nll,
                                      int64_t rows, int64_t vocab, void* grad_logits, void* first_order_grad,
                                      float* grad_scale, void* stream) {
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  return with_storage_type(type, [&](auto zero) {
    using T = decltype(zero);
    return double_backward<T>(logits, targets, lse, grad_nll, adjoint, outer_grad_nll, rows, vocab, grad_logits,
                              first_order_grad, grad_scale, s);
  });
}

}  // namespace ttt::kernels
