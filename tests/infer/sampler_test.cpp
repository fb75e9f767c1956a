// Sampling: each rule against its definition, draws against their distribution, seeds.
#include <gtest/gtest.h>

#include <cmath>

#include <torch/types.h>

#include "infer/sampler.h"
#include "test_util.h"

namespace ttt {
namespace {

torch::Tensor logits_of(const std::vector<double>& probs) {
  std::vector<double> logits;
  for (double p : probs) logits.push_back(std::log(p));
  return torch::tensor(logits, torch::kFloat64);
}

std::vector<double> distribution(SamplingOptions options, const std::vector<double>& probs,
                                 const std::vector<int64_t>& context = {}) {
  return Sampler(options).distribution(logits_of(probs), context);
}

void expect_probs(const std::vector<double>& actual, const std::vector<double>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) EXPECT_NEAR(actual[i], expected[i], 1e-12) << i;
}

TEST(Sampler, EachRuleFollowsItsDefinition) {
  const std::vector<double> p = {0.1, 0.5, 0.3, 0.1};
  expect_probs(distribution({}, p), p);
  expect_probs(distribution({.temperature = 0}, p), {0, 1, 0, 0});
  expect_probs(distribution({.top_k = 1}, p), {0, 1, 0, 0});
  expect_probs(distribution({.top_k = 2}, p), {0, 0.5 / 0.8, 0.3 / 0.8, 0});
  expect_probs(distribution({.top_p = 0.5}, p), {0, 1, 0, 0});
  expect_probs(distribution({.top_p = 0.7}, p), {0, 0.5 / 0.8, 0.3 / 0.8, 0});
  // Temperature 0.5 squares the probabilities before renormalising.
  const double z = 0.01 + 0.25 + 0.09 + 0.01;
  expect_probs(distribution({.temperature = 0.5}, p), {0.01 / z, 0.25 / z, 0.09 / z, 0.01 / z});
  // Repetition penalty 2: a positive logit is halved, a negative one doubled.
  const torch::Tensor logits = torch::tensor(std::vector<double>{2.0, 2.0, -1.0}, torch::kFloat64);
  const std::vector<double> penalised = Sampler({.repetition_penalty = 2}).distribution(logits, {0, 2, 0});
  const double e1 = std::exp(1.0), e2 = std::exp(2.0), em2 = std::exp(-2.0);
  expect_probs(penalised, {e1 / (e1 + e2 + em2), e2 / (e1 + e2 + em2), em2 / (e1 + e2 + em2)});
}

TEST(Sampler, DrawsFollowTheDistributionAndTheSeed) {
  const std::vector<double> p = {0.2, 0.5, 0.3};
  Sampler sampler({.seed = 11});
  std::vector<int> counts(3, 0);
  std::vector<int64_t> first;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const int64_t token = sampler.sample(logits_of(p), {});
    ++counts[token];
    if (i < 50) first.push_back(token);
  }
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(counts[i] / double(n), p[i], 0.015) << i;
  Sampler again({.seed = 11}), other({.seed = 12});
  std::vector<int64_t> repeat, different;
  for (int i = 0; i < 50; ++i) {
    repeat.push_back(again.sample(logits_of(p), {}));
    different.push_back(other.sample(logits_of(p), {}));
  }
  EXPECT_EQ(repeat, first);
  EXPECT_NE(different, first);
  // Tokens outside top-k are never drawn.
  Sampler top2({.top_k = 2, .seed = 3});
  for (int i = 0; i < 1000; ++i) EXPECT_NE(top2.sample(logits_of(p), {}), 0);
}

TEST(Sampler, BadOptionsAreErrors) {
  test::expect_error([] { Sampler({.temperature = -1}); }, {"temperature"});
  test::expect_error([] { Sampler({.top_k = -2}); }, {"top-k"});
  test::expect_error([] { Sampler({.top_p = 0}); }, {"top-p"});
  test::expect_error([] { Sampler({.top_p = 1.5}); }, {"top-p"});
  test::expect_error([] { Sampler({.repetition_penalty = 0}); }, {"repetition penalty"});
  Sampler sampler({});
  test::expect_error([&] { sampler.sample(torch::zeros({2, 3}), {}); }, {"one vector"});
}

}  // namespace
}  // namespace ttt
