#include "ttt/sequence_gradient.h"

#include <ATen/record_function.h>
#include <torch/autograd.h>

#include <cmath>
#include <map>
#include <optional>
#include <tuple>

#include "common/error.h"
#include "common/host_memory.h"
#include "model/compute.h"
#include "model/layers.h"
#include "model/transformer.h"
#include "ttt/chunk_scan.h"
#include "ttt/graph_replay.h"
#include "ttt/inner_loop.h"
#include "ttt_build_features.h"  // TTT_WITH_CUDA_KERNELS: our own kernels were built

#if TTT_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>

#include "kernels/accumulate.h"
#include "model/kernel_launch.h"
#endif

namespace ttt {
namespace {

// The parameters in visit_params order: the tensors themselves, whose gradients are asked
// for, each with the tensor that collects its gradient.
struct GradientSinks {
  std::vector<torch::Tensor> params, sinks;

  void add(size_t i, const torch::Tensor& grad) const {
    if (grad.defined()) sinks[i].add_(grad);
  }
  // grads[i] into sinks[i], where defined: on CUDA in launches of many tensors each
  // (kernels/accumulate.h), one add a tensor elsewhere.
  void add(const std::vector<torch::Tensor>& grads) const {
#if TTT_WITH_CUDA_KERNELS
    if (!sinks.empty() && sinks[0].is_cuda()) {
      const c10::cuda::CUDAGuard device(sinks[0].device());
      std::vector<kernels::AccumulateTensor> batch;
      const auto launch = [&] {
        check("accumulate_into_fp32",
              kernels::accumulate_into_fp32(batch.data(), static_cast<int>(batch.size()), stream()));
        batch.clear();
      };
      for (size_t i = 0; i < grads.size(); ++i) {
        const torch::Tensor &sink = sinks[i], &grad = grads[i];
        if (!grad.defined()) continue;
        const torch::Dtype type = grad.scalar_type();
        const bool serves = sink.device() == sinks[0].device() && sink.scalar_type() == torch::kFloat32 &&
                            sink.is_contiguous() && grad.device() == sink.device() && grad.is_contiguous() &&
                            grad.sizes() == sink.sizes() &&
                            (type == torch::kFloat32 || type == torch::kBFloat16 || type == torch::kHalf);
        if (!serves) {
          add(i, grad);
          continue;
        }
        batch.push_back({sink.data_ptr<float>(), grad.data_ptr(), storage_of(type), sink.numel()});
        if (batch.size() == static_cast<size_t>(kernels::kAccumulateMaxTensors)) launch();
      }
      if (!batch.empty()) launch();
      return;
    }
#endif
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

// Where the gradient keeps, parked, what grows with the sequence until its backward pass
// reads it again (the cache rows every span and chunk leaves, the fast weights kept every so
// many chunks): in host memory, pinned on a GPU, so that the device's peak stays flat in the
// length (3B at 128K: about 60 GB of them). The copies run on a stream of their own
// (CopyStream), overlapping the computation: parked rows and weights leave as snapshots, and
// the passes that read them back fetch them a chunk or span ahead (prefetch) and join() before
// they read. A CUDA graph captures both streams. Buffers are reused call after call in the
// order they are asked for, so a graph replays its copies into the buffers its capture saw
// (the eager run before it made them).
class HostParking {
 public:
  void rewind() {
    copies_.restart();
    next_ = 0;
  }

  torch::Tensor park(const torch::Tensor& t) {
    if (next_ == buffers_.size()) buffers_.emplace_back();
    return park_into(buffers_[next_++], t);
  }
  KvEntries park(const KvEntries& e) { return {park(e.keys), park(e.values), e.positions.clone()}; }
  FastWeights park(const FastWeights& weights) {
    FastWeights out;
    for (const MlpParams& w : weights) out.push_back({park(w.w1), park(w.w2), park(w.w3)});
    return out;
  }
  // Fast weights the reverse scan recomputed, into slot `slot` of buffers that every such
  // recomputation reuses (3B at 128K: 1.4 GB a set, 4 sets each time, ~20 times a step),
  // so that they take fixed host memory. Safe: the scan fetches one recomputation's weights
  // before it parks the next one's, and the copies run in order on one stream.
  FastWeights park_recomputed(const FastWeights& weights, size_t slot) {
    const size_t per_set = 3 * weights.size();
    if (recomputed_.size() < (slot + 1) * per_set) recomputed_.resize((slot + 1) * per_set);
    torch::Tensor* buffer = &recomputed_[slot * per_set];
    FastWeights out;
    for (const MlpParams& w : weights) {
      out.push_back({park_into(buffer[0], w.w1), park_into(buffer[1], w.w2), park_into(buffer[2], w.w3)});
      buffer += 3;
    }
    return out;
  }

  // `t` on `device`: a fresh copy if it is parked (readable after join()), else itself.
  torch::Tensor fetch(const torch::Tensor& t, const torch::Device& device) {
    if (t.device() == device) return t;
    torch::Tensor out = torch::empty(t.sizes(), t.options().device(device));
    copies_.copy(out, t);
    return out;
  }
  KvEntries fetch(const KvEntries& e, const torch::Device& device) {
    return {fetch(e.keys, device), fetch(e.values, device), e.positions};
  }
  FastWeights fetch(const FastWeights& weights, const torch::Device& device) {
    FastWeights out;
    for (const MlpParams& w : weights) out.push_back({fetch(w.w1, device), fetch(w.w2, device), fetch(w.w3, device)});
    return out;
  }

  // After each chunk or span parked: the copies of the one before are done (CopyStream).
  void settle() { copies_.settle(); }
  // Before the computation reads what was fetched: every copy so far is done.
  void join() { copies_.join(); }

 private:
  torch::Tensor park_into(torch::Tensor& buffer, const torch::Tensor& t) {
    const int64_t bytes = t.numel() * t.element_size();
    if (!buffer.defined() || buffer.numel() < bytes) buffer = host_buffer(bytes, t);
    torch::Tensor parked = torch::from_blob(buffer.data_ptr(), t.sizes(), t.options().device(torch::kCPU));
    // A snapshot on a GPU: the computation goes on while the copy reads it.
    copies_.copy(parked, t.is_cuda() ? t.clone(at::MemoryFormat::Contiguous) : t.contiguous());
    return parked;
  }

  std::vector<torch::Tensor> buffers_;
  std::vector<torch::Tensor> recomputed_;  // park_recomputed's slots, 3 tensors a block each
  size_t next_ = 0;
  CopyStream copies_;
};

// Parked rows fetched back to the device while the backward pass, which runs from the last
// span or chunk to the first, still reads them: each is fetched once, ahead of its use where
// prefetched (the pass joins the parking's copies before it reads them).
class FetchedRows {
 public:
  explicit FetchedRows(HostParking* parking) : parking_(parking) {}

  // The rows of span or chunk `j`, block `block` (`kept`: as the forward pass kept them).
  const KvEntries& get(int64_t j, int64_t block, const KvEntries& kept, const torch::Device& device) {
    if (kept.rows() == 0 || kept.keys.device() == device) return kept;
    KvEntries& fetched = rows_[{j, block}];
    if (fetched.rows() == 0) {  // not prefetched
      fetched = parking_->fetch(kept, device);
      parking_->join();
    }
    return fetched;
  }
  // The same, fetched without waiting for the copy.
  void prefetch(int64_t j, int64_t block, const KvEntries& kept, const torch::Device& device) {
    if (kept.rows() == 0 || kept.keys.device() == device) return;
    KvEntries& fetched = rows_[{j, block}];
    if (fetched.rows() == 0) fetched = parking_->fetch(kept, device);
  }
  // Drops those of spans or chunks `from` and after: the pass has gone before them.
  void forget_from(int64_t from) { rows_.erase(rows_.lower_bound({from, 0}), rows_.end()); }

 private:
  HostParking* parking_;
  std::map<std::pair<int64_t, int64_t>, KvEntries> rows_;
};

// One sequence's problem: its tokens, chunks and the suffix's view of the parameters.
struct Sequence {
  const ModelConfig& config;
  const Params& params;
  torch::Tensor inputs, targets;
  std::vector<ChunkSpan> chunks;
  std::vector<double> loss_weights;  // per chunk
  int64_t first_suffix;              // the first block with fast weights (n_layers for fa and swa)
  torch::Tensor step_size;
  torch::Tensor loss_scale;   // 0-dim, on the device: the gradient is that of loss_scale * loss
  int64_t weights_every = 1;  // the forward pass keeps the fast weights of every so many chunks
  int64_t tail_chunks = 1;    // the last so many chunks run once, in the reverse scan, as one graph
  int64_t prefix_span_tokens = 0;  // inputs per span of the prefix's checkpoints
  HostParking* parking;       // null: what the backward pass reads again stays on the device
  bool park_recomputed = false;  // the weights refill_weights recomputes wait parked too
  torch::Device device;

  Sequence(const ModelConfig& c, const Params& p, const torch::Tensor& tokens, const torch::Tensor& inner_step,
           const torch::Tensor& scale, const GradientOptions& options, HostParking& host)
      : config(c), params(p), step_size(inner_step), loss_scale(scale), device(p.final_norm.device()) {
    const int64_t n = tokens.size(0) - 1;
    require(n >= 1, "need at least 2 tokens (one input and one target), got " + std::to_string(tokens.size(0)));
    inputs = tokens.narrow(0, 0, n);
    targets = tokens.narrow(0, 1, n);
    chunks = plan_chunks(c, n, 0, /*update_last=*/false);
    loss_weights = chunk_loss_weights(c, targets);
    first_suffix = c.is_ttt() ? c.first_suffix_block() : c.n_layers;
    const ResolvedGradientOptions resolved = resolve_gradient_options(c, p, n, options);
    parking = resolved.park_on_host ? &host : nullptr;
    park_recomputed = resolved.park_recomputed;
    if (parking != nullptr) parking->rewind();
    weights_every = resolved.keep_weights_every;
    tail_chunks = resolved.tail_chunks;
    prefix_span_tokens = resolved.prefix_span_tokens;
  }
  // What the backward pass reads again: parked, or copied out of what it came from (a cache
  // view) so that it pins nothing else.
  KvEntries keep(const KvEntries& rows) const { return parking != nullptr ? parking->park(rows) : rows.cloned(); }
  FastWeights keep(const FastWeights& weights) const { return parking != nullptr ? parking->park(weights) : weights; }
  FastWeights keep_recomputed(const FastWeights& weights, size_t slot) const {
    return park_recomputed ? parking->park_recomputed(weights, slot) : weights;
  }
  // Kept weights on the device: parked ones fetched, readable after join_copies() (prefetch)
  // or at once (fetched).
  FastWeights prefetch(const FastWeights& weights) const {
    return parking != nullptr ? parking->fetch(weights, device) : weights;
  }
  FastWeights fetched(const FastWeights& weights) const {
    const bool parked = !weights.empty() && weights[0].w1.device() != device;
    if (!parked) return weights;
    FastWeights out = prefetch(weights);
    join_copies();
    return out;
  }
  void settle_copies() const {
    if (parking != nullptr) parking->settle();
  }
  void join_copies() const {
    if (parking != nullptr) parking->join();
  }
  int64_t n_chunks() const { return static_cast<int64_t>(chunks.size()); }
  // Whether the forward pass keeps the fast weights chunk c starts from: every
  // weights_every-th chunk's, and all of the last stretch's before the tail (the reverse scan
  // starts there).
  bool keeps_weights(int64_t c) const {
    return c % weights_every == 0 || c >= (n_chunks() - tail_chunks) / weights_every * weights_every;
  }
};

// How many rows a span of `length` inputs leaves for the spans after it to read: all of them
// for full attention, at most the window's otherwise.
int64_t rows_left_for_later(const ModelConfig& config, int64_t length) {
  const int64_t keep = KvCache::rows_kept(config);
  return keep < 0 ? length : std::min(length, keep);
}

// Those rows of block `block`, as the cache holds them.
KvEntries rows_for_later(const ModelConfig& config, const KvCache& cache, int64_t block, int64_t length) {
  return cache.entries(block).last(rows_left_for_later(config, length));
}

// The parts one after the other: a view where they already lie so in one buffer (the prefix's
// rows, PrefixSpans::packed), else their copy.
torch::Tensor joined(const std::vector<torch::Tensor>& parts) {
  if (parts.size() == 1) return parts[0];
  bool adjacent = true;
  int64_t rows = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const torch::Tensor& part = parts[i];
    adjacent = adjacent && part.is_contiguous() && part.is_alias_of(parts[0]) &&
               (i == 0 || part.storage_offset() == parts[i - 1].storage_offset() + parts[i - 1].numel());
    rows += part.size(0);
  }
  if (!adjacent) return torch::cat(parts);
  std::vector<int64_t> sizes = parts[0].sizes().vec();
  sizes[0] = rows;
  return parts[0].as_strided(sizes, parts[0].strides());
}

// The rows each span (or chunk) left for later ones, per span and block, as the forward pass
// kept them (on the device or parked), and those fetched back.
using KeptRows = std::function<const KvEntries&(int64_t span, int64_t block)>;

// Calls visit(j, block) for every span j before the first `spans_before` whose rows of a block
// in [first, last) the span after them reads: back from the latest until the window's rows
// are there (all of them for full attention).
void for_rows_read(const ModelConfig& config, int64_t spans_before, int64_t first, int64_t last, const KeptRows& kept,
                   const std::function<void(int64_t, int64_t)>& visit) {
  const int64_t keep = KvCache::rows_kept(config);  // -1: everything (full attention)
  if (keep == 0) return;
  for (int64_t l = first; l < last; ++l) {
    int64_t count = 0;
    for (int64_t j = spans_before - 1; j >= 0 && (keep < 0 || count < keep); --j) {
      const int64_t rows = kept(j, l).rows();
      if (rows == 0) continue;
      visit(j, l);
      count += rows;
    }
  }
}

// Fetches what rebuilt_cache will read, without waiting for the copies.
void prefetch_cache(const ModelConfig& config, int64_t spans_before, int64_t first, int64_t last, const KeptRows& kept,
                    FetchedRows& fetched, const torch::Device& device) {
  for_rows_read(config, spans_before, first, last, kept,
                [&](int64_t j, int64_t l) { fetched.prefetch(j, l, kept(j, l), device); });
}

// Blocks [first, last) of a window cache as the span after the first `spans_before` spans
// reads it, rebuilt from the rows each of them left (rows_for_later), keys and values as
// fresh leaves that require grad.
KvCache rebuilt_cache(const ModelConfig& config, int64_t spans_before, int64_t first, int64_t last,
                      const KeptRows& kept, FetchedRows& fetched, const torch::Device& device) {
  KvCache cache = KvCache::window(config);
  std::vector<std::vector<KvEntries>> read(last - first);  // per block, the earliest first
  for_rows_read(config, spans_before, first, last, kept, [&](int64_t j, int64_t l) {
    std::vector<KvEntries>& parts = read[l - first];
    parts.insert(parts.begin(), fetched.get(j, l, kept(j, l), device));
  });
  const int64_t keep = KvCache::rows_kept(config);
  for (int64_t l = first; l < last; ++l) {
    const std::vector<KvEntries>& parts = read[l - first];
    if (parts.empty()) continue;
    const auto all_of = [&](torch::Tensor KvEntries::*member) {
      std::vector<torch::Tensor> tensors;
      for (const KvEntries& e : parts) tensors.push_back(e.*member);
      return joined(tensors);
    };
    const KvEntries all{all_of(&KvEntries::keys), all_of(&KvEntries::values), all_of(&KvEntries::positions)};
    const KvEntries window = keep < 0 ? all : all.last(keep);
    cache.assign(l, {window.keys.detach().requires_grad_(), window.values.detach().requires_grad_(), window.positions});
  }
  return cache;
}

// The prefix (the blocks without fast weights; every block of fa and swa) by spans, so its
// memory does not grow with the sequence (the reference's remat of prefix blocks): the
// forward pass keeps no graph, only the hidden states h it hands to the suffix and the cache
// rows each span leaves for later ones; the backward pass recomputes one span at a time,
// from the last, with the rows before it as leaves, and hands their adjoints to the spans
// before it. The outer gradient reaches the prefix only through h (first order), so fused
// kernels serve it. The last span keeps its graph from the forward pass (its backward comes
// first): a sequence of one span is never recomputed.
class PrefixSpans {
 public:
  // Phase 1: h for every input, detached (its gradient is gathered in h_grad()).
  explicit PrefixSpans(const Sequence& seq) : seq_(seq), fetched_(seq.parking) {
    RECORD_USER_SCOPE("gradient: prefix forward");  // phases, for ttt bench --profile
    const int64_t n = seq.inputs.size(0), span = seq.prefix_span_tokens;
    for (int64_t start = 0; start < n; start += span) {
      spans_.push_back({static_cast<int64_t>(spans_.size()), start, std::min(span, n - start), start, false});
    }
    std::vector<torch::Tensor> outputs;
    packed_.resize(seq.first_suffix);
    {
      torch::NoGradGuard no_graph;
      // Gone before the last span's graph is built, which holds what rows_ keeps again (fa: a
      // growing cache, every block's rows of the sequence and room for up to as many again).
      KvCache cache = KvCache::for_inference(seq.config);
      for (size_t s = 0; s + 1 < spans_.size(); ++s) {
        outputs.push_back(run(spans_[s], cache));
        rows_.emplace_back();
        for (int64_t l = 0; l < seq.first_suffix; ++l) {
          const KvEntries rows = rows_for_later(seq.config, cache, l, spans_[s].length);
          rows_.back().push_back(seq.parking != nullptr ? seq.keep(rows) : packed(l, rows));
        }
        seq.settle_copies();
      }
    }
    prefetch(spans_.size() - 1);
    seq.join_copies();
    last_ = recompute(spans_.size() - 1);
    fetched_.forget_from(0);  // the last span's graph holds what it read
    outputs.push_back(last_->h.detach());
    h_ = outputs.size() == 1 ? outputs[0] : torch::cat(outputs);
    h_grad_ = torch::zeros_like(h_);
  }

