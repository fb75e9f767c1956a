#include "ttt/chunk_graphs.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include <torch/torch.h>

#include "common/error.h"
#include "model/compute.h"
#include "model/layers.h"
#include "ttt_build_features.h"  // TTT_WITH_CUDA: libtorch has CUDA

#if TTT_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/cuda.h>
#endif

namespace ttt {
namespace {

// A graph is specific to the cache length it starts from and to its inner
// learning rate.
using GraphKey = std::pair<int64_t, double>;

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
  torch::Tensor hidden, targets, positions, nll, loss;
  std::vector<LayerCache> caches;  // one per suffix block, max_rows rows
  FastWeights weights;
  std::set<GraphKey> seen;
  int64_t captures = 0, replays = 0;
#if TTT_WITH_CUDA
  decltype(at::cuda::graph_pool_handle()) pool = at::cuda::graph_pool_handle();
  // Every capture on one stream: the allocator reuses a pool's freed blocks only on the
  // stream that freed them, so graphs captured on different streams would not share memory.
  c10::cuda::CUDAStream capture_stream = c10::cuda::getStreamFromPool();
  std::map<GraphKey, std::unique_ptr<at::cuda::CUDAGraph>> graphs;  // destroyed before the buffers
#endif
};

bool ChunkGraphs::supported(const ModelConfig& config, const Params& params) {
  const char* setting = std::getenv("TTT_CUDA_GRAPHS");  // "0": eager chunks, for comparison
  const bool disabled = setting != nullptr && std::strcmp(setting, "0") == 0;
  return TTT_WITH_CUDA && !disabled && config.is_ttt() && config.attention_window() > 0 &&
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

int64_t ChunkGraphs::captures() const { return state_->captures; }
int64_t ChunkGraphs::replays() const { return state_->replays; }

ChunkStep ChunkGraphs::step(const Params& params, const torch::Tensor& hidden, const torch::Tensor& targets,
                            const torch::Tensor& positions, KvCache& cache, const FastWeights& weights,
                            double ilr_mult) {
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
    s.nll = torch::empty({c.mini_batch}, hidden.options().dtype(torch::kFloat32));
    s.loss = torch::empty({}, s.nll.options());
  }
  s.hidden.copy_(hidden);
  s.targets.copy_(targets);
  s.positions.copy_(positions);
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
                       ilr_mult, OuterGradient::kNone);
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

  const GraphKey key{rows, ilr_mult};
#if TTT_WITH_CUDA
  auto graph = s.graphs.find(key);
  if (graph == s.graphs.end() && s.seen.count(key) > 0) {
    // Capture on a side stream (graphs cannot be captured on the default one);
    // nothing runs.
    auto captured = std::make_unique<at::cuda::CUDAGraph>();
    torch::cuda::synchronize();
    {
      const c10::cuda::CUDAStreamGuard side(s.capture_stream);
      captured->capture_begin(s.pool);
      try {
        body();
      } catch (...) {
        try {
          captured->capture_end();
        } catch (...) {
        }
        throw;
      }
      captured->capture_end();
    }
    graph = s.graphs.emplace(key, std::move(captured)).first;
    ++s.captures;
  }
  if (graph != s.graphs.end()) {
    graph->second->replay();
    ++s.replays;
  } else {
    body();  // eagerly, the first time
    s.seen.insert(key);
  }
#else
  body();  // unreachable: the constructor requires supported()
#endif

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
