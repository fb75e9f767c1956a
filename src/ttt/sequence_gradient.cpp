#include "ttt/sequence_gradient.h"

#include <ATen/record_function.h>
#include <torch/autograd.h>

#include <map>
#include <optional>

#include "common/error.h"
#include "model/compute.h"
#include "model/layers.h"
#include "model/transformer.h"
#include "ttt/graph_replay.h"
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

// The parameters in visit_params order: the tensors themselves, whose gradients are asked
// for, each with the tensor that collects its gradient.
struct GradientSinks {
  std::vector<torch::Tensor> params, sinks;

  void add(size_t i, const torch::Tensor& grad) const {
    if (grad.defined()) sinks[i].add_(grad);
  }
  // The position of `param` (a parameter tensor, not a copy) in the list.
  size_t index_of(const torch::Tensor& param) const {
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].unsafeGetTensorImpl() == param.unsafeGetTensorImpl()) return i;
    }
    throw Error("internal: a tensor that is no parameter");
  }
};

// theta as the suffix reads it: its matrices other than the prime MLPs (which start the fast
// weights) cast to the matmul dtype once per sequence, where every chunk and pass would cast
// them again (with the casts' backward, ~5% of a 125M step), as leaves of their own whose
// gradients go to theta's sinks (an add that widens). Unchanged without a matmul dtype.
Params suffix_params(const ModelConfig& config, const Params& params, int64_t first_suffix) {
  const std::optional<torch::Dtype> dtype = matmul_dtype();
  Params out = params;
  const auto cast = [&](torch::Tensor& t) {
    if (dtype && t.scalar_type() != *dtype && t.scalar_type() != torch::kFloat64) {
      t = t.detach().to(*dtype).requires_grad_(t.requires_grad());
    }
  };
  cast(out.embed);
  if (!config.tie_embeddings) cast(out.lm_head);
  for (int64_t l = first_suffix; l < config.n_layers; ++l) {
    AttentionParams& attn = out.blocks[l].attn;
    for (torch::Tensor* t : {&attn.wq, &attn.wk, &attn.wv, &attn.wo}) cast(*t);
    MlpParams& mlp = out.blocks[l].mlp;
    for (torch::Tensor* t : {&mlp.w1, &mlp.w2, &mlp.w3}) cast(*t);
  }
  return out;
}

std::vector<torch::Tensor> param_tensors(const ModelConfig& config, const Params& params) {
  Params slots = params;
  std::vector<torch::Tensor> tensors;
  visit_params(config, slots, [&](const std::string&, const std::vector<int64_t>&, ParamKind, torch::Tensor& t) {
    tensors.push_back(t);
  });
  return tensors;
}

