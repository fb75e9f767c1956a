// Memory-mapped token files: contents, the checks on open, and the deterministic sampler.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "data/token_dataset.h"
#include "io/paths.h"
#include "io/token_file.h"
#include "test_util.h"

namespace ttt {
namespace {

using test::expect_error;
using test::temp_path;

std::string token_file(const std::vector<int64_t>& tokens) {
  const std::string path = temp_path("data.u32");
  io::write_token_file(path, tokens);
  return path;
}

TEST(TokenDataset, SlicesTheFile) {
  std::vector<int64_t> tokens;
  for (int64_t i = 0; i < 100; ++i) tokens.push_back((i * 37) % 50);
  const TokenDataset data(token_file(tokens), 50, 10);
  EXPECT_EQ(data.size(), 100);
  const torch::Tensor slice = data.slice(90, 10);
  ASSERT_EQ(slice.scalar_type(), torch::kInt64);
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(slice[i].item<int64_t>(), tokens[90 + i]);
}

TEST(TokenDataset, BadFilesGetClearErrors) {
  expect_error([] { TokenDataset(temp_path("missing.u32"), 50, 2); }, {"missing.u32", "cannot open"});
  const std::string empty = temp_path("empty.u32");
  std::ofstream(empty).close();
  expect_error([&] { TokenDataset(empty, 50, 2); }, {"empty.u32", "empty"});
  const std::string odd = temp_path("odd.u32");
  std::ofstream(odd) << "abcdef";
  expect_error([&] { TokenDataset(odd, 50, 2); }, {"odd.u32", "multiple of 4"});
  expect_error([] { TokenDataset(token_file({1, 2, 3}), 50, 5); }, {"holds 3 tokens", "fewer than the 5"});
  expect_error([] { TokenDataset(token_file({1, 2, 60, 3}), 50, 2); },
               {"token 60 at index 2", "vocabulary (vocab_size 50)"});
}

TEST(TokenDataset, PrepareManifestMustFitTheModel) {
  test::ScratchDir dir;
  io::write_token_file(dir.path("train.u32"), {0, 5, 6});
  io::write_token_file(dir.path("other.u32"), {0, 5, 6});
  std::ofstream(dir.path("prepare.json")) << R"({"tokenizer": "tok.model", "vocab_size": 100, "bos_id": 1,
             "splits": [{"name": "train", "file": "train.u32"}, {"name": "test", "file": "", "documents": 0}]})";
  check_tokenizer_fits_model(dir.path("train.u32"), 100, 1);  // a split without documents (--test 0) has no file
  check_tokenizer_fits_model(dir.path("train.u32"), 128, 1);
  expect_error([&] { check_tokenizer_fits_model(dir.path("train.u32"), 50, 1); },
               {"train.u32", "tok.model of 100 tokens", "vocab_size 50"});
  expect_error([&] { check_tokenizer_fits_model(dir.path("train.u32"), 100, 0); },
               {"bos id is 1", "bos_id is 0"});
  check_tokenizer_fits_model(dir.path("other.u32"), 50, 0);  // not listed: contents decide
  std::ofstream(dir.path("prepare.json")) << R"({"splits": [{"file": "train.u32"}]})";
  expect_error([&] { check_tokenizer_fits_model(dir.path("train.u32"), 100, 1); },
               {"prepare.json", "not a valid prepare manifest"});
}

TEST(TokenDataset, ADamagedPrepareManifestIsAOneLineError) {
  test::ScratchDir dir;
  io::write_token_file(dir.path("train.u32"), {0, 5, 6});
  const std::string manifest = R"({"tokenizer": "tok.model", "vocab_size": 100, "bos_id": 1,
                                   "splits": [{"name": "train", "file": "train.u32"}]})";
  const std::vector<std::pair<std::string, std::string>> damaged = {
      {manifest.substr(0, manifest.size() / 2), "not valid JSON"},
      {manifest.substr(0, 10) + std::string(1, '\0') + manifest.substr(11), "NUL byte"},
      {std::string(100, '[') + std::string(100, ']'), "nested deeper than"},
      {R"({"tokenizer": "t", "vocab_size": 1e999, "bos_id": 1, "splits": []})", "not valid JSON"},
      {R"({"tokenizer": "t", "vocab_size": 1e300, "bos_id": 1, "splits": []})",
       "\"vocab_size\" must be an integer >= 1, got 1e+300"},
      {R"({"tokenizer": "t", "vocab_size": 100, "bos_id": -1, "splits": []})", "\"bos_id\" must be an integer >= 0"},
      {R"({"tokenizer": "t", "vocab_size": 100, "bos_id": 1, "splits": [{"file": "", "documents": 1e300}]})",
       "a split's \"documents\" must be an integer >= 0, got 1e+300"},
      {"[]", "not a valid prepare manifest"},
  };
  for (const auto& [text, fragment] : damaged) {
    test::write_bytes(dir.path("prepare.json"), text);
    expect_error([&] { check_tokenizer_fits_model(dir.path("train.u32"), 100, 1); },
                 {dir.path("prepare.json") + ": not a valid prepare manifest", fragment});
  }
  ::unlink(dir.path("prepare.json").c_str());
  io::make_directories(dir.path("prepare.json"));
  expect_error([&] { check_tokenizer_fits_model(dir.path("train.u32"), 100, 1); },
               {dir.path("prepare.json"), "not a regular file"});
}

TEST(TokenDataset, OffsetsAreDeterministicInRangeAndSpread) {
  std::set<int64_t> seen;
  for (int64_t step = 0; step < 20; ++step) {
    for (int64_t j = 0; j < 8; ++j) {
      const int64_t offset = sequence_offset(7, step, j, 999);
      EXPECT_EQ(offset, sequence_offset(7, step, j, 999));
      EXPECT_GE(offset, 0);
      EXPECT_LE(offset, 999);
      seen.insert(offset);
    }
  }
  EXPECT_GT(seen.size(), 140u);  // 160 draws from 1000 places: few collisions
  EXPECT_NE(sequence_offset(7, 0, 0, 999), sequence_offset(8, 0, 0, 999));
  EXPECT_EQ(sequence_offset(7, 3, 1, 0), 0);
}

}  // namespace
}  // namespace ttt
