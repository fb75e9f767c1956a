// Checkpoints: canonical names, config in the metadata, and errors naming the tensor.
#include <gtest/gtest.h>

#include "common/error.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "test_util.h"

namespace ttt {
namespace {

// Expects loading `tensors` (with the config of `model`) to fail naming `fragment`.
void expect_load_error(const Model& model, const std::map<std::string, torch::Tensor>& tensors,
                       const std::string& fragment) {
  const std::string path = test::temp_path("bad.safetensors");
  io::write_safetensors(path, tensors, {{"config", model.config.to_json_text()}});
  try {
    load_model(path);
    ADD_FAILURE() << "loaded a checkpoint that should fail with: " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

Model tiny_model(Variant variant) {
  Model model;
  model.config = test::tiny_config(variant);
  model.params = init_params(model.config, 5);
  return model;
}

TEST(Checkpoint, SpecNamesAndShapes) {
  const Model model = tiny_model(Variant::kTttE2E);
  const auto named = named_params(model.config, model.params);
  // 4 blocks: 2 plain with 13 tensors each, 2 suffix blocks with 5 more; embed, final_norm.
  EXPECT_EQ(named.size(), 2u + 4 * 13 + 2 * 5);
  EXPECT_EQ(named.at("embed.weight").sizes(), (std::vector<int64_t>{13, 8}));
  EXPECT_EQ(named.at("blocks.3.prime.w2").sizes(), (std::vector<int64_t>{12, 8}));
  EXPECT_EQ(named.at("blocks.0.attn.q_norm").sizes(), (std::vector<int64_t>{4}));
  EXPECT_EQ(named.count("blocks.1.prime.w1"), 0u);  // only the last suffix_len blocks
  EXPECT_EQ(named.count("lm_head"), 0u);            // tied
  // Spec initialisation: N(0, 0.02^2) matrices, unit gains.
  const torch::Tensor big = init_params(test::tiny_config(Variant::kSlidingWindow), 6).embed;
  EXPECT_NEAR(big.std().item<double>(), 0.02, 0.006);
  EXPECT_TRUE(torch::equal(named.at("blocks.2.prime_post_norm"), torch::ones({8})));
}

TEST(Checkpoint, RoundTripsInEveryStorageDtype) {
  const Model model = tiny_model(Variant::kTttE2E);
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    const std::string path = test::temp_path("model.safetensors");
    save_model(path, model, dtype);
    const Model loaded = load_model(path);
    EXPECT_EQ(loaded.config.to_json_text(), model.config.to_json_text());
    for (const auto& [name, tensor] : named_params(model.config, model.params)) {
      const torch::Tensor stored = named_params(loaded.config, loaded.params).at(name);
      EXPECT_EQ(stored.scalar_type(), torch::kFloat32);
      EXPECT_TRUE(torch::equal(stored, tensor.to(dtype).to(torch::kFloat32))) << name;
    }
  }
}

TEST(Checkpoint, MissingUnknownAndMisshapenTensorsAreNamed) {
  const Model model = tiny_model(Variant::kTttE2E);
  auto named = named_params(model.config, model.params);

  auto missing = named;
  missing.erase("blocks.2.prime.w3");
  expect_load_error(model, missing, "missing tensor 'blocks.2.prime.w3'");

  auto unknown = named;
  unknown.emplace("blocks.0.prime.w1", torch::zeros({8, 12}));
  expect_load_error(model, unknown, "unknown tensor 'blocks.0.prime.w1'");

  auto misshapen = named;
  misshapen["blocks.1.mlp.w2"] = torch::zeros({8, 12});
  expect_load_error(model, misshapen, "tensor 'blocks.1.mlp.w2' has shape [8, 12], expected [12, 8]");
}

TEST(Checkpoint, ConfigMustBeInTheMetadataAndValid) {
  const Model model = tiny_model(Variant::kSlidingWindow);
  const auto named = named_params(model.config, model.params);
  const std::string no_config = test::temp_path("no_config.safetensors");
  io::write_safetensors(no_config, named);
  EXPECT_THROW(load_model(no_config), Error);

  const std::string bad_config = test::temp_path("bad_config.safetensors");
  io::write_safetensors(bad_config, named, {{"config", R"({"variant": "swa", "d_model": 8})"}});
  try {
    load_model(bad_config);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is missing"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ttt