  const torch::Tensor& h() const { return h_; }
  const torch::Tensor& h_grad() const { return h_grad_; }

  // Phase 4: h_grad back through every span, into the sinks.
  void backward(const GradientSinks& sinks) {
    RECORD_USER_SCOPE("gradient: prefix backward");
    std::vector<KvEntries> later(seq_.first_suffix);  // adjoints of the rows the span after reads
    for (int64_t s = static_cast<int64_t>(spans_.size()) - 1; s >= 0; --s) {
      fetched_.forget_from(s);
      seq_.join_copies();  // what was prefetched for this span
      SpanGraph graph = s + 1 == static_cast<int64_t>(spans_.size()) ? std::move(*last_) : recompute(s);
      if (!graph.h.requires_grad()) return;  // nothing in the prefix requires grad
      if (s > 0) prefetch(s - 1);            // while this span's backward runs
      std::vector<torch::Tensor> outputs{graph.h}, adjoints{h_grad_.narrow(0, spans_[s].start, spans_[s].length)};
      std::vector<torch::Tensor> wrt = sinks.params;
      for (int64_t l = 0; l < seq_.first_suffix; ++l) {
        const KvEntries& after = graph.cache.entries(l);
        if (later[l].rows() > 0) {
          outputs.insert(outputs.end(), {after.keys, after.values});
          adjoints.insert(adjoints.end(), {later[l].keys, later[l].values});
        }
        if (graph.read[l].rows() > 0) wrt.insert(wrt.end(), {graph.read[l].keys, graph.read[l].values});
      }
      const std::vector<torch::Tensor> grads = torch::autograd::grad(outputs, wrt, adjoints, /*retain_graph=*/false,
                                                                     /*create_graph=*/false, /*allow_unused=*/true);
      sinks.add(std::vector<torch::Tensor>(grads.begin(), grads.begin() + sinks.params.size()));
      size_t next = sinks.params.size();
      for (int64_t l = 0; l < seq_.first_suffix; ++l) {
        later[l] = {};
        if (graph.read[l].rows() == 0) continue;
        later[l] = {grads[next], grads[next + 1], graph.read[l].positions};
        next += 2;
      }
    }
  }

