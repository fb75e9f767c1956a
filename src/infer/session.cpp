#include "infer/session.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include <torch/torch.h>

#include "common/error.h"
#include "io/safetensors.h"
#include "model/compute.h"
#include "model/layers.h"
#include "ttt/chunk_graphs.h"
#include "ttt/inner_loop.h"

namespace ttt {
namespace {

int64_t bytes_of(const torch::Tensor& t) { return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0; }

int64_t cache_bytes(const KvCache& cache) {
  int64_t bytes = 0;
  for (const LayerCache& layer : cache.layers) {
    bytes += bytes_of(layer.keys) + bytes_of(layer.values) + bytes_of(layer.positions);
  }
  return bytes;
}

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
  for (size_t l = 0; l < cache.layers.size(); ++l) {
    if (!cache.layers[l].keys.defined()) continue;
    tensors[prefix + std::to_string(l) + ".keys"] = cache.layers[l].keys;
    tensors[prefix + std::to_string(l) + ".values"] = cache.layers[l].values;
  }
}

// The cache's entries are the tokens just before `end`: their positions follow from that.
// Keys and values come in the dtype the session computes them in, on its device.
KvCache get_cache(const io::SafetensorsFile& file, const std::string& prefix, int64_t n_layers, int64_t end,
                  const torch::TensorOptions& options) {
  KvCache cache(n_layers);
  for (int64_t l = 0; l < n_layers; ++l) {
    const auto keys = file.tensors.find(prefix + std::to_string(l) + ".keys");
    const auto values = file.tensors.find(prefix + std::to_string(l) + ".values");
    if (keys == file.tensors.end() || values == file.tensors.end()) continue;
    const int64_t length = keys->second.size(0);
    require(values->second.sizes() == keys->second.sizes() && length <= end, "inconsistent cache " + prefix);
    cache.layers[l] = {keys->second.to(options), values->second.to(options),
                       torch::arange(end - length, end, options.dtype(torch::kInt64))};
  }
  return cache;
}

}  // namespace

Session::Session(const ModelConfig& config, const Params& params)
    : config_(config),
      params_(params),
      device_(params.final_norm.device()),
      matmul_dtype_(inference_matmul_dtype(params)),
      cache_(config.n_layers),
      chunk_start_cache_(config.n_layers) {
  reset();
}

Session::~Session() = default;

void Session::reset() {
  weights_ = detach_fast_weights(initial_fast_weights(config_, params_), /*requires_grad=*/false);
  cache_ = KvCache(config_.n_layers);
  chunk_start_cache_ = KvCache(config_.n_layers);
  pending_.clear();
  position_ = 0;
  inner_steps_ = 0;
  last_logits_ = torch::Tensor();
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
  const torch::Tensor tokens = host_tokens.to(device_);
  const int64_t b = config_.mini_batch;
  const FastWeights* prime = config_.is_ttt() ? &weights_ : nullptr;
  // Spans end at the current chunk's end, so that none crosses an inner step; fa on a fused
  // kernel takes the whole feed at once (flash attention's causal square when fresh).
  const bool whole = config_.attention_window() == 0 && fused_attention_available(params_.final_norm);
  for (int64_t i = 0; i < n;) {
    if (config_.is_ttt() && static_cast<int64_t>(pending_.size()) == b) train_on_pending(ids[i]);
    int64_t length = whole ? n - i : std::min(n - i, b - static_cast<int64_t>(pending_.size()));
    const torch::Tensor span = tokens.narrow(0, i, length);
    if (config_.is_ttt() && pending_.empty() && i + length < n && length == b) {
      // Whole chunks with their last targets in this feed.
      const int64_t chunks = (n - i - 1) / b;
      run_whole_chunks(tokens, i, chunks);
      length = chunks * b;
    } else {
      if (config_.is_ttt() && pending_.empty()) chunk_start_cache_ = cache_;
      torch::NoGradGuard no_grad;
      // Only the last position's logits are wanted: the head runs on that one alone.
      const torch::Tensor h = hidden_states(config_, params_, span, position_, cache_, config_.n_layers, prime);
      last_logits_ = lm_logits(config_, params_, h.narrow(0, length - 1, 1))[0].to(h.scalar_type());
      if (config_.is_ttt()) pending_.insert(pending_.end(), ids + i, ids + i + length);
    }
    position_ += length;
    i += length;
  }
  return last_logits_;
}

