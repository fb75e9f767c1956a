#include "infer/session.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include <torch/types.h>

#include "common/error.h"
#include "infer/decode_step.h"
#include "infer/session_file.h"
#include "io/safetensors.h"
#include "model/compute.h"
#include "model/layers.h"
#include "ttt/chunk_graphs.h"
#include "ttt/inner_loop.h"

namespace ttt {
namespace {

int64_t bytes_of(const torch::Tensor& t) { return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0; }

// A checksum of the model's weights: a restored session must run on the weights it was
// saved with, not only on the same config. Taken over the weights rounded to bf16, so the
// same model in fp32 or as params_for_inference cast it, on any device, gives it.
std::pair<double, double> model_fingerprint(const ModelConfig& config, const Params& params) {
  double sum = 0, weighted = 0;
  int64_t index = 0;
  for (const auto& [name, tensor] : named_params(config, params)) {
    const double s = tensor.detach().to(torch::kBFloat16).to(torch::kFloat64).sum().item<double>();
    sum += s;
    weighted += s * static_cast<double>(++index);
  }
  return {sum, weighted};
}

std::string fingerprint_text(const std::pair<double, double>& fingerprint) {
  char text[80];
  std::snprintf(text, sizeof text, "%.17g %.17g", fingerprint.first, fingerprint.second);
  return text;
}

// Sums on different devices differ in their last bits.
bool same_fingerprint(const std::string& saved, const std::pair<double, double>& ours) {
  std::istringstream in(saved);
  double sum = 0, weighted = 0;
  if (!(in >> sum >> weighted)) return false;
  const auto close = [](double a, double b) { return std::abs(a - b) <= 1e-9 * std::max(1.0, std::abs(b)); };
  return close(sum, ours.first) && close(weighted, ours.second);
}

void put_cache(std::map<std::string, torch::Tensor>& tensors, const std::string& prefix, const KvCache& cache) {
  for (int64_t l = 0; l < cache.n_layers(); ++l) {
    const KvEntries& entries = cache.entries(l);
    if (entries.rows() == 0) continue;
    tensors[prefix + std::to_string(l) + ".keys"] = entries.keys;
    tensors[prefix + std::to_string(l) + ".values"] = entries.values;
  }
}

// The cache's entries are the tokens just before `end`: their positions follow from that.
// Keys and values come in the dtype the session computes them in, on its device.
KvCache get_cache(const io::SafetensorsFile& file, const std::string& prefix, const ModelConfig& config, int64_t end,
                  const torch::TensorOptions& options) {
  KvCache cache = KvCache::for_inference(config);
  for (int64_t l = 0; l < config.n_layers; ++l) {
    const auto keys = file.tensors.find(prefix + std::to_string(l) + ".keys");
    const auto values = file.tensors.find(prefix + std::to_string(l) + ".values");
    if (keys == file.tensors.end() || values == file.tensors.end()) continue;
    const int64_t length = keys->second.size(0);
    require(values->second.sizes() == keys->second.sizes() && length <= end, "inconsistent cache " + prefix);
    cache.assign(l, {keys->second.to(options), values->second.to(options),
                     torch::arange(end - length, end, options.dtype(torch::kInt64))});
  }
  return cache;
}

}  // namespace

Session::Session(const ModelConfig& config, const Params& params, DecodePath decode)
    : config_(config),
      params_(params),
      device_(params.final_norm.device()),
      matmul_dtype_(inference_matmul_dtype(params)),
      state_{{}, KvCache::for_inference(config)},
      chunk_start_cache_(KvCache::for_inference(config)) {
  if (decode == DecodePath::kStaticStep || (decode == DecodePath::kAuto && DecodeStep::serves_by_default(params))) {
    decode_ = std::make_unique<DecodeStep>(config, params, matmul_dtype_);
  }
  reset();
}

Session::~Session() = default;

void Session::reset() {
  state_ = {detach_fast_weights(initial_fast_weights(config_, params_), /*requires_grad=*/false),
            KvCache::for_inference(config_)};
  chunk_start_cache_ = KvCache::for_inference(config_);
  cache_current_ = true;
  ring_current_ = false;
  pending_.clear();
  stepped_ = 0;
  position_ = 0;
  inner_steps_ = 0;
  last_logits_ = torch::Tensor();
}

std::unique_ptr<Session> Session::fork() const {
  auto copy = std::make_unique<Session>(config_, params_, decode_ ? DecodePath::kStaticStep : DecodePath::kSpans);
  const auto cloned = [&](const KvCache& cache) {
    KvCache out = KvCache::for_inference(config_);
    for (int64_t l = 0; l < cache.n_layers(); ++l) {
      if (cache.entries(l).rows() > 0) out.assign(l, cache.entries(l).cloned());
    }
    return out;
  };
  FastWeights weights;
  for (const MlpParams& m : state_.weights) weights.push_back({m.w1.clone(), m.w2.clone(), m.w3.clone()});
  // The ring's rows come out as copies already: no second copy of them.
  copy->state_ = {std::move(weights), cache_current_ ? cloned(state_.cache) : decode_->unload()};
  copy->chunk_start_cache_ = cloned(chunk_start_cache_);
  copy->pending_ = pending_;
  copy->position_ = position_;
  copy->inner_steps_ = inner_steps_;
  if (last_logits_.defined()) copy->last_logits_ = last_logits_.clone();
  return copy;
}

torch::Tensor Session::feed(const std::vector<int64_t>& tokens) {
  return feed(torch::tensor(tokens, torch::kInt64));
}

torch::Tensor Session::feed(const torch::Tensor& tokens_in) {
  require(tokens_in.dim() == 1 && tokens_in.size(0) > 0, "nothing to feed: give at least one token");
  const torch::Tensor host_tokens = tokens_in.to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t n = host_tokens.size(0);
  const int64_t* ids = host_tokens.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    require(ids[i] >= 0 && ids[i] < config_.vocab_size,
            "token " + std::to_string(ids[i]) + " is outside the model's vocabulary (vocab_size " +
                std::to_string(config_.vocab_size) + ")");
  }
  const MatmulDtypeGuard precision(matmul_dtype_);
  // A token for the decode step reaches the device as a value it writes into its buffer.
  const bool decoding = n == 1 && decode_;
  const torch::Tensor tokens = decoding ? torch::Tensor() : host_tokens.to(device_);
  const int64_t b = config_.mini_batch;
  // Spans end at the current chunk's end, so that none crosses an inner step; fa on a fused
  // kernel takes the whole feed at once (flash attention's causal square when fresh).
  const bool whole = config_.attention_window() == 0 && fused_attention_available(params_.final_norm);
  for (int64_t i = 0; i < n;) {
    if (config_.is_ttt() && static_cast<int64_t>(pending_.size()) == b) train_on_pending(ids[i]);
    int64_t length = whole ? n - i : std::min(n - i, b - static_cast<int64_t>(pending_.size()));
    if (config_.is_ttt() && pending_.empty() && i + length < n && length == b) {
      const int64_t chunks = (n - i - 1) / b;  // whole chunks with their last targets in this feed
      sync_cache();
      run_whole_chunks(tokens, i, chunks, position_, state_);
      ring_current_ = false;
      length = chunks * b;
    } else if (decoding) {
      read_token(ids[i]);
    } else {
      read_span(tokens.narrow(0, i, length), ids + i);
    }
    position_ += length;
    i += length;
  }
  return last_logits_;
}