 private:
  // A span run with its graph: its output, the rows it read (leaves) and the cache after it.
  struct SpanGraph {
    torch::Tensor h;
    std::vector<KvEntries> read;  // per prefix block
    KvCache cache;
  };

  torch::Tensor run(const ChunkSpan& span, KvCache& cache) const {
    return hidden_states(seq_.config, seq_.params, seq_.inputs.narrow(0, span.start, span.length), span.position, cache,
                         seq_.first_suffix);
  }

  // Where the rows stay on the device: a span's rows of a block copied into one buffer per
  // block after those of the spans before (made at the first span, for every span's rows), as
  // views of it. A span recomputed reads the rows before it as a view (joined), where their
  // copy would be as large as the sequence's rows again (full attention).
  KvEntries packed(int64_t block, const KvEntries& rows) {
    if (rows.rows() == 0) return {};
    PackedRows& p = packed_[block];
    if (!p.keys.defined()) {
      int64_t total = 0;
      for (size_t s = 0; s + 1 < spans_.size(); ++s) total += rows_left_for_later(seq_.config, spans_[s].length);
      const auto empty = [total](const torch::Tensor& like) {
        std::vector<int64_t> sizes = like.sizes().vec();
        sizes[0] = total;
        return torch::empty(sizes, like.options());
      };
      p = {empty(rows.keys), empty(rows.values), 0};
    }
    const int64_t n = rows.rows();
    const KvEntries out{p.keys.narrow(0, p.filled, n).copy_(rows.keys),
                        p.values.narrow(0, p.filled, n).copy_(rows.values), rows.positions.clone()};
    p.filled += n;
    return out;
  }

