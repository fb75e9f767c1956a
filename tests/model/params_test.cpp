// Parameters: the gradient kept in one allocation.
#include <gtest/gtest.h>

#include "model/params.h"
#include "test_util.h"

namespace ttt {
namespace {

Params trainable(const ModelConfig& config) {
  Params params = init_params(config, 3);
  for (auto& [name, p] : named_params(config, params)) p.requires_grad_(true);
  return params;
}

TEST(GradientBuffer, EveryGradientIsAViewOfOneZeroedAllocation) {
  const ModelConfig config = test::tiny_config(Variant::kTttE2E);
  const Params params = trainable(config);
  GradientBuffer gradients;
  EXPECT_TRUE(gradients.clear(config, params));
  const torch::Tensor& flat = gradients.flat();
  int64_t offset = 0;
  for (const auto& [name, p] : named_params(config, params)) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_EQ(p.grad().sizes(), p.sizes()) << name;
    EXPECT_EQ(p.grad().data_ptr(), flat.narrow(0, offset, p.numel()).data_ptr()) << name;
    offset += p.numel();
  }
  EXPECT_EQ(offset, flat.numel());
  EXPECT_EQ(flat.count_nonzero().item<int64_t>(), 0);
}

TEST(GradientBuffer, ClearingZeroesInPlaceAndMendsAReplacedGradient) {
  const ModelConfig config = test::tiny_config(Variant::kTttE2E);
  const Params params = trainable(config);
  GradientBuffer gradients;
  gradients.clear(config, params);
  const void* storage = gradients.flat().data_ptr();
  const torch::Tensor view = params.embed.grad();
  for (const auto& [name, p] : named_params(config, params)) p.grad().fill_(1.0);
  params.final_norm.mutable_grad() = torch::ones_like(params.final_norm);  // no longer a view
  EXPECT_FALSE(gradients.clear(config, params));
  EXPECT_EQ(gradients.flat().data_ptr(), storage);
  EXPECT_EQ(gradients.flat().count_nonzero().item<int64_t>(), 0);
  EXPECT_TRUE(params.embed.grad().is_same(view));
  int64_t offset = 0;
  for (const auto& [name, p] : named_params(config, params)) {
    if (name == "final_norm") break;
    offset += p.numel();
  }
  EXPECT_EQ(params.final_norm.grad().data_ptr(), gradients.flat().narrow(0, offset, 1).data_ptr());
}

TEST(GradientBuffer, OtherShapesGetANewAllocation) {
  GradientBuffer gradients;
  const ModelConfig small = test::tiny_config(Variant::kTttE2E);
  gradients.clear(small, trainable(small));
  ModelConfig wider = small;
  wider.d_ff *= 2;
  const Params params = trainable(wider);
  EXPECT_TRUE(gradients.clear(wider, params));
  EXPECT_EQ(params.embed.grad().sizes(), params.embed.sizes());
  int64_t total = 0;
  for (const auto& [name, p] : named_params(wider, params)) total += p.numel();
  EXPECT_EQ(gradients.flat().numel(), total);
}

}  // namespace
}  // namespace ttt
