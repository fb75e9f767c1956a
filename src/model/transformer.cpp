#include "model/transformer.h"

#include <algorithm>

#include <torch/torch.h>

#include "common/error.h"
#include "model/compute.h"
#include "model/layers.h"

namespace ttt {
namespace {

// Appends a span to an fa cache in its growing buffers (see LayerCache): amortised O(span)
// instead of a copy of the whole cache per step.
void append_in_place(LayerCache& cache, GrowingStore& store, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& positions) {
  const int64_t used = cache.keys.defined() ? cache.keys.size(0) : 0, T = k.size(0);
  // In place only where the cache shows this store's rows, all of them, and there is room.
  const bool writable = store.rows && *store.rows == used && used + T <= store.keys.size(0) &&
                        (used == 0 || cache.keys.data_ptr() == store.keys.data_ptr());
  if (!writable) {
    // Room for as many rows again as the cache had: amortised O(1) per token when decoding,
    // no slack for a prompt read in one span.
    const int64_t capacity = std::max<int64_t>(2 * used + T, 256);
    auto grown = [&](const torch::Tensor& like, const torch::Tensor& rows) {
      std::vector<int64_t> shape = like.sizes().vec();
      shape[0] = capacity;
      torch::Tensor buffer = torch::empty(shape, like.options());
      if (used > 0) buffer.narrow(0, 0, used).copy_(rows);
      return buffer;
    };
    store = {grown(k, cache.keys), grown(v, cache.values), grown(positions, cache.positions),
             std::make_shared<int64_t>(used)};
  }
  store.keys.narrow(0, used, T).copy_(k);
  store.values.narrow(0, used, T).copy_(v);
  store.positions.narrow(0, used, T).copy_(positions);
  *store.rows = used + T;
  cache.keys = store.keys.narrow(0, 0, used + T);
  cache.values = store.values.narrow(0, 0, used + T);
  cache.positions = store.positions.narrow(0, 0, used + T);
}

// Attention_i of SPEC section 3 for the span, extending the block's cache. `a` is the
// projections' input already in the matmul dtype; q and k are normed and rotated in the
// residual stream's dtype `wide`; the result is in the matmul dtype (the post-norm reads it).
torch::Tensor attention(const ModelConfig& c, const AttentionParams& p, const torch::Tensor& a, torch::Dtype wide,
                        const torch::Tensor& positions, const RopeTable& rotation, bool keep_entries, LayerCache& cache,
                        GrowingStore& store) {
  const int64_t T = a.size(0), H = c.n_heads, d = c.head_dim();
  const torch::Dtype narrow = a.scalar_type();
  // Products stay in the matmul dtype: the norms read them as they are, values go to the
  // cache so (half the memory of fp32: fa at 128K).
  torch::Tensor q = project(a, p.wq, narrow).reshape({T, H, d});
  torch::Tensor k = project(a, p.wk, narrow).reshape({T, H, d});
  const torch::Tensor v = project(a, p.wv, narrow).reshape({T, H, d});
  if (c.qk_norm) {
    q = rms_norm(q, p.q_norm, c.rms_eps, wide);
    k = rms_norm(k, p.k_norm, c.rms_eps, wide);
  }
  q = rope(q.to(wide), rotation);
  k = rope(k.to(wide), rotation).to(narrow);

  const int64_t window = c.attention_window();
  if (!keep_entries) {
    require(!cache.keys.defined(), "internal: a cache that keeps nothing already holds entries");
    return project(attend_span(q, k, v, positions, positions, window), p.wo, narrow);
  }
  if (window == 0 && !torch::GradMode::is_enabled()) {
    append_in_place(cache, store, k, v, positions);
    return project(attend_span(q, cache.keys, cache.values, positions, cache.positions, 0), p.wo, narrow);
  }
  // With autograd (meta-learning through the cache) or a window: new tensors each step.
  const bool empty = !cache.keys.defined();
  const torch::Tensor keys = empty ? k : torch::cat({cache.keys, k});
  const torch::Tensor values = empty ? v : torch::cat({cache.values, v});
  const torch::Tensor all_positions = empty ? positions : torch::cat({cache.positions, positions});
  const torch::Tensor out = attend_span(q, keys, values, positions, all_positions, window);

  // A later query at position t needs keys down to t - (window - 1): keep window-1 tokens.
  const int64_t keep = all_positions.size(0);
  const int64_t kept = window > 0 ? std::min(keep, window - 1) : keep;
  cache = {keys.narrow(0, keep - kept, kept), values.narrow(0, keep - kept, kept),
           all_positions.narrow(0, keep - kept, kept)};
  return project(out, p.wo, narrow);
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
  // The residual stream is in the gains' dtype, also where the embedding is stored for matmuls.
  return params.embed.index_select(0, tokens).to(params.final_norm.scalar_type());
}

torch::Tensor run_blocks(const ModelConfig& c, const Params& params, torch::Tensor h, const torch::Tensor& positions,
                         KvCache& cache, int64_t first, int64_t last, const FastWeights* prime) {
  if (first >= last) return h;
  const double eps = c.rms_eps;
  // The residual stream, the norms and SwiGLU's product in `wide`; the pre-norms write the
  // matmuls' inputs in `narrow` (the matmul dtype), the post-norms read their outputs so.
  const torch::Dtype wide = h.scalar_type(), narrow = matmul_dtype_for(h);
  const RopeTable rotation = rope_table(positions, c.head_dim(), c.rope_theta, wide);
  for (int64_t i = first; i < last; ++i) {
    const BlockParams& b = params.blocks[i];
    const torch::Tensor a = rms_norm(h, b.attn_norm, eps, narrow);
    h = h + rms_norm(attention(c, b.attn, a, wide, positions, rotation, cache.keep_entries, cache.layers[i],
                               cache.stores[i]),
                     b.attn_post_norm, eps, wide);
    if (c.has_prime(i)) {
      require(prime != nullptr, "internal: suffix block run without fast weights");
      fast_weights_in_use();
      const MlpParams& w = prime->at(i - c.first_suffix_block());
      h = h + rms_norm(swiglu(rms_norm(h, b.prime_norm, eps, narrow), w, wide, narrow), b.prime_post_norm, eps, wide);
    }
    h = h + rms_norm(swiglu(rms_norm(h, b.mlp_norm, eps, narrow), b.mlp, wide, narrow), b.mlp_post_norm, eps, wide);
  }
  return h;
}

torch::Tensor span_positions(int64_t start, int64_t length, const torch::Device& device) {
  return torch::arange(start, start + length, torch::TensorOptions().dtype(torch::kInt64).device(device));
}

torch::Tensor hidden_states(const ModelConfig& c, const Params& params, const torch::Tensor& tokens, int64_t start,
                            KvCache& cache, int64_t last, const FastWeights* prime) {
  return run_blocks(c, params, embed_tokens(params, tokens), span_positions(start, tokens.size(0), tokens.device()),
                    cache, 0, last, prime);
}

torch::Tensor lm_logits(const ModelConfig& c, const Params& params, const torch::Tensor& h) {
  const torch::Tensor normed = rms_norm(h, params.final_norm, c.rms_eps, matmul_dtype_for(h));
  // Left in the matmul dtype: the loss reads them in fp32 without a cast of its own, and
  // [T, 128256] fp32 logits would double the head's memory traffic.
  return project(normed, c.tie_embeddings ? params.embed.t() : params.lm_head);
}

torch::Tensor forward_span(const ModelConfig& c, const Params& params, const torch::Tensor& tokens,
                           const torch::Tensor& positions, KvCache& cache, const FastWeights* prime) {
  const torch::Tensor h = run_blocks(c, params, embed_tokens(params, tokens), positions, cache, 0, c.n_layers, prime);
  return lm_logits(c, params, h);
}

}  // namespace ttt
