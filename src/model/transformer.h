// The decoder of SPEC section 3 run over a span of tokens with a per-block KV cache, so a
// sequence can be processed whole or chunk by chunk with the same numbers.
#pragma once
#include <functional>

#include <torch/types.h>

#include "config/model_config.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/params.h"

namespace ttt {

// A point in the stack of blocks: the input of block `block`, or past its attention sublayer.
// Evaluation runs the first suffix block's attention ahead with the blocks before it (it reads
// no fast weight), so that its chunks enter past it. A block number converts to its input.
struct BlockPoint {
  BlockPoint(int64_t block = 0, bool past_attention = false)  // NOLINT(google-explicit-constructor)
      : block(block), past_attention(past_attention) {}
  int64_t block;
  bool past_attention;
  // The first block whose attention runs from here on (whose cache a chunk entering here extends).
  int64_t next_attention() const { return block + (past_attention ? 1 : 0); }
  bool operator==(const BlockPoint&) const = default;
  bool operator<(const BlockPoint& other) const {
    return block < other.block || (block == other.block && !past_attention && other.past_attention);
  }
};

// Token embeddings E[tokens]: [T, D].
torch::Tensor embed_tokens(const Params& params, const torch::Tensor& tokens);

// Runs blocks [first, last) (from and to those points: BlockPoint) on hidden states h [T, D]
// of tokens at absolute `positions` (consecutive, following those in the cache), attending
// through `cache` and appending this span to it. `prime` holds the fast weights of the suffix
// blocks, indexed from config.first_suffix_block(); it is required iff the range includes a
// suffix block.
// `after_fast_weights`: how many times autograd will differentiate what follows the first
// prime MLP, that MLP included (layers.h's Order; the rest is differentiated at most once).
torch::Tensor run_blocks(const ModelConfig& config, const Params& params, torch::Tensor h,
                         const torch::Tensor& positions, KvCache& cache, BlockPoint first, BlockPoint last,
                         const FastWeights* prime = nullptr, Order after_fast_weights = Order::kFirst);

// Where a block's attention finds its keys: given the span's rotated queries q [T, H, d] and
// its own rotated keys and values (k, v [T, H, d], in the matmul dtype), block `block`'s
// attention output as attend_span returns it. The KV cache's is run_blocks' above; the
// decode step (infer/decode_step.h) keeps fixed-size buffers instead.
using BlockAttention = std::function<torch::Tensor(int64_t block, const torch::Tensor& q, const torch::Tensor& k,
                                                   const torch::Tensor& v, Order order)>;
// run_blocks with the blocks' attention memory given as `memory` and the positions as their
// rotation (rope_table for the head dimension and rope_theta, in h's dtype), which a caller
// running blocks in several calls makes once.
torch::Tensor run_blocks(const ModelConfig& config, const Params& params, torch::Tensor h, const RopeTable& rotation,
                         const BlockAttention& memory, BlockPoint first, BlockPoint last,
                         const FastWeights* prime = nullptr, Order after_fast_weights = Order::kFirst);

// Absolute positions start..start+length-1 ([length] int64 on `device`).
torch::Tensor span_positions(int64_t start, int64_t length, const torch::Device& device);

// Embeds `tokens` ([T] ids at absolute positions start..start+T-1) and runs blocks
// [0, last) on them through `cache`, as run_blocks does.
torch::Tensor hidden_states(const ModelConfig& config, const Params& params, const torch::Tensor& tokens, int64_t start,
                            KvCache& cache, BlockPoint last, const FastWeights* prime = nullptr);

// RMSNorm(h; final_norm) @ E^T (or @ lm_head): [T, V], in the matmul dtype if one is set
// (token_nll reads them in fp32), else in h's. The two factors: the head's input
// final_normed (in the matmul dtype, or h's) and its matrix head_matrix ([D, V]: E^T, a view,
// or lm_head).
torch::Tensor lm_logits(const ModelConfig& config, const Params& params, const torch::Tensor& h);
torch::Tensor final_normed(const ModelConfig& config, const Params& params, const torch::Tensor& h);
torch::Tensor head_matrix(const ModelConfig& config, const Params& params);

// Embedding, every block and the head for one span of tokens: logits [T, V].
torch::Tensor forward_span(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                           const torch::Tensor& positions, KvCache& cache, const FastWeights* prime = nullptr);

}  // namespace ttt
