// What our kernels share: fp32 arithmetic on fp32, bf16 or fp16 storage, the (max,
// sum-of-exponentials) pair that softmax-like reductions merge, and the launch check.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "kernels/storage.h"

namespace ttt::kernels {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half(x);
}

// Element i of p as fp32, and v stored into it.
template <typename T>
__device__ __forceinline__ float load(const T* p, int64_t i) {
  return to_float(p[i]);
}
template <typename T>
__device__ __forceinline__ void store(T* p, int64_t i, float v) {
  p[i] = from_float<T>(v);
}

// kVec consecutive elements moved at once: 16 bytes (8 of bf16 or fp16, 4 of fp32) in one
// access, 32 bytes (8 of fp32) in two. The address must be aligned to packs_fit's bytes.
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec < 16 ? sizeof(T) * kVec : 16) Pack {
  T v[kVec];
};

// Elements [j, j + kVec) of p as fp32 (j a multiple of kVec), or zeros where p is null.
template <int kVec, typename T>
__device__ __forceinline__ void load_pack(const T* p, int64_t j, float (&out)[kVec]) {
  if (p == nullptr) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = 0.f;
    return;
  }
  const Pack<T, kVec> raw = *reinterpret_cast<const Pack<T, kVec>*>(p + j);
#pragma unroll
  for (int i = 0; i < kVec; ++i) out[i] = to_float(raw.v[i]);
}

template <int kVec, typename T>
__device__ __forceinline__ void store_pack(T* p, int64_t j, const float (&values)[kVec]) {
  Pack<T, kVec> raw;
#pragma unroll
  for (int i = 0; i < kVec; ++i) raw.v[i] = from_float<T>(values[i]);
  *reinterpret_cast<Pack<T, kVec>*>(p + j) = raw;
}

// Whether rows of `row_elements` values of T, the first at p (null: no tensor), take packs of
// kVec: every row starts on a pack's alignment.
template <typename T>
inline bool packs_fit(const void* p, int64_t row_elements, int kVec) {
  const size_t bytes = sizeof(T) * kVec < 16 ? sizeof(T) * kVec : 16;
  return row_elements % kVec == 0 && reinterpret_cast<uintptr_t>(p) % bytes == 0;
}
// The same for rows of T at every one of `pointers`.
template <typename T>
inline bool packs_fit(std::initializer_list<const void*> pointers, int64_t row_elements, int kVec) {
  for (const void* p : pointers) {
    if (!packs_fit<T>(p, row_elements, kVec)) return false;
  }
  return true;
}

// f(j) for the first element j of every kVec-value pack of an n-value tensor (n a multiple of
// kVec), the packs dealt to the grid's threads in turn.
template <int kVec, typename F>
__device__ __forceinline__ void for_each_pack(int64_t n, F&& f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n / kVec; i += stride) {
    f(i * kVec);
  }
}

// f(T()) with T the C++ type of `type`'s values (fp32 for kFloat32), on the host or the
// device as f is (the pragma, as CUB's, lets one template serve both).
#pragma nv_exec_check_disable
template <typename F>
__host__ __device__ __forceinline__ auto with_storage_type(Storage type, F&& f) {
  switch (type) {
    case Storage::kBFloat16:
      return f(__nv_bfloat16());
    case Storage::kFloat16:
      return f(__half());
    default:
      return f(float());
  }
}

// max and sum(exp(x - max)) of a set of values: merged without a second pass.
struct MaxSum {
  float max, sum;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.f};
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

__device__ __forceinline__ float shuffle_xor(float v, int offset) { return __shfl_xor_sync(0xffffffffu, v, offset); }
__device__ __forceinline__ MaxSum shuffle_xor(MaxSum v, int offset) {
  return {shuffle_xor(v.max, offset), shuffle_xor(v.sum, offset)};
}

// Over a warp's 32 lanes; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// `op` over a block of kThreads threads (a multiple of 32); every thread gets the result.
// Safe to call several times in a row (the shared slots are reused).
template <int kThreads, typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity) {
  __shared__ T warps[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const auto warp_reduce = [&](T x) {
    for (int offset = 16; offset > 0; offset >>= 1) x = op(x, shuffle_xor(x, offset));
    return x;
  };
  v = warp_reduce(v);
  __syncthreads();  // a previous reduction may still be reading the slots
  if (lane == 0) warps[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_reduce(lane < kThreads / 32 ? warps[lane] : identity);
    if (lane == 0) warps[0] = v;
  }
  __syncthreads();
  return warps[0];
}

template <int kThreads>
__device__ float block_sum(float v) {
  return block_reduce<kThreads>(
      v, [](float a, float b) { return a + b; }, 0.f);
}

// The sum of `count` fp32 values over a block of kThreads threads, in one fixed order (the
// same bits in every block); every thread gets it.
template <int kThreads>
__device__ float block_sum_of(const float* values, int count) {
  float sum = 0.f;
  for (int i = threadIdx.x; i < count; i += kThreads) sum += values[i];
  return block_sum<kThreads>(sum);
}

// Null after a good launch, else CUDA's error text.
inline const char* launched() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace ttt::kernels
