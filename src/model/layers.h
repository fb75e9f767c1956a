// The network's building blocks (SPEC section 3), as plain differentiable tensor functions.
// Every function works in the dtype of its inputs (fp32 in the engine, fp64 in tests),
// except that matmuls run in the thread's matmul dtype when one is set (model/compute.h).
#pragma once
#include <optional>
#include <utility>

#include <torch/types.h>

#include "model/params.h"

namespace ttt {

// How many times autograd will differentiate a primitive's result. Each primitive runs its
// fused kernel only where the kernel supports that order, plain ops elsewhere (MLX's rule: a
// fast path with a composable fallback), so the choice is the caller's argument, never a
// mode. The exact meta-gradient differentiates what follows the fast weights twice (the
// inner gradient, then the outer gradient through it); everything else at most once.
// Orders the fused paths support, on CUDA:
//   rms_norm     any (kernels to the second order, plain ops from the third; no argument)
//   token_nll    2   (its backward is a kernel with a kernel backward; the engine needs no more)
//   head_loss    2   (hidden_grad once, and nll and hidden_grad at once; the engine needs no more)
//   rope         any (a rotation: its backward is the inverse rotation)
//   swiglu gate  any (kernels to the second order, plain ops from the third; no argument)
//   attention    1 for cuDNN's and flash's kernels; 2 for the composable form, whose backward
//                and double backward are written out (GEMMs around our row-wise kernels;
//                plain ops from the third order)
enum class Order { kFirst = 1, kSecond = 2 };

// x / sqrt(mean(x^2) + eps) * gain over the last axis, computed in at least fp32 and
// returned in `out` (default: x's dtype). A bf16 x is a matmul's output, a bf16 `out` the
// next matmul's input: on CUDA one kernel reads and writes them as they are.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& gain, double eps,
                       std::optional<torch::Dtype> out = std::nullopt);

// h + rms_norm(x, gain, eps) in h's dtype: a block's residual update. Where autograd does not
// record, on CUDA with an fp32 h, one kernel (inference); the two ops elsewhere.
torch::Tensor add_rms_norm(const torch::Tensor& h, const torch::Tensor& x, const torch::Tensor& gain, double eps);

// x @ w, in the matmul dtype if one is set (both operands cast to it), returned in `out`
// (default: x's dtype). fp64 ignores the setting: it is the reference.
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& w, std::optional<torch::Dtype> out = std::nullopt);

// The dtype project() computes x's products in: the thread's matmul dtype, unless x is fp64
// (the reference) or none is set (then x's own).
torch::Dtype matmul_dtype_for(const torch::Tensor& x);

// x cast to the matmul dtype, for an input that several projections share (cast once).
torch::Tensor matmul_operand(const torch::Tensor& x);

// (silu(x @ w1) * (x @ w3)) @ w2, the product silu(.) * (.) in `hidden` (default: x's
// dtype), the result in `out` (default: `hidden`); on CUDA with an fp32 `hidden` and products
// in fp32 or bf16, the gate is swiglu_gate on the products as the matmuls wrote them.
torch::Tensor swiglu(const torch::Tensor& x, const MlpParams& mlp, std::optional<torch::Dtype> hidden = std::nullopt,
                     std::optional<torch::Dtype> out = std::nullopt);

// silu(a) * b in a's dtype, computed in fp32 (fp64 for fp64), for a and b of one shape and
// dtype: one autograd function whose backward and that backward's own are written out (our
// kernels on CUDA to the second order, plain ops elsewhere), differentiable any number of times.
torch::Tensor swiglu_gate(const torch::Tensor& a, const torch::Tensor& b);

// Rotates adjacent pairs (x[2j], x[2j+1]) of x [T, H, d] by angle t * theta^(-2j/d), t the
// token's absolute position (positions: [T], int64). Angles are computed in fp64, once per
// span: a table serves every block's queries and keys.
struct RopeTable {
  torch::Tensor cos, sin;  // [T, 1, d/2] in the dtype of the rotated tensors
};
RopeTable rope_table(const torch::Tensor& positions, int64_t head_dim, double theta, torch::Dtype dtype);
torch::Tensor rope(const torch::Tensor& x, const RopeTable& table);
torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& positions, double theta);

// Attention's q and k [T, H, d] as the blocks prepare them: RMS-normed per head with their
// gains where given (qk_norm; undefined: no norm), rotated by `table`, q returned in
// `q_dtype` and k in `k_dtype`. Where autograd does not record, on CUDA, one kernel for both
// (inference: a decoded token's launches dominate); the composed ops elsewhere.
std::pair<torch::Tensor, torch::Tensor> normed_rotated_qk(const torch::Tensor& q, const torch::Tensor& k,
                                                          const torch::Tensor& q_gain, const torch::Tensor& k_gain,
                                                          double eps, const RopeTable& table, torch::Dtype q_dtype,
                                                          torch::Dtype k_dtype);

// Which keys each query may see: [Tq, Tk] bool, true iff key_pos <= query_pos and, for a
// window k > 0, query_pos - key_pos < k. window = 0 means full causal attention.
torch::Tensor attention_mask(const torch::Tensor& query_positions, const torch::Tensor& key_positions,
                             int64_t window);