void Session::read_span(const torch::Tensor& span, const int64_t* ids) {
  const int64_t length = span.size(0);
  sync_cache();
  if (config_.is_ttt() && pending_.empty()) chunk_start_cache_ = state_.cache;
  torch::NoGradGuard no_grad;
  const FastWeights* prime = config_.is_ttt() ? &state_.weights : nullptr;
  const torch::Tensor h = hidden_states(config_, params_, span, position_, state_.cache, config_.n_layers, prime);
  ring_current_ = false;
  // Only the last position's logits are wanted: the head runs on that one alone.
  last_logits_ = lm_logits(config_, params_, h.narrow(0, length - 1, 1))[0].to(h.scalar_type());
  if (config_.is_ttt()) pending_.insert(pending_.end(), ids, ids + length);
}

void Session::read_token(int64_t id) {
  if (config_.is_ttt() && pending_.empty()) {
    sync_cache();
    chunk_start_cache_ = state_.cache;
  }
  // The ring is loaded where it is behind (after spans and inner steps: a copy of the window
  // once per mini-batch, never per token); from then on it alone holds the rows.
  if (!ring_current_) decode_->load(state_.cache, position_);
  ring_current_ = true;
  if (cache_current_) state_.cache = KvCache::for_inference(config_);
  cache_current_ = false;
  // A copy: the step's buffer changes at the next token, the caller's logits must not.
  last_logits_ = decode_->step(id, state_.weights).clone();
  if (config_.is_ttt()) {
    pending_.push_back(id);
    ++stepped_;
  }
}

