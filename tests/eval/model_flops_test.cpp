// The procedures' model FLOPs (eval/model_flops.h) against a token-by-token, block-by-block
// count written out here, and against the figure issue 24 quotes for 125M.
#include "eval/model_flops.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace ttt {
namespace {

ModelConfig config_of(Variant variant, int64_t window) {
  ModelConfig c;
  c.variant = variant;
  c.vocab_size = 1000;
  c.d_model = 64;
  c.n_layers = 4;
  c.n_heads = 4;
  c.d_ff = 96;
  c.window = window;
  c.mini_batch = 16;
  c.suffix_len = variant == Variant::kTttE2E ? 2 : 0;
  return c;
}

// Every product of every block for every token, as the procedures run them.
double counted(const ModelConfig& c, int64_t tokens) {
  const double d = static_cast<double>(c.d_model), f = static_cast<double>(c.d_ff);
  const int64_t b = c.mini_batch, chunks = (tokens + b - 1) / b;
  double total = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    const double keys = static_cast<double>(c.attention_window() > 0 ? std::min(t + 1, c.attention_window()) : t + 1);
    const int64_t chunk = t / b;
    const bool full = (chunk + 1) * b <= tokens;
    const bool updates = c.is_ttt() && full && chunk + 1 < chunks;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      total += 2 * d * d * 4;                      // q, k, v, o
      total += 2 * d * keys * 2;                   // scores and mix
      total += 2 * d * f * 3;                      // MLP
      if (c.has_prime(l)) total += 2 * d * f * 3;  // prime MLP
      if (!updates || l < c.first_suffix_block()) continue;
      total += 2 * d * f * 3;                     // the MLP's input gradient: its hidden layer's, then its input's
      total += 2 * d * f * 4;                     // the prime MLP's hidden layer's gradient, then W1's, W2's, W3's
      if (l == c.first_suffix_block()) continue;  // the gradient stops at the first prime MLP
      total += 2 * d * f * 2;                     // the prime MLP's input gradient (through W1 and W3)
      total += 2 * d * d * 4;                     // through the projections
      total += 2 * d * keys * 4;                  // dP, dV, dQ, dK
    }
    total += 2 * d * static_cast<double>(c.vocab_size) * (updates ? 2 : 1);  // the head, its input gradient
  }
  return total;
}

TEST(ModelFlops, EveryProductCountedOnce) {
  for (const Variant variant : {Variant::kFullAttention, Variant::kSlidingWindow, Variant::kTttE2E}) {
    for (const int64_t tokens : {1, 15, 16, 40, 48, 100}) {
      const ModelConfig c = config_of(variant, variant == Variant::kFullAttention ? 0 : 24);
      EXPECT_DOUBLE_EQ(evaluation_flops(c, tokens), counted(c, tokens))
          << variant_name(variant) << " " << tokens << " tokens";
      EXPECT_DOUBLE_EQ(training_flops(c, tokens), 3 * counted(c, tokens));
    }
  }
  // Within the window swa does fa's work; beyond it, less.
  const ModelConfig fa = config_of(Variant::kFullAttention, 0), swa = config_of(Variant::kSlidingWindow, 24);
  EXPECT_DOUBLE_EQ(evaluation_flops(fa, 24), evaluation_flops(swa, 24));
  EXPECT_GT(evaluation_flops(fa, 100), evaluation_flops(swa, 100));
}

TEST(ModelFlops, TheIssuesFigureFor125M) {
  // bench's 125M ttt-e2e shape: about 1.1 GFLOP a token once the window is full.
  ModelConfig c = config_of(Variant::kTttE2E, 8192);
  c.vocab_size = 128256;
  c.d_model = 768;
  c.n_layers = 12;
  c.n_heads = 12;
  c.d_ff = 1664;
  c.mini_batch = 1024;
  c.suffix_len = 3;
  const double per_token = (evaluation_flops(c, 131072) - evaluation_flops(c, 65536)) / 65536;
  EXPECT_GT(per_token, 1.0e9);
  EXPECT_LT(per_token, 1.1e9);
}

TEST(ModelFlops, PeaksByDeviceName) {
  EXPECT_EQ(peak_half_precision_flops("NVIDIA H200"), 989e12);
  EXPECT_EQ(peak_half_precision_flops("NVIDIA H100 80GB HBM3"), 989e12);
  EXPECT_EQ(peak_half_precision_flops("NVIDIA H100 PCIe"), 756e12);
  EXPECT_EQ(peak_half_precision_flops("NVIDIA H200 NVL"), 835e12);
  EXPECT_EQ(peak_half_precision_flops("NVIDIA A100-SXM4-80GB"), 312e12);
  EXPECT_FALSE(peak_half_precision_flops("cpu").has_value());
}

}  // namespace
}  // namespace ttt