// Softmax attention of q [Tq, H, d] over k, v [Tk, H, d] under `mask` [Tq, Tk], scaled by
// 1/sqrt(d); scores and softmax in at least fp32. Returns the heads merged: [Tq, H * d],
// in the matmul dtype if one is set (the output projection takes it as it is), else in q's.
// The composable reference: differentiable any number of times.
torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& mask);
// attend in two parts, for a mask that serves many calls (every block of a decode step):
// the mask as an additive bias for queries like q, made once, and the attention under it.
torch::Tensor attention_bias(const torch::Tensor& mask, const torch::Tensor& q);
torch::Tensor attend_with_bias(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& bias);

// `attend` for attend_span's layout (below) and its mask, a block of `block_queries` queries at
// a time over only the keys the block sees: the same numbers, with one block's [H, block,
// keys] scores alive at once and none kept for the backward pass, which recomputes them.
// Its backward is written out for Order::kFirst (`attend` keeps [H, Tq, Tk] probabilities);
// autograd differentiates that backward's plain ops again where a caller asks.
torch::Tensor attend_by_query_blocks(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const torch::Tensor& query_positions, const torch::Tensor& key_positions,
                                     int64_t window, int64_t block_queries);

// Whether attend_span runs a fused kernel at Order::kFirst for tensors like `like` (CUDA
// with libtorch 2.x, not fp64): where it does, the blocks before the fast weights run ahead
// over long spans.
bool fused_attention_available(const torch::Tensor& like);

// Attention of a span of Tq queries at consecutive positions over Tk = S + Tq keys: the S
// cached tokens just before the span, then the span itself, with the visibility rule of
// attention_mask for `window`. Where fused_attention_available and at Order::kFirst it
// runs fused kernels: scaled_dot_product_attention for a causal square or a single query,
// the flash kernel with its sliding window for the rest in bf16/fp16 (whole tiles outside
// the window skipped), the memory-efficient kernel with the band mask in fp32; on the CPU at
// Order::kFirst attend_by_query_blocks; elsewhere the composable form, whose backward and
// double backward are written out (on CUDA its row-wise work in our kernels; on the CPU a
// forward, gradient and second-order gradient took 0.81-0.95x the time of `attend`'s at the
// tests' shapes, fp64 and fp32). The mask is only built where needed. Returns what `attend`
// returns, in the same dtype. `parts`, where given, holds k and v as the two tensors they
// were joined from (the cache's rows, then the span's): the composable form takes them apart,
// so that a gradient that asks nothing of the cache (the inner loop's, of fast weights)
// computes nothing for its keys.
struct SpanKeys {
  torch::Tensor cached_keys, cached_values;  // [S, H, d]
  torch::Tensor keys, values;                // [Tq, H, d]
};
torch::Tensor attend_span(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& query_positions, const torch::Tensor& key_positions, int64_t window,
                          Order order = Order::kFirst, const SpanKeys* parts = nullptr);

// One query's attention over a decode step's ring (infer/decode_step.h): q [1, H, d], keys
// and values [C, H, d] in slots whose token positions are slot_positions [C] (int64), seen
// under attention_mask's rule from token_position [1] (int64, on the device). Returns what
// `attend` returns under that mask, in two fused kernels that read every position on the
// device (one CUDA graph serves every token). Inference only (no autograd), where
// decode_attention_serves.
bool decode_attention_serves(const torch::Tensor& q, const torch::Tensor& keys);
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& values,
                               const torch::Tensor& slot_positions, const torch::Tensor& token_position,
                               int64_t window);

// Per-token negative log-likelihood of `targets` [T] under `logits` [T, V], in at least fp32.
torch::Tensor token_nll(const torch::Tensor& logits, const torch::Tensor& targets);

// SPEC section 4: sum(nll * valid) / max(sum(valid), 1e-10), where a target is valid
// unless it equals bos_id.
torch::Tensor masked_mean_loss(const torch::Tensor& nll, const torch::Tensor& targets, int64_t bos_id);
// Its gradient w.r.t. nll, valid / max(sum(valid), 1e-10) in `dtype` (the same values
// autograd gives it).
torch::Tensor masked_mean_weights(const torch::Tensor& targets, int64_t bos_id, torch::Dtype dtype);

// The head and the loss of a chunk whose inner step follows (ttt/inner_loop.cpp): the
// per-token nll = token_nll(project(normed, head), targets), and the inner loss's gradient
// w.r.t. the head's input, hidden_grad = d(sum_t weights[t] nll[t]) / d normed, from which the
// inner gradient goes on by autograd. normed: [T, D] (final_normed), head: [D, V]
// (head_matrix), weights: [T] constants (masked_mean_weights). `order`: what autograd does
// with the results afterwards: nothing (unset: evaluation; no graph is kept), differentiate nll
// once (kFirst; hidden_grad a constant), or hidden_grad once too (kSecond: the exact
// meta-gradient differentiates the inner gradient again). On CUDA one autograd function (its
// backward written out, not differentiable again: a third order fails): the outer loss's
// gradient of nll and the meta-gradient's of hidden_grad meet in one pass over the logits,
// and the inner logits gradient is recomputed there, not kept; plain ops elsewhere.
struct HeadLoss {
  torch::Tensor nll, hidden_grad;
};
HeadLoss head_loss(const torch::Tensor& normed, const torch::Tensor& head, const torch::Tensor& targets,
                   const torch::Tensor& weights, std::optional<Order> order);

}  // namespace ttt
