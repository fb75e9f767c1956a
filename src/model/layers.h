// The network's building blocks (SPEC section 3), as plain differentiable tensor functions.
// Every function works in the dtype of its inputs (fp32 in the engine, fp64 in tests),
// except that matmuls run in the thread's matmul dtype when one is set (model/compute.h).
#pragma once
#include <torch/types.h>

#include "model/params.h"

namespace ttt {

// x / sqrt(mean(x^2) + eps) * gain over the last axis.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& gain, double eps);

// x @ w, in the matmul dtype if one is set (both operands cast to it), returned in x's
// dtype. fp64 inputs ignore the setting: they are the reference.
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& w);

// (silu(x @ w1) * (x @ w3)) @ w2.
torch::Tensor swiglu(const torch::Tensor& x, const MlpParams& mlp);

// Rotates adjacent pairs (x[2j], x[2j+1]) of x [T, H, d] by angle t * theta^(-2j/d), t the
// token's absolute position (positions: [T], int64). Angles are computed in fp64.
torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& positions, double theta);

// Which keys each query may see: [Tq, Tk] bool, true iff key_pos <= query_pos and, for a
// window k > 0, query_pos - key_pos < k. window = 0 means full causal attention.
torch::Tensor attention_mask(const torch::Tensor& query_positions, const torch::Tensor& key_positions,
                             int64_t window);

// Softmax attention of q [Tq, H, d] over k, v [Tk, H, d] under `mask` [Tq, Tk], scaled by
// 1/sqrt(d); scores and softmax in at least fp32. Returns the heads merged: [Tq, H * d],
// in q's dtype. The composable reference: differentiable any number of times.
torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& mask);

// Whether attend_span would run a fused kernel for tensors on `like`'s device.
bool fused_attention_available(const torch::Tensor& like);

// Attention of a span of Tq queries at consecutive positions over Tk = S + Tq keys: the S
// cached tokens just before the span, then the span itself, with the visibility rule of
// attention_mask for `window`. On CUDA with libtorch 2.x, unless a
// ComposableAttentionGuard is held, it runs the fused scaled_dot_product_attention
// (flash for a causal square or a single query, memory-efficient with the band mask
// otherwise); elsewhere `attend`. The mask is only built where a kernel needs it.
torch::Tensor attend_span(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& query_positions, const torch::Tensor& key_positions, int64_t window);

// Per-token negative log-likelihood of `targets` [T] under `logits` [T, V], in at least fp32.
torch::Tensor token_nll(const torch::Tensor& logits, const torch::Tensor& targets);

// SPEC section 4: sum(nll * valid) / max(sum(valid), 1e-10), where a target is valid
// unless it equals bos_id.
torch::Tensor masked_mean_loss(const torch::Tensor& nll, const torch::Tensor& targets, int64_t bos_id);

}  // namespace ttt