void Session::sync_cache() {
  if (cache_current_) return;
  state_.cache = decode_->unload();
  cache_current_ = true;
}

KvCache Session::current_cache() const { return cache_current_ ? state_.cache : decode_->unload(); }

void Session::run_whole_chunks(const torch::Tensor& tokens, int64_t offset, int64_t chunks, int64_t position,
                               ScanState& state) {
  const int64_t n = chunks * config_.mini_batch;
  const torch::Tensor inputs = tokens.narrow(0, offset, n), targets = tokens.narrow(0, offset + 1, n);
  ChunkInputs chunk_inputs = fused_attention_available(params_.final_norm)
                                 ? ChunkInputs::run_ahead(config_, params_, inputs, config_.first_suffix_block(),
                                                          /*with_graph=*/false)
                                 : ChunkInputs::embedded(params_, inputs);
  scan(chunk_inputs, targets, position, state);
}

void Session::scan(ChunkInputs& inputs, const torch::Tensor& targets, int64_t position, ScanState& state) {
  // Made under feed's matmul dtype, as every later call is; null where not supported.
  if (fused_attention_available(params_.final_norm) && !graphs_) {
    graphs_ = ChunkGraphs::where_supported(config_, params_);
  }
  const ScanOptions options{OuterGradient::kNone, inner_step_size(config_, 1.0, params_.final_norm), graphs_.get()};
  try {
    scan_chunks(config_, params_, inputs, targets,
                plan_chunks(config_, targets.size(0), position, /*update_last=*/true), state, options,
                [&](const ChunkSpan&, const ChunkStep&) { ++inner_steps_; });
  } catch (...) {
    // Never left borrowing the buffers that the next replay overwrites.
    if (graphs_) graphs_->release(state);
    throw;
  }
  if (graphs_) graphs_->release(state);  // the session keeps its state
}

void Session::train_on_pending(int64_t next) {
  const MatmulDtypeGuard precision(matmul_dtype_);
  const int64_t start = position_ - static_cast<int64_t>(pending_.size());
  std::vector<int64_t> tokens = pending_;
  tokens.push_back(next);
  const torch::Tensor ids = torch::tensor(tokens, torch::kInt64).to(device_);
  ScanState state{state_.weights, chunk_start_cache_};
  if (decode_ && ring_current_ && stepped_ == static_cast<int64_t>(pending_.size())) {
    // The blocks before the fast weights ran token by token in the decode step already; the
    // scan extends only the later blocks' rows, which the ring holds too: it stays the cache.
    ChunkInputs inputs = ChunkInputs::given(decode_->suffix_inputs(), config_.first_suffix_block());
    scan(inputs, ids.narrow(0, 1, config_.mini_batch), start, state);
    state_.weights = std::move(state.weights);
  } else {
    // The chunk recomputed from the cache it began with (on a GPU its chunk step replays a
    // graph): the recomputed cache replaces the one built token by token (the same entries).
    run_whole_chunks(ids, 0, 1, start, state);
    state_ = std::move(state);
    cache_current_ = true;
    ring_current_ = false;
  }
  pending_.clear();
  stepped_ = 0;
}