  const KvEntries& kept(int64_t j, int64_t l) const { return rows_[j][l]; }
  void prefetch(size_t s) {
    prefetch_cache(
        seq_.config, static_cast<int64_t>(s), 0, seq_.first_suffix,
        [&](int64_t j, int64_t l) -> const KvEntries& { return kept(j, l); }, fetched_, seq_.device);
  }
  SpanGraph recompute(size_t s) {
    KvCache cache = rebuilt_cache(
        seq_.config, static_cast<int64_t>(s), 0, seq_.first_suffix,
        [&](int64_t j, int64_t l) -> const KvEntries& { return kept(j, l); }, fetched_, seq_.device);
    std::vector<KvEntries> read;
    for (int64_t l = 0; l < seq_.first_suffix; ++l) read.push_back(cache.entries(l));
    torch::Tensor h = run(spans_[s], cache);
    return {std::move(h), std::move(read), std::move(cache)};
  }

  const Sequence& seq_;
  std::vector<ChunkSpan> spans_;
  std::vector<std::vector<KvEntries>> rows_;  // [span][block]: the rows it leaves for later spans
  struct PackedRows {
    torch::Tensor keys, values;
    int64_t filled;  // rows written
  };
  std::vector<PackedRows> packed_;  // per prefix block, where the rows stay on the device
  FetchedRows fetched_;
  std::optional<SpanGraph> last_;
  torch::Tensor h_, h_grad_;
};

// What recomputing chunk c needs besides the parameters and its tokens: the fast weights
// it starts from and, per suffix block, the cache rows it added.
struct SavedChunk {
  FastWeights weights;
  std::vector<KvEntries> entries;  // indexed by block - first_suffix
};

// Phase 2, the inner loop over the suffix without an outer graph for chunks [0, until),
// saving each chunk's cache rows and the fast weights of the chunks Sequence::keeps_weights
// names (chunk `until`'s among them). Returns those chunks' weighted loss (undefined if none).
torch::Tensor suffix_forward(const Sequence& seq, const Params& suffix, const torch::Tensor& h, int64_t until,
                             std::vector<SavedChunk>& saved, const std::function<void(int64_t)>& report) {
  RECORD_USER_SCOPE("gradient: suffix forward");
  ScanState state{detach_fast_weights(initial_fast_weights(seq.config, seq.params), false),
                  KvCache::window(seq.config)};
  saved.assign(seq.chunks.size(), {});
  if (until == 0) {  // the tail is the whole sequence and starts at once: nothing to park
    saved[0].weights = state.weights;
    return {};
  }
  saved[0].weights = seq.keep(state.weights);
  const Params frozen = detach_params(seq.config, suffix);
  torch::AutoGradMode grad_mode(seq.config.is_ttt());  // only ttt-e2e's inner gradients need a graph here
  ChunkInputs hidden_rows = ChunkInputs::given(h, seq.first_suffix);
  torch::Tensor loss;
  const std::vector<ChunkSpan> chunks(seq.chunks.begin(), seq.chunks.begin() + until);
  scan_chunks(seq.config, frozen, hidden_rows, seq.targets, chunks, state, {OuterGradient::kNone, seq.step_size},
              [&](const ChunkSpan& chunk, const ChunkStep& step) {
                const torch::Tensor weighted = step.loss.detach() * seq.loss_weights[chunk.index];
                loss = loss.defined() ? loss + weighted : weighted;
                for (int64_t l = seq.first_suffix; l < seq.config.n_layers; ++l) {
                  saved[chunk.index].entries.push_back(
                      seq.keep(rows_for_later(seq.config, state.cache, l, chunk.length)));
                }
                const int64_t next = chunk.index + 1;
                if (next < seq.n_chunks() && seq.keeps_weights(next)) saved[next].weights = seq.keep(state.weights);
                seq.settle_copies();
                report(next);
              });
  return loss;
}

// The suffix blocks' cache as chunk c reads it, rebuilt from the rows saved after the chunks before it.
KeptRows saved_rows(const Sequence& seq, const std::vector<SavedChunk>& saved) {
  return [&](int64_t j, int64_t l) -> const KvEntries& { return saved[j].entries[l - seq.first_suffix]; };
}
KvCache cache_before(const Sequence& seq, const std::vector<SavedChunk>& saved, FetchedRows& fetched, int64_t c) {
  return rebuilt_cache(seq.config, c, seq.first_suffix, seq.config.n_layers, saved_rows(seq, saved), fetched,
                       seq.device);
}

// Fetches what chunk c starts from (its weights, if kept, and the rows cache_before reads)
// without waiting: the reverse scan asks for them a chunk ahead.
void prefetch_chunk(const Sequence& seq, std::vector<SavedChunk>& saved, FetchedRows& fetched, int64_t c) {
  saved[c].weights = seq.prefetch(saved[c].weights);
  prefetch_cache(seq.config, c, seq.first_suffix, seq.config.n_layers, saved_rows(seq, saved), fetched, seq.device);
}

// The fast weights chunk c starts from, where suffix_forward did not keep them: the scan
// run again, without an outer graph, from the last chunk whose weights it kept, refilling
// the weights of every chunk from there to c (the reverse scan reaches them next). Chunk c's
// stay on the device; the others wait parked where their slots fit the host
// (Sequence::park_recomputed) until the scan prefetches them: one set at a time on the
// device, not weights_every - 1.
void refill_weights(const Sequence& seq, const Params& suffix, const torch::Tensor& h, std::vector<SavedChunk>& saved,
                    FetchedRows& fetched, int64_t c) {
  RECORD_USER_SCOPE("gradient: fast weights recomputed");
  const int64_t from = c - c % seq.weights_every;
  const Params frozen = detach_params(seq.config, suffix);
  torch::AutoGradMode grad_mode(true);  // the inner gradients
  // Weights and rows fetched together, one wait for their copies.
  FastWeights weights = seq.prefetch(saved[from].weights);
  prefetch_cache(seq.config, from, seq.first_suffix, seq.config.n_layers, saved_rows(seq, saved), fetched, seq.device);
  seq.join_copies();
  ScanState state{std::move(weights), cache_before(seq, saved, fetched, from)};
  state.cache.detach();
  ChunkInputs hidden_rows = ChunkInputs::given(h, seq.first_suffix);
  const std::vector<ChunkSpan> chunks(seq.chunks.begin() + from, seq.chunks.begin() + c);
  scan_chunks(seq.config, frozen, hidden_rows, seq.targets, chunks, state, {OuterGradient::kNone, seq.step_size},
              [&](const ChunkSpan& chunk, const ChunkStep&) {
                const int64_t next = chunk.index + 1;
                if (next == c) {
                  saved[next].weights = state.weights;
                } else {
                  saved[next].weights = seq.keep_recomputed(state.weights, next - from - 1);
                  seq.settle_copies();
                }
              });
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

// One step of phase 3: chunks [first, last) run from chunk `first`'s saved starting point
// (recomputed, or run for the first time where the forward pass stopped before them) as one
// graph, their inner steps included (second order unless first_order), and their weighted
// losses backpropagated together with the adjoints of what the last hands on, into theta's
// sinks, their rows of h_grad, and the adjoints it returns for the chunk before `first`.
struct SpanResult {
  Adjoints adjoints;
  torch::Tensor loss;  // the tail's weighted losses, detached (undefined for other spans)
};
SpanResult reverse_span(const Sequence& seq, const Params& suffix, const std::vector<torch::Tensor>& suffix_theta,
                        const std::vector<SavedChunk>& saved, FetchedRows& fetched, int64_t first, int64_t last,
                        const torch::Tensor& h, const Adjoints& later, bool first_order, const GradientSinks& sinks,
                        const torch::Tensor& h_grad) {
  RECORD_USER_SCOPE("gradient: reverse scan span");
  const int64_t start = seq.chunks[first].start;
  const int64_t rows = seq.chunks[last - 1].start + seq.chunks[last - 1].length - start;
  ChunkVariables leaves{suffix_theta, {}, {}, h.narrow(0, start, rows).detach().requires_grad_()};
  ScanState state{detach_fast_weights(seq.fetched(saved[first].weights), true),
                  cache_before(seq, saved, fetched, first)};
  leaves.weights = flatten(state.weights);
  for (int64_t l = seq.first_suffix; l < seq.config.n_layers; ++l) leaves.cache.push_back(state.cache.entries(l));
  const ScanOptions options{first_order ? OuterGradient::kFirstOrder : OuterGradient::kExact, seq.step_size};
  std::vector<torch::Tensor> outputs, adjoints;
  torch::Tensor loss;  // only the tail's is asked for: the forward pass had the others
  const bool tail = last == seq.n_chunks();
  for (int64_t c = first; c < last; ++c) {
    const ChunkSpan& chunk = seq.chunks[c];
    const ChunkStep step =
        step_chunk(seq.config, suffix, chunk, leaves.hidden.narrow(0, chunk.start - start, chunk.length),
                   seq.first_suffix, seq.targets.narrow(0, chunk.start, chunk.length), state, options);
    outputs.push_back(step.loss);
    adjoints.push_back((seq.loss_scale * seq.loss_weights[c]).to(step.loss.dtype()));
    if (tail) {
      const torch::Tensor weighted = step.loss.detach() * seq.loss_weights[c];
      loss = loss.defined() ? loss + weighted : weighted;
    }
  }
  const auto add_output = [&](const torch::Tensor& output, const torch::Tensor& adjoint) {
    if (!adjoint.defined() || !output.defined() || !output.requires_grad()) return;
    outputs.push_back(output);
    adjoints.push_back(adjoint);
  };
  if (seq.chunks[last - 1].update) {
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
  if (grads.hidden.defined()) h_grad.narrow(0, start, rows).copy_(grads.hidden);
  return {{grads.weights, grads.cache}, loss};
}

// Adds d(loss_scale * loss)/d(theta) into `sinks` and returns the loss (detached). Device
// work only, no host synchronisation: GradientGraphs captures it whole.
torch::Tensor gradient_into(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                            const torch::Tensor& step_size, const torch::Tensor& loss_scale,
                            const GradientOptions& options, const GradientSinks& sinks, HostParking& parking) {
  const Sequence seq(config, params, tokens, step_size, loss_scale, options, parking);
  const auto report = [&](int64_t done) {
    if (options.on_chunk) options.on_chunk(done, 2 * seq.n_chunks());
  };
  PrefixSpans prefix(seq);
  // The suffix reads each chunk's rows of h as a leaf of its own; their gradients, gathered
  // in h_grad, go back through the prefix at the end.
  const torch::Tensor& h = prefix.h();
  const Params suffix = suffix_params(config, params, seq.first_suffix);
  const std::vector<torch::Tensor> suffix_theta = param_tensors(config, suffix);  // in the sinks' order

  // The last chunks (Sequence::tail_chunks) run once, as one graph, in the reverse scan: the
  // forward pass stops before them.
  const int64_t first_of_tail = seq.n_chunks() - seq.tail_chunks;
  std::vector<SavedChunk> saved;
  torch::Tensor loss = suffix_forward(seq, suffix, h, first_of_tail, saved, report);

  // Phase 3, the reverse scan: the tail, then each chunk before it, hand their adjoints to
  // the chunk before them.
  Adjoints adjoints{{}, std::vector<KvEntries>(config.n_layers - seq.first_suffix)};
  FetchedRows fetched(seq.parking);
  prefetch_chunk(seq, saved, fetched, first_of_tail);
  for (int64_t first = first_of_tail, last = seq.n_chunks(); first >= 0; last = first--) {
    fetched.forget_from(first);
    seq.join_copies();  // what was prefetched for this span
    if (config.is_ttt() && saved[first].weights.empty()) refill_weights(seq, suffix, h, saved, fetched, first);
    if (first > 0) prefetch_chunk(seq, saved, fetched, first - 1);  // while this span runs
    const SpanResult span = reverse_span(seq, suffix, suffix_theta, saved, fetched, first, last, h, adjoints,
                                         options.first_order, sinks, prefix.h_grad());
    adjoints = span.adjoints;
    if (span.loss.defined()) loss = loss.defined() ? loss + span.loss : span.loss;
    saved[first].weights.clear();  // no chunk before it reads them
    // Progress in chunk passes, 2 a chunk (the forward pass reported its own): the tail's
    // forward and backward passes at once.
    const int64_t passes = 2 * seq.n_chunks() - first;
    for (int64_t done = last == seq.n_chunks() ? first_of_tail + 1 : passes; done <= passes; ++done) report(done);
  }
  prefix.backward(sinks);  // phase 4
  seq.join_copies();       // nothing left in flight (a CUDA graph's capture ends joined)
  // What reached W_0 is the gradient of the prime weights in theta.
  const std::vector<torch::Tensor> prime = flatten(initial_fast_weights(config, params));
  for (size_t i = 0; i < prime.size(); ++i) sinks.add(sinks.index_of(prime[i]), adjoints.weights[i]);
  return loss;
}

// Up to so many chunks, what grows with the sequence stays on the device.
constexpr int64_t kAllKeptUpTo = 16;

}  // namespace

int64_t default_prefix_span_tokens(const ModelConfig& config, int64_t inputs, bool fused,
                                   std::optional<int64_t> device_bytes) {
  const int64_t b = config.mini_batch;
  if (!fused) return b;
  // A span's graph by a rough count (bf16 rows kept for the backward: about 8 of the model's
  // width and 3 of the MLP's a block of the prefix); the real one is larger (3B at 8K on an
  // H100: 4.0 GiB more for 1024 tokens more, 2.3 times the count).
  const int64_t prefix_blocks = config.first_suffix_block();
  const int64_t graph_bytes_per_token = prefix_blocks * (8 * config.d_model + 3 * config.d_ff) * 2;
  // Enough rows for large GEMMs and, on a device to share, a graph of at most a fifth of it by
  // 2.5 times the count: 3B's 4K tokens left an 80 GB H100 no room for the reverse scan at
  // 128K, where 3K trained (docs/BENCHMARKS.md). An H200 keeps 4K.
  constexpr int64_t kFusedTokens = 4096;
  int64_t span = std::max<int64_t>(1, kFusedTokens / b) * b;
  while (device_bytes && span > b && span * graph_bytes_per_token / 2 * 5 > *device_bytes / 5) span -= b;
  constexpr int64_t kOneSpanGraphBytes = int64_t{3} << 30;
  const int64_t whole = (inputs + b - 1) / b * b;
  return whole <= 2 * span && whole * graph_bytes_per_token <= kOneSpanGraphBytes ? whole : span;
}

int64_t default_tail_chunks(const ModelConfig& config, int64_t inputs, std::optional<int64_t> device_bytes) {
  const int64_t b = config.mini_batch, chunks = (inputs + b - 1) / b;
  // Measured for ttt-e2e only; fa's and swa's chunks (the head alone) keep the forward pass.
  if (!device_bytes || chunks <= 1 || !config.is_ttt()) return 1;
  // A chunk's graph by a rough count, from 125M's measured peaks at 8K (0.9 to 1.1 GiB a
  // chunk): about seven bytes a token for each of the head's vocabulary entries and, per
  // suffix block, two a head for each query and key the band spans. The last chunks that fit
  // the budget, where they are at least half the sequence: a tail spares its chunks' forward
  // pass, which pays at 8K (125M: 6 of 8 chunks 5% faster than 4, in 12.3 GiB; the authors'
  // code peaks at 12.7) and hardly at 32K (4 of 32: 1.7% for 5.8 GiB).
  const int64_t suffix_blocks = config.n_layers - config.first_suffix_block();
  constexpr int64_t kTailBytes = int64_t{8} << 30;
  const int64_t budget = std::min(kTailBytes, *device_bytes / 4);
  int64_t bytes = 0, tail = 0;
  for (int64_t c = chunks - 1; c >= 0; --c) {
    const int64_t rows = std::min(b, inputs - c * b);                // a partial last chunk counts its own
    const int64_t keys = std::min(c * b, config.window - 1) + rows;  // ttt-e2e has a window
    bytes += rows * (7 * config.vocab_size + 2 * suffix_blocks * config.n_heads * keys);
    if (bytes > budget) break;
    ++tail;
  }
  return 2 * tail >= chunks ? tail : 1;
}

int64_t pinned_host_budget(int64_t host_bytes) { return host_bytes / 5 * 3; }

// Pinned memory the OS cannot page out: pinned_host_budget at most, rows and weights together
// (760M at 128K: 19 GB of rows and 58 GB of weights on a host of 128 GiB); how many fast
// weight sets fit beside the parked rows.
int64_t pinned_weight_sets(int64_t weight_bytes, int64_t parked_rows_bytes, int64_t host_bytes) {
  const int64_t budget = pinned_host_budget(host_bytes) - parked_rows_bytes;
  return weight_bytes > 0 && budget > 0 ? budget / weight_bytes : 0;
}

// The fast weight sets parked with every k-th chunk's kept: those, and the k - 2 slots a
// recomputation parks the others in (HostParking::park_recomputed).
int64_t parked_weight_sets(int64_t chunks, int64_t every) {
  return (chunks + every - 1) / every + std::max<int64_t>(0, every - 2);
}

bool recomputed_weights_fit(int64_t chunks, int64_t keep_weights_every, int64_t weight_bytes, int64_t parked_rows_bytes,
                            int64_t host_bytes) {
  return parked_weight_sets(chunks, keep_weights_every) <=
         pinned_weight_sets(weight_bytes, parked_rows_bytes, host_bytes);
}

bool default_park_on_host(int64_t chunks, int64_t weight_bytes, std::optional<int64_t> device_bytes) {
  return device_bytes && (chunks > kAllKeptUpTo || chunks * weight_bytes > *device_bytes / 6);
}

int64_t default_keep_weights_every(int64_t chunks, int64_t weight_bytes, std::optional<int64_t> parked_rows_bytes,
                                   int64_t host_bytes) {
  const bool all_fit =
      !parked_rows_bytes || recomputed_weights_fit(chunks, 1, weight_bytes, *parked_rows_bytes, host_bytes);
  if (chunks <= kAllKeptUpTo && all_fit) return 1;
  const int64_t sqrt_every = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(chunks))));
  if (!parked_rows_bytes) return sqrt_every;
  for (int64_t every = 1; every < sqrt_every; ++every) {
    if (recomputed_weights_fit(chunks, every, weight_bytes, *parked_rows_bytes, host_bytes)) return every;
  }
  return sqrt_every;
}

ResolvedGradientOptions resolve_gradient_options(const ModelConfig& config, const Params& params, int64_t inputs,
                                                 const GradientOptions& options) {
  const int64_t b = config.mini_batch, chunks = (inputs + b - 1) / b;
  const torch::Device device = params.final_norm.device();
  const bool fused = fused_attention_available(params.final_norm);
  const std::optional<int64_t> device_bytes = device_total_memory(device);
  ResolvedGradientOptions r;
  int64_t weight_bytes = 0;
  for (const MlpParams& w : initial_fast_weights(config, params)) {
    for (const torch::Tensor* t : {&w.w1, &w.w2, &w.w3}) weight_bytes += t->numel() * t->element_size();
  }
  r.park_on_host = options.park_on_host.value_or(default_park_on_host(chunks, weight_bytes, device_bytes));
  std::optional<int64_t> parked_rows_bytes;
  if (r.park_on_host) {  // every block's keys and values of every input, as the matmuls leave them
    const int64_t element_bytes = torch::elementSize(matmul_dtype().value_or(params.final_norm.scalar_type()));
    parked_rows_bytes = inputs * config.n_layers * 2 * config.d_model * element_bytes;
  }
  require(options.processes_on_host >= 1, "internal: processes_on_host must be at least 1");
  const int64_t host_bytes = host_memory_limit() / options.processes_on_host;
  r.keep_weights_every = options.keep_weights_every > 0
                             ? options.keep_weights_every
                             : default_keep_weights_every(chunks, weight_bytes, parked_rows_bytes, host_bytes);
  r.park_recomputed =
      parked_rows_bytes && r.keep_weights_every > 2 &&
      recomputed_weights_fit(chunks, r.keep_weights_every, weight_bytes, *parked_rows_bytes, host_bytes);
  require(options.prefix_span_tokens % b == 0, "internal: the prefix's spans are whole chunks");
  // A parked sequence's span shares the device with the reverse scan; a short one's fits as it
  // is (3B at 8K on an 80 GB H100: 4K tokens, 5.3% faster than 3K).
  r.prefix_span_tokens =
      options.prefix_span_tokens > 0
          ? options.prefix_span_tokens
          : default_prefix_span_tokens(config, inputs, fused, r.park_on_host ? device_bytes : std::nullopt);
  const int64_t tail = options.tail_chunks > 0 ? options.tail_chunks
                       : fused                 ? default_tail_chunks(config, inputs, device_bytes)
                                               : 1;
  r.tail_chunks = std::min(tail, chunks);
  return r;
}

torch::Tensor accumulate_sequence_gradient(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                                           const GradientOptions& options) {
  if (options.graphs != nullptr) return options.graphs->accumulate(params, tokens, options);
  GradientSinks sinks;
  sinks.params = param_tensors(config, params);
  for (const torch::Tensor& p : sinks.params) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    sinks.sinks.push_back(p.grad());
  }
  thread_local HostParking parking;  // its buffers serve the thread's next calls
  return gradient_into(config, params, tokens, inner_step_size(config, options.ilr_mult, params.final_norm),
                       torch::full({}, options.loss_scale, params.final_norm.options()), options, sinks, parking);
}

