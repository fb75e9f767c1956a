// The inner loop of SPEC section 5 as one scan over chunks. Every procedure runs it:
// evaluation (run_sequence), streaming sessions (Session), the meta-gradient's forward pass
// and its reverse scan (sequence_gradient.cpp). The loop, in scan_chunks:
//
//   state = (W_0, an empty cache)
//   for each chunk c:
//       h     = the hidden states entering the inner-loop blocks            (ChunkInputs)
//       step  = run_chunk(h, state): l_c, then one inner step    (or its CUDA graph replay)
//       state = (W_c, the cache extended by chunk c)
//
// What varies between procedures plugs in: where h comes from (each chunk's embeddings;
// the blocks before the fast weights run ahead over long spans; rows computed already),
// eager chunks or graph replays (ChunkGraphs), the outer gradient kept or not, and what the
// caller keeps of each chunk (a callback).
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include <torch/types.h>

#include "config/model_config.h"
#include "model/compute.h"
#include "model/kv_cache.h"
#include "model/params.h"
#include "ttt/inner_loop.h"

namespace ttt {

class ChunkGraphs;

// One chunk of a scan.
struct ChunkSpan {
  int64_t index = 0;     // chunk number in the scan, from 0
  int64_t start = 0;     // its first input, counted from the scan's first input
  int64_t length = 0;    // its inputs (= targets): mini_batch, the last one maybe fewer
  int64_t position = 0;  // absolute position of its first input
  bool update = false;   // whether an inner step follows its loss
};

// The chunks of `n` inputs from absolute position `position`. ttt-e2e takes an inner step
// after every full chunk but the last; after the last too if `update_last` (a session reads
// on afterwards). Other variants take none.
std::vector<ChunkSpan> plan_chunks(const ModelConfig& config, int64_t n, int64_t position, bool update_last);

// What the loop carries from chunk to chunk.
struct ScanState {
  FastWeights weights;
  KvCache cache;
};

// How many inputs the blocks before the fast weights (all blocks of swa) run ahead of the
// chunk loop at a time where fused kernels serve: whole chunks, enough for large GEMMs,
// little memory (3B: about 2 GB of activations without autograd). fa runs them all at once.
int64_t run_ahead_tokens(const ModelConfig& config, int64_t n);

// The hidden states entering each chunk's first inner-loop block.
class ChunkInputs {
 public:
  // Each chunk's embeddings: every block runs chunk by chunk (the CPU's way, and the exact
  // meta-gradient's reference).
  static ChunkInputs embedded(const Params& params, torch::Tensor inputs);
  // Blocks [0, entry) over spans of at most `span` inputs (whole chunks; 0: run_ahead_tokens),
  // ahead of the chunks and through the scan state's cache; autograd records them only if
  // `with_graph`. Each span runs while the chunks of the one before step: on a GPU, without
  // a graph, on the thread's own CUDA stream (TTT_RUN_AHEAD_STREAM=0: on the current one).
  static ChunkInputs run_ahead(const ModelConfig& config, const Params& params, torch::Tensor inputs,
                               BlockPoint entry, bool with_graph, int64_t span = 0);
  // Rows computed already, at `entry` (the meta-gradient's prefix).
  static ChunkInputs given(torch::Tensor hidden, BlockPoint entry);

  ChunkInputs(ChunkInputs&&) noexcept;
  ~ChunkInputs();  // the current stream waits for a span still running beside it

  BlockPoint entry() const { return entry_; }
  // The chunk's rows; `cache` is the scan state's, which the blocks run ahead extend (a span
  // ahead of the chunks). Chunks come in order.
  torch::Tensor of(const ChunkSpan& chunk, KvCache& cache);
  // Queues the span after the one of() last entered, if not yet queued: a caller calls it once
  // it has queued its work on that span's first rows, so that this work starts first (the span
  // runs beside it; of() queues a span not queued before it waits for it).
  void queue_ahead(KvCache& cache);

 private:
  enum class Source { kEmbedded, kAhead, kGiven };
  ChunkInputs(Source source, const ModelConfig* config, const Params* params, torch::Tensor inputs, BlockPoint entry,
              bool with_graph, int64_t span);
  // kAhead: the span from input `start` on, through `cache`, into next_: queued on the side
  // stream if `beside`, else on the current one.
  void run_span(int64_t start, KvCache& cache, bool beside);
  // kAhead: what the cache holds of the blocks run ahead.
  std::vector<torch::Tensor> prefix_cache_tensors(const KvCache& cache) const;

  Source source_;
  const ModelConfig* config_;
  const Params* params_;
  torch::Tensor inputs_;  // token ids, or the given rows
  BlockPoint entry_;
  bool with_graph_;
  // kAhead:
  int64_t span_;                // inputs per span
  int64_t first_position_ = 0;  // the absolute position of input 0
  torch::Tensor ahead_, next_;  // rows of the span the chunks are in, from ahead_start_; of the next one
  int64_t ahead_start_ = 0, next_start_ = 0;
  bool next_due_ = false;             // the span after ahead_ is still to be queued
  std::unique_ptr<SideStream> side_;  // where the spans run
};

struct ScanOptions {
  OuterGradient outer = OuterGradient::kNone;
  torch::Tensor step_size;  // inner_step_size
  // Replays full chunks with an inner step and no outer gradient that start at the first
  // suffix block (evaluation on a GPU); made for the same parameters and precision.
  ChunkGraphs* graphs = nullptr;
};

// One chunk: its CUDA graph where one serves, else run_chunk, on `hidden` (the rows at
// `entry`) and `targets` (the chunk's own); `state` moves past the chunk. Without
// an outer gradient the state is cut from autograd afterwards. Where the graph replayed, the
// state is a view of the graphs' buffers until ChunkGraphs::release.
ChunkStep step_chunk(const ModelConfig& config, const Params& params, const ChunkSpan& chunk,
                     const torch::Tensor& hidden, BlockPoint entry, const torch::Tensor& targets, ScanState& state,
                     const ScanOptions& options);

// Every chunk of `chunks` in order (targets indexed like the inputs), calling
// on_chunk(chunk, step) after each with `state` past it. Where graphs replayed, the state
// borrows their buffers: a caller that keeps it calls ChunkGraphs::release (a copy the
// callers that drop it, like run_sequence, need not make).
void scan_chunks(const ModelConfig& config, const Params& params, ChunkInputs& inputs, const torch::Tensor& targets,
                 const std::vector<ChunkSpan>& chunks, ScanState& state, const ScanOptions& options,
                 const std::function<void(const ChunkSpan&, const ChunkStep&)>& on_chunk);

}  // namespace ttt
