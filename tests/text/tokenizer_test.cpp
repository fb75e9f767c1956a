// The parts every tokenizer shares: UTF-8 validation, special-token splitting, decoding.
#include "text/tokenizer.h"

#include <gtest/gtest.h>

#include "test_files.h"
#include "text/byte_tokenizer.h"

namespace ttt::text {
namespace {

TEST(Utf8, SequenceLengths) {
  EXPECT_EQ(utf8_sequence_length("a", 0), 1);
  EXPECT_EQ(utf8_sequence_length("\xC3\xA9", 0), 2);              // é
  EXPECT_EQ(utf8_sequence_length("\xE6\x97\xA5", 0), 3);          // 日
  EXPECT_EQ(utf8_sequence_length("\xF0\x9F\x98\x80", 0), 4);      // 😀
  EXPECT_EQ(utf8_sequence_length("\xF4\x8F\xBF\xBF", 0), 4);      // U+10FFFF
  EXPECT_EQ(utf8_sequence_length("\x80", 0), 0);                  // lone continuation byte
  EXPECT_EQ(utf8_sequence_length("\xC3", 0), 0);                  // truncated
  EXPECT_EQ(utf8_sequence_length("\xC3(", 0), 0);                 // bad continuation
  EXPECT_EQ(utf8_sequence_length("\xC0\xAF", 0), 0);              // overlong '/'
  EXPECT_EQ(utf8_sequence_length("\xE0\x80\xAF", 0), 0);          // overlong '/'
  EXPECT_EQ(utf8_sequence_length("\xED\xA0\x80", 0), 0);          // surrogate U+D800
  EXPECT_EQ(utf8_sequence_length("\xF4\x90\x80\x80", 0), 0);      // above U+10FFFF
  EXPECT_EQ(utf8_sequence_length("\xFF", 0), 0);
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("h\xC3\xA9llo \xF0\x9F\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("h\xC3llo"));
}

TEST(Tokenizer, SpecialTokensSplitLeftmostAndLongest) {
  // The byte tokenizer's specials are <|bos|> (256) and <|eos|> (257).
  const ByteTokenizer t;
  EXPECT_EQ(t.encode_with_special("a<|bos|>b"), (std::vector<TokenId>{'a', 256, 'b'}));
  EXPECT_EQ(t.encode_with_special("<|eos|><|bos|>"), (std::vector<TokenId>{257, 256}));
  // Ordinary encoding leaves the text alone.
  EXPECT_EQ(t.encode("<|bos|>").size(), 7u);
  // An unfinished special token is text.
  EXPECT_EQ(t.encode_with_special("<|bos"), t.encode("<|bos"));
  EXPECT_TRUE(t.encode_with_special("").empty());
}

TEST(Tokenizer, DecodeShowsOrSkipsSpecialsAndRejectsUnknownIds) {
  const ByteTokenizer t;
  const std::vector<TokenId> ids = {256, 'h', 'i', 257};
  EXPECT_EQ(t.decode(ids), "<|bos|>hi<|eos|>");
  EXPECT_EQ(t.decode(ids, /*skip_special=*/true), "hi");
  const std::vector<TokenId> bad = {'a', 258};
  test::expect_error([&] { t.decode(bad); }, {"bytes", "token 258", "position 1", "not in the vocabulary"});
}

}  // namespace
}  // namespace ttt::text
