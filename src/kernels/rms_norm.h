// RMSNorm (SPEC section 3) over the last axis (CUDA): the forward, its backward and the
// backward's own backward (the exact meta-gradient differentiates norms twice), each one
// kernel per row plus, for the gain's gradient, a column sum in blocks of rows. Reads and
// writes fp32 or bf16: the engine's residual stream is fp32 and its matmuls take bf16, so a
// norm that reads a matmul's bf16 output, or writes the next matmul's bf16 input, saves the
// cast that would otherwise sit beside it (fp16 is refused). Reductions in fp32. Plain
// launchers without torch headers; model/layers.cpp wraps them for autograd.
#pragma once
#include <cstdint>

#include "kernels/storage.h"

namespace ttt::kernels {

// x: [rows, dim] (contiguous, `x_type`), gain: [dim] fp32. y = x * rstd * gain in `y_type`,
// rstd[r] = 1 / sqrt(mean(x[r]^2) + eps) (fp32). `stream` is a cudaStream_t. Returns null,
// or CUDA's error text.
const char* rms_norm_forward(const void* x, Storage x_type, const float* gain, int64_t rows, int64_t dim, double eps,
                             void* y, Storage y_type, float* rstd, void* stream);

// Inference's residual update in one kernel: y = residual + x * rstd * gain (residual and
// y: [rows, dim] fp32, apart), rounded as the sum of the norm's fp32 output and
// the residual. No rstd is kept (nothing differentiates it).
const char* rms_norm_add_forward(const float* residual, const void* x, Storage x_type, const float* gain, int64_t rows,
                                 int64_t dim, double eps, float* y, void* stream);

// The gain's gradient comes in partial sums over blocks of kRmsNormChunkRows rows:
// [rms_norm_chunks(rows), dim] fp32, to be summed over the first axis.
constexpr int64_t kRmsNormChunkRows = 16;
inline int64_t rms_norm_chunks(int64_t rows) { return (rows + kRmsNormChunkRows - 1) / kRmsNormChunkRows; }

// The gradients given that of y (`dy`, in `y_type`): dx (in `x_type`) = r * a - r^3 / dim * s * x,
// with r = rstd, a = gain * dy, s = sum(a * x) per row; and, where gain_partials is not
// null, the gain's: sum over rows of dy * x * r.
const char* rms_norm_backward(const void* x, Storage x_type, const float* gain, const float* rstd, const void* dy,
                              Storage y_type, int64_t rows, int64_t dim, void* dx, float* gain_partials, void* stream);

// The backward's backward: given u (x's dtype, or null for zero) and w ([dim] fp32, or null),
// the adjoints of dx and of the gain's gradient, with c = r^3 / dim, U = <u, a>, X = <u, x>,
// W = <w * dy, x> per row:
//   grad_dy = gain * (r u - c X x) + r w x             (in `y_type`),
//   grad_x  = x (3 r^5 s X / dim^2 - c U - c W) - c (X a + s u) + r w dy   (in `x_type`),
//   gain    = sum over rows of dy * (r u - c X x)      (partial sums; needs u, and
//             x_coefficient: [rows] fp32 scratch for -c X).
// Each output is written where its pointer is not null.
const char* rms_norm_double_backward(const void* x, Storage x_type, const float* gain, const float* rstd,
                                     const void* dy, Storage y_type, const void* u, const float* w, int64_t rows,
                                     int64_t dim, void* grad_x, void* grad_dy, float* gain_partials,
                                     float* x_coefficient, void* stream);

}  // namespace ttt::kernels
