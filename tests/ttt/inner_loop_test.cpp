// The inner loop of SPEC section 5 against a step-by-step re-derivation.
#include <gtest/gtest.h>

#include <torch/autograd.h>

#include "model/layers.h"
#include "model/transformer.h"
#include "test_util.h"
#include "ttt/inner_loop.h"

namespace ttt {
namespace {

using test::random_params;
using test::random_tokens;
using test::tiny_config;

// Chunk-by-chunk TTT written out directly: for each chunk, the logits with the current
// weights and the cache of earlier chunks, then W -= lr * s * grad with s computed here.
std::vector<torch::Tensor> reference_chunk_nlls(const ModelConfig& c, const Params& p, const torch::Tensor& tokens,
                                                std::vector<double>* grad_norms = nullptr) {
  const int64_t n = tokens.size(0) - 1;
  KvCache cache = KvCache::window(c);
  FastWeights w = initial_fast_weights(c, p);
  std::vector<torch::Tensor> nlls;
  for (int64_t start = 0; start < n; start += c.mini_batch) {
    const int64_t len = std::min(c.mini_batch, n - start);
    std::vector<torch::Tensor> flat;
    for (auto& m : w) {
      m = {m.w1.detach().requires_grad_(), m.w2.detach().requires_grad_(), m.w3.detach().requires_grad_()};
      flat.insert(flat.end(), {m.w1, m.w2, m.w3});
    }
    const torch::Tensor logits =
        forward_span(c, p, tokens.narrow(0, start, len), torch::arange(start, start + len), cache, &w);
    const torch::Tensor targets = tokens.narrow(0, start + 1, len);
    const torch::Tensor nll = token_nll(logits, targets);
    nlls.push_back(nll.detach());
    cache.detach();
    const auto grads = torch::autograd::grad({masked_mean_loss(nll, targets, c.bos_id)}, flat);
    double norm = 0;
    for (const auto& g : grads) norm += g.pow(2).sum().item<double>();
    norm = std::sqrt(norm);
    if (grad_norms) grad_norms->push_back(norm);
    const double s = c.inner_clip > 0 ? std::min(1.0, c.inner_clip / norm) : 1.0;
    for (size_t i = 0; i < w.size(); ++i) {
      w[i] = {(w[i].w1 - c.inner_lr * s * grads[3 * i]).detach(), (w[i].w2 - c.inner_lr * s * grads[3 * i + 1]).detach(),
              (w[i].w3 - c.inner_lr * s * grads[3 * i + 2]).detach()};
    }
  }
  return nlls;
}

TEST(InnerLoop, MatchesStepByStepDerivation) {
  for (double clip : {0.0, 1e3, 0.05}) {  // off, inactive, active
    ModelConfig c = tiny_config(Variant::kTttE2E);
    c.inner_clip = clip;
    const Params p = random_params(c, 51, 0.3);
    const torch::Tensor tokens = random_tokens(15, c.vocab_size, 52, {6});
    std::vector<double> norms;
    const auto expected = reference_chunk_nlls(c, p, tokens, &norms);
    const SequenceResult run = run_sequence(c, p, tokens);
    EXPECT_TRUE(torch::allclose(run.nll, torch::cat(expected), 1e-10, 1e-12)) << "clip " << clip;
    EXPECT_EQ(run.inner_steps, 4);  // 14 targets: chunks of 3,3,3,3,2; no step after the last
    // The clip settings really were off/inactive/active.
    for (size_t i = 0; i + 1 < norms.size(); ++i) {
      if (clip == 1e3) EXPECT_LT(norms[i], clip);
      if (clip == 0.05) EXPECT_GT(norms[i], clip);
    }
  }
}

TEST(InnerLoop, ChunkLossIsRecordedBeforeItsUpdateAndLearningChangesLaterChunks) {
  const ModelConfig c = tiny_config(Variant::kTttE2E);
  ModelConfig frozen = c;
  frozen.inner_lr = 0;
  const Params p = random_params(c, 61, 0.3);
  const torch::Tensor tokens = random_tokens(13, c.vocab_size, 62);
  const torch::Tensor learning = run_sequence(c, p, tokens).nll;
  const torch::Tensor fixed = run_sequence(frozen, p, tokens).nll;
  // The first chunk is predicted by W_0 in both; every later one by trained weights.
  EXPECT_TRUE(torch::equal(learning.narrow(0, 0, c.mini_batch), fixed.narrow(0, 0, c.mini_batch)));
  EXPECT_GT((learning.narrow(0, c.mini_batch, 9) - fixed.narrow(0, c.mini_batch, 9)).abs().max().item<double>(), 1e-4);
}

TEST(InnerLoop, ZeroInnerLearningRateIsTheNetworkWithoutUpdates) {
  ModelConfig c = tiny_config(Variant::kTttE2E);
  c.inner_lr = 0;
  const Params p = random_params(c, 71, 0.3);
  const torch::Tensor tokens = random_tokens(16, c.vocab_size, 72, {4});
  const SequenceResult run = run_sequence(c, p, tokens);
  // The same network in one pass over the sequence, prime MLPs fixed at W_0.
  KvCache cache = KvCache::window(c);
  const FastWeights w0 = initial_fast_weights(c, p);
  const torch::Tensor logits = forward_span(c, p, tokens.narrow(0, 0, 15), torch::arange(15), cache, &w0);
  const torch::Tensor nll = token_nll(logits, tokens.narrow(0, 1, 15));
  EXPECT_TRUE(torch::allclose(run.nll, nll, 1e-12, 1e-12));
  EXPECT_EQ(run.inner_steps, 4);
}

TEST(InnerLoop, SequenceLossIsTheMeanOfChunkLosses) {
  for (Variant v : {Variant::kSlidingWindow, Variant::kTttE2E, Variant::kFullAttention}) {
    const ModelConfig c = tiny_config(v);
    const Params p = random_params(c, 81, 0.3);
    const torch::Tensor tokens = random_tokens(12, c.vocab_size, 82, {2, 3, 4});  // chunk 1: two of three masked
    const SequenceResult run = run_sequence(c, p, tokens);
    const torch::Tensor targets = tokens.narrow(0, 1, 11);
    double expected = 0;
    if (v == Variant::kFullAttention) {
      expected = masked_mean_loss(run.nll, targets, c.bos_id).item<double>();
    } else {
      for (int64_t start = 0; start < 11; start += 3) {
        const int64_t len = std::min<int64_t>(3, 11 - start);
        expected += masked_mean_loss(run.nll.narrow(0, start, len), targets.narrow(0, start, len), c.bos_id)
                        .item<double>() / 4;
      }
    }
    EXPECT_NEAR(run.loss.item<double>(), expected, 1e-12) << variant_name(v);
  }
}

TEST(InnerLoop, ChunkWithoutValidTargetsTakesAZeroStep) {
  const ModelConfig c = tiny_config(Variant::kTttE2E);
  const Params p = random_params(c, 91, 0.3);
  const torch::Tensor tokens = random_tokens(10, c.vocab_size, 92, {1, 2, 3});  // every target of chunk 1 is bos
  const FastWeights w0 = initial_fast_weights(c, p);
  KvCache cache = KvCache::window(c);
  FastWeights leaves;
  for (const auto& m : w0) leaves.push_back({m.w1.clone().requires_grad_(), m.w2.clone().requires_grad_(),
                                             m.w3.clone().requires_grad_()});
  const torch::Tensor logits = forward_span(c, p, tokens.narrow(0, 0, 3), torch::arange(3), cache, &leaves);
  const torch::Tensor loss = masked_mean_loss(token_nll(logits, tokens.narrow(0, 1, 3)), tokens.narrow(0, 1, 3), 1);
  const FastWeights w1 = inner_step(c, leaves, loss, inner_step_size(c, 1.0, loss), OuterGradient::kExact);
  EXPECT_EQ(loss.item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(w1[0].w1, w0[0].w1));
  // The second order through the clip stays finite: the norm of a zero gradient is guarded.
  const auto second = torch::autograd::grad({w1[0].w1.sum() + w1[1].w2.sum()}, {leaves[0].w1, leaves[1].w2});
  for (const auto& g : second) EXPECT_TRUE(torch::isfinite(g).all().item<bool>());
}

}  // namespace
}  // namespace ttt
