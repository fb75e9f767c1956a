// RMSNorm (SPEC section 3) over the last axis in one kernel (CUDA), reading and writing
// fp32 or bf16: the engine's residual stream is fp32 and its matmuls take bf16, so a norm
// that reads a matmul's bf16 output, or writes the next matmul's bf16 input, saves the cast
// that would otherwise sit beside it (fp16 is refused). Reductions in fp32. Plain launchers
// without torch headers; model/layers.cpp wraps them for autograd (first order: the exact
// meta-gradient takes the composable form).
#pragma once
#include <cstdint>

#include "kernels/storage.h"

namespace ttt::kernels {

// x: [rows, dim] (contiguous, `x_type`), gain: [dim] fp32. y = x * rstd * gain in `y_type`,
// rstd[r] = 1 / sqrt(mean(x[r]^2) + eps) (fp32). `stream` is a cudaStream_t. Returns null,
// or CUDA's error text.
const char* rms_norm_forward(const void* x, Storage x_type, const float* gain, int64_t rows, int64_t dim, double eps,
                             void* y, Storage y_type, float* rstd, void* stream);

// The gradient of x (in `x_type`) given that of y (in `y_type`):
// dx = rstd * gain * dy - rstd^3 / dim * x * sum(gain * dy * x).
const char* rms_norm_backward(const void* x, Storage x_type, const float* gain, const float* rstd, const void* dy,
                              Storage y_type, int64_t rows, int64_t dim, void* dx, void* stream);

}  // namespace ttt::kernels
