#include "kernels/common.cuh"
#include "kernels/swiglu.h"

#include <initializer_list>
#include <type_traits>

namespace ttt::kernels {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }
// silu'(x) for s = sigmoid(x).
__device__ __forceinline__ float silu_slope(float x, float s) { return s * (1.f + x * (1.f - s)); }

// A thread per kVec values (a 16-byte pack where the tensors allow, else one value).
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    gate_forward(const T* __restrict__ a, const T* __restrict__ b, int64_t n, T* __restrict__ y) {
  for_each_pack<kVec>(n, [&](int64_t j) {
    float x[kVec], w[kVec];
    load_pack(a, j, x);
    load_pack(b, j, w);
#pragma unroll
    for (int m = 0; m < kVec; ++m) x[m] = x[m] / (1.f + expf(-x[m])) * w[m];  // as torch's silu rounds it
    store_pack(y, j, x);
  });
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    gate_backward(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ dy, int64_t n,
                  T* __restrict__ da, T* __restrict__ db) {
  for_each_pack<kVec>(n, [&](int64_t j) {
    float x[kVec], w[kVec], g[kVec], ga[kVec], gb[kVec];
    load_pack(a, j, x);
    load_pack(b, j, w);
    load_pack(dy, j, g);
#pragma unroll
    for (int m = 0; m < kVec; ++m) {
      const float s = sigmoid(x[m]);
      ga[m] = g[m] * w[m] * silu_slope(x[m], s);
      gb[m] = g[m] * (x[m] * s);
    }
    store_pack(da, j, ga);
    store_pack(db, j, gb);
  });
}

// The gradients of gate_backward's da and db (adjoints u and v; null: zero) with respect to
// a, b and dy: with f = silu, f' = s (1 + a (1 - s)), f'' = s (1 - s) (2 + a (1 - 2 s)),
//   g_a = u dy b f''(a) + v dy f'(a),  g_b = u dy f'(a),  g_dy = u b f'(a) + v f(a).
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
    gate_double_backward(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ dy,
                         const T* __restrict__ u, const T* __restrict__ v, int64_t n, T* __restrict__ ga,
                         T* __restrict__ gb, T* __restrict__ gdy) {
  for_each_pack<kVec>(n, [&](int64_t j) {
    float x[kVec], w[kVec], g[kVec], uv[kVec], vv[kVec], out_a[kVec], out_b[kVec], out_dy[kVec];
    load_pack(a, j, x);
    load_pack(b, j, w);
    load_pack(dy, j, g);
    load_pack(u, j, uv);
    load_pack(v, j, vv);
#pragma unroll
    for (int m = 0; m < kVec; ++m) {
      const float s = sigmoid(x[m]);
      const float f1 = silu_slope(x[m], s), f2 = s * (1.f - s) * (2.f + x[m] * (1.f - 2.f * s));
      out_a[m] = uv[m] * g[m] * w[m] * f2 + vv[m] * g[m] * f1;
      out_b[m] = uv[m] * g[m] * f1;
      out_dy[m] = uv[m] * w[m] * f1 + vv[m] * (x[m] * s);
    }
    store_pack(ga, j, out_a);
    store_pack(gb, j, out_b);
    store_pack(gdy, j, out_dy);
  });
}

int blocks_for(int64_t threads) {
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65536 ? blocks : 65536);
}

// Calls launch(T(), kVec) for `type` (bf16 or fp32) with 16-byte packs where n and every
// pointer allow them, else single values.
template <typename Launch>
const char* dispatch(Storage type, int64_t n, std::initializer_list<const void*> pointers, Launch launch) {
  if (type == Storage::kFloat16) return "fp16 is not supported";
  if (type == Storage::kBFloat16) {
    using B = __nv_bfloat16;
    if (packs_fit<B>(pointers, n, 8)) {
      launch(B(), std::integral_constant<int, 8>());
    } else {
      launch(B(), std::integral_constant<int, 1>());
    }
  } else if (packs_fit<float>(pointers, n, 4)) {
    launch(float(), std::integral_constant<int, 4>());
  } else {
    launch(float(), std::integral_constant<int, 1>());
  }
  return launched();
}

}  // namespace

const char* swiglu_gate_forward(const void* a, const void* b, Storage type, int64_t n, void* y, void* stream) {
  if (n == 0) return nullptr;
  return dispatch(type, n, {a, b, y}, [&](auto tag, auto vec) {
    using T = decltype(tag);
    constexpr int kVec = decltype(vec)::value;
    gate_forward<T, kVec><<<blocks_for(n / kVec), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(a), static_cast<const T*>(b), n, static_cast<T*>(y));
  });
}

const char* swiglu_gate_backward(const void* a, const void* b, const void* dy, Storage type, int64_t n, void* da,
                                 void* db, void* stream) {
  if (n == 0) return nullptr;
  return dispatch(type, n, {a, b, dy, da, db}, [&](auto tag, auto vec) {
    using T = decltype(tag);
    constexpr int kVec = decltype(vec)::value;
    gate_backward<T, kVec><<<blocks_for(n / kVec), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(dy), n, static_cast<T*>(da),
        static_cast<T*>(db));
  });
}

const char* swiglu_gate_double_backward(const void* a, const void* b, const void* dy, const void* u, const void* v,
                                        Storage type, int64_t n, void* ga, void* gb, void* gdy, void* stream) {
  if (n == 0) return nullptr;
  return dispatch(type, n, {a, b, dy, u, v, ga, gb, gdy}, [&](auto tag, auto vec) {
    using T = decltype(tag);
    constexpr int kVec = decltype(vec)::value;
    gate_double_backward<T, kVec><<<blocks_for(n / kVec), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(dy), static_cast<const T*>(u),
        static_cast<const T*>(v), n, static_cast<T*>(ga), static_cast<T*>(gb), static_cast<T*>(gdy));
  });
}

}  // namespace ttt::kernels
