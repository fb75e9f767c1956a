// One query's attention over a decode step's ring of keys and values (infer/decode_step.h),
// in two kernels (CUDA): the ring split into ranges of keys, each range's scores, softmax
// terms and weighted values in one block per (range, head), then the ranges merged per head.
// In place of the composable form's mask, scores, softmax and product (seven kernels and
// [H, capacity] intermediates per block). The visibility rule is attention_mask's, computed
// from the slots' positions and the token's position, both read on the device: one CUDA
// graph serves every token. Arithmetic in fp32; keys and values fp32 or bf16 (fp16 refused).
// Inference only: no backward. Plain launchers without torch headers; model/layers.cpp wraps them.
#pragma once
#include <cstdint>

#include "kernels/storage.h"

namespace ttt::kernels {

// Whether decode_attention takes these sizes: head_dim a multiple of 8 (16-byte loads of
// bf16 rows; 4 for fp32) and at most kDecodeAttentionMaxDim.
constexpr int64_t kDecodeAttentionMaxDim = 256;
bool decode_attention_serves(Storage type, int64_t head_dim);

// The scratch floats decode_attention needs for `capacity` keys and `heads` heads.
int64_t decode_attention_scratch(int64_t capacity, int64_t heads, int64_t head_dim);

// q: [heads, head_dim] fp32 (rotated, not scaled); keys, values: [capacity, heads, head_dim]
// rows in `type`, 16-byte aligned; slot_positions: [capacity] int64, the position of each
// slot's token (positions no query sees mark empty slots); token_position: [1] int64. Slot j
// is seen iff p_j <= t and, for window > 0, t - p_j < window. Writes out: [heads * head_dim]
// in `out_type`, softmax(q k^T * scale) v per head. The product q * scale is rounded to
// `type` first, as the matmul paths round their operands. `scratch` holds
// decode_attention_scratch(...) floats. Returns null, or CUDA's error text.
const char* decode_attention(const float* q, const void* keys, const void* values, Storage type,
                             const int64_t* slot_positions, const int64_t* token_position, int64_t capacity,
                             int64_t heads, int64_t head_dim, int64_t window, float scale, float* scratch, void* out,
                             Storage out_type, void* stream);

}  // namespace ttt::kernels