struct GradientGraphs::State {
  ModelConfig config;
  Params params;
  std::optional<torch::Dtype> matmul_dtype;
  GradientSinks sinks;                      // the parameters, and the buffers lent them as .grad
  std::map<int64_t, torch::Tensor> tokens;  // an input buffer per sequence length
  std::map<int64_t, HostParking> parking;   // per graph: the host buffers its copies name
  // A graph per length and options that shape it: its key in `graphs`.
  std::map<std::tuple<int64_t, bool, int64_t, int64_t, int64_t, bool>, int64_t> keys;
  torch::Tensor step_size, loss_scale, loss;
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
  for (const torch::Tensor& p : s.sinks.params) {
    const torch::Tensor& grad = p.grad();
    const bool adopt = grad.defined() && grad.sizes() == p.sizes() && grad.dtype() == p.dtype() &&
                       grad.device() == p.device() && grad.is_contiguous();
    s.sinks.sinks.push_back(adopt ? grad : torch::zeros_like(p));
  }
  s.step_size = torch::zeros({}, params.final_norm.options());
  s.loss_scale = torch::zeros({}, params.final_norm.options());
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
  s.loss_scale.fill_(options.loss_scale);
  // The graph adds into the buffers it lends the parameters as .grad: a .grad reset to
  // nothing gets the buffer zeroed, any other .grad is copied into it first.
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < s.sinks.params.size(); ++i) {
      const torch::Tensor& p = s.sinks.params[i];
      const torch::Tensor& lent = s.sinks.sinks[i];
      if (!p.grad().defined()) {
        lent.zero_();
      } else if (!p.grad().is_same(lent)) {
        lent.copy_(p.grad());
      }
      p.mutable_grad() = lent;
    }
  }
  GradientOptions in_graph = options;  // no host callback in a graph
  in_graph.on_chunk = nullptr;
  in_graph.graphs = nullptr;
  // A graph per length and the options as they resolve: an option left to the engine and the
  // same one asked share a graph.
  const ResolvedGradientOptions r = resolve_gradient_options(s.config, s.params, n - 1, options);
  const int64_t key = s.keys
                          .emplace(std::make_tuple(n, options.first_order, r.keep_weights_every, r.prefix_span_tokens,
                                                   r.tail_chunks, r.park_on_host),
                                   static_cast<int64_t>(s.keys.size()))
                          .first->second;
  s.graphs.run(key, [&] {
    torch::AutoGradMode grad_mode(true);
    s.loss.copy_(
        gradient_into(s.config, s.params, buffer, s.step_size, s.loss_scale, in_graph, s.sinks, s.parking[key]));
  });
  return s.loss.clone();
}

}  // namespace ttt
