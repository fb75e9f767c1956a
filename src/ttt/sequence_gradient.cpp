#include "ttt/sequence_gradient.h"

#include <torch/autograd.h>

#include "common/error.h"
#include "model/layers.h"
#include "model/transformer.h"
#include "ttt/inner_loop.h"

namespace ttt {
namespace {

// What recomputing one chunk needs besides the parameters and its tokens.
struct SavedChunk {
  FastWeights weights;              // the fast weights the chunk starts from
  std::vector<LayerCache> entries;  // per block, the cache rows the chunk added
};

// The cache rows a chunk of `length` tokens added: the last ones (windowed caches may have
// kept only the last window-1 of them).
LayerCache own_entries(const LayerCache& layer, int64_t length) {
  if (!layer.keys.defined()) return {};
  const int64_t total = layer.positions.size(0);
  const int64_t count = std::min(total, length);
  const auto rows = [&](const torch::Tensor& t) { return t.narrow(0, total - count, count).detach().clone(); };
  return {rows(layer.keys), rows(layer.values), rows(layer.positions)};
}

// The KV cache as chunk `chunk` reads it, rebuilt from the saved entries of the chunks
// before it, with keys and values as fresh leaves that require grad.
KvCache cache_before(const ModelConfig& config, const std::vector<SavedChunk>& saved, int64_t chunk) {
  KvCache cache(config.n_layers);
  const int64_t window = config.attention_window();
  const int64_t keep = window > 0 ? window - 1 : -1;  // -1: everything (full attention)
  for (int64_t l = 0; l < config.n_layers; ++l) {
    std::vector<torch::Tensor> keys, values, positions;
    int64_t rows = 0;
    for (int64_t j = chunk - 1; j >= 0 && (keep < 0 || rows < keep); --j) {
      const LayerCache& e = saved[j].entries[l];
      if (!e.keys.defined()) continue;
      keys.insert(keys.begin(), e.keys);
      values.insert(values.begin(), e.values);
      positions.insert(positions.begin(), e.positions);
      rows += e.positions.size(0);
    }
    if (rows == 0 || keep == 0) continue;
    const int64_t kept = keep < 0 ? rows : std::min(rows, keep);
    const auto tail = [&](const std::vector<torch::Tensor>& parts) {
      const torch::Tensor all = parts.size() == 1 ? parts[0] : torch::cat(parts);
      return all.narrow(0, rows - kept, kept);
    };
    cache.layers[l] = {tail(keys).detach().requires_grad_(), tail(values).detach().requires_grad_(), tail(positions)};
  }
  return cache;
}

void accumulate_grad(const torch::Tensor& leaf, const torch::Tensor& grad) {
  if (!grad.defined()) return;
  if (leaf.grad().defined()) {
    leaf.mutable_grad().add_(grad);
  } else {
    leaf.mutable_grad() = grad.clone();
  }
}

}  // namespace

torch::Tensor accumulate_sequence_gradient(const ModelConfig& config, const Params& params,
                                           const torch::Tensor& tokens, const GradientOptions& options) {
  const int64_t n = tokens.size(0) - 1;
  require(n >= 1, "need at least 2 tokens (one input and one target), got " + std::to_string(tokens.size(0)));
  const torch::Tensor inputs = tokens.narrow(0, 0, n);
  const torch::Tensor targets = tokens.narrow(0, 1, n);
  const std::vector<double> loss_weights = chunk_loss_weights(config, targets);
  const int64_t n_chunks = static_cast<int64_t>(loss_weights.size());
  const auto chunk_start = [&](int64_t c) { return c * config.mini_batch; };
  const auto chunk_length = [&](int64_t c) { return std::min(config.mini_batch, n - chunk_start(c)); };
  const auto updates = [&](int64_t c) { return config.is_ttt() && c + 1 < n_chunks; };
  const auto report = [&](int64_t done) {
    if (options.on_chunk) options.on_chunk(done, 2 * n_chunks);
  };

  // The prefix (blocks without fast weights; all blocks of fa and swa) once, with its graph:
  // the outer gradient reaches it only through its output h (first order), so fused
  // kernels serve it, a whole sequence at a time where they exist.
  const int64_t first_suffix = config.is_ttt() ? config.first_suffix_block() : config.n_layers;
  torch::Tensor prefix_h;
  {
    KvCache cache(config.n_layers);
    const bool whole = fused_attention_available(params.final_norm);
    cache.keep_entries = !whole;  // one span needs no cache after it
    std::vector<torch::Tensor> spans;
    for (int64_t start = 0; start < n;) {
      const int64_t length = whole ? n : chunk_length(start / config.mini_batch);
      spans.push_back(hidden_states(config, params, inputs.narrow(0, start, length), start, cache, first_suffix));
      start += length;
    }
    prefix_h = spans.size() == 1 ? spans[0] : torch::cat(spans);
  }
  // The suffix reads h as a leaf; its gradient, summed over the chunks, goes back through
  // the prefix at the end.
  const torch::Tensor h = prefix_h.detach().requires_grad_();

  // Forward: the inner loop over the suffix without an outer graph, saving each chunk's
  // starting point.
  std::vector<SavedChunk> saved(n_chunks);
  torch::Tensor loss;
  {
    const Params frozen = detach_params(config, params);
    // Only the inner gradients of ttt-e2e need a graph here.
    torch::AutoGradMode grad_mode(config.is_ttt());
    KvCache cache(config.n_layers);
    FastWeights weights = detach_fast_weights(initial_fast_weights(config, params), false);
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t start = chunk_start(c), length = chunk_length(c);
      saved[c].weights = weights;
      ChunkStep step = run_chunk(config, frozen, h.detach().narrow(0, start, length), first_suffix,
                                 targets.narrow(0, start, length), span_positions(start, length, h.device()), cache,
                                 weights, updates(c), options.ilr_mult, OuterGradient::kNone);
      const torch::Tensor weighted = step.loss.detach() * loss_weights[c];
      loss = loss.defined() ? loss + weighted : weighted;
      weights = detach_fast_weights(step.next_weights, false);
      cache.detach();
      for (const LayerCache& layer : cache.layers) saved[c].entries.push_back(own_entries(layer, length));
      report(c + 1);
    }
  }

