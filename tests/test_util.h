// Small models and inputs shared by the tests.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/torch.h>

#include <gtest/gtest.h>

#include "common/error.h"
#include "config/model_config.h"
#include "model/params.h"
#include "test_files.h"

namespace ttt::test {

// A tiny model: 4 blocks (2 with prime MLPs for ttt-e2e), D = 8, 2 heads of width 4,
// window 6 > mini_batch 3, so the KV cache carries keys across chunks.
inline ModelConfig tiny_config(Variant variant) {
  ModelConfig c;
  c.variant = variant;
  c.vocab_size = 13;
  c.d_model = 8;
  c.n_layers = 4;
  c.n_heads = 2;
  c.d_ff = 12;
  c.rms_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.window = variant == Variant::kFullAttention ? 0 : 6;
  c.mini_batch = 3;
  c.suffix_len = variant == Variant::kTttE2E ? 2 : 0;
  c.bos_id = 1;
  c.eos_id = 2;
  c.inner_lr = variant == Variant::kTttE2E ? 1.0 : 0.0;
  c.inner_clip = variant == Variant::kTttE2E ? 1.0 : 0.0;
  c.validate();
  return c;
}

// Parameters with matrices of std `scale` (larger than the spec's 0.02, so that every
// path, second-order terms included, moves the loss measurably) and gains near 1.
inline Params random_params(const ModelConfig& config, uint64_t seed, double scale,
                            torch::Dtype dtype = torch::kFloat64) {
  Params params = init_params(config, seed, dtype);
  torch::manual_seed(seed);
  visit_params(config, params, [&](const std::string&, const std::vector<int64_t>&, ParamKind kind,
                                   torch::Tensor& slot) {
    slot = kind == ParamKind::kMatrix ? slot * (scale / 0.02) : slot + 0.1 * torch::randn_like(slot);
  });
  return params;
}

// Random ids in [3, vocab) with bos at the given indices.
inline torch::Tensor random_tokens(int64_t n, int64_t vocab, uint64_t seed, std::vector<int64_t> bos_at = {},
                                   int64_t bos_id = 1) {
  torch::manual_seed(seed);
  torch::Tensor tokens = torch::randint(3, vocab, {n}, torch::kInt64);
  for (int64_t i : bos_at) tokens[i] = bos_id;
  return tokens;
}

}  // namespace ttt::test
