#include "model/transformer.h"

#include "common/error.h"
#include "model/layers.h"

namespace ttt {
namespace {

// Attention_i of SPEC section 3 for the span, extending the block's cache.
torch::Tensor attention(const ModelConfig& c, const AttentionParams& p, const torch::Tensor& a,
                        const torch::Tensor& positions, LayerCache& cache) {
  const int64_t T = a.size(0), H = c.n_heads, d = c.head_dim();
  torch::Tensor q = torch::matmul(a, p.wq).reshape({T, H, d});
  torch::Tensor k = torch::matmul(a, p.wk).reshape({T, H, d});
  const torch::Tensor v = torch::matmul(a, p.wv).reshape({T, H, d});
  if (c.qk_norm) {
    q = rms_norm(q, p.q_norm, c.rms_eps);
    k = rms_norm(k, p.k_norm, c.rms_eps);
  }
  q = rope(q, positions, c.rope_theta);
  k = rope(k, positions, c.rope_theta);

  LayerCache all = cache.keys.defined()
                       ? LayerCache{torch::cat({cache.keys, k}), torch::cat({cache.values, v}),
                                    torch::cat({cache.positions, positions})}
                       : LayerCache{k, v, positions};
  const int64_t window = c.attention_window();
  const torch::Tensor out = attend(q, all.keys, all.values, attention_mask(positions, all.positions, window));

  // A later query at position t needs keys down to t - (window - 1): keep window-1 tokens.
  const int64_t keep = all.positions.size(0);
  const int64_t kept = window > 0 ? std::min(keep, window - 1) : keep;
  cache = {all.keys.narrow(0, keep - kept, kept), all.values.narrow(0, keep - kept, kept),
           all.positions.narrow(0, keep - kept, kept)};
  return torch::matmul(out, p.wo);
}

}  // namespace

void KvCache::detach() {
  for (auto& layer : layers) {
    if (!layer.keys.defined()) continue;
    layer.keys = layer.keys.detach();
    layer.values = layer.values.detach();
  }
}

torch::Tensor embed_tokens(const Params& params, const torch::Tensor& tokens) {
  return params.embed.index_select(0, tokens);
}

torch::Tensor run_blocks(const ModelConfig& c, const Params& params, torch::Tensor h, const torch::Tensor& positions,
                         KvCache& cache, int64_t first, int64_t last, const FastWeights* prime) {
  const double eps = c.rms_eps;
  for (int64_t i = first; i < last; ++i) {
    const BlockParams& b = params.blocks[i];
    const torch::Tensor a = rms_norm(h, b.attn_norm, eps);
    h = h + rms_norm(attention(c, b.attn, a, positions, cache.layers[i]), b.attn_post_norm, eps);
    if (c.has_prime(i)) {
      require(prime != nullptr, "internal: suffix block run without fast weights");
      const MlpParams& w = prime->at(i - c.first_suffix_block());
      h = h + rms_norm(swiglu(rms_norm(h, b.prime_norm, eps), w), b.prime_post_norm, eps);
    }
    h = h + rms_norm(swiglu(rms_norm(h, b.mlp_norm, eps), b.mlp), b.mlp_post_norm, eps);
  }
  return h;
}

torch::Tensor lm_logits(const ModelConfig& c, const Params& params, const torch::Tensor& h) {
  const torch::Tensor normed = rms_norm(h, params.final_norm, c.rms_eps);
  return c.tie_embeddings ? torch::matmul(normed, params.embed.t()) : torch::matmul(normed, params.lm_head);
}

torch::Tensor forward_span(const ModelConfig& c, const Params& params, const torch::Tensor& tokens,
                           const torch::Tensor& positions, KvCache& cache, const FastWeights* prime) {
  const torch::Tensor h = run_blocks(c, params, embed_tokens(params, tokens), positions, cache, 0, c.n_layers, prime);
  return lm_logits(c, params, h);
}

}  // namespace ttt
