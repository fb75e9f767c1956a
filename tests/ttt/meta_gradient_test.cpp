// The gradient of `ttt grad` against central finite differences in float64, for a sample
// of entries of every kind of parameter; for ttt-e2e this is the exact meta-gradient.
#include <gtest/gtest.h>

#include <random>

#include "eval/evaluate.h"
#include "test_util.h"
#include "ttt/inner_loop.h"

namespace ttt {
namespace {

using test::random_params;
using test::random_tokens;
using test::tiny_config;

struct Case {
  std::string name;
  Variant variant;
  bool tie_embeddings;
  bool qk_norm;
  double inner_clip;  // ttt-e2e only
  double inner_lr;    // ttt-e2e only
};

std::ostream& operator<<(std::ostream& out, const Case& c) { return out << c.name; }

class MetaGradient : public ::testing::TestWithParam<Case> {
 protected:
  ModelConfig config() const {
    const Case& k = GetParam();
    ModelConfig c = tiny_config(k.variant);
    c.tie_embeddings = k.tie_embeddings;
    c.qk_norm = k.qk_norm;
    if (c.is_ttt()) {
      c.inner_clip = k.inner_clip;
      c.inner_lr = k.inner_lr;
    }
    return c;
  }
};

double loss_of(const ModelConfig& c, const Params& p, const torch::Tensor& tokens) {
  return run_sequence(c, p, tokens).loss.item<double>();
}

TEST_P(MetaGradient, MatchesCentralFiniteDifferences) {
  const ModelConfig c = config();
  const Params params = random_params(c, 101, 0.4);
  // 14 tokens: 13 targets in chunks of 3 (4 inner steps, a trailing partial chunk), one bos target.
  const torch::Tensor tokens = random_tokens(14, c.vocab_size, 102, {7});
  const GradResult exact = gradient(c, params, tokens);
  EXPECT_NEAR(exact.loss, loss_of(c, params, tokens), 1e-12);

  std::mt19937 rng(103);
  const double h = 1e-5;
  int checked = 0;
  for (const auto& [name, tensor] : named_params(c, params)) {
    const torch::Tensor grad = exact.grads.at(name).flatten();
    ASSERT_EQ(grad.numel(), tensor.numel()) << name;
    // Three entries per tensor; for the embedding, rows of tokens in the sequence.
    for (int sample = 0; sample < 3; ++sample) {
      int64_t index = std::uniform_int_distribution<int64_t>(0, tensor.numel() - 1)(rng);
      if (name == "embed.weight") index = tokens[sample * 4].item<int64_t>() * c.d_model + sample;
      torch::Tensor flat = tensor.view({-1});  // shares storage with params
      const double original = flat[index].item<double>();
      const auto loss_at = [&](double offset) {
        flat[index] = original + offset;
        const double loss = loss_of(c, params, tokens);
        flat[index] = original;
        return loss;
      };
      // Fourth-order central differences: unclipped inner steps make the loss strongly
      // curved, and the second-order stencil's truncation error would exceed 1e-6.
      const double numeric = (8 * (loss_at(h) - loss_at(-h)) - (loss_at(2 * h) - loss_at(-2 * h))) / (12 * h);
      const double analytic = grad[index].item<double>();
      EXPECT_NEAR(analytic, numeric, 1e-7 + 1e-6 * std::abs(numeric)) << name << "[" << index << "]";
      ++checked;
    }
  }
  EXPECT_GE(checked, 3 * 20);
}

// The test can tell the exact meta-gradient from an approximation: dropping the second
// order moves the gradient far beyond the finite-difference tolerance.
class SecondOrder : public MetaGradient {};

TEST_P(SecondOrder, TermsMatter) {
  const ModelConfig c = config();
  const Params params = convert_params(c, random_params(c, 101, 0.4), torch::kFloat64, true);
  const torch::Tensor tokens = random_tokens(14, c.vocab_size, 102, {7});
  SequenceOptions options;
  options.outer_gradient = OuterGradient::kFirstOrder;
  run_sequence(c, params, tokens, options).loss.backward();
  const GradResult exact = gradient(c, params, tokens);
  double largest = 0;
  for (const auto& [name, tensor] : named_params(c, params)) {
    largest = std::max(largest, (tensor.grad() - exact.grads.at(name)).abs().max().item<double>());
  }
  EXPECT_GT(largest, 1e-3);
}

// Unclipped steps at inner_lr 1 make this random model's loss too curved for finite
// differences, so the clip-off case takes smaller steps.
const Case kTttCases[] = {Case{"ttt_clip_inactive", Variant::kTttE2E, true, true, 1e3, 1.0},
                          Case{"ttt_clip_active_untied_no_qk_norm", Variant::kTttE2E, false, false, 0.05, 1.0},
                          Case{"ttt_clip_off_untied", Variant::kTttE2E, false, true, 0.0, 0.2}};
const Case kBaselineCases[] = {Case{"swa", Variant::kSlidingWindow, true, true, 0, 0},
                               Case{"fa_untied", Variant::kFullAttention, false, true, 0, 0}};
const auto case_name = [](const auto& info) { return info.param.name; };

INSTANTIATE_TEST_SUITE_P(Ttt, MetaGradient, ::testing::ValuesIn(kTttCases), case_name);
INSTANTIATE_TEST_SUITE_P(Baselines, MetaGradient, ::testing::ValuesIn(kBaselineCases), case_name);
INSTANTIATE_TEST_SUITE_P(Ttt, SecondOrder, ::testing::ValuesIn(kTttCases), case_name);

}  // namespace
}  // namespace ttt
