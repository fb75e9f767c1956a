// Choosing the next token from a model's logits: repetition penalty, temperature (0:
// greedy), top-k, top-p, then a draw from a seeded generator of its own, so that a seed
// gives the same text on every run and machine.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include <torch/types.h>

#include "infer/sampling_options.h"

namespace ttt {

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options);

  // The next token from `logits` [V]; `context` holds the tokens the penalty applies to.
  int64_t sample(const torch::Tensor& logits, const std::vector<int64_t>& context);

  // The distribution `sample` draws from (after penalty, temperature, top-k and top-p):
  // probabilities over the vocabulary, zero outside the kept tokens. Greedy: one-hot.
  std::vector<double> distribution(const torch::Tensor& logits, const std::vector<int64_t>& context) const;

 private:
  SamplingOptions options_;
  std::mt19937_64 generator_;
};

}  // namespace ttt
