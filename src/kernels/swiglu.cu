#include "kernels/common.cuh"
#include "kernels/swiglu.h"

namespace ttt::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gate_forward(const T* __restrict__ a, const T* __restrict__ b, int64_t n, T* __restrict__ y) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float x = load(a, i);
    store(y, i, x / (1.f + expf(-x)) * load(b, i));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gate_backward(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ dy, int64_t n,
                  T* __restrict__ da, T* __restrict__ db) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float x = load(a, i), g = load(dy, i);
    const float s = 1.f / (1.f + expf(-x));
    store(da, i, g * load(b, i) * (s * (1.f + x * (1.f - s))));
    store(db, i, g * (x * s));
  }
}

int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65536 ? blocks : 65536);
}

}  // namespace

const char* swiglu_gate_forward(const void* a, const void* b, Storage type, int64_t n, void* y, void* stream) {
  if (n == 0) return nullptr;
  if (type == Storage::kFloat16) return "fp16 is not supported";
  const auto s = static_cast<cudaStream_t>(stream);
  if (type == Storage::kBFloat16) {
    using B = __nv_bfloat16;
    gate_forward<<<blocks_for(n), kThreads, 0, s>>>(static_cast<const B*>(a), static_cast<const B*>(b), n,
                                                    static_cast<B*>(y));
  } else {
    gate_forward<<<blocks_for(n), kThreads, 0, s>>>(static_cast<const float*>(a), static_cast<const float*>(b), n,
                                                    static_cast<float*>(y));
  }
  return launched();
}

const char* swiglu_gate_backward(const void* a, const void* b, const void* dy, Storage type, int64_t n, void* da,
                                 void* db, void* stream) {
  if (n == 0) return nullptr;
  if (type == Storage::kFloat16) return "fp16 is not supported";
  const auto s = static_cast<cudaStream_t>(stream);
  if (type == Storage::kBFloat16) {
    using B = __nv_bfloat16;
    gate_backward<<<blocks_for(n), kThreads, 0, s>>>(static_cast<const B*>(a), static_cast<const B*>(b),
                                                     static_cast<const B*>(dy), n, static_cast<B*>(da),
                                                     static_cast<B*>(db));
  } else {
    gate_backward<<<blocks_for(n), kThreads, 0, s>>>(static_cast<const float*>(a), static_cast<const float*>(b),
                                                     static_cast<const float*>(dy), n, static_cast<float*>(da),
                                                     static_cast<float*>(db));
  }
  return launched();
}

}  // namespace ttt::kernels
