// Converting the authors' orbax checkpoints: their numbers reproduced on the fixtures their
// code wrote (tests/fixtures/orbax), and the mapping, config inference and errors on trees
// built here.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "eval/evaluate.h"
#include "io/orbax_fixtures.h"
#include "io/orbax_test_store.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/orbax_import.h"
#include "test_util.h"

namespace ttt {
namespace {

using io::orbax::OrbaxCheckpoint;
using nlohmann::json;
using test::expect_error;
using test::temp_path;

const std::string& kFixtures = test::kOrbaxFixtures;
const auto reference = test::orbax_reference;

OrbaxCheckpoint fixture_checkpoint(const std::string& fixture) {
  return OrbaxCheckpoint(io::orbax::resolve_model_weights(kFixtures + "/" + fixture, std::nullopt));
}

std::string convert(const OrbaxCheckpoint& checkpoint, const OrbaxImportOptions& options) {
  const std::string out = temp_path("converted.safetensors");
  write_orbax_import(checkpoint, plan_orbax_import(checkpoint, options), options.dtype, out);
  return out;
}

class OrbaxFixtureImport : public testing::TestWithParam<std::string> {};

// The arbiter of the mapping and orientation: the authors' per-token NLLs and loss.
TEST_P(OrbaxFixtureImport, ReproducesTheAuthorsNllAndLoss) {
  const json ref = reference(GetParam());
  OrbaxImportOptions options;
  options.config = ref["config"];
  const Model model = load_model(convert(fixture_checkpoint(GetParam()), options), torch::kFloat64);
  EXPECT_EQ(model.config.to_json(), ModelConfig::from_json(ref["config"]).to_json());
  const EvalResult result =
      evaluate(model.config, model.params, checked_tokens(model.config, ref["tokens"].get<std::vector<int64_t>>()));
  const std::vector<double> nll = ref["nll"].get<std::vector<double>>();
  ASSERT_EQ(result.nll.size(), nll.size());
  for (size_t t = 0; t < nll.size(); ++t) EXPECT_NEAR(result.nll[t], nll[t], 1e-4) << "target " << t;
  EXPECT_NEAR(result.loss, ref["loss"].get<double>(), 1e-5);
  EXPECT_GT(result.inner_steps, 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, OrbaxFixtureImport, testing::Values("orbax_e2e_a", "orbax_e2e_sharded"));

TEST(OrbaxImport, InfersShapesDefaultsTheRestAndSaysWhereEachValueComesFrom) {
  const OrbaxCheckpoint checkpoint = fixture_checkpoint("orbax_e2e_a");
  OrbaxImportOptions options;
  options.config = {{"rope_theta", 10000.0}, {"d_model", 64}};
  const OrbaxImportPlan plan = plan_orbax_import(checkpoint, options);
  const ModelConfig& c = plan.config;
  EXPECT_EQ(c.variant, Variant::kTttE2E);
  EXPECT_EQ(std::vector<int64_t>({c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.d_ff, c.suffix_len}),
            std::vector<int64_t>({256, 64, 4, 4, 96, 1}));
  EXPECT_EQ(std::vector<int64_t>({c.window, c.mini_batch, c.bos_id, c.eos_id}),
            std::vector<int64_t>({8192, 1024, 128000, 128001}));
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rms_eps, 1e-6);
  EXPECT_EQ(c.inner_lr, 1.0);
  EXPECT_EQ(c.inner_clip, 1.0);
  EXPECT_TRUE(c.tie_embeddings && c.qk_norm);

  const auto line = [&](const std::string& key) {
    for (const std::string& l : plan.config_lines) {
      if (l.find(" " + key + " ") != std::string::npos) return l;
    }
    return std::string("no line for " + key);
  };
  EXPECT_NE(line("vocab_size").find("from wte.weight [256, 64]"), std::string::npos) << line("vocab_size");
  EXPECT_NE(line("d_model").find("as --config says"), std::string::npos) << line("d_model");
  EXPECT_NE(line("n_heads").find("q_norm.weight [4, 16]"), std::string::npos) << line("n_heads");
  EXPECT_NE(line("suffix_len").find("feed_forward_prime.w1.weight [1, 64, 96]"), std::string::npos);
  EXPECT_NE(line("rope_theta").find("--config"), std::string::npos) << line("rope_theta");
  EXPECT_NE(line("window").find("default"), std::string::npos) << line("window");
  EXPECT_EQ(plan.config_lines.size(), 17u);
  EXPECT_EQ(plan.sources.size(), 20u);
}

TEST(OrbaxImport, ConfigAndVariantMustAgreeWithTheArrays) {
  const OrbaxCheckpoint checkpoint = fixture_checkpoint("orbax_e2e_a");
  OrbaxImportOptions options;
  options.config = {{"d_model", 32}};
  expect_error([&] { plan_orbax_import(checkpoint, options); },
               {"--config: 'd_model' is 32 but the checkpoint says 64", "wte.weight [256, 64]"});
  options.config = {{"n_heads", 8}};
  expect_error([&] { plan_orbax_import(checkpoint, options); }, {"'n_heads' is 8", "q_norm"});
  options.config = {{"window", 4}, {"mini_batch", 16}};
  expect_error([&] { plan_orbax_import(checkpoint, options); }, {"config: 'window' 4 is smaller than mini_batch 16"});
  options.config = {{"colour", 1}};
  expect_error([&] { plan_orbax_import(checkpoint, options); }, {"'colour' is not a known key"});
  options.config = json::object();
  options.variant = Variant::kSlidingWindow;
  expect_error([&] { plan_orbax_import(checkpoint, options); }, {"has prime storage", "\"swa\""});
}

// A tiny tree of the authors' layout with distinct values in every array: V 16, D 8, 2 blocks,
// head width 4, F 12, and a suffix of 1 block when `prime`.
struct TinyTree {
  test::OrbaxTestStore store;
  std::map<std::string, std::vector<float>> values;