// Adds d(loss_scale * loss)/d(theta) into `sinks` and returns the loss (detached). Device
// work only, no host synchronisation: GradientGraphs captures it whole.
torch::Tensor gradient_into(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                            const torch::Tensor& step_size, double loss_scale, bool first_order,
                            const GradientSinks& sinks, const std::function<void(int64_t, int64_t)>& on_chunk) {
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
    if (on_chunk) on_chunk(done, 2 * n_chunks);
  };

  // The prefix (blocks without fast weights; all blocks of fa and swa) once, with its graph:
  // the outer gradient reaches it only through its output h (first order), so fused
  // kernels serve it, a whole sequence at a time where they exist.
  const int64_t first_suffix = config.is_ttt() ? config.first_suffix_block() : config.n_layers;
  torch::Tensor prefix_h;
  {
    RECORD_USER_SCOPE("gradient: prefix forward");  // phases, for ttt bench --profile
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
  // The suffix reads each chunk's rows of h as a leaf of its own; their gradients, gathered
  // in h_grad, go back through the prefix at the end.
  const torch::Tensor h = prefix_h.detach();
  const torch::Tensor h_grad = torch::zeros_like(h);
  const Params suffix = suffix_params(config, params, first_suffix);
  const std::vector<torch::Tensor> suffix_theta = param_tensors(config, suffix);  // in the sinks' order

  // Forward: the inner loop over the suffix without an outer graph, saving each chunk's
  // starting point.
  std::vector<SavedChunk> saved(n_chunks);
  torch::Tensor loss;
  {
    RECORD_USER_SCOPE("gradient: suffix forward");
    const Params frozen = detach_params(config, suffix);
    // Only the inner gradients of ttt-e2e need a graph here.
    torch::AutoGradMode grad_mode(config.is_ttt());
    KvCache cache(config.n_layers);
    FastWeights weights = detach_fast_weights(initial_fast_weights(config, params), false);
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t start = chunk_start(c), length = chunk_length(c);
      saved[c].weights = weights;
      ChunkStep step = run_chunk(config, frozen, h.narrow(0, start, length), first_suffix,
                                 targets.narrow(0, start, length), span_positions(start, length, h.device()), cache,
                                 weights, updates(c), step_size, OuterGradient::kNone);
      const torch::Tensor weighted = step.loss.detach() * loss_weights[c];
      loss = loss.defined() ? loss + weighted : weighted;
      weights = detach_fast_weights(step.next_weights, false);
      cache.detach();
      for (const LayerCache& layer : cache.layers) saved[c].entries.push_back(own_entries(layer, length));
      report(c + 1);
    }
  }

  // Reverse scan: recompute each chunk's suffix and backpropagate into theta, into its rows
  // of h, and into the fast weights and cache it started from (the adjoints handed to the
  // chunk before).
  const OuterGradient outer = first_order ? OuterGradient::kFirstOrder : OuterGradient::kExact;
  std::vector<torch::Tensor> weight_adjoints;               // d/d W_c, flattened
  std::vector<LayerCache> cache_adjoints(config.n_layers);  // d/d KV_c (keys, values)
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    RECORD_USER_SCOPE("gradient: reverse scan chunk");
    const int64_t start = chunk_start(c), length = chunk_length(c);
    const FastWeights weights = detach_fast_weights(saved[c].weights, true);
    KvCache cache = cache_before(config, saved, c);
    const std::vector<LayerCache> cache_leaves = cache.layers;
    const torch::Tensor rows = h.narrow(0, start, length).detach().requires_grad_();
    ChunkStep step = run_chunk(config, suffix, rows, first_suffix, targets.narrow(0, start, length),
                               span_positions(start, length, h.device()), cache, weights, updates(c), step_size, outer);

    std::vector<torch::Tensor> outputs{step.loss};
    std::vector<torch::Tensor> adjoints{torch::full({}, loss_scale * loss_weights[c], step.loss.options())};
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
    // What to differentiate for, in this order: theta, the fast weights, the cache, h's rows.
    std::vector<torch::Tensor> wrt = suffix_theta;
    const std::vector<torch::Tensor> weight_leaves = flatten(weights);
    wrt.insert(wrt.end(), weight_leaves.begin(), weight_leaves.end());
    for (int64_t l = first_suffix; l < config.n_layers; ++l) {
      if (!cache_leaves[l].keys.defined()) continue;
      wrt.push_back(cache_leaves[l].keys);
      wrt.push_back(cache_leaves[l].values);
    }
    wrt.push_back(rows);
    const std::vector<torch::Tensor> grads = torch::autograd::grad(outputs, wrt, adjoints, /*retain_graph=*/false,
                                                                   /*create_graph=*/false, /*allow_unused=*/true);
    size_t next = 0;
    for (; next < sinks.params.size(); ++next) sinks.add(next, grads[next]);
    weight_adjoints.assign(grads.begin() + next, grads.begin() + next + weight_leaves.size());
    next += weight_leaves.size();
    for (int64_t l = first_suffix; l < config.n_layers; ++l) {
      if (!cache_leaves[l].keys.defined()) {
        cache_adjoints[l] = {};
        continue;
      }
      cache_adjoints[l] = {grads[next], grads[next + 1], {}};
      next += 2;
    }
    if (grads[next].defined()) h_grad.narrow(0, start, length).copy_(grads[next]);
    report(2 * n_chunks - c);
  }
  if (prefix_h.requires_grad()) {
    RECORD_USER_SCOPE("gradient: prefix backward");
    const std::vector<torch::Tensor> grads = torch::autograd::grad({prefix_h}, sinks.params, {h_grad},
                                                                   /*retain_graph=*/false, /*create_graph=*/false,
                                                                   /*allow_unused=*/true);
    for (size_t i = 0; i < grads.size(); ++i) sinks.add(i, grads[i]);
  }
  // What reached W_0 is the gradient of the prime weights in theta.
  const std::vector<torch::Tensor> prime = flatten(initial_fast_weights(config, params));
  for (size_t i = 0; i < prime.size(); ++i) sinks.add(sinks.index_of(prime[i]), weight_adjoints[i]);
  return loss;
}

}  // namespace

