#include "model/transformer.h"

#include <torch/types.h>

#include "common/error.h"
#include "model/compute.h"
#include "model/layers.h"

namespace ttt {
namespace {

// Attention_i of SPEC section 3 for the span. `a` is the projections' input already in the
// matmul dtype; q and k are normed and rotated in the residual stream's dtype; `memory` finds
// the keys; the result is in the matmul dtype (the post-norm reads it).
torch::Tensor attention(const ModelConfig& c, const AttentionParams& p, const torch::Tensor& a,
                        torch::Dtype residual_dtype, const RopeTable& rotation, const BlockAttention& memory,
                        int64_t block, Order order) {
  const int64_t T = a.size(0), H = c.n_heads, d = c.head_dim();
  const torch::Dtype matmul = a.scalar_type();
  // Products stay in the matmul dtype: the norms read them as they are, values go to the
  // cache so (half the memory of fp32: fa at 128K).
  // A single row (a decoded token) with the three side by side (params_for_inference): one
  // matmul instead of three launches, whose slices are contiguous.
  const torch::Tensor joint = T == 1 ? joint_columns({p.wq, p.wk, p.wv}) : torch::Tensor();
  const torch::Tensor qkv = joint.defined() ? project(a, joint, matmul) : torch::Tensor();
  const auto projected = [&](const torch::Tensor& w, int64_t index) {
    return (qkv.defined() ? qkv.narrow(1, index * w.size(1), w.size(1)) : project(a, w, matmul)).reshape({T, H, d});
  };
  const torch::Tensor v = projected(p.wv, 2);
  // A span's fused attention (attend_span) reads q in the matmul dtype: written so at once,
  // the same single rounding as its own cast. A decoded token's kernel reads it in fp32.
  const torch::Dtype q_dtype =
      T > 1 && order == Order::kFirst && fused_attention_available(a) ? matmul : residual_dtype;
  const auto [q, k] = normed_rotated_qk(projected(p.wq, 0), projected(p.wk, 1), c.qk_norm ? p.q_norm : torch::Tensor(),
                                        c.qk_norm ? p.k_norm : torch::Tensor(), c.rms_eps, rotation, q_dtype, matmul);
  return project(memory(block, q, k, v, order), p.wo, matmul);
}

}  // namespace

torch::Tensor embed_tokens(const Params& params, const torch::Tensor& tokens) {
  // The residual stream is in the gains' dtype, also where the embedding is stored for matmuls.
  return params.embed.index_select(0, tokens).to(params.final_norm.scalar_type());
}

torch::Tensor run_blocks(const ModelConfig& c, const Params& params, torch::Tensor h, const RopeTable& rotation,
                         const BlockAttention& memory, BlockPoint first, BlockPoint last, const FastWeights* prime,
                         Order after_fast_weights) {
  if (!(first < last)) return h;
  const double eps = c.rms_eps;
  // The residual stream, the norms and SwiGLU's product in the residual dtype; the pre-norms
  // write the matmuls' inputs in the matmul dtype, the post-norms read their outputs so.
  const torch::Dtype residual = h.scalar_type(), matmul = matmul_dtype_for(h);
  Order order = Order::kFirst;  // what precedes the fast weights is differentiated at most once
  for (int64_t i = first.block; i < last.block || (i == last.block && last.past_attention); ++i) {
    const BlockParams& b = params.blocks[i];
    if (i != first.block || !first.past_attention) {
      const torch::Tensor a = rms_norm(h, b.attn_norm, eps, matmul);
      h = add_rms_norm(h, attention(c, b.attn, a, residual, rotation, memory, i, order), b.attn_post_norm, eps);
    }
    if (i == last.block) break;  // `last` is past this block's attention
    if (c.has_prime(i)) {
      require(prime != nullptr, "internal: suffix block run without fast weights");
      order = after_fast_weights;
      const MlpParams& w = prime->at(i - c.first_suffix_block());
      h = add_rms_norm(h, swiglu(rms_norm(h, b.prime_norm, eps, matmul), w, residual, matmul), b.prime_post_norm, eps);
    }
    h = add_rms_norm(h, swiglu(rms_norm(h, b.mlp_norm, eps, matmul), b.mlp, residual, matmul), b.mlp_post_norm, eps);
  }
  return h;
}

torch::Tensor run_blocks(const ModelConfig& c, const Params& params, torch::Tensor h, const torch::Tensor& positions,
                         KvCache& cache, BlockPoint first, BlockPoint last, const FastWeights* prime,
                         Order after_fast_weights) {
  const BlockAttention through_cache = [&](int64_t block, const torch::Tensor& q, const torch::Tensor& k,
                                           const torch::Tensor& v, Order order) {
    const KvEntries cached = cache.entries(block);
    const KvEntries seen = cache.extend(block, {k, v, positions});
    if (cached.rows() == 0 || cached.rows() + k.size(0) != seen.rows()) {
      return attend_span(q, seen.keys, seen.values, positions, seen.positions, c.attention_window(), order);
    }
    const SpanKeys parts{cached.keys, cached.values, k, v};  // seen's rows, as they were joined
    return attend_span(q, seen.keys, seen.values, positions, seen.positions, c.attention_window(), order, &parts);
  };
  const RopeTable rotation = rope_table(positions, c.head_dim(), c.rope_theta, h.scalar_type());
  return run_blocks(c, params, std::move(h), rotation, through_cache, first, last, prime, after_fast_weights);
}

torch::Tensor span_positions(int64_t start, int64_t length, const torch::Device& device) {
  return torch::arange(start, start + length, torch::TensorOptions().dtype(torch::kInt64).device(device));
}

torch::Tensor hidden_states(const ModelConfig& c, const Params& params, const torch::Tensor& tokens, int64_t start,
                            KvCache& cache, BlockPoint last, const FastWeights* prime) {
  return run_blocks(c, params, embed_tokens(params, tokens), span_positions(start, tokens.size(0), tokens.device()),
                    cache, 0, last, prime);
}

torch::Tensor final_normed(const ModelConfig& c, const Params& params, const torch::Tensor& h) {
  return rms_norm(h, params.final_norm, c.rms_eps, matmul_dtype_for(h));
}

torch::Tensor head_matrix(const ModelConfig& c, const Params& params) {
  return c.tie_embeddings ? params.embed.t() : params.lm_head;
}

torch::Tensor lm_logits(const ModelConfig& c, const Params& params, const torch::Tensor& h) {
  // Left in the matmul dtype: the loss reads them in fp32 without a cast of its own, and
  // [T, 128256] fp32 logits would double the head's memory traffic.
  return project(final_normed(c, params, h), head_matrix(c, params));
}

torch::Tensor forward_span(const ModelConfig& c, const Params& params, const torch::Tensor& tokens,
                           const torch::Tensor& positions, KvCache& cache, const FastWeights* prime) {
  const torch::Tensor h = run_blocks(c, params, embed_tokens(params, tokens), positions, cache, 0, c.n_layers, prime);
  return lm_logits(c, params, h);
}

}  // namespace ttt
