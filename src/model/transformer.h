// The decoder of SPEC section 3 run over a span of tokens with a per-block KV cache, so a
// sequence can be processed whole or chunk by chunk with the same numbers.
#pragma once
#include <memory>
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

// fa without autograd (evaluation, generation): a block's keys, values and positions are
// the first S rows of buffers with room to grow, so a step appends in place instead of
// copying the whole cache. `rows` counts the rows written; a copy of the cache that is
// behind it (another branch of the same history) gets buffers of its own before it writes.
struct GrowingStore {
  torch::Tensor keys, values, positions;
  std::shared_ptr<int64_t> rows;
};

struct KvCache {
  std::vector<LayerCache> layers;  // one per block; empty tensors before the first token
  std::vector<GrowingStore> stores;  // one per block, used by fa without autograd
  // false: nothing is kept, for one pass over a whole sequence that needs no cache after it
  // (fa evaluation; the 3B model's keys at 128K would take half the GPU).
  bool keep_entries = true;
  explicit KvCache(int64_t n_layers) : layers(n_layers), stores(n_layers) {}
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

// Absolute positions start..start+length-1 ([length] int64 on `device`).
torch::Tensor span_positions(int64_t start, int64_t length, const torch::Device& device);

// Embeds `tokens` ([T] ids at absolute positions start..start+T-1) and runs blocks
// [0, last) on them through `cache`, as run_blocks does.
torch::Tensor hidden_states(const ModelConfig& config, const Params& params, const torch::Tensor& tokens, int64_t start,
                            KvCache& cache, int64_t last, const FastWeights* prime = nullptr);

// RMSNorm(h; final_norm) @ E^T (or @ lm_head): [T, V], in the matmul dtype if one is set
// (token_nll reads them in fp32), else in h's.
torch::Tensor lm_logits(const ModelConfig& config, const Params& params, const torch::Tensor& h);

// Embedding, every block and the head for one span of tokens: logits [T, V].
torch::Tensor forward_span(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                           const torch::Tensor& positions, KvCache& cache, const FastWeights* prime = nullptr);

}  // namespace ttt
