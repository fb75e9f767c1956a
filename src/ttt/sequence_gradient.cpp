#include "ttt/sequence_gradient.h"

#include <ATen/record_function.h>
#include <torch/autograd.h>

#include <map>
#include <optional>

#include "common/error.h"
#include "model/compute.h"
#include "model/layers.h"
#include "model/transformer.h"
#include "ttt/chunk_scan.h"
#include "ttt/graph_replay.h"
#include "ttt/inner_loop.h"

namespace ttt {
namespace {

// The parameters in visit_params order: the tensors themselves, whose gradients are asked
// for, each with the tensor that collects its gradient.
struct GradientSinks {
  std::vector<torch::Tensor> params, sinks;

  void add(size_t i, const torch::Tensor& grad) const {
    if (grad.defined()) sinks[i].add_(grad);
  }
  void add(const std::vector<torch::Tensor>& grads) const {
    for (size_t i = 0; i < grads.size(); ++i) add(i, grads[i]);
  }
  // The position of `param` (a parameter tensor, not a copy) in the list.
  size_t index_of(const torch::Tensor& param) const {
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].unsafeGetTensorImpl() == param.unsafeGetTensorImpl()) return i;
    }
    throw Error("internal: a tensor that is no parameter");
  }
};

std::vector<torch::Tensor> param_tensors(const ModelConfig& config, const Params& params) {
  Params slots = params;
  std::vector<torch::Tensor> tensors;
  visit_params(config, slots, [&](const std::string&, const std::vector<int64_t>&, ParamKind, torch::Tensor& t) {
    tensors.push_back(t);
  });
  return tensors;
}

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

// One sequence's problem: its tokens, chunks and the suffix's view of the parameters.
struct Sequence {
  const ModelConfig& config;
  const Params& params;
  torch::Tensor inputs, targets;
  std::vector<ChunkSpan> chunks;
  std::vector<double> loss_weights;  // per chunk
  int64_t first_suffix;              // the first block with fast weights (n_layers for fa and swa)
  torch::Tensor step_size;

  Sequence(const ModelConfig& c, const Params& p, const torch::Tensor& tokens, const torch::Tensor& inner_step)
      : config(c), params(p), step_size(inner_step) {
    const int64_t n = tokens.size(0) - 1;
    require(n >= 1, "need at least 2 tokens (one input and one target), got " + std::to_string(tokens.size(0)));
    inputs = tokens.narrow(0, 0, n);
    targets = tokens.narrow(0, 1, n);
    chunks = plan_chunks(c, n, 0, /*update_last=*/false);
    loss_weights = chunk_loss_weights(c, targets);
    first_suffix = c.is_ttt() ? c.first_suffix_block() : c.n_layers;
  }
  int64_t n_chunks() const { return static_cast<int64_t>(chunks.size()); }
};

// Phase 1, the prefix (blocks without fast weights; all blocks of fa and swa) once, with its
// graph: the outer gradient reaches it only through its output h (first order), so fused
// kernels serve it, a whole sequence at a time where they exist. Returns h with its graph.
torch::Tensor prefix_forward(const Sequence& seq) {
  RECORD_USER_SCOPE("gradient: prefix forward");  // phases, for ttt bench --profile
  const bool whole = fused_attention_available(seq.params.final_norm);
  KvCache cache = whole ? KvCache::none(seq.config) : KvCache::window(seq.config);  // one span needs no cache after it
  if (whole) return hidden_states(seq.config, seq.params, seq.inputs, 0, cache, seq.first_suffix);
  std::vector<torch::Tensor> spans;
  for (const ChunkSpan& chunk : seq.chunks) {
    spans.push_back(hidden_states(seq.config, seq.params, seq.inputs.narrow(0, chunk.start, chunk.length),
                                  chunk.position, cache, seq.first_suffix));
  }
  return torch::cat(spans);
}

// What recomputing chunk c needs besides the parameters and its tokens: the fast weights
// it starts from and, per suffix block, the cache rows it added.
struct SavedChunk {
  FastWeights weights;
  std::vector<KvEntries> entries;  // indexed by block - first_suffix
};

