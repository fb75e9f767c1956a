#include "ttt/chunk_graphs.h"

#include <torch/types.h>

#include <algorithm>
#include <optional>

#include "common/error.h"
#include "model/compute.h"
#include "model/layers.h"
#include "ttt/chunk_scan.h"
#include "ttt/graph_replay.h"

namespace ttt {
namespace {

// `to` holds `from`'s values unless it already is `from` (the previous step's
// output). Contiguous alike: one cudaMemcpyAsync, a few microseconds of host time where
// copy_ takes tens (twenty of them before every graph of a decoded chunk's inner step).
void adopt(const torch::Tensor& to, const torch::Tensor& from) {
  if (to.data_ptr() == from.data_ptr()) return;
  const bool alike = to.is_contiguous() && from.is_contiguous() && to.scalar_type() == from.scalar_type() &&
                     to.sizes() == from.sizes() && to.device() == from.device();
  if (alike) {
    copy_queued(to, from);
  } else {
    to.copy_(from);
  }
}

// The first `rows` rows of a buffer of entries.
KvEntries first_rows(const KvEntries& buffer, int64_t rows) {
  if (rows == 0) return {};
  return {buffer.keys.narrow(0, 0, rows), buffer.values.narrow(0, 0, rows), buffer.positions.narrow(0, 0, rows)};
}

}  // namespace

struct ChunkGraphs::State {
  ModelConfig config;
  Params params;
  std::optional<torch::Dtype> matmul_dtype;
  int64_t first = 0;     // first suffix block
  int64_t max_rows = 0;  // cache rows kept: window - 1
  // Inputs, outputs and state, where every graph finds them.
  torch::Tensor hidden, targets, positions, step_size, nll, loss;
  std::vector<KvEntries> caches;  // one per suffix block, max_rows rows
  FastWeights weights;
  GraphReplay graphs;  // one per cache length; destroyed before the buffers

