// The merge of a sliding window's attention computed by parts (model/window_attention.h): per
// query and head, lse = log sum_k exp(lse_k) and out = sum_k exp(lse_k - lse) out_k, in one
// pass (CUDA) where plain ops take about a dozen kernels and an fp32 copy of every part; and
// in the backward the parts' gradients gathered into the span's, in one pass where plain ops
// take flips, an fp32 sum, a cast and concatenations. Plain launchers without torch headers.
#pragma once
#include <cstdint>

#include "kernels/storage.h"

namespace ttt::kernels {

// One part's attention: out [heads, queries, head_dim] at `out` with the given strides of
// heads and queries (head_dim contiguous), lse [heads, queries] fp32 contiguous; `reversed`:
// both hold the queries in reverse order.
struct WindowPart {
  const void* out;
  int64_t head_stride, query_stride;
  const float* lse;
  bool reversed;
};

constexpr int kMaxWindowParts = 3;

// Merges `count` (1..kMaxWindowParts) parts into out [queries, heads, head_dim] contiguous
// and lse [heads, queries] fp32. Outputs in `type` (bf16 or fp16; parts alike), arithmetic
// in fp32. `stream` is a cudaStream_t. Returns null, or CUDA's error text.
const char* window_merge(const WindowPart* parts, int count, Storage type, int64_t heads, int64_t queries,
                         int64_t head_dim, void* out, float* lse, void* stream);

// Rows of one part's gradient, [heads, rows, head_dim] at `at` with the given strides of heads
// and rows (head_dim contiguous).
struct PartRows {
  const void* at;
  int64_t head_stride, row_stride;
};

// One part's gradients of its queries (`queries` rows) and of its `keys` keys and values;
// `reversed`: all of them hold their rows in reverse order.
struct WindowPartGrads {
  PartRows dq, dk, dv;
  int64_t keys;
  bool reversed;
};

// The parts' gradients gathered in one pass: dq [queries, heads, head_dim] the sum of the
// parts' (fp32 in the parts' order, rounded once: what fp32 zeros plus each part's add give),
// dk and dv [sum of keys, heads, head_dim] the parts' rows one after the other, all contiguous
// in `type` (bf16 or fp16, parts alike). `stream` is a cudaStream_t. Returns null, or CUDA's
// error text.
const char* window_part_grads(const WindowPartGrads* parts, int count, Storage type, int64_t heads, int64_t queries,
                              int64_t head_dim, void* dq, void* dk, void* dv, void* stream);

}  // namespace ttt::kernels
