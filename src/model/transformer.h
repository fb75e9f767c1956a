// The decoder of SPEC section 3 run over a span of tokens with a per-block KV cache, so a
// sequence can be processed whole or chunk by chunk with the same numbers.
#pragma once
#include <vector>

#include <torch/types.h>

#include "config/model_config.h"
#include "model/params.h"

namespace ttt {

// One block's attention memory: keys after QK-norm and RoPE, values, and their absolute
// positions. Windowed variants keep the last window-1 tokens, fa keeps everything.
struct LayerCache {
  torch::Tensor keys;       // [S, H, d]
  torch::Tensor values;     // [S, H, d]
  torch::Tensor positions;  // [S] int64
};

struct KvCache {
  std::vector<LayerCache> layers;  // one per block; empty tensors before the first token
  explicit KvCache(int64_t n_layers) : layers(n_layers) {}
  // Cuts every entry's autograd history (keeps the values).
  void detach();
};

// Token embeddings E[tokens]: [T, D].
torch::Tensor embed_tokens(const Params& params, const torch::Tensor& tokens);

// Runs blocks [first, last) on hidden states h [T, D] of tokens at absolute `positions`
// (consecutive, following those in the cache), attending through `cache` and appending
// this span to it. `prime` holds the fast weights of the suffix blocks, indexed from
// config.first_suffix_block(); it is required iff the range includes a suffix block.
torch::Tensor run_blocks(const ModelConfig& config, const Params& params, torch::Tensor h,
                         const torch::Tensor& positions, KvCache& cache, int64_t first, int64_t last,
                         const FastWeights* prime = nullptr);

// RMSNorm(h; final_norm) @ E^T (or @ lm_head): [T, V].
torch::Tensor lm_logits(const ModelConfig& config, const Params& params, const torch::Tensor& h);

// Embedding, every block and the head for one span of tokens: logits [T, V].
torch::Tensor forward_span(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                           const torch::Tensor& positions, KvCache& cache, const FastWeights* prime = nullptr);

}  // namespace ttt
