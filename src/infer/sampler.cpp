#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include <torch/types.h>

#include "common/error.h"

namespace ttt {

void SamplingOptions::validate() const {
  require(std::isfinite(temperature) && temperature >= 0, "temperature must be 0 (greedy) or more");
  require(top_k >= 0, "top-k must be 0 (off) or more");
  require(top_p > 0 && top_p <= 1, "top-p must be in (0, 1]");
  require(std::isfinite(repetition_penalty) && repetition_penalty > 0, "repetition penalty must be above 0");
}

Sampler::Sampler(const SamplingOptions& options) : options_(options), generator_(options.seed) { options.validate(); }

std::vector<double> Sampler::distribution(const torch::Tensor& logits_in, const std::vector<int64_t>& context) const {
  const torch::Tensor logits_t = logits_in.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  require(logits_t.dim() == 1 && logits_t.size(0) > 0, "logits must be one vector over the vocabulary");
  std::vector<double> logits(logits_t.data_ptr<double>(), logits_t.data_ptr<double>() + logits_t.numel());
  const auto vocab = static_cast<int64_t>(logits.size());
  if (options_.repetition_penalty != 1.0) {
    for (int64_t token : std::unordered_set<int64_t>(context.begin(), context.end())) {
      if (token < 0 || token >= vocab) continue;
      double& l = logits[token];
      l = l > 0 ? l / options_.repetition_penalty : l * options_.repetition_penalty;
    }
  }
  std::vector<double> probs(logits.size(), 0.0);
  if (options_.temperature == 0 || options_.top_k == 1) {
    probs[std::max_element(logits.begin(), logits.end()) - logits.begin()] = 1.0;
    return probs;
  }
  // Tokens by decreasing logit (ties by id), then softmax at the temperature.
  std::vector<int64_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  int64_t kept = options_.top_k > 0 ? std::min(options_.top_k, vocab) : vocab;
  const double top = logits[order[0]];
  double sum = 0;
  for (int64_t i = 0; i < kept; ++i) sum += (probs[order[i]] = std::exp((logits[order[i]] - top) / options_.temperature));
  if (options_.top_p < 1) {
    double mass = 0;
    int64_t needed = 0;
    while (needed < kept && mass < options_.top_p * sum) mass += probs[order[needed++]];
    for (int64_t i = needed; i < kept; ++i) probs[order[i]] = 0;
    kept = needed;
    sum = mass;
  }
  for (int64_t i = 0; i < kept; ++i) probs[order[i]] /= sum;
  return probs;
}

int64_t Sampler::sample(const torch::Tensor& logits, const std::vector<int64_t>& context) {
  const std::vector<double> probs = distribution(logits, context);
  // 53 random bits as a double in [0, 1): the same on every standard library.
  const double u = static_cast<double>(generator_() >> 11) * 0x1.0p-53;
  double cumulative = 0;
  int64_t last_kept = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] == 0) continue;
    cumulative += probs[i];
    last_kept = static_cast<int64_t>(i);
    if (u < cumulative) return last_kept;
  }
  return last_kept;  // rounding left u just above the total
}

}  // namespace ttt
