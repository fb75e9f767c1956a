#include "ttt/chunk_scan.h"

#include <torch/types.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>

#include "common/error.h"
#include "model/transformer.h"
#include "ttt/chunk_graphs.h"

namespace ttt {

std::vector<ChunkSpan> plan_chunks(const ModelConfig& config, int64_t n, int64_t position, bool update_last) {
  std::vector<ChunkSpan> chunks;
  for (int64_t start = 0; start < n; start += config.mini_batch) {
    const int64_t length = std::min(config.mini_batch, n - start);
    const bool last = start + length == n;
    chunks.push_back({static_cast<int64_t>(chunks.size()), start, length, position + start,
                      config.is_ttt() && length == config.mini_batch && (update_last || !last)});
  }
  return chunks;
}

int64_t run_ahead_tokens(const ModelConfig& config, int64_t n) {
  constexpr int64_t kTokens = 16384;
  if (config.variant == Variant::kFullAttention) return n;
  return std::max<int64_t>(1, kTokens / config.mini_batch) * config.mini_batch;
}

namespace {

// TTT_RUN_AHEAD_STREAM=0 keeps the spans run ahead on the current stream (comparisons);
// anything else but unset is refused.
bool run_ahead_stream_allowed() {
  const char* setting = std::getenv("TTT_RUN_AHEAD_STREAM");
  const std::string value = setting == nullptr ? "" : setting;
  require(value.empty() || value == "0", "TTT_RUN_AHEAD_STREAM is \"" + value + "\": use 0, or leave it unset");
  return value.empty();
}

}  // namespace

ChunkInputs::ChunkInputs(Source source, const ModelConfig* config, const Params* params, torch::Tensor inputs,
                         BlockPoint entry, bool with_graph, int64_t span)
    : source_(source),
      config_(config),
      params_(params),
      inputs_(std::move(inputs)),
      entry_(entry),
      with_graph_(with_graph),
      span_(span) {
  if (source_ != Source::kAhead) return;
  side_ = std::make_unique<SideStream>(inputs_.device(), !with_graph_ && run_ahead_stream_allowed());
}

ChunkInputs::ChunkInputs(ChunkInputs&&) noexcept = default;
ChunkInputs::~ChunkInputs() = default;

ChunkInputs ChunkInputs::embedded(const Params& params, torch::Tensor inputs) {
  return ChunkInputs(Source::kEmbedded, nullptr, &params, std::move(inputs), 0, false, 0);
}

ChunkInputs ChunkInputs::run_ahead(const ModelConfig& config, const Params& params, torch::Tensor inputs,
                                   BlockPoint entry, bool with_graph, int64_t span) {
  require(span % config.mini_batch == 0, "internal: spans run ahead in whole chunks");
  if (span <= 0) span = run_ahead_tokens(config, inputs.size(0));
  return ChunkInputs(Source::kAhead, &config, &params, std::move(inputs), entry, with_graph, span);
}

ChunkInputs ChunkInputs::given(torch::Tensor hidden, BlockPoint entry) {
  return ChunkInputs(Source::kGiven, nullptr, nullptr, std::move(hidden), entry, false, 0);
}

torch::Tensor ChunkInputs::of(const ChunkSpan& chunk, KvCache& cache) {
  switch (source_) {
    case Source::kEmbedded:
      return embed_tokens(*params_, inputs_.narrow(0, chunk.start, chunk.length));
    case Source::kGiven:
      return inputs_.narrow(0, chunk.start, chunk.length);
    case Source::kAhead:
      break;
  }
  if (!ahead_.defined() || chunk.start >= ahead_start_ + ahead_.size(0)) {
    if (next_due_) {
      queue_ahead(cache);           // the caller did not queue it: the chunks wait for it
    } else if (!next_.defined()) {  // the first span: the chunks wait for it
      first_position_ = chunk.position - chunk.start;
      run_span(chunk.start, cache, /*beside=*/false);
    }
    require(chunk.start == next_start_, "internal: chunks take the rows run ahead in order");
    // The rows and the cache the span left: the current stream reads and frees them from now on.
    std::vector<torch::Tensor> results = prefix_cache_tensors(cache);
    results.push_back(next_);
    side_->wait(results);
    ahead_ = std::move(next_);
    ahead_start_ = next_start_;
    next_ = torch::Tensor();
    // The next span needs nothing the chunks queued from here on: it starts after this point.
    side_->mark();
    next_due_ = ahead_start_ + ahead_.size(0) < inputs_.size(0);
  }
  return ahead_.narrow(0, chunk.start - ahead_start_, chunk.length);
}

void ChunkInputs::queue_ahead(KvCache& cache) {
  if (!next_due_) return;
  run_span(ahead_start_ + ahead_.size(0), cache, /*beside=*/true);
  next_due_ = false;  // after the span: one that failed is not taken for the first
}

void ChunkInputs::run_span(int64_t start, KvCache& cache, bool beside) {
  const int64_t length = std::min(span_, inputs_.size(0) - start);
  const auto work = [&] {
    std::optional<torch::NoGradGuard> no_grad;
    if (!with_graph_) no_grad.emplace();
    next_ = hidden_states(*config_, *params_, inputs_.narrow(0, start, length), first_position_ + start, cache, entry_);
  };
  next_start_ = start;
  if (!beside) return work();
  // What the span reads or replaces that other work made: the token ids and the blocks'
  // cache rows (the first span's, a session's made by its decode steps).
  std::vector<torch::Tensor> shared = prefix_cache_tensors(cache);
  shared.push_back(inputs_);
  side_->run(work, shared);
}

std::vector<torch::Tensor> ChunkInputs::prefix_cache_tensors(const KvCache& cache) const {
  std::vector<torch::Tensor> held;
  for (int64_t l = 0; l < std::min(entry_.next_attention(), cache.n_layers()); ++l) {
    const std::vector<torch::Tensor> block = cache.tensors(l);
    held.insert(held.end(), block.begin(), block.end());
  }
  return held;
}

ChunkStep step_chunk(const ModelConfig& config, const Params& params, const ChunkSpan& chunk,
                     const torch::Tensor& hidden, BlockPoint entry, const torch::Tensor& targets, ScanState& state,
                     const ScanOptions& options) {
  const torch::Tensor positions = span_positions(chunk.position, chunk.length, hidden.device());
  const bool replay = options.graphs != nullptr && chunk.update && options.outer == OuterGradient::kNone &&
                      entry.block == config.first_suffix_block();
  ChunkStep step = replay ? options.graphs->step(params, hidden, entry.past_attention, targets, positions, state.cache,
                                                 state.weights, options.step_size)
                          : run_chunk(config, params, hidden, entry, targets, positions, state.cache, state.weights,
                                      chunk.update, options.step_size, options.outer);
  state.weights = step.next_weights;
  if (options.outer == OuterGradient::kNone) {
    state.weights = detach_fast_weights(state.weights, /*requires_grad=*/false);
    state.cache.detach();
  }
  return step;
}

void scan_chunks(const ModelConfig& config, const Params& params, ChunkInputs& inputs, const torch::Tensor& targets,
                 const std::vector<ChunkSpan>& chunks, ScanState& state, const ScanOptions& options,
                 const std::function<void(const ChunkSpan&, const ChunkStep&)>& on_chunk) {
  for (const ChunkSpan& chunk : chunks) {
    const torch::Tensor hidden = inputs.of(chunk, state.cache);
    const ChunkStep step = step_chunk(config, params, chunk, hidden, inputs.entry(),
                                      targets.narrow(0, chunk.start, chunk.length), state, options);
    inputs.queue_ahead(state.cache);  // behind the chunk's own work on the host
    if (on_chunk) on_chunk(chunk, step);
  }
}

}  // namespace ttt
