// SwiGLU's gate, silu(a) * b, in one kernel (CUDA), reading the two input projections'
// outputs and writing the output projection's input in their own dtype (bf16 under bf16
// matmuls, else fp32), the product in fp32: the composable form takes five kernels for that
// (two casts up, silu, the product, a cast down) and more for its backward; fp16 is
// refused. Plain launchers without torch headers; model/layers.cpp wraps them for autograd
// (first order: the exact meta-gradient takes the composable form).
#pragma once
#include <cstdint>

#include "kernels/storage.h"

namespace ttt::kernels {

// a, b, y: n values each, contiguous, of `type`. y = silu(a) * b. `stream` is a cudaStream_t.
// Returns null, or CUDA's error text.
const char* swiglu_gate_forward(const void* a, const void* b, Storage type, int64_t n, void* y, void* stream);

// da = dy * b * silu'(a), db = dy * silu(a), with silu'(a) = s (1 + a (1 - s)), s = sigmoid(a).
const char* swiglu_gate_backward(const void* a, const void* b, const void* dy, Storage type, int64_t n, void* da,
                                 void* db, void* stream);

}  // namespace ttt::kernels