  explicit TinyTree(bool prime) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> leaves = {
        {"wte.weight", {16, 8}},
        {"ln_f.weight", {8}},
        {"h.blocks.seq_norm.weight", {2, 8}},
        {"h.blocks.seq_post_norm.weight", {2, 8}},
        {"h.blocks.ffn_norm.weight", {2, 8}},
        {"h.blocks.ffn_post_norm.weight", {2, 8}},
        {"h.blocks.seq_modeling_block.q_norm.weight", {2, 4}},
        {"h.blocks.seq_modeling_block.k_norm.weight", {2, 4}},
        {"h.blocks.feed_forward.w1.weight", {2, 8, 12}},
        {"h.blocks.feed_forward.w2.weight", {2, 12, 8}},
        {"h.blocks.feed_forward.w3.weight", {2, 8, 12}},
    };
    for (const char* w : {"wq", "wk", "wv", "wo"}) {
      leaves.push_back({std::string("h.blocks.seq_modeling_block.") + w + ".weight", {2, 8, 8}});
    }
    if (prime) {
      leaves.push_back({"h.prime_storage.ffn_prime_norm.weight", {1, 8}});
      leaves.push_back({"h.prime_storage.ffn_prime_post_norm.weight", {1, 8}});
      leaves.push_back({"h.prime_storage.feed_forward_prime.w1.weight", {1, 8, 12}});
      leaves.push_back({"h.prime_storage.feed_forward_prime.w2.weight", {1, 12, 8}});
      leaves.push_back({"h.prime_storage.feed_forward_prime.w3.weight", {1, 8, 12}});
    }
    for (size_t i = 0; i < leaves.size(); ++i) add(leaves[i].first, leaves[i].second, float(i + 1));
  }