  // Reverse scan: recompute each chunk's suffix and backpropagate into theta, into h, and
  // into the fast weights and cache it started from (the adjoints handed to the chunk before).
  const OuterGradient outer = options.first_order ? OuterGradient::kFirstOrder : OuterGradient::kExact;
  std::vector<torch::Tensor> weight_adjoints;             // d/d W_c, flattened
  std::vector<LayerCache> cache_adjoints(config.n_layers);  // d/d KV_c (keys, values)
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t start = chunk_start(c), length = chunk_length(c);
    const FastWeights weights = detach_fast_weights(saved[c].weights, true);
    KvCache cache = cache_before(config, saved, c);
    const std::vector<LayerCache> cache_leaves = cache.layers;
    ChunkStep step = run_chunk(config, params, h.narrow(0, start, length), first_suffix,
                               targets.narrow(0, start, length), span_positions(start, length, h.device()), cache,
                               weights, updates(c), options.ilr_mult, outer);

    std::vector<torch::Tensor> outputs{step.loss};
    std::vector<torch::Tensor> adjoints{torch::full({}, options.loss_scale * loss_weights[c], step.loss.options())};
    const auto add_output = [&](const torch::Tensor& output, const torch::Tensor& adjoint) {
      if (!adjoint.defined() || !output.defined() || !output.requires_grad()) return;
      outputs.push_back(output);
      adjoints.push_back(adjoint);
    };
    if (updates(c)) {
      const std::vector<torch::Tensor> next = flatten(step.next_weights);
      for (size_t i = 0; i < next.size(); ++i) add_output(next[i], weight_adjoints[i]);
    }
    for (int64_t l = first_suffix; l < config.n_layers; ++l) {
      add_output(cache.layers[l].keys, cache_adjoints[l].keys);
      add_output(cache.layers[l].values, cache_adjoints[l].values);
    }
    torch::autograd::backward(outputs, adjoints);

    weight_adjoints.clear();
    for (const torch::Tensor& w : flatten(weights)) weight_adjoints.push_back(w.grad());
    for (int64_t l = first_suffix; l < config.n_layers; ++l) {
      const LayerCache& leaf = cache_leaves[l];
      cache_adjoints[l] = leaf.keys.defined() ? LayerCache{leaf.keys.grad(), leaf.values.grad(), {}} : LayerCache{};
    }
    report(2 * n_chunks - c);
  }
  if (h.grad().defined() && prefix_h.requires_grad()) torch::autograd::backward({prefix_h}, {h.grad()});
  // What reached W_0 is the gradient of the prime weights in theta.
  const std::vector<torch::Tensor> prime = flatten(initial_fast_weights(config, params));
  for (size_t i = 0; i < prime.size(); ++i) accumulate_grad(prime[i], weight_adjoints[i]);
  return loss;
}

}  // namespace ttt
