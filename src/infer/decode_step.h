// One decoded token at fixed shapes (issue 24), so that one CUDA graph serves every token of
// a session. Eagerly, a token of 125M costs ~5 ms of host time dispatching hundreds of small
// ops whose GPU work takes far less; a graph replays them in one launch.
//
// Everything the step reads or writes stays at fixed addresses with fixed shapes:
//   - per block, keys and values in a ring of `capacity` rows: the window's rows for swa and
//     ttt-e2e (the token at position p in slot p % window), for fa room that grows with the
//     context (slot p; a new graph per capacity);
//   - one position per slot (empty slots hold a position no query sees), so that the mask
//     is computed on the device from the token's position: keys are stored after RoPE, so
//     their order in the ring does not matter to the softmax;
//   - the token id and its position as device tensors, written before each step;
//   - ttt-e2e's fast weights, copied in whenever the session's change (after an inner step);
//   - the logits.
// The step writes the token's key and value into their slot and attends over the whole ring
// under the mask: no shape and no host value depends on the position inside the step. Where
// CUDA graphs serve (graph_replay.h) it is captured and replayed; elsewhere (the CPU,
// TTT_CUDA_GRAPHS=0) the same ops run eagerly.
//
// The step computes what Session::feed computes for a one-token span, up to rounding. The
// Session stays the owner of its state: it loads the ring from its KvCache where that is
// newer, and unloads it where it needs the cache (spans of many tokens, inner steps, save,
// fork).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>

#include <torch/types.h>

#include "config/model_config.h"
#include "model/kv_cache.h"
#include "model/params.h"

namespace ttt {

class DecodeStep {
 public:
  // Whether sessions on `params` decode through the step by default: where CUDA graphs
  // serve (a GPU, TTT_CUDA_GRAPHS not 0), since eagerly the per-op dispatch of a token costs
  // more than its arithmetic, and the step without a graph does more of it than a span.
  static bool serves_by_default(const Params& params);

  // For `params` (kept; graphs read them in place), computing with matmuls in `matmul_dtype`
  // (the session's), which every step checks the thread's setting against. No buffers
  // are made before the first load.
  DecodeStep(const ModelConfig& config, const Params& params, std::optional<torch::Dtype> matmul_dtype);
  ~DecodeStep();
  DecodeStep(const DecodeStep&) = delete;
  DecodeStep& operator=(const DecodeStep&) = delete;

  // The ring takes `cache`'s rows, those of the tokens before `position` (every one for fa,
  // the last window - 1 otherwise), replacing whatever it held.
  void load(const KvCache& cache, int64_t position);
  // Those rows as a KvCache::for_inference of their own (copies), oldest first.
  KvCache unload() const;

  // Reads token `id` at position() with `weights` as the suffix blocks' fast weights (ttt-e2e;
  // ignored otherwise) and returns the logits [V] at it, in the residual stream's dtype: a
  // buffer that the next step overwrites.
  const torch::Tensor& step(int64_t id, const FastWeights& weights);

  // ttt-e2e: [mini_batch, D] rows that entered the first block with fast weights, the token at
  // position p in row p % mini_batch: once a chunk's tokens have all been stepped, its inner
  // step starts from them instead of running the blocks before again.
  const torch::Tensor& suffix_inputs() const;

  int64_t position() const;  // tokens the ring has seen: the next token's position
  int64_t capacity() const;  // rows of the ring (0 before the first load)
  int64_t bytes() const;     // held by the buffers
  int64_t steps() const;     // tokens read
  int64_t allocations() const;  // times the buffers were made: the first load and each growth
  int64_t loads() const;        // times the ring took a cache's rows
  int64_t captures() const;  // CUDA graphs captured
  int64_t replays() const;   // steps that replayed one

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ttt
