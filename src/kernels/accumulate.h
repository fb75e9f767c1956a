// Gradients added into fp32 accumulators, many tensors a launch: the training's reverse scan
// adds every chunk's gradients of theta (most of them in the matmul dtype, the tied head's
// 128K x d among them) into theta's fp32 sinks, where one add a tensor would launch some forty
// kernels a chunk, and an add that widens bf16 takes ATen's slower mixed-dtype loop.
#pragma once
#include <cstdint>

#include "kernels/storage.h"

namespace ttt::kernels {

// sink[i] += grad[i] for i < n: `sink` fp32, `grad` in `type`, each contiguous, not overlapping
// (nor any other entry's sink: one launch adds into all of them in no order between entries).
struct AccumulateTensor {
  float* sink;
  const void* grad;
  Storage type;
  int64_t n;
};
constexpr int kAccumulateMaxTensors = 64;

// `count` tensors (at most kAccumulateMaxTensors) in one launch; `stream` is a cudaStream_t.
// Returns null, or CUDA's error text.
const char* accumulate_into_fp32(const AccumulateTensor* tensors, int count, void* stream);

}  // namespace ttt::kernels
