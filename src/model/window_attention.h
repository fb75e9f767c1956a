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

#include <torch/types.h>

namespace ttt {

// Whether the by-parts form serves these sizes: a full cache before the span, and a span of
// at least `min_queries` queries and at most window - 1.
bool window_attention_by_parts_serves(int64_t queries, int64_t keys, int64_t window, int64_t min_queries);

// q [Tq, H, d], k and v [window - 1 + Tq, H, d], one dtype -> [Tq, H, d] in that dtype.
torch::Tensor window_attention_by_parts(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                        int64_t window);

}  // namespace ttt
