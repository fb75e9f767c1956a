// Attention's queries and keys as inference prepares them (SPEC section 3), in one kernel
// (CUDA): each head's row RMS-normed with its gain (where one is given), rotated by RoPE at
// its token's position, rounded once to its output's dtype. The composed ops take five
// kernels per block (two norms, two rotations, a cast of the keys): for a decoded token,
// launches dominate. The arithmetic of kernels/rms_norm.h and kernels/rope.h, in their order,
// in fp32. No backward: model/layers.cpp uses it only where autograd does not record.
#pragma once
#include <cstdint>

#include "kernels/storage.h"

namespace ttt::kernels {

// One tensor to prepare: x [tokens, heads, head_dim] rows in `x_type` (contiguous), the
// gain [head_dim] fp32 or null (no norm), y like x in `y_type`.
struct NormRopeRows {
  const void* x;
  Storage x_type;
  const float* gain;
  void* y;
  Storage y_type;
};

// Both q and k (same tokens, heads and head_dim; even head_dim): y = rope(norm(x) * gain),
// with cos and sin [tokens, head_dim / 2] fp32 and norm(x) = x * rsqrt(mean(x^2) + eps).
// Returns null, or CUDA's error text.
const char* norm_rope_forward(const NormRopeRows& q, const NormRopeRows& k, const float* cos, const float* sin,
                              int64_t tokens, int64_t heads, int64_t head_dim, float eps, void* stream);

}  // namespace ttt::kernels
