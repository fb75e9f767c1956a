// SentencePiece BPE trained here: deterministic training, exact round trips (invalid UTF-8 and
// U+2581 included), agreement with SentencePiece's own encoder, one-file save and load.
#include "text/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "test_files.h"
#include "text/load_tokenizer.h"
#include "text/text_test_util.h"

namespace ttt::text {
namespace {

// Training sentences: the GPL's lines, then the sample texts.
std::vector<std::string> training_sentences() {
  std::ifstream gpl("/usr/share/common-licenses/GPL-3");
  std::vector<std::string> sentences;
  std::string line;
  while (std::getline(gpl, line)) sentences.push_back(line + "\n");
  for (const std::string& text : test::sample_texts()) sentences.push_back(text.substr(0, 1000));
  return sentences;
}

std::string train(int vocab_size) {
  const std::vector<std::string> sentences = training_sentences();
  size_t next = 0;
  SentencePieceTrainOptions options;
  options.vocab_size = vocab_size;
  return train_sentencepiece(
      [&](std::string& s) {
        if (next == sentences.size()) return false;
        s = sentences[next++];
        return true;
      },
      options);
}

const SentencePieceTokenizer& trained() {
  static const auto tokenizer = SentencePieceTokenizer::from_serialized(train(600), "trained");
  return *tokenizer;
}

TEST(SentencePiece, TrainsTheAskedVocabularyDeterministically) {
  const SentencePieceTokenizer& t = trained();
  EXPECT_EQ(t.vocab_size(), 600);
  EXPECT_EQ(t.name(), "sentencepiece-bpe-600");
  EXPECT_EQ(t.bos_id(), 1u);
  EXPECT_EQ(t.eos_id(), 2u);
  EXPECT_TRUE(train(600) == t.serialized());  // byte-identical model from the same sentences
  // It learned something: common English takes far fewer tokens than bytes.
  const std::string text = "This program is free software: you can redistribute it";
  EXPECT_LT(t.encode(text).size() * 2, text.size());
}

TEST(SentencePiece, RoundTripsEveryByteString) {
  const SentencePieceTokenizer& t = trained();
  for (const auto& texts : {test::sample_texts(), test::random_texts(100, 9), test::random_byte_strings(100, 4),
                            std::vector<std::string>{"\xE2\x96\x81 lower one eighth block \xE2\x96\x81\xE2\x96\x81x",
                                                     " leading", "trailing ", "  two  spaces  ", "\t\n\r\v\f",
                                                     "<s>literal</s><unk>"}}) {
    for (const std::string& text : texts) {
      const std::vector<TokenId> ids = t.encode(text);
      ASSERT_EQ(t.decode(ids), text);
      for (TokenId id : ids) ASSERT_LT(int64_t(id), t.vocab_size());
    }
  }
}

TEST(SentencePiece, AgreesWithSentencePiecesOwnEncoder) {
  const SentencePieceTokenizer& t = trained();
  sentencepiece::SentencePieceProcessor sp;
  ASSERT_TRUE(sp.LoadFromSerializedProto(t.serialized()).ok());
  for (const auto& texts : {test::sample_texts(), test::random_texts(100, 21)}) {
    for (const std::string& text : texts) {
      std::vector<int> want;
      ASSERT_TRUE(sp.Encode(text, &want).ok());
      const std::vector<TokenId> ids = t.encode(text);
      EXPECT_EQ(std::vector<int>(ids.begin(), ids.end()), want) << text;
    }
  }
}

TEST(SentencePiece, InvalidBytesAndTheSpaceMarkAreBytePieces) {
  const SentencePieceTokenizer& t = trained();
  sentencepiece::SentencePieceProcessor sp;
  ASSERT_TRUE(sp.LoadFromSerializedProto(t.serialized()).ok());
  EXPECT_EQ(t.encode("\xff"), (std::vector<TokenId>{TokenId(sp.PieceToId("<0xFF>"))}));
  EXPECT_EQ(t.encode("\xE2\x96\x81"), (std::vector<TokenId>{TokenId(sp.PieceToId("<0xE2>")),
                                                              TokenId(sp.PieceToId("<0x96>")),
                                                              TokenId(sp.PieceToId("<0x81>"))}));
}

TEST(SentencePiece, SavesToOneFileThatLoadsBack) {
  const SentencePieceTokenizer& t = trained();
  const std::string path = test::temp_path("tokenizer.model");
  t.save(path);
  const auto loaded = load_tokenizer(path);
  EXPECT_EQ(loaded->vocab_size(), t.vocab_size());
  for (const std::string& text : test::random_texts(50, 5)) EXPECT_EQ(loaded->encode(text), t.encode(text));
  EXPECT_EQ(loaded->encode_with_special("a</s>b"), t.encode_with_special("a</s>b"));
  EXPECT_EQ(t.encode_with_special("</s>"), (std::vector<TokenId>{2}));
}

TEST(SentencePiece, BadModelsAndOptionsAreClearErrors) {
  const std::string junk = test::temp_path("junk.model");
  std::ofstream(junk) << "this is not a model";
  test::expect_error([&] { SentencePieceTokenizer::load(junk); }, {"junk.model", "not a SentencePiece model"});
  test::expect_error([] { SentencePieceTokenizer::load("/nonexistent.model"); }, {"no such file"});
  SentencePieceTrainOptions options;
  options.vocab_size = 100;
  test::expect_error([&] { train_sentencepiece([](std::string&) { return false; }, options); }, {"too small"});
}

}  // namespace
}  // namespace ttt::text