void Session::run_whole_chunks(const torch::Tensor& tokens, int64_t offset, int64_t chunks) {
  const int64_t b = config_.mini_batch;
  const torch::Tensor step_size = inner_step_size(config_, 1.0, params_.final_norm);
  const bool ahead = fused_attention_available(params_.final_norm);
  const int64_t first = ahead ? config_.first_suffix_block() : 0;
  // Made under feed's matmul dtype, as every later call is; null where not supported.
  if (ahead && !graphs_) graphs_ = ChunkGraphs::where_supported(config_, params_);
  const int64_t span = run_ahead_tokens(config_, chunks * b);
  torch::Tensor hidden;  // the blocks before the fast weights on tokens from hidden_start
  int64_t hidden_start = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t start = offset + c * b, position = position_ + c * b;
    if (ahead && (!hidden.defined() || start >= hidden_start + hidden.size(0))) {
      torch::NoGradGuard no_grad;
      hidden = hidden_states(config_, params_, tokens.narrow(0, start, std::min(span, (chunks - c) * b)), position,
                             cache_, first);
      hidden_start = start;
    }
    const torch::Tensor h =
        ahead ? hidden.narrow(0, start - hidden_start, b) : embed_tokens(params_, tokens.narrow(0, start, b));
    const torch::Tensor targets = tokens.narrow(0, start + 1, b);
    const torch::Tensor positions = span_positions(position, b, device_);
    ChunkStep step = graphs_ ? graphs_->step(params_, h, targets, positions, cache_, weights_, step_size)
                             : run_chunk(config_, params_, h, first, targets, positions, cache_, weights_,
                                         /*update=*/true, step_size, OuterGradient::kNone);
    weights_ = detach_fast_weights(step.next_weights, /*requires_grad=*/false);
    cache_.detach();
    ++inner_steps_;
  }
  if (graphs_) {
    // The state out of the graphs' buffers, which their next replay overwrites.
    for (MlpParams& w : weights_) w = {w.w1.clone(), w.w2.clone(), w.w3.clone()};
    for (LayerCache& layer : cache_.layers) {
      if (layer.keys.defined()) layer = {layer.keys.clone(), layer.values.clone(), layer.positions.clone()};
    }
  }
}

void Session::train_on_pending(int64_t next) {
  const MatmulDtypeGuard precision(matmul_dtype_);
  std::vector<int64_t> targets(pending_.begin() + 1, pending_.end());
  targets.push_back(next);
  KvCache cache = chunk_start_cache_;
  const int64_t start = position_ - static_cast<int64_t>(pending_.size());
  ChunkStep step =
      run_chunk(config_, params_, embed_tokens(params_, torch::tensor(pending_, torch::kInt64).to(device_)), 0,
                torch::tensor(targets, torch::kInt64).to(device_),
                span_positions(start, static_cast<int64_t>(pending_.size()), device_), cache, weights_,
                /*update=*/true, inner_step_size(config_, 1.0, params_.final_norm), OuterGradient::kNone);
  weights_ = detach_fast_weights(step.next_weights, /*requires_grad=*/false);
  cache.detach();
  // The recomputed cache replaces the one built token by token: the same entries, computed
  // as `ttt eval` computes them.
  cache_ = cache;
  pending_.clear();
  ++inner_steps_;
}

void Session::save(const std::string& path) const {
  std::map<std::string, torch::Tensor> tensors;
  const std::vector<torch::Tensor> weights = flatten(weights_);
  for (size_t i = 0; i < weights.size(); ++i) tensors["fast." + std::to_string(i)] = weights[i];
  put_cache(tensors, "cache.", cache_);
  put_cache(tensors, "chunk_start_cache.", chunk_start_cache_);
  if (last_logits_.defined()) tensors["last_logits"] = last_logits_;
  std::string pending;
  for (int64_t id : pending_) {
    if (!pending.empty()) pending += ' ';
    pending += std::to_string(id);
  }
  io::write_safetensors(path, tensors,
                        {{"format", "ttt-session/1"},
                         {"config", config_.to_json_text()},
                         {"model_fingerprint", fingerprint_text(model_fingerprint(config_, params_))},
                         {"position", std::to_string(position_)},
                         {"inner_steps", std::to_string(inner_steps_)},
                         {"pending", pending}});
}

void Session::restore(const std::string& path) {
  const io::SafetensorsFile file = io::read_safetensors(path);
  const auto meta = [&](const std::string& key) {
    const auto it = file.metadata.find(key);
    require(it != file.metadata.end(), path + ": not a saved session (no \"" + key + "\" in its metadata)");
    return it->second;
  };
  require(meta("format") == "ttt-session/1", path + ": not a saved session (format " + meta("format") + ")");
  require(meta("config") == config_.to_json_text() &&
              same_fingerprint(meta("model_fingerprint"), model_fingerprint(config_, params_)),
          path + ": the session was saved with another model");
  try {
    const int64_t position = std::stoll(meta("position"));
    std::vector<int64_t> pending;
    std::istringstream ids(meta("pending"));
    for (int64_t id; ids >> id;) pending.push_back(id);
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
    KvCache cache = get_cache(file, "cache.", config_.n_layers, position, cache_options);
    KvCache chunk_start_cache = get_cache(file, "chunk_start_cache.", config_.n_layers,
                                          position - static_cast<int64_t>(pending.size()), cache_options);
    const auto logits = file.tensors.find("last_logits");
    const int64_t inner_steps = std::stoll(meta("inner_steps"));
    // Nothing changes unless everything was read.
    last_logits_ = logits == file.tensors.end() ? torch::Tensor() : logits->second.to(device_);
    cache_ = std::move(cache);
    chunk_start_cache_ = std::move(chunk_start_cache);
    weights_ = std::move(weights);
    pending_ = std::move(pending);
    position_ = position;
    inner_steps_ = inner_steps;
  } catch (const std::exception& e) {
    throw Error(path + ": a damaged session file: " + describe(e));
  }
}

int64_t Session::state_bytes() const {
  int64_t bytes = cache_bytes(cache_) + cache_bytes(chunk_start_cache_) +
                  static_cast<int64_t>(pending_.size() * sizeof(int64_t)) + bytes_of(last_logits_);
  for (const torch::Tensor& t : flatten(weights_)) bytes += bytes_of(t);
  return bytes;
}

}  // namespace ttt
