#include "ttt/chunk_graphs.h"

#include <torch/torch.h>

#include <algorithm>
#include <optional>

#include "common/error.h"
#include "model/compute.h"
#include "model/layers.h"
#include "ttt/graph_replay.h"

namespace ttt {
namespace {

int64_t rows_of(const LayerCache& layer) { return layer.keys.defined() ? layer.keys.size(0) : 0; }

// `to` holds `from`'s values unless it already is `from` (the previous step's
// output).
void adopt(const torch::Tensor& to, const torch::Tensor& from) {
  if (to.data_ptr() != from.data_ptr()) to.copy_(from);
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
  std::vector<LayerCache> caches;  // one per suffix block, max_rows rows
  FastWeights weights;
  GraphReplay graphs;  // one per cache length; destroyed before the buffers
};

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
  s.max_rows = config.attention_window() - 1;
}

ChunkGraphs::~ChunkGraphs() = default;

int64_t ChunkGraphs::captures() const { return state_->graphs.captures(); }
int64_t ChunkGraphs::replays() const { return state_->graphs.replays(); }

ChunkStep ChunkGraphs::step(const Params& params, const torch::Tensor& hidden, const torch::Tensor& targets,
                            const torch::Tensor& positions, KvCache& cache, const FastWeights& weights,
                            const torch::Tensor& step_size) {
  State& s = *state_;
  const ModelConfig& c = s.config;
  require(params.final_norm.data_ptr() == s.params.final_norm.data_ptr() &&
              params.embed.data_ptr() == s.params.embed.data_ptr(),
          "internal: chunk graphs used with other parameters than their own");
  require(matmul_dtype() == s.matmul_dtype && fused_kernels_allowed(),
          "internal: chunk graphs used under another precision than their own");
  require(hidden.size(0) == c.mini_batch, "internal: chunk graphs serve full chunks only");
  const int64_t rows = rows_of(cache.layers[s.first]);
  const int64_t next_rows = std::min(rows + c.mini_batch, s.max_rows);
  require(rows <= s.max_rows, "internal: a cache longer than the window");

  torch::NoGradGuard no_grad;
  if (!s.hidden.defined()) {  // buffers shaped after the first chunk's tensors
    s.hidden = torch::empty_like(hidden, torch::MemoryFormat::Contiguous);
    s.targets = torch::empty_like(targets, torch::MemoryFormat::Contiguous);
    s.positions = torch::empty_like(positions, torch::MemoryFormat::Contiguous);
    const torch::Dtype kv_dtype = s.matmul_dtype.value_or(hidden.scalar_type());
    const auto kv_options = hidden.options().dtype(kv_dtype);
    for (int64_t l = s.first; l < c.n_layers; ++l) {
      s.caches.push_back({torch::empty({s.max_rows, c.n_heads, c.head_dim()}, kv_options),
                          torch::empty({s.max_rows, c.n_heads, c.head_dim()}, kv_options),
                          torch::empty({s.max_rows}, positions.options())});
    }
    for (const MlpParams& w : weights) {
      s.weights.push_back({torch::empty_like(w.w1), torch::empty_like(w.w2), torch::empty_like(w.w3)});
    }
    s.step_size = torch::empty_like(step_size);
    s.nll = torch::empty({c.mini_batch}, hidden.options().dtype(torch::kFloat32));
    s.loss = torch::empty({}, s.nll.options());
  }
  s.hidden.copy_(hidden);
  s.targets.copy_(targets);
  s.positions.copy_(positions);
  s.step_size.copy_(step_size);
  for (int64_t l = s.first; l < c.n_layers; ++l) {
    const LayerCache& from = cache.layers[l];
    require(rows_of(from) == rows, "internal: suffix caches of different lengths");
    if (rows == 0) continue;
    const LayerCache& to = s.caches[l - s.first];
    adopt(to.keys.narrow(0, 0, rows), from.keys);
    adopt(to.values.narrow(0, 0, rows), from.values);
    adopt(to.positions.narrow(0, 0, rows), from.positions);
  }
  const std::vector<torch::Tensor> ours = flatten(s.weights), given = flatten(weights);
  for (size_t i = 0; i < ours.size(); ++i) adopt(ours[i], given[i]);

  // The chunk step on the buffers, writing its results back into them.
  const auto body = [&] {
    KvCache local(c.n_layers);
    for (int64_t l = s.first; l < c.n_layers && rows > 0; ++l) {
      const LayerCache& buffer = s.caches[l - s.first];
      local.layers[l] = {buffer.keys.narrow(0, 0, rows), buffer.values.narrow(0, 0, rows),
                         buffer.positions.narrow(0, 0, rows)};
    }
    ChunkStep step;
    {
      torch::AutoGradMode grad_mode(true);
      step = run_chunk(c, s.params, s.hidden, s.first, s.targets, s.positions, local, s.weights, /*update=*/true,
                       s.step_size, OuterGradient::kNone);
    }
    for (int64_t l = s.first; l < c.n_layers; ++l) {
      const LayerCache& buffer = s.caches[l - s.first];
      buffer.keys.narrow(0, 0, next_rows).copy_(local.layers[l].keys);
      buffer.values.narrow(0, 0, next_rows).copy_(local.layers[l].values);
      buffer.positions.narrow(0, 0, next_rows).copy_(local.layers[l].positions);
    }
    const std::vector<torch::Tensor> next = flatten(step.next_weights);
    for (size_t i = 0; i < ours.size(); ++i) ours[i].copy_(next[i]);
    s.nll.copy_(step.nll);
    s.loss.copy_(step.loss);
  };

  s.graphs.run(rows, body);  // a graph per cache length

  for (int64_t l = s.first; l < c.n_layers; ++l) {
    const LayerCache& buffer = s.caches[l - s.first];
    cache.layers[l] = {buffer.keys.narrow(0, 0, next_rows), buffer.values.narrow(0, 0, next_rows),
                       buffer.positions.narrow(0, 0, next_rows)};
  }
  ChunkStep result;
  result.nll = s.nll.clone();
  result.loss = s.loss.clone();
  result.next_weights = s.weights;
  return result;
}

}  // namespace ttt