  void make_buffers(const torch::Tensor& hidden, const torch::Tensor& positions, const FastWeights& like,
                    const torch::Tensor& like_step_size);
  // The chunk step on the buffers, the cache holding `rows` rows, writing its results back into them.
  void run(int64_t rows, bool past_attention);
};

void ChunkGraphs::State::make_buffers(const torch::Tensor& like_hidden, const torch::Tensor& like_positions,
                                      const FastWeights& like, const torch::Tensor& like_step_size) {
  hidden = torch::empty_like(like_hidden, torch::MemoryFormat::Contiguous);
  targets = torch::empty({config.mini_batch}, like_positions.options());
  positions = torch::empty_like(like_positions, torch::MemoryFormat::Contiguous);
  const auto kv_options = like_hidden.options().dtype(matmul_dtype.value_or(like_hidden.scalar_type()));
  for (int64_t l = first; l < config.n_layers; ++l) {
    caches.push_back({torch::empty({max_rows, config.n_heads, config.head_dim()}, kv_options),
                      torch::empty({max_rows, config.n_heads, config.head_dim()}, kv_options),
                      torch::empty({max_rows}, like_positions.options())});
  }
  for (const MlpParams& w : like) {
    weights.push_back({torch::empty_like(w.w1), torch::empty_like(w.w2), torch::empty_like(w.w3)});
  }
  step_size = torch::empty_like(like_step_size);
  nll = torch::empty({config.mini_batch}, like_hidden.options().dtype(torch::kFloat32));
  loss = torch::empty({}, nll.options());
}

void ChunkGraphs::State::run(int64_t rows, bool past_attention) {
  const int64_t next_rows = std::min(rows + config.mini_batch, max_rows);
  const int64_t cached = BlockPoint(first, past_attention).next_attention();
  KvCache local = KvCache::window(config);
  for (int64_t l = cached; l < config.n_layers; ++l) local.assign(l, first_rows(caches[l - first], rows));
  ChunkStep step;
  {
    torch::AutoGradMode grad_mode(true);
    step = run_chunk(config, params, hidden, BlockPoint(first, past_attention), targets, positions, local, weights,
                     /*update=*/true, step_size, OuterGradient::kNone);
  }
  for (int64_t l = cached; l < config.n_layers; ++l) {
    const KvEntries buffer = first_rows(caches[l - first], next_rows), result = local.entries(l);
    buffer.keys.copy_(result.keys);
    buffer.values.copy_(result.values);
    buffer.positions.copy_(result.positions);
  }
  const std::vector<torch::Tensor> ours = flatten(weights), next = flatten(step.next_weights);
  for (size_t i = 0; i < ours.size(); ++i) ours[i].copy_(next[i]);
  nll.copy_(step.nll);
  loss.copy_(step.loss);
}

bool ChunkGraphs::supported(const ModelConfig& config, const Params& params) {
  return cuda_graphs_enabled() && config.is_ttt() && config.attention_window() > 0 &&
         fused_attention_available(params.final_norm);
}

std::unique_ptr<ChunkGraphs> ChunkGraphs::where_supported(const ModelConfig& config, const Params& params) {
  return supported(config, params) ? std::make_unique<ChunkGraphs>(config, params) : nullptr;
}

ChunkGraphs::ChunkGraphs(const ModelConfig& config, const Params& params) : state_(std::make_unique<State>()) {
  require(supported(config, params), "CUDA graphs need a CUDA build and device and a ttt-e2e model");
  State& s = *state_;
  s.config = config;
  s.params = params;
  s.matmul_dtype = matmul_dtype();
  s.first = config.first_suffix_block();
  s.max_rows = KvCache::rows_kept(config);
}

ChunkGraphs::~ChunkGraphs() = default;

int64_t ChunkGraphs::captures() const { return state_->graphs.captures(); }
int64_t ChunkGraphs::replays() const { return state_->graphs.replays(); }

ChunkStep ChunkGraphs::step(const Params& params, const torch::Tensor& hidden, bool past_attention,
                            const torch::Tensor& targets, const torch::Tensor& positions, KvCache& cache,
                            const FastWeights& weights, const torch::Tensor& step_size) {
  State& s = *state_;
  const ModelConfig& c = s.config;
  require(params.final_norm.data_ptr() == s.params.final_norm.data_ptr() &&
              params.embed.data_ptr() == s.params.embed.data_ptr(),
          "internal: chunk graphs used with other parameters than their own");
  require(matmul_dtype() == s.matmul_dtype, "internal: chunk graphs used under another precision than their own");
  require(hidden.size(0) == c.mini_batch, "internal: chunk graphs serve full chunks only");
  // The blocks whose caches the chunk extends: from the first suffix block's, or the next one's
  // where that block's attention ran ahead (none when it is the last block).
  const int64_t cached = BlockPoint(s.first, past_attention).next_attention();
  const int64_t rows = cached < c.n_layers ? cache.entries(cached).rows() : 0;
  require(rows <= s.max_rows, "internal: a cache longer than the window");

  torch::NoGradGuard no_grad;
  if (!s.hidden.defined()) s.make_buffers(hidden, positions, weights, step_size);
  adopt(s.hidden, hidden);
  adopt(s.targets, targets);
  adopt(s.positions, positions);
  adopt(s.step_size, step_size);
  for (int64_t l = cached; l < c.n_layers; ++l) {
    const KvEntries& from = cache.entries(l);
    require(from.rows() == rows, "internal: suffix caches of different lengths");
    if (rows == 0) continue;
    const KvEntries to = first_rows(s.caches[l - s.first], rows);
    adopt(to.keys, from.keys);
    adopt(to.values, from.values);
    adopt(to.positions, from.positions);
  }
  const std::vector<torch::Tensor> ours = flatten(s.weights), given = flatten(weights);
  for (size_t i = 0; i < ours.size(); ++i) adopt(ours[i], given[i]);

  s.graphs.run(2 * rows + (past_attention ? 1 : 0), [&] { s.run(rows, past_attention); });

  const int64_t next_rows = std::min(rows + c.mini_batch, s.max_rows);
  for (int64_t l = cached; l < c.n_layers; ++l) cache.assign(l, first_rows(s.caches[l - s.first], next_rows));
  ChunkStep result;
  result.nll = s.nll.clone();
  result.loss = s.loss.clone();
  result.next_weights = s.weights;
  return result;
}

void ChunkGraphs::release(ScanState& state) const {
  const State& s = *state_;
  if (!s.hidden.defined()) return;  // never stepped: nothing borrowed
  const auto borrows = [](const torch::Tensor& t, const torch::Tensor& buffer) {
    return t.defined() && t.data_ptr() == buffer.data_ptr();
  };
  for (size_t i = 0; i < state.weights.size(); ++i) {
    MlpParams& w = state.weights[i];
    if (borrows(w.w1, s.weights[i].w1)) w = {w.w1.clone(), w.w2.clone(), w.w3.clone()};
  }
  for (int64_t l = s.first; l < s.config.n_layers; ++l) {
    const KvEntries& entries = state.cache.entries(l);
    if (borrows(entries.keys, s.caches[l - s.first].keys)) state.cache.assign(l, entries.cloned());
  }
}

}  // namespace ttt
