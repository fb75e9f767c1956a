// The inner loop's chunk step (run_chunk with an update and no outer gradient:
// evaluation) as CUDA graphs. Eagerly, a chunk of ttt-e2e 125M issues ~500
// kernels whose launches cost more host time than the GPU spends on them; a
// graph replays them in one launch. The same kernels run on the same numbers:
// the results are those of run_chunk.
//
// A graph reads its inputs and state from fixed buffers: the chunk's hidden
// states, targets and positions, the suffix blocks' caches (room for window - 1
// tokens) and the fast weights; it writes the new state back into them. One
// graph per cache length (the first chunks of a sequence find fewer than window
// - 1 tokens cached; afterwards every chunk looks the same), all sharing one
// memory pool. A shape is run eagerly the first time it is seen (libraries pick
// and load their kernels), captured the second time, replayed from then on:
// graphs pay off over many sequences of one model, as evaluation and benchmarks
// read them.
#pragma once
#include <memory>

#include <torch/types.h>

#include "config/model_config.h"
#include "model/params.h"
#include "model/transformer.h"
#include "ttt/inner_loop.h"

namespace ttt {

struct ScanState;

class ChunkGraphs {
 public:
  // Whether graphs can serve this model here: a CUDA build and device, ttt-e2e
  // with a window, the fused kernels allowed (the prefix then runs ahead of the
  // chunks).
  static bool supported(const ModelConfig& config, const Params& params);
  // Graphs for this model where supported(), else null (the caller runs chunks eagerly).
  static std::unique_ptr<ChunkGraphs> where_supported(const ModelConfig& config, const Params& params);

  // For `params` as they are now (kept alive; graphs read them in place), with
  // the thread's matmul dtype, which later calls must keep. Throws ttt::Error
  // unless supported().
  ChunkGraphs(const ModelConfig& config, const Params& params);
  ~ChunkGraphs();
  ChunkGraphs(const ChunkGraphs&) = delete;
  ChunkGraphs& operator=(const ChunkGraphs&) = delete;

  // run_chunk(config, params, hidden, {first_suffix_block, past_attention},
  // targets, positions, cache, weights, update = true, step_size, kNone) for a
  // full chunk (mini_batch rows): a graph per cache length and entry. Afterwards
  // the cache entries of the suffix blocks the chunk extended and the
  // returned next_weights BORROW this object's buffers: the next call
  // overwrites them (a chunk scan's state passes from step to step so, and
  // `release` makes it the caller's own). nll and loss are the caller's own.
  ChunkStep step(const Params& params, const torch::Tensor& hidden, bool past_attention, const torch::Tensor& targets,
                 const torch::Tensor& positions, KvCache& cache, const FastWeights& weights,
                 const torch::Tensor& step_size);
  // Copies whatever of `state` borrows the buffers out of them.
  void release(ScanState& state) const;

  int64_t captures() const;  // graphs captured so far
  int64_t replays() const;   // chunks run by replaying one

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ttt
