#include "text/byte_tokenizer.h"

#include <gtest/gtest.h>

#include "text/text_test_util.h"

namespace ttt::text {
namespace {

TEST(ByteTokenizer, IdsAreTheBytes) {
  const ByteTokenizer t;
  EXPECT_EQ(t.name(), "bytes");
  EXPECT_EQ(t.vocab_size(), 258);
  EXPECT_EQ(t.bos_id(), 256u);
  EXPECT_EQ(t.eos_id(), 257u);
  EXPECT_EQ(t.encode("A\xC3\xA9\xFF"), (std::vector<TokenId>{65, 0xC3, 0xA9, 0xFF}));
  EXPECT_EQ(t.encode(std::string("\0", 1)), (std::vector<TokenId>{0}));
}

TEST(ByteTokenizer, RoundTripsAnyBytes) {
  const ByteTokenizer t;
  for (const auto& texts : {test::sample_texts(), test::random_byte_strings(50, 7)}) {
    for (const std::string& text : texts) EXPECT_EQ(t.decode(t.encode(text)), text);
  }
}

}  // namespace
}  // namespace ttt::text
