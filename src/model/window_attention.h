// A sliding window's attention by parts, for kernels that have no window: a span of Tq
// queries after a full window cache (Tk = window - 1 + Tq keys; query i is key Tk - Tq + i and
// sees the `window` keys ending at it) splits into three rectangles, each an attention the
// fused kernels run without a mask:
//   the cache's first Tq keys, which query i sees from key i on: a causal square once queries
//     and keys are both reversed;
//   the cache's other window - 1 - Tq keys, which every query sees;
//   the span's own keys: a causal square.
// The parts merge by their logsumexps; the backward runs each part's backward with the merged
// output and logsumexp, which give every part its share of the one softmax (ring attention's
// identity). On CUDA in bf16 or fp16 the parts are cuDNN's attention (its Hopper kernel runs
// these rectangles 2.5x faster than FA2 runs the band: docs/BENCHMARKS.md); elsewhere plain
// ops, which the tests hold to `attend` in fp64. Differentiable once (Order::kFirst).
#pragma once
#include <cstdint>
#include <string>

#include <torch/types.h>

namespace ttt {

// Whether the by-parts form serves these sizes: a full cache before the span, and a span of
// at least `min_queries` queries and at most window - 1.
bool window_attention_by_parts_serves(int64_t queries, int64_t keys, int64_t window, int64_t min_queries);

// q [Tq, H, d], k and v [window - 1 + Tq, H, d], one dtype -> [Tq, H, d] in that dtype.
torch::Tensor window_attention_by_parts(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                        int64_t window);

// cuDNN's fused attention with its own band (kernels/cudnn_window.h) for attend_span's layout:
// q [Tq, H, d] the last Tq of the keys k, v [Tk, H, d], each query seeing the `window` keys
// ending at it. Differentiable once (Order::kFirst).
//
// The sizes it takes: cuDNN plans a kernel per shape on the host (about a quarter of a second
// each: a process that met a dozen shapes paid seconds), so only the shapes that recur: a span
// of more than one query, a multiple of 64, after a full window's cache (window - 1 keys), as
// evaluation's chunks and the prefix's spans are once the window is full. Not full attention
// (window 0), whose cache grows with every span. Pure sizes, no device.
bool cudnn_window_sizes_served(int64_t queries, int64_t keys, int64_t window);

// Empty where cuDNN runs these operands, else why not (the sizes, the dtype: bf16 or fp16,
// CUDA, rows packed in 16 bytes, a build without cuDNN's frontend, or cuDNN's own reason). Plans
// the shape's forward kernel at its first call, and its backward where autograd will ask for it.
std::string cudnn_window_attention_refusal(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                           int64_t window);

// The attention, [Tq, H, d] in q's dtype; needs an empty refusal.
torch::Tensor cudnn_window_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     int64_t window);

}  // namespace ttt
