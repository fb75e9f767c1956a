// Small models and inputs shared by the tests.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/types.h>

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

// Large enough for the GPU kernels' shapes (head dim 16), small enough for the CPU fp64
// reference: 4 blocks, window 32 over chunks of 16.
inline ModelConfig kernel_sized_config(Variant variant) {
  ModelConfig c = tiny_config(variant);
  c.vocab_size = 97;
  c.d_model = 64;
  c.n_heads = 4;
  c.d_ff = 96;
  c.window = variant == Variant::kFullAttention ? 0 : 32;
  c.mini_batch = 16;
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

// d(objective)/d(leaves), once (no graph kept), a leaf the objective does not reach getting
// zeros of its shape.
inline std::vector<torch::Tensor> gradients_or_zeros(const torch::Tensor& objective,
                                                     const std::vector<torch::Tensor>& leaves) {
  std::vector<torch::Tensor> grads = torch::autograd::grad({objective}, leaves, {}, /*retain_graph=*/false,
                                                           /*create_graph=*/false, /*allow_unused=*/true);
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].defined()) grads[i] = torch::zeros_like(leaves[i]);
  }
  return grads;
}

// A function's value and its derivatives up to `orders`, for comparing two implementations:
// order 1 differentiates <f(), p> (p a random probe) with respect to the leaves; each further
// order differentiates the sum of the previous order's results' inner products with fresh
// probes with respect to the leaves and every probe before (each an input of those results'
// graphs). Probes are drawn from `seed` on the CPU and rounded to bf16 (exact in every wider
// dtype): two implementations with outputs of the same shapes get the same probe values.
// The leaves must require grad; an unused input's derivative is a zero scalar.
inline std::vector<torch::Tensor> derivatives(const std::function<torch::Tensor()>& f,
                                              const std::vector<torch::Tensor>& leaves, int orders, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> outputs = {f()}, wrt = leaves;
  std::vector<torch::Tensor> results = outputs;
  for (int order = 1; order <= orders; ++order) {
    torch::Tensor objective =
        torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(leaves[0].device()));
    std::vector<torch::Tensor> probes;
    for (const torch::Tensor& output : outputs) {
      probes.push_back(
          torch::randn(output.sizes()).to(torch::kBFloat16).to(output.device(), output.scalar_type()).requires_grad_());
      objective = objective + (output * probes.back()).sum().to(torch::kFloat64);
    }
    outputs = torch::autograd::grad({objective}, wrt, {}, /*retain_graph=*/true, /*create_graph=*/order < orders,
                                    /*allow_unused=*/true);
    for (torch::Tensor& output : outputs) {
      if (!output.defined()) output = torch::zeros({}, leaves[0].options().requires_grad(false));
    }
    results.insert(results.end(), outputs.begin(), outputs.end());
    wrt.insert(wrt.end(), probes.begin(), probes.end());
  }
  return results;
}
}  // namespace ttt::test
