#include "infer/session.h"

#include <algorithm>

#include <torch/torch.h>

#include "common/error.h"
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

}  // namespace

Session::Session(const ModelConfig& config, const Params& params)
    : config_(config), params_(params), cache_(config.n_layers), chunk_start_cache_(config.n_layers) {
  reset();
}

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
  const torch::Tensor tokens = tokens_in.to(torch::kInt64).contiguous();
  const int64_t n = tokens.size(0);
  const int64_t* ids = tokens.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    require(ids[i] >= 0 && ids[i] < config_.vocab_size,
            "token " + std::to_string(ids[i]) + " is outside the model's vocabulary (vocab_size " +
                std::to_string(config_.vocab_size) + ")");
  }
  const int64_t b = config_.mini_batch;
  const FastWeights* prime = config_.is_ttt() ? &weights_ : nullptr;
  for (int64_t i = 0; i < n;) {
    if (config_.is_ttt() && static_cast<int64_t>(pending_.size()) == b) train_on_pending(ids[i]);
    // Feed up to the end of the current chunk, so that no span crosses an inner step.
    const int64_t length = std::min(n - i, b - static_cast<int64_t>(pending_.size()));
    const torch::Tensor span = tokens.narrow(0, i, length);
    if (config_.is_ttt() && pending_.empty() && i + length < n && length == b) {
      // A whole chunk with its last target in this feed: one pass, as `ttt eval` takes it.
      chunk_start_cache_ = cache_;
      ChunkStep step = run_chunk(config_, params_, span, tokens.narrow(0, i + 1, length), position_, cache_, weights_,
                                 /*update=*/true, /*ilr_mult=*/1.0, OuterGradient::kNone);
      weights_ = detach_fast_weights(step.next_weights, /*requires_grad=*/false);
      cache_.detach();
      ++inner_steps_;
    } else {
      if (config_.is_ttt() && pending_.empty()) chunk_start_cache_ = cache_;
      torch::NoGradGuard no_grad;
      const torch::Tensor positions = torch::arange(position_, position_ + length, torch::kInt64);
      const torch::Tensor logits = forward_span(config_, params_, span, positions, cache_, prime);
      last_logits_ = logits[length - 1];
      if (config_.is_ttt()) pending_.insert(pending_.end(), ids + i, ids + i + length);
    }
    position_ += length;
    i += length;
  }
  return last_logits_;
}

void Session::train_on_pending(int64_t next) {
  std::vector<int64_t> targets(pending_.begin() + 1, pending_.end());
  targets.push_back(next);
  KvCache cache = chunk_start_cache_;
  const int64_t start = position_ - static_cast<int64_t>(pending_.size());
  ChunkStep step = run_chunk(config_, params_, torch::tensor(pending_, torch::kInt64),
                             torch::tensor(targets, torch::kInt64), start, cache, weights_, /*update=*/true,
                             /*ilr_mult=*/1.0, OuterGradient::kNone);
  weights_ = detach_fast_weights(step.next_weights, /*requires_grad=*/false);
  cache.detach();
  // The recomputed cache replaces the one built token by token: the same entries, computed
  // as `ttt eval` computes them.
  cache_ = cache;
  pending_.clear();
  ++inner_steps_;
}

int64_t Session::state_bytes() const {
  int64_t bytes = cache_bytes(cache_) + cache_bytes(chunk_start_cache_) +
                  static_cast<int64_t>(pending_.size() * sizeof(int64_t)) + bytes_of(last_logits_);
  for (const torch::Tensor& t : flatten(weights_)) bytes += bytes_of(t);
  return bytes;
}

}  // namespace ttt
