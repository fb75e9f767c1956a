#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "config/model_config.h"
#include "test_files.h"

namespace ttt {
namespace {

using nlohmann::json;

json paper_125m() {
  return json::parse(R"({"variant": "ttt-e2e", "vocab_size": 128256, "d_model": 768, "n_layers": 12,
    "n_heads": 12, "d_ff": 1664, "rms_eps": 1e-6, "rope_theta": 500000, "window": 8192, "mini_batch": 1024,
    "suffix_len": 3, "tie_embeddings": true, "qk_norm": true, "bos_id": 128000, "eos_id": 128001,
    "inner_lr": 1.0, "inner_clip": 1.0})");
}

// Expects from_json to fail with a message that contains `fragment`.
void expect_rejected(const json& j, const std::string& fragment) {
  try {
    ModelConfig::from_json(j);
    ADD_FAILURE() << "accepted: " << j.dump();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, ParsesThePaperConfig) {
  const ModelConfig c = ModelConfig::from_json(paper_125m());
  EXPECT_EQ(c.variant, Variant::kTttE2E);
  EXPECT_EQ(c.head_dim(), 64);
  EXPECT_EQ(c.first_suffix_block(), 9);
  EXPECT_FALSE(c.has_prime(8));
  EXPECT_TRUE(c.has_prime(9));
  EXPECT_EQ(c.window, 8192);
  EXPECT_DOUBLE_EQ(c.rms_eps, 1e-6);
}

TEST(ModelConfig, RoundTripsThroughJson) {
  for (const char* variant : {"fa", "swa", "ttt-e2e"}) {
    json j = paper_125m();
    j["variant"] = variant;
    if (std::string(variant) != "ttt-e2e") j.erase("suffix_len");
    const ModelConfig c = ModelConfig::from_json(j);
    EXPECT_EQ(ModelConfig::from_json_text(c.to_json_text()).to_json(), c.to_json()) << variant;
  }
}

TEST(ModelConfig, BaselinesMayCarryInnerLoopKeysButNoSuffix) {
  json j = paper_125m();
  j["variant"] = "swa";
  j.erase("suffix_len");
  EXPECT_FALSE(ModelConfig::from_json(j).has_prime(11));
  j["variant"] = "fa";
  j.erase("window");
  EXPECT_EQ(ModelConfig::from_json(j).attention_window(), 0);
  j["window"] = 4096;  // fa accepts a window but never applies it
  EXPECT_EQ(ModelConfig::from_json(j).attention_window(), 0);
}

TEST(ModelConfig, RejectsBadInput) {
  auto with = [](const std::string& key, const json& value) {
    json j = paper_125m();
    j[key] = value;
    return j;
  };
  auto without = [](const std::string& key) {
    json j = paper_125m();
    j.erase(key);
    return j;
  };
  expect_rejected(with("n_experts", 4), "'n_experts' is not a known key");
  expect_rejected(without("d_ff"), "'d_ff' is missing");
  expect_rejected(without("window"), "'window' is missing");
  expect_rejected(without("inner_lr"), "'inner_lr' is missing");
  expect_rejected(with("d_model", 0), "'d_model' must be positive");
  expect_rejected(with("vocab_size", -5), "'vocab_size' must be positive");
  expect_rejected(with("mini_batch", 0), "'mini_batch' must be positive");
  expect_rejected(with("d_model", 770), "not divisible by n_heads");
  expect_rejected(with("n_heads", 256), "odd head dimension");
  expect_rejected(with("window", 512), "smaller than mini_batch");
  expect_rejected(with("suffix_len", 13), "between 1 and n_layers");
  expect_rejected(with("suffix_len", 0), "between 1 and n_layers");
  expect_rejected(with("variant", "mamba"), "'variant' must be");
  expect_rejected(with("d_model", 768.5), "must be an integer");
  expect_rejected(with("d_model", "768"), "must be an integer");
  expect_rejected(with("qk_norm", 1), "must be true or false");
  expect_rejected(with("rms_eps", 0), "'rms_eps' must be positive");
  expect_rejected(with("bos_id", -1), "'bos_id' must not be negative");
  expect_rejected(with("inner_lr", -1), "must not be negative");
  expect_rejected(with("inner_clip", -1), "must not be negative");
  json swa = with("variant", "swa");
  expect_rejected(swa, "'suffix_len' is only for variant \"ttt-e2e\"");
  swa["suffix_len"] = 0;  // a config listing every key says "no suffix" this way
  EXPECT_FALSE(ModelConfig::from_json(swa).has_prime(11));
  expect_rejected(json::array(), "expected a JSON object");
  EXPECT_THROW(ModelConfig::from_json_text("{\"variant\": "), Error);
}

// A config file is read as every JSON file is (io::read_json_file): each error is one line
// that starts with the file's name.
TEST(ModelConfig, FileErrorsNameTheFile) {
  test::ScratchDir dir;
  const std::string path = dir.path("config.json");
  test::write_bytes(path, paper_125m().dump());
  EXPECT_EQ(ModelConfig::from_file(path).to_json(), ModelConfig::from_json(paper_125m()).to_json());
  json fractional = paper_125m();
  fractional["d_model"] = 768.5;
  for (const auto& [text, fragment] : std::vector<std::pair<std::string, std::string>>{
           {paper_125m().dump().substr(0, 40), ": not valid JSON"},
           {std::string("{\"variant\": \"fa\"}") + '\0', ": not valid JSON (a NUL byte at byte 17)"},
           {std::string(100, '[') + std::string(100, ']'), ": JSON nested deeper than 64 levels"},
           {fractional.dump(), ": config: 'd_model' must be an integer, got 768.5"}}) {
    test::write_bytes(path, text);
    test::expect_error([&] { ModelConfig::from_file(path); }, {path + fragment});
  }
  test::expect_error([&] { ModelConfig::from_file(dir.path("missing.json")); },
                     {dir.path("missing.json") + ": no such file"});
  test::expect_error([&] { ModelConfig::from_file(dir.dir()); }, {dir.dir() + ": not a regular file"});
}

}  // namespace
}  // namespace ttt
