#include "text/load_tokenizer.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include "test_files.h"

namespace ttt::text {
namespace {

TEST(LoadTokenizer, ByNameAndByFile) {
  EXPECT_EQ(load_tokenizer("bytes")->name(), "bytes");
  EXPECT_EQ(load_tokenizer("cl100k_base")->name(), "cl100k_base");
  EXPECT_EQ(load_tokenizer(vocab_dir() + "/r50k_base.tiktoken")->vocab_size(), 50257);
  EXPECT_EQ(load_tokenizer(vocab_dir() + "/llama3/tokenizer.json")->vocab_size(), 128256);
}

TEST(LoadTokenizer, UnknownNamesAndMissingVocabulariesAreClearErrors) {
  test::expect_error([] { load_tokenizer("gpt5_base"); }, {"unknown tokenizer 'gpt5_base'", "cl100k_base"});
  test::expect_error([] { load_tokenizer(""); }, {"empty tokenizer name"});
  const std::string saved = vocab_dir();
  setenv("TTT_VOCAB_DIR", "/nonexistent/vocab", 1);
  test::expect_error([] { load_tokenizer("llama3"); }, {"/nonexistent/vocab/llama3/tokenizer.json", "fetch_vocab.sh"});
  setenv("TTT_VOCAB_DIR", saved.c_str(), 1);
  EXPECT_EQ(load_tokenizer("r50k_base")->vocab_size(), 50257);
}

}  // namespace
}  // namespace ttt::text