void Session::save(const std::string& path) const {
  std::map<std::string, torch::Tensor> tensors;
  const std::vector<torch::Tensor> weights = flatten(state_.weights);
  for (size_t i = 0; i < weights.size(); ++i) tensors["fast." + std::to_string(i)] = weights[i];
  put_cache(tensors, "cache.", current_cache());
  put_cache(tensors, "chunk_start_cache.", chunk_start_cache_);
  if (last_logits_.defined()) tensors["last_logits"] = last_logits_;
  std::string pending;
  for (int64_t id : pending_) {
    if (!pending.empty()) pending += ' ';
    pending += std::to_string(id);
  }
  io::write_safetensors(path, tensors,
                        {{"format", kSessionFormat},
                         {"config", config_.to_json_text()},
                         {"model_fingerprint", fingerprint_text(model_fingerprint(config_, params_))},
                         {"position", std::to_string(position_)},
                         {"inner_steps", std::to_string(inner_steps_)},
                         {"pending", pending}});
}

void Session::restore(const std::string& path) {
  const io::SafetensorsFile file = io::read_safetensors(path);
  const SessionFileHeader header = parse_session_metadata(file.metadata, file.checksum_verified, path);
  require(header.config_json == config_.to_json_text() &&
              same_fingerprint(header.model_fingerprint, model_fingerprint(config_, params_)),
          path + ": the session was saved with another model");
  try {
    for (const int64_t id : header.pending) {
      require(id < config_.vocab_size, "pending token " + std::to_string(id) + " is outside the vocabulary");
    }
    FastWeights weights = initial_fast_weights(config_, params_);
    std::vector<torch::Tensor*> slots;
    for (MlpParams& m : weights) slots.insert(slots.end(), {&m.w1, &m.w2, &m.w3});
    for (size_t i = 0; i < slots.size(); ++i) {
      const torch::Tensor& saved = file.tensors.at("fast." + std::to_string(i));
      require(saved.sizes() == slots[i]->sizes(), "fast weight " + std::to_string(i) + " has the wrong shape");
      *slots[i] = saved.to(slots[i]->options());
    }
    const torch::TensorOptions cache_options =
        torch::TensorOptions().device(device_).dtype(matmul_dtype_.value_or(params_.final_norm.scalar_type()));
    KvCache cache = get_cache(file, "cache.", config_, header.position, cache_options);
    KvCache chunk_start_cache = get_cache(file, "chunk_start_cache.", config_,
                                          header.position - static_cast<int64_t>(header.pending.size()), cache_options);
    const auto logits = file.tensors.find("last_logits");
    // Nothing changes unless everything was read.
    last_logits_ = logits == file.tensors.end() ? torch::Tensor() : logits->second.to(device_);
    state_ = {std::move(weights), std::move(cache)};
    cache_current_ = true;
    ring_current_ = false;
    chunk_start_cache_ = std::move(chunk_start_cache);
    pending_ = header.pending;
    stepped_ = 0;  // the decode step keeps no rows across a restore
    position_ = header.position;
    inner_steps_ = header.inner_steps;
  } catch (const std::exception& e) {
    throw Error(path + ": a damaged session file: " + describe(e));
  }
}

int64_t Session::state_bytes() const {
  int64_t bytes = state_.cache.bytes() + chunk_start_cache_.bytes() +
                  static_cast<int64_t>(pending_.size() * sizeof(int64_t)) + bytes_of(last_logits_) +
                  (decode_ ? decode_->bytes() : 0);
  for (const torch::Tensor& t : flatten(state_.weights)) bytes += bytes_of(t);
  return bytes;
}

}  // namespace ttt