torch::Tensor accumulate_sequence_gradient(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                                           const GradientOptions& options) {
  if (options.graphs != nullptr) return options.graphs->accumulate(params, tokens, options);
  GradientSinks sinks;
  sinks.params = param_tensors(config, params);
  for (const torch::Tensor& p : sinks.params) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    sinks.sinks.push_back(p.grad());
  }
  return gradient_into(config, params, tokens, inner_step_size(config, options.ilr_mult, params.final_norm),
                       options.loss_scale, options.first_order, sinks, options.on_chunk);
}

struct GradientGraphs::State {
  ModelConfig config;
  Params params;
  std::optional<torch::Dtype> matmul_dtype;
  GradientSinks sinks;                      // the parameters, and buffers of their own for the gradients
  std::map<int64_t, torch::Tensor> tokens;  // an input buffer per sequence length
  torch::Tensor step_size, loss;
  GraphReplay graphs;  // destroyed before the buffers
};

bool GradientGraphs::supported(const ModelConfig& config, const Params& params) {
  return cuda_graphs_enabled() && config.variant != Variant::kFullAttention &&
         fused_attention_available(params.final_norm);
}

std::unique_ptr<GradientGraphs> GradientGraphs::where_supported(const ModelConfig& config, const Params& params) {
  return supported(config, params) ? std::make_unique<GradientGraphs>(config, params) : nullptr;
}

GradientGraphs::GradientGraphs(const ModelConfig& config, const Params& params) : state_(std::make_unique<State>()) {
  require(supported(config, params), "CUDA graphs of the gradient need a CUDA build and device, and no fa model");
  State& s = *state_;
  s.config = config;
  s.params = params;
  s.matmul_dtype = matmul_dtype();
  s.sinks.params = param_tensors(config, params);
  for (const torch::Tensor& p : s.sinks.params) s.sinks.sinks.push_back(torch::zeros_like(p));
  s.step_size = torch::zeros({}, params.final_norm.options());
  s.loss = torch::zeros({}, params.final_norm.options());
}

GradientGraphs::~GradientGraphs() = default;

int64_t GradientGraphs::captures() const { return state_->graphs.captures(); }
int64_t GradientGraphs::replays() const { return state_->graphs.replays(); }

bool GradientGraphs::serves(const Params& params) const {
  const std::vector<torch::Tensor> given = param_tensors(state_->config, params);
  const std::vector<torch::Tensor>& ours = state_->sinks.params;
  if (given.size() != ours.size()) return false;
  for (size_t i = 0; i < ours.size(); ++i) {
    if (given[i].data_ptr() != ours[i].data_ptr()) return false;
  }
  return true;
}

torch::Tensor GradientGraphs::accumulate(const Params& params, const torch::Tensor& tokens,
                                         const GradientOptions& options) {
  State& s = *state_;
  require(serves(params), "internal: gradient graphs used with other parameters than their own");
  require(matmul_dtype() == s.matmul_dtype && fused_kernels_allowed(),
          "internal: gradient graphs used under another precision than their own");
  const int64_t n = tokens.size(0);
  torch::Tensor& buffer = s.tokens[n];
  if (!buffer.defined()) buffer = torch::empty_like(tokens, torch::MemoryFormat::Contiguous);
  buffer.copy_(tokens);
  s.step_size.fill_(s.config.inner_lr * options.ilr_mult);
  const bool first_order = options.first_order;
  s.graphs.run(2 * n + (first_order ? 1 : 0), [&] {
    torch::AutoGradMode grad_mode(true);
    for (const torch::Tensor& sink : s.sinks.sinks) sink.zero_();
    s.loss.copy_(gradient_into(s.config, s.params, buffer, s.step_size, 1.0, first_order, s.sinks, nullptr));
  });
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < s.sinks.params.size(); ++i) {
    const torch::Tensor& p = s.sinks.params[i];
    if (p.grad().defined()) {
      p.mutable_grad().add_(s.sinks.sinks[i], options.loss_scale);
    } else {
      p.mutable_grad() = s.sinks.sinks[i] * options.loss_scale;
    }
  }
  return s.loss.clone();
}

}  // namespace ttt
