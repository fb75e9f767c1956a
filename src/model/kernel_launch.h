// What the model's wrappers hand our kernels' launchers (src/kernels/, no torch headers): the
// storage dtype, the current stream, and their error text as a ttt::Error naming the kernel.
// Only where our kernels were built (TTT_WITH_CUDA_KERNELS).
#pragma once
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include <string>

#include "common/error.h"
#include "kernels/storage.h"

namespace ttt {

inline kernels::Storage storage_of(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kBFloat16:
      return kernels::Storage::kBFloat16;
    case torch::kHalf:
      return kernels::Storage::kFloat16;
    default:
      return kernels::Storage::kFloat32;
  }
}
inline kernels::Storage storage_of(const torch::Tensor& t) { return storage_of(t.scalar_type()); }
// A launcher's optional operand: null where the tensor is undefined.
inline void* data_or_null(const torch::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
inline void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
inline void check(const char* kernel, const char* error) {
  if (error != nullptr) throw Error(std::string("CUDA kernel ") + kernel + ": " + error);
}

}  // namespace ttt
