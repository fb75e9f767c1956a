// Rotary position embedding (SPEC section 3) in one kernel (CUDA): the composable form is
// seven kernels over strided halves (four products, a sum, a difference, a stack). Same
// arithmetic, in the same order and rounding (no fused multiply-add), so the results are
// those of the composable form. Plain launcher without torch headers; model/layers.cpp wraps
// it for autograd (rotation is linear: its backward is the inverse rotation, this kernel too).
#pragma once
#include <cstdint>

namespace ttt::kernels {

// x and y: [tokens, heads, head_dim] fp32, contiguous; cos and sin: [tokens, head_dim / 2]
// fp32. For each pair (x[2j], x[2j+1]) at token t, with c = cos[t, j] and s = sin[t, j]:
// y = (x0 c - x1 s, x0 s + x1 c), or with `inverse` the rotation back,
// y = (x0 c + x1 s, x1 c - x0 s). `stream` is a cudaStream_t. Returns null, or CUDA's error text.
const char* rope_forward(const float* x, const float* cos, const float* sin, int64_t tokens, int64_t heads,
                         int64_t head_dim, bool inverse, float* y, void* stream);

}  // namespace ttt::kernels
