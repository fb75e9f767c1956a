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

template <int kVec>
__device__ void add_tensor(const AccumulateTensor& x) {
  with_storage_type(x.type, [&](auto tag) {
    const auto* grad = static_cast<const decltype(tag)*>(x.grad);
    for_each_pack<kVec>(x.n, [&](int64_t j) {
      float s[kVec], g[kVec];
      load_pack<kVec>(x.sink, j, s);
      load_pack<kVec>(grad, j, g);
#pragma unroll
      for (int m = 0; m < kVec; ++m) s[m] += g[m];
      store_pack(x.sink, j, s);
    });
  });
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
  return packs_fit<float>(x.sink, x.n, 4) &&
         with_storage_type(x.type, [&](auto tag) { return packs_fit<decltype(tag)>(x.grad, x.n, 4); });
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