// Phase 2, the inner loop over the suffix without an outer graph, saving each chunk's
// starting point. Returns the sequence's loss.
torch::Tensor suffix_forward(const Sequence& seq, const Params& suffix, const torch::Tensor& h,
                             std::vector<SavedChunk>& saved, const std::function<void(int64_t)>& report) {
  RECORD_USER_SCOPE("gradient: suffix forward");
  const Params frozen = detach_params(seq.config, suffix);
  torch::AutoGradMode grad_mode(seq.config.is_ttt());  // only ttt-e2e's inner gradients need a graph here
  ScanState state{detach_fast_weights(initial_fast_weights(seq.config, seq.params), false),
                  KvCache::window(seq.config)};
  ChunkInputs hidden_rows = ChunkInputs::given(h, seq.first_suffix);
  saved.assign(seq.chunks.size(), {});
  saved[0].weights = state.weights;
  torch::Tensor loss;
  scan_chunks(seq.config, frozen, hidden_rows, seq.targets, seq.chunks, state, {OuterGradient::kNone, seq.step_size},
              [&](const ChunkSpan& chunk, const ChunkStep& step) {
                const torch::Tensor weighted = step.loss.detach() * seq.loss_weights[chunk.index];
                loss = loss.defined() ? loss + weighted : weighted;
                for (int64_t l = seq.first_suffix; l < seq.config.n_layers; ++l) {
                  saved[chunk.index].entries.push_back(state.cache.entries(l).last(chunk.length).cloned());
                }
                if (chunk.index + 1 < seq.n_chunks()) saved[chunk.index + 1].weights = state.weights;
                report(chunk.index + 1);
              });
  return loss;
}

// The suffix blocks' cache as chunk c reads it, rebuilt from the saved rows of the chunks
// before it, keys and values as fresh leaves that require grad.
KvCache cache_before(const Sequence& seq, const std::vector<SavedChunk>& saved, int64_t c) {
  KvCache cache = KvCache::window(seq.config);
  const int64_t keep = KvCache::rows_kept(seq.config);  // -1: everything (full attention)
  for (int64_t l = seq.first_suffix; l < seq.config.n_layers; ++l) {
    std::vector<torch::Tensor> keys, values, positions;
    int64_t rows = 0;
    for (int64_t j = c - 1; j >= 0 && (keep < 0 || rows < keep); --j) {
      const KvEntries& e = saved[j].entries[l - seq.first_suffix];
      if (e.rows() == 0) continue;
      keys.insert(keys.begin(), e.keys);
      values.insert(values.begin(), e.values);
      positions.insert(positions.begin(), e.positions);
      rows += e.rows();
    }
    if (rows == 0 || keep == 0) continue;
    const auto joined = [](const std::vector<torch::Tensor>& parts) {
      return parts.size() == 1 ? parts[0] : torch::cat(parts);
    };
    const KvEntries all{joined(keys), joined(values), joined(positions)};
    const KvEntries kept = keep < 0 ? all : all.last(keep);
    cache.assign(l, {kept.keys.detach().requires_grad_(), kept.values.detach().requires_grad_(), kept.positions});
  }
  return cache;
}

// What a recomputed chunk is differentiated for, and, of the same shape, its gradients: by
// name, one visitor fixing the order for both (no positional cursor).
struct ChunkVariables {
  std::vector<torch::Tensor> theta;    // the suffix's parameters, in the sinks' order
  std::vector<torch::Tensor> weights;  // the fast weights the chunk starts from, flattened
  std::vector<KvEntries> cache;        // per suffix block, the cache rows it reads
  torch::Tensor hidden;                // its rows of h

  // Every defined tensor, in one fixed order.
  std::vector<torch::Tensor*> slots() {
    std::vector<torch::Tensor*> all;
    for (torch::Tensor& t : theta) all.push_back(&t);
    for (torch::Tensor& t : weights) all.push_back(&t);
    for (KvEntries& e : cache) {
      if (e.rows() == 0) continue;
      all.push_back(&e.keys);
      all.push_back(&e.values);
    }
    all.push_back(&hidden);
    return all;
  }

  // d(sum of <adjoint, output>)/d(each variable); undefined where nothing depends on it.
  ChunkVariables gradients(const std::vector<torch::Tensor>& outputs, const std::vector<torch::Tensor>& adjoints) {
    std::vector<torch::Tensor> wrt;
    for (torch::Tensor* t : slots()) wrt.push_back(*t);
    const std::vector<torch::Tensor> grads = torch::autograd::grad(outputs, wrt, adjoints, /*retain_graph=*/false,
                                                                   /*create_graph=*/false, /*allow_unused=*/true);
    ChunkVariables result = *this;
    const std::vector<torch::Tensor*> into = result.slots();
    for (size_t i = 0; i < into.size(); ++i) *into[i] = grads[i];
    return result;
  }
};

// The adjoints a chunk hands to the chunk before it: of the fast weights and of the cache
// rows it read (undefined: zero).
struct Adjoints {
  std::vector<torch::Tensor> weights;
  std::vector<KvEntries> cache;  // per suffix block
};

