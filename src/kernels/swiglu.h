// SwiGLU's gate, silu(a) * b, in one kernel (CUDA), reading the two input projections'
// outputs and writing the output projection's input in their own dtype (bf16 under bf16
// matmuls, else fp32), the product in fp32: the composable form takes five kernels for that
// (two casts up, silu, the product, a cast down) and more for its backward; fp16 is
// refused. Plain launchers without torch headers; model/layers.cpp wraps them for autograd
// (to the second order: the exact meta-gradient differentiates the backward once more).
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

// The backward's own backward: given adjoints u of da and v of db (either null: zero), writes
// ga = u dy b silu''(a) + v dy silu'(a), gb = u dy silu'(a), gdy = u b silu'(a) + v silu(a),
// with silu''(a) = s (1 - s) (2 + a (1 - 2 s)). All n values of `type`.
const char* swiglu_gate_double_backward(const void* a, const void* b, const void* dy, const void* u, const void* v,
                                        Storage type, int64_t n, void* ga, void* gb, void* gdy, void* stream);

}  // namespace ttt::kernels