  void add(const std::string& leaf, const std::vector<int64_t>& shape, float tag) {
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    std::vector<float> v(n);
    for (int64_t e = 0; e < n; ++e) v[e] = tag + float(e) / 1024.0f;
    values[leaf] = v;
    std::vector<int64_t> chunks = shape;
    chunks[0] = 1;  // a chunk per stacked slice
    store.add_array("language_model.model." + leaf, test::OrbaxTestStore::float_array(shape, chunks, v));
  }

  std::string write() const {
    const std::string dir = temp_path("tree");
    store.write(dir);
    return dir;
  }
};

// Slice `index` of a stacked leaf's values.
std::vector<float> slice(const std::vector<float>& values, int64_t count, int64_t index) {
  const int64_t size = int64_t(values.size()) / count;
  return std::vector<float>(values.begin() + index * size, values.begin() + (index + 1) * size);
}

std::vector<float> as_floats(const torch::Tensor& t) {
  const torch::Tensor f = t.to(torch::kFloat32).contiguous();
  return std::vector<float>(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
}

TEST(OrbaxImport, MapsEveryLeafAndSliceToItsSpecName) {
  const TinyTree tree(true);
  const OrbaxCheckpoint checkpoint(tree.write());
  OrbaxImportOptions options;
  options.config = {{"window", 8}, {"mini_batch", 4}};
  const io::SafetensorsFile file = io::read_safetensors(convert(checkpoint, options));
  const auto& v = tree.values;
  const auto tensor = [&](const std::string& name) { return as_floats(file.tensors.at(name)); };
  EXPECT_EQ(tensor("embed.weight"), v.at("wte.weight"));
  EXPECT_EQ(tensor("final_norm"), v.at("ln_f.weight"));
  const std::vector<std::pair<std::string, std::string>> per_block = {
      {"attn_norm", "h.blocks.seq_norm.weight"},
      {"attn_post_norm", "h.blocks.seq_post_norm.weight"},
      {"mlp_norm", "h.blocks.ffn_norm.weight"},
      {"mlp_post_norm", "h.blocks.ffn_post_norm.weight"},
      {"attn.wq", "h.blocks.seq_modeling_block.wq.weight"},
      {"attn.wk", "h.blocks.seq_modeling_block.wk.weight"},
      {"attn.wv", "h.blocks.seq_modeling_block.wv.weight"},
      {"attn.wo", "h.blocks.seq_modeling_block.wo.weight"},
      {"attn.q_norm", "h.blocks.seq_modeling_block.q_norm.weight"},
      {"attn.k_norm", "h.blocks.seq_modeling_block.k_norm.weight"},
      {"mlp.w1", "h.blocks.feed_forward.w1.weight"},
      {"mlp.w2", "h.blocks.feed_forward.w2.weight"},
      {"mlp.w3", "h.blocks.feed_forward.w3.weight"}};
  for (const auto& [name, leaf] : per_block) {
    for (int64_t i = 0; i < 2; ++i) {
      EXPECT_EQ(tensor("blocks." + std::to_string(i) + "." + name), slice(v.at(leaf), 2, i)) << name << " " << i;
    }
  }
  // The suffix of 1 block is block 1.
  EXPECT_EQ(tensor("blocks.1.prime_norm"), v.at("h.prime_storage.ffn_prime_norm.weight"));
  EXPECT_EQ(tensor("blocks.1.prime_post_norm"), v.at("h.prime_storage.ffn_prime_post_norm.weight"));
  for (const char* w : {"w1", "w2", "w3"}) {
    EXPECT_EQ(tensor(std::string("blocks.1.prime.") + w),
              v.at(std::string("h.prime_storage.feed_forward_prime.") + w + ".weight"));
  }
  EXPECT_EQ(file.tensors.size(), 2u + 2 * 13 + 5);
  EXPECT_EQ(file.tensors.at("blocks.0.mlp.w2").sizes().vec(), (std::vector<int64_t>{12, 8}));
}

TEST(OrbaxImport, WithoutPrimeStorageTheVariantIsSwaOrFa) {
  const TinyTree tree(false);
  const OrbaxCheckpoint checkpoint(tree.write());
  OrbaxImportOptions options;
  options.config = {{"window", 8}, {"mini_batch", 4}};
  EXPECT_EQ(plan_orbax_import(checkpoint, options).config.variant, Variant::kSlidingWindow);
  options.variant = Variant::kFullAttention;
  const OrbaxImportPlan fa = plan_orbax_import(checkpoint, options);
  EXPECT_EQ(fa.config.variant, Variant::kFullAttention);
  EXPECT_EQ(fa.config.suffix_len, 0);
  const Model model = load_model(convert(checkpoint, options));
  EXPECT_EQ(model.config.to_json(), fa.config.to_json());
  options.variant = Variant::kTttE2E;
  expect_error([&] { plan_orbax_import(checkpoint, options); }, {"variant ttt-e2e needs prime storage"});
}

TEST(OrbaxImport, ShapesThatDoNotFitTheMappingAndUnknownLeavesAreErrors) {
  {
    TinyTree tree(false);
    tree.add("h.blocks.feed_forward.w2.weight", {2, 8, 12}, 50.0f);  // w1's shape, not [L, F, D]
    const OrbaxCheckpoint checkpoint(tree.write());
    expect_error(
        [&] { plan_orbax_import(checkpoint, {}); },
        {"leaf 'language_model.model.h.blocks.feed_forward.w2.weight' has shape [2, 8, 12], expected [2, 12, 8]"});
  }
  {
    TinyTree tree(false);
    tree.add("h.blocks.seq_modeling_block.wq.weight", {8, 8}, 50.0f);
    const OrbaxCheckpoint checkpoint(tree.write());
    expect_error([&] { plan_orbax_import(checkpoint, {}); }, {"wq.weight' has shape [8, 8], expected [n_layers"});
  }
  {
    TinyTree tree(false);
    tree.add("h.blocks.feed_forward.bias", {2, 12}, 50.0f);
    const OrbaxCheckpoint checkpoint(tree.write());
    expect_error([&] { plan_orbax_import(checkpoint, {}); },
                 {"leaf 'language_model.model.h.blocks.feed_forward.bias' is not part of the authors' model tree"});
  }
  {
    test::OrbaxTestStore store;  // no embedding
    store.add_array("language_model.model.ln_f.weight",
                    test::OrbaxTestStore::float_array({8}, {8}, std::vector<float>(8)));
    const std::string dir = temp_path("tree");
    store.write(dir);
    const OrbaxCheckpoint checkpoint(dir);
    expect_error([&] { plan_orbax_import(checkpoint, {}); }, {"no leaf 'language_model.model.wte.weight'"});
  }
}

TEST(OrbaxImport, Bf16OutputRoundsLikeTorch) {
  const OrbaxCheckpoint checkpoint = fixture_checkpoint("orbax_e2e_sharded");
  OrbaxImportOptions options;
  options.config = reference("orbax_e2e_sharded")["config"];
  const io::SafetensorsFile f32 = io::read_safetensors(convert(checkpoint, options));
  options.dtype = "bf16";
  const io::SafetensorsFile bf16 = io::read_safetensors(convert(checkpoint, options));
  ASSERT_EQ(f32.tensors.size(), bf16.tensors.size());
  for (const auto& [name, tensor] : f32.tensors) {
    const torch::Tensor& converted = bf16.tensors.at(name);
    EXPECT_EQ(converted.scalar_type(), torch::kBFloat16) << name;
    EXPECT_TRUE(torch::equal(converted, tensor.to(torch::kBFloat16))) << name;
  }
  EXPECT_EQ(f32.metadata.at("config"), bf16.metadata.at("config"));
}

}  // namespace
}  // namespace ttt
