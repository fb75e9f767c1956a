#include "kernels/accumulate.h"

#include "kernels/common.cuh"

namespace ttt::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kBlocks = 1056;  // 8 a multiprocessor on an H100 or H200

struct AccumulateTensors {
  AccumulateTensor at[kAccumulateMaxTensors];
  bool packed[kAccumulateMaxTensors];  // 4 values a thread (16 bytes of the sink)
  int count;
};

template <int kVec, typename G>
__device__ void add_into(float* sink, const G* grad, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n / kVec; i += stride) {
    float s[kVec], g[kVec];
    load_pack<kVec>(sink, i * kVec, s);
    load_pack<kVec>(grad, i * kVec, g);
#pragma unroll
    for (int m = 0; m < kVec; ++m) s[m] += g[m];
    store_pack(sink, i * kVec, s);
  }
}

template <int kVec>
__device__ void add_tensor(const AccumulateTensor& x) {
  switch (x.type) {
    case Storage::kBFloat16:
      return add_into<kVec>(x.sink, static_cast<const __nv_bfloat16*>(x.grad), x.n);
    case Storage::kFloat16:
      return add_into<kVec>(x.sink, static_cast<const __half*>(x.grad), x.n);
    default:
      return add_into<kVec>(x.sink, static_cast<const float*>(x.grad), x.n);
  }
}

__global__ void __launch_bounds__(kThreads) accumulate(AccumulateTensors tensors) {
  for (int t = 0; t < tensors.count; ++t) {
    if (tensors.packed[t]) {
      add_tensor<4>(tensors.at[t]);
    } else {
      add_tensor<1>(tensors.at[t]);
    }
  }
}

bool fits_packs(const AccumulateTensor& x) {
  switch (x.type) {
    case Storage::kBFloat16:
      return packs_fit<float>(x.sink, x.n, 4) && packs_fit<__nv_bfloat16>(x.grad, x.n, 4);
    case Storage::kFloat16:
      return packs_fit<float>(x.sink, x.n, 4) && packs_fit<__half>(x.grad, x.n, 4);
    default:
      return packs_fit<float>(x.sink, x.n, 4) && packs_fit<float>(x.grad, x.n, 4);
  }
}

}  // namespace

const char* accumulate_into_fp32(const AccumulateTensor* tensors, int count, void* stream) {
  if (count < 0 || count > kAccumulateMaxTensors) return "too many tensors for one launch";
  if (count == 0) return nullptr;
  AccumulateTensors all{};
  int64_t largest = 0;
  for (int t = 0; t < count; ++t) {
    all.at[t] = tensors[t];
    all.packed[t] = fits_packs(tensors[t]);
    largest = tensors[t].n > largest ? tensors[t].n : largest;
  }
  all.count = count;
  // No more blocks than the largest tensor's packs need.
  const int64_t needed = (largest / 4 + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(needed < 1 ? 1 : needed < kBlocks ? needed : kBlocks);
  accumulate<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(all);
  return launched();
}

}  // namespace ttt::kernels