// One step of phase 3: chunk c recomputed from its saved starting point, its inner step
// included (second order unless first_order), and its weighted loss backpropagated together
// with the adjoints of what it hands on, into theta's sinks, its rows of h_grad, and the
// adjoints it returns.
Adjoints reverse_chunk(const Sequence& seq, const Params& suffix, const std::vector<torch::Tensor>& suffix_theta,
                       const std::vector<SavedChunk>& saved, const ChunkSpan& chunk, const torch::Tensor& h,
                       const Adjoints& later, double loss_scale, bool first_order, const GradientSinks& sinks,
                       const torch::Tensor& h_grad) {
  RECORD_USER_SCOPE("gradient: reverse scan chunk");
  ChunkVariables leaves{suffix_theta, {}, {}, h.narrow(0, chunk.start, chunk.length).detach().requires_grad_()};
  ScanState state{detach_fast_weights(saved[chunk.index].weights, true), cache_before(seq, saved, chunk.index)};
  leaves.weights = flatten(state.weights);
  for (int64_t l = seq.first_suffix; l < seq.config.n_layers; ++l) leaves.cache.push_back(state.cache.entries(l));
  const ScanOptions options{first_order ? OuterGradient::kFirstOrder : OuterGradient::kExact, seq.step_size};
  const ChunkStep step = step_chunk(seq.config, suffix, chunk, leaves.hidden, seq.first_suffix,
                                    seq.targets.narrow(0, chunk.start, chunk.length), state, options);

  std::vector<torch::Tensor> outputs{step.loss};
  std::vector<torch::Tensor> adjoints{torch::full({}, loss_scale * seq.loss_weights[chunk.index], step.loss.options())};
  const auto add_output = [&](const torch::Tensor& output, const torch::Tensor& adjoint) {
    if (!adjoint.defined() || !output.defined() || !output.requires_grad()) return;
    outputs.push_back(output);
    adjoints.push_back(adjoint);
  };
  if (chunk.update) {
    const std::vector<torch::Tensor> next = flatten(state.weights);
    for (size_t i = 0; i < next.size(); ++i) add_output(next[i], later.weights[i]);
  }
  for (size_t b = 0; b < later.cache.size(); ++b) {
    const KvEntries& after = state.cache.entries(seq.first_suffix + static_cast<int64_t>(b));
    add_output(after.keys, later.cache[b].keys);
    add_output(after.values, later.cache[b].values);
  }
  const ChunkVariables grads = leaves.gradients(outputs, adjoints);
  sinks.add(grads.theta);
  if (grads.hidden.defined()) h_grad.narrow(0, chunk.start, chunk.length).copy_(grads.hidden);
  return {grads.weights, grads.cache};
}

// Adds d(loss_scale * loss)/d(theta) into `sinks` and returns the loss (detached). Device
// work only, no host synchronisation: GradientGraphs captures it whole.
torch::Tensor gradient_into(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                            const torch::Tensor& step_size, double loss_scale, bool first_order,
                            const GradientSinks& sinks, const std::function<void(int64_t, int64_t)>& on_chunk) {
  const Sequence seq(config, params, tokens, step_size);
  const auto report = [&](int64_t done) {
    if (on_chunk) on_chunk(done, 2 * seq.n_chunks());
  };
  const torch::Tensor prefix_h = prefix_forward(seq);
  // The suffix reads each chunk's rows of h as a leaf of its own; their gradients, gathered
  // in h_grad, go back through the prefix at the end.
  const torch::Tensor h = prefix_h.detach();
  const torch::Tensor h_grad = torch::zeros_like(h);
  const Params suffix = suffix_params(config, params, seq.first_suffix);
  const std::vector<torch::Tensor> suffix_theta = param_tensors(config, suffix);  // in the sinks' order

  std::vector<SavedChunk> saved;
  const torch::Tensor loss = suffix_forward(seq, suffix, h, saved, report);

  // Phase 3, the reverse scan: each chunk's adjoints go to the chunk before it.
  Adjoints adjoints{{}, std::vector<KvEntries>(config.n_layers - seq.first_suffix)};
  for (int64_t c = seq.n_chunks() - 1; c >= 0; --c) {
    adjoints = reverse_chunk(seq, suffix, suffix_theta, saved, seq.chunks[c], h, adjoints, loss_scale, first_order,
                             sinks, h_grad);
    report(2 * seq.n_chunks() - c);
  }
  // Phase 4, the prefix's backward pass, once for the whole sequence.
  if (prefix_h.requires_grad()) {
    RECORD_USER_SCOPE("gradient: prefix backward");
    sinks.add(torch::autograd::grad({prefix_h}, sinks.params, {h_grad}, /*retain_graph=*/false,
                                    /*create_graph=*/false, /*allow_unused=*/true));
  }
  // What reached W_0 is the gradient of the prime weights in theta.
  const std::vector<torch::Tensor> prime = flatten(initial_fast_weights(config, params));
  for (size_t i = 0; i < prime.size(); ++i) sinks.add(sinks.index_of(prime[i]), adjoints.weights[i]);
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
  require(matmul_dtype() == s.matmul_dtype, "internal: gradient graphs used under another precision than their own");
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
