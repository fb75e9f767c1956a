// The training config: parsing, validation, the schedules of SPEC section 6, and which keys
// a resumed run may change.
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "train/train_config.h"

namespace ttt {
namespace {

using nlohmann::json;
using test::expect_error;

TEST(TrainConfig, ParsesEveryKeyAndWritesItBack) {
  json j = TrainConfig().to_json();
  j["model"] = test::tiny_config(Variant::kTttE2E).to_json();
  j["seq_len"] = 96;
  j["lr"] = 1e-3;
  j["first_order"] = true;
  j["train_tokens"] = "a.u32";
  const TrainConfig c = TrainConfig::from_json(j);
  EXPECT_EQ(c.seq_len, 96);
  EXPECT_EQ(c.lr, 1e-3);
  EXPECT_TRUE(c.first_order);
  EXPECT_EQ(c.train_tokens, "a.u32");
  ASSERT_TRUE(c.model.has_value());
  EXPECT_EQ(c.model->to_json(), j["model"]);
  EXPECT_EQ(c.to_json(), j);
  // Every listed key is written, so the round trip covers them all.
  EXPECT_EQ(c.to_json().size(), TrainConfig::fields().size() + 1);
}

TEST(TrainConfig, BadKeysAndValuesNameTheKey) {
  expect_error([] { TrainConfig::from_json({{"sequence_length", 5}}); }, {"'sequence_length'", "not a training key"});
  expect_error([] { TrainConfig::from_json({{"steps", 2.5}}); }, {"'steps'", "integer"});
  expect_error([] { TrainConfig::from_json({{"lr", "fast"}}); }, {"'lr'", "number"});
  expect_error([] { TrainConfig::from_json({{"remat", 1}}); }, {"'remat'", "true or false"});
  expect_error([] { TrainConfig::from_json({{"batch_size", 0}}); }, {"'batch_size'", "positive"});
  expect_error([] { TrainConfig::from_json({{"lr", -1.0}}); }, {"'lr'"});
  expect_error([] { TrainConfig::from_json({{"lr", 1e-3}, {"lr_min", 1e-2}}); }, {"'lr_min'", "lr"});
  expect_error([] { TrainConfig::from_json({{"warmup_frac", 1.5}}); }, {"'warmup_frac'", "[0, 1]"});
  expect_error([] { TrainConfig::from_json({{"beta2", 1.0}}); }, {"'beta2'"});
  expect_error([] { TrainConfig::from_json({{"dtype", "f16"}}); }, {"'dtype'", "f32"});
  expect_error([] { TrainConfig::from_json({{"dist_backend", "mpi"}}); }, {"'dist_backend'", "gloo"});
  expect_error([] { TrainConfig::from_json({{"dist_timeout", 0}}); }, {"'dist_timeout'", "> 0"});
  expect_error([] { TrainConfig::from_json({{"tail_chunks", -1}}); }, {"'tail_chunks'", ">= 0"});
  expect_error([] { TrainConfig::from_json({{"moments_on_host", "yes"}}); }, {"'moments_on_host'", "auto"});
  expect_error([] { TrainConfig::from_json({{"moments_on_host", 1}}); }, {"'moments_on_host'", "string"});
  expect_error([] { TrainConfig::from_json({{"model", {{"variant", "rnn"}}}}); }, {"'model'", "variant"});
}

// Run directories' config.json held moments_on_host as a boolean before "auto": they resume.
TEST(TrainConfig, MomentsOnHostReadsTheOlderBoolean) {
  EXPECT_EQ(TrainConfig().moments_on_host, "auto");
  EXPECT_EQ(TrainConfig::from_json({{"moments_on_host", true}}).moments_on_host, "true");
  EXPECT_EQ(TrainConfig::from_json({{"moments_on_host", false}}).moments_on_host, "false");
  EXPECT_EQ(TrainConfig::from_json({{"moments_on_host", "false"}}).to_json().at("moments_on_host"), "false");
}

TEST(TrainConfig, TttSequencesHoldWholeChunks) {
  TrainConfig c;
  c.seq_len = 10;
  const ModelConfig ttt = test::tiny_config(Variant::kTttE2E);  // mini_batch 3
  expect_error([&] { c.validate_for(ttt); }, {"'seq_len'", "multiple", "mini_batch (3)"});
  c.seq_len = 9;
  EXPECT_NO_THROW(c.validate_for(ttt));
  c.seq_len = 10;
  EXPECT_NO_THROW(c.validate_for(test::tiny_config(Variant::kSlidingWindow)));
}

TEST(TrainConfig, LearningRateWarmsUpThenDecaysToTheFloor) {
  TrainConfig c;
  c.steps = 100;
  c.lr = 3e-3;
  c.lr_min = 1e-5;
  c.warmup_frac = 0.1;
  EXPECT_EQ(learning_rate(c, 0), 0.0);
  EXPECT_NEAR(learning_rate(c, 5), 1.5e-3, 1e-15);
  EXPECT_NEAR(learning_rate(c, 10), 3e-3, 1e-15);
  // Halfway through the decay, the cosine is at the mean of peak and floor.
  const double mid = 10 + 89 / 2.0;
  EXPECT_NEAR(learning_rate(c, static_cast<int64_t>(mid)),
              1e-5 + (3e-3 - 1e-5) * 0.5 * (1 + std::cos(M_PI * (44.0 / 89))), 1e-15);
  EXPECT_NEAR(learning_rate(c, 99), 1e-5, 1e-15);
  for (int64_t s = 11; s < 100; ++s) EXPECT_LT(learning_rate(c, s), learning_rate(c, s - 1)) << s;
}

TEST(TrainConfig, InnerLearningRateWarmUpFollowsTheSpec) {
  TrainConfig c;
  c.steps = 50;
  c.ilr_warmup_frac = 0.1;  // 5 steps
  for (int64_t step = 0; step < 50; ++step) {
    EXPECT_NEAR(inner_lr_multiplier(c, step), 0.1 + 0.9 * std::min(1.0, (step + 1) / 5.0), 1e-15) << step;
  }
  c.ilr_warmup_frac = 0;
  EXPECT_EQ(inner_lr_multiplier(c, 0), 1.0);
}

TEST(TrainConfig, OnlyReportingKeysMayChangeOnResume) {
  TrainConfig a;
  a.model = test::tiny_config(Variant::kSlidingWindow);
  TrainConfig b = a;
  b.log_every = 1;
  b.eval_every = 3;
  b.checkpoint_every = 7;
  b.val_sequences = 2;
  b.val_tokens = "other.u32";
  b.dist_backend = "gloo";  // a job may resume on other machines, with other ranks
  b.dist_timeout = 60;
  b.tail_chunks = 3;         // the same gradient, in another memory
  b.moments_on_host = "true";  // the same update, the moments elsewhere between steps
  EXPECT_TRUE(a.training_differences(b).empty());
  b.seq_len = 2 * a.seq_len;
  b.lr = 1.0;
  b.model->d_ff += 1;
  EXPECT_EQ(a.training_differences(b), (std::vector<std::string>{"model", "seq_len", "lr"}));
}

}  // namespace
}  // namespace ttt
