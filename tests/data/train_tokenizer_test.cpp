#include "data/train_tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>

#include "test_files.h"
#include "text/text_test_util.h"

namespace ttt::data {
namespace {

TEST(TrainingText, LinesGroupedUpToTheLimitInvalidOnesSkipped) {
  std::vector<std::string> out;
  int64_t invalid = 0;
  split_training_text("one\ntwo\nthree\nbad\xff\nfour", 9, out, invalid);
  EXPECT_EQ(out, (std::vector<std::string>{"one\ntwo\n", "three\n", "four"}));
  EXPECT_EQ(invalid, 1);
  out.clear();
  split_training_text(std::string(25, 'x'), 10, out, invalid);  // a long line is cut
  EXPECT_EQ(out, (std::vector<std::string>{std::string(10, 'x'), std::string(10, 'x'), std::string(5, 'x')}));
  out.clear();
  split_training_text("\xC3\xA9\xC3\xA9\xC3\xA9", 3, out, invalid);  // never inside a character
  EXPECT_EQ(out, (std::vector<std::string>{"\xC3\xA9", "\xC3\xA9", "\xC3\xA9"}));
}

TEST(TrainTokenizer, OnDocumentsSampledByName) {
  test::ScratchDir dir;
  std::ifstream gpl("/usr/share/common-licenses/GPL-3");
  std::string text((std::istreambuf_iterator<char>(gpl)), std::istreambuf_iterator<char>());
  for (int i = 0; i < 10; ++i) std::ofstream(dir.path("part" + std::to_string(i))) << text.substr(i * 3000, 3000);
  const std::vector<Document> docs = list_documents({dir.path("")});
  TrainTokenizerOptions options;
  options.sentencepiece.vocab_size = 400;
  TrainTokenizerSummary all, half;
  const std::string model = train_tokenizer(docs, options, all);
  EXPECT_EQ(all.documents_used, 10);
  EXPECT_EQ(all.bytes, 30000u);
  options.max_bytes = 15000;
  const std::string sampled = train_tokenizer(docs, options, half);
  EXPECT_LT(half.documents_used, 10);
  EXPECT_GT(half.documents_used, 0);
  EXPECT_NE(model, sampled);
  TrainTokenizerSummary again;
  EXPECT_EQ(train_tokenizer(docs, options, again), sampled);
  EXPECT_EQ(again.documents_used, half.documents_used);
  const auto tokenizer = text::SentencePieceTokenizer::from_serialized(model, "m");
  EXPECT_EQ(tokenizer->vocab_size(), 400);
}

}  // namespace
}  // namespace ttt::data
