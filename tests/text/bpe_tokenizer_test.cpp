// Byte-level BPE: the merge order on small hand-made vocabularies and against a plain
// re-implementation of tiktoken's loop, the real vocabularies' round trips, files' errors.
#include "text/bpe_tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <random>
#include <tuple>

#include "test_files.h"
#include "text/load_tokenizer.h"
#include "text/text_test_util.h"

namespace ttt::text {
namespace {

std::string base64(const std::string& bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int k = 3; k >= 0; --k) out += alphabet[(v >> (6 * k)) & 63];
  }
  if (bytes.size() - i == 1) {
    const uint32_t v = uint8_t(bytes[i]) << 16;
    out += std::string{alphabet[(v >> 18) & 63], alphabet[(v >> 12) & 63], '=', '='};
  } else if (bytes.size() - i == 2) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
    out += std::string{alphabet[(v >> 18) & 63], alphabet[(v >> 12) & 63], alphabet[(v >> 6) & 63], '='};
  }
  return out;
}

// A tiktoken file: the 256 bytes (ranks 0..255), then `extra` in order (ranks 256, ...).
std::string write_tiktoken(const std::vector<std::string>& extra) {
  const std::string path = test::temp_path("r50k_base.tiktoken");
  std::ofstream out(path);
  int rank = 0;
  for (int b = 0; b < 256; ++b) out << base64(std::string(1, char(b))) << " " << rank++ << "\n";
  for (const std::string& token : extra) out << base64(token) << " " << rank++ << "\n";
  return path;
}

// tiktoken's _byte_pair_merge, written the plain way: merge the adjacent pair whose
// concatenation has the lowest rank, leftmost among equals, until none is a token.
std::vector<TokenId> reference_merge(const std::string& piece, const std::map<std::string, TokenId>& ranks) {
  if (const auto it = ranks.find(piece); it != ranks.end()) return {it->second};
  std::vector<std::string> parts;
  for (char c : piece) parts.emplace_back(1, c);
  while (parts.size() > 1) {
    size_t best = 0;
    TokenId best_rank = UINT32_MAX;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      const auto it = ranks.find(parts[i] + parts[i + 1]);
      if (it != ranks.end() && it->second < best_rank) best = i, best_rank = it->second;
    }
    if (best_rank == UINT32_MAX) break;
    parts[best] += parts[best + 1];
    parts.erase(parts.begin() + long(best) + 1);
  }
  std::vector<TokenId> ids;
  for (const std::string& p : parts) ids.push_back(ranks.at(p));
  return ids;
}

TEST(BpeTokenizer, MergesLowestRankFirstAndLeftmostAmongEquals) {
  // ab=256, bc=257, abc=258, aa=259, aaa=260
  const auto t = BpeTokenizer::from_tiktoken(write_tiktoken({"ab", "bc", "abc", "aa", "aaa"}), "r50k_base");
  EXPECT_EQ(t->encode("abc"), (std::vector<TokenId>{258}));            // a whole token
  EXPECT_EQ(t->encode("abcd"), (std::vector<TokenId>{258, 'd'}));      // ab first (256 < 257), then abc
  EXPECT_EQ(t->encode("bcd"), (std::vector<TokenId>{257, 'd'}));
  EXPECT_EQ(t->encode("aaaa"), (std::vector<TokenId>{259, 259}));      // leftmost aa, then aa again
  EXPECT_EQ(t->encode("aaaaa"), (std::vector<TokenId>{259, 260}));     // aa|a|a|a -> aa|aa|a -> aa|aaa
  EXPECT_EQ(t->vocab_size(), 50257);  // r50k's <|endoftext|> is 50256
  EXPECT_EQ(t->encode_with_special("ab<|endoftext|>"), (std::vector<TokenId>{256, 50256}));
}

TEST(BpeTokenizer, MergesEqualAPlainTiktokenLoopOnRandomVocabularies) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 5; ++trial) {
    // Tokens grown from letters by random concatenation, ranked in the order they appear.
    std::vector<std::string> extra;
    std::vector<std::string> pool = {"a", "b", "c", "d"};
    std::map<std::string, TokenId> ranks;
    for (int b = 0; b < 256; ++b) ranks[std::string(1, char(b))] = TokenId(b);
    while (extra.size() < 150) {
      const std::string token = pool[rng() % pool.size()] + pool[rng() % pool.size()];
      if (token.size() > 10 || ranks.count(token)) continue;
      ranks[token] = TokenId(256 + extra.size());
      extra.push_back(token);
      pool.push_back(token);
    }
    const auto t = BpeTokenizer::from_tiktoken(write_tiktoken(extra), "r50k_base");
    for (int i = 0; i < 200; ++i) {
      // Short pieces take one code path, pieces over 64 bytes another: cover both.
      std::string piece(1 + rng() % (i % 2 ? 40 : 400), 'a');
      for (char& c : piece) c = char('a' + rng() % 4);
      ASSERT_EQ(t->encode(piece), reference_merge(piece, ranks)) << "trial " << trial << ": " << piece;
    }
  }
}

TEST(BpeTokenizer, RegexSplitsLikeTiktokenAndGivesInvalidBytesTheirOwnPieces) {
  const auto cl100k = load_tokenizer("cl100k_base");
  const auto& t = dynamic_cast<const BpeTokenizer&>(*cl100k);
  EXPECT_EQ(t.split("Hello  world 12345"), (std::vector<std::string>{"Hello", " ", " world", " ", "123", "45"}));
  EXPECT_EQ(t.split("I'm DON'T"), (std::vector<std::string>{"I", "'m", " DON", "'T"}));
  EXPECT_EQ(t.split("x\n\n  y"), (std::vector<std::string>{"x", "\n\n", " ", " y"}));
  EXPECT_EQ(t.split("ab\xff" "cd"), (std::vector<std::string>{"ab", "\xff", "cd"}));
  EXPECT_EQ(t.split("trailing  "), (std::vector<std::string>{"trailing", "  "}));
}

TEST(BpeTokenizer, RealVocabulariesHaveTheirSizesAndSpecialIds) {
  struct Expect {
    const char* name;
    int64_t vocab_size;
    TokenId bos, eos;
  };
  for (const Expect& e : {Expect{"r50k_base", 50257, 50256, 50256}, Expect{"p50k_base", 50281, 50256, 50256},
                          Expect{"cl100k_base", 100277, 100257, 100257}, Expect{"o200k_base", 200019, 199999, 199999},
                          Expect{"llama3", 128256, 128000, 128001}}) {
    const auto t = load_tokenizer(e.name);
    EXPECT_EQ(t->name(), e.name);
    EXPECT_EQ(t->vocab_size(), e.vocab_size) << e.name;
    EXPECT_EQ(t->bos_id(), e.bos) << e.name;
    EXPECT_EQ(t->eos_id(), e.eos) << e.name;
  }
  EXPECT_EQ(load_tokenizer("llama3")->special_tokens().size(), 256u);
}

TEST(BpeTokenizer, RoundTripsTextAndInvalidUtf8) {
  for (const char* name : {"r50k_base", "cl100k_base", "llama3"}) {
    const auto t = load_tokenizer(name);
    for (const auto& texts : {test::sample_texts(), test::random_texts(100, 3), test::random_byte_strings(100, 5)}) {
      for (const std::string& text : texts) {
        const std::vector<TokenId> ids = t->encode(text);
        ASSERT_EQ(t->decode(ids), text) << name;
        for (TokenId id : ids) ASSERT_LT(int64_t(id), t->vocab_size());
      }
    }
    for (const std::string& text : test::special_texts()) {
      EXPECT_EQ(t->decode(t->encode_with_special(text)), text) << name;
      EXPECT_EQ(t->decode(t->encode(text)), text) << name;
    }
  }
}

TEST(BpeTokenizer, InvalidBytesBecomeByteTokens) {
  const auto t = load_tokenizer("cl100k_base");
  // A lone 0xFF is the token of that byte, between the text's own tokens.
  const std::vector<TokenId> ids = t->encode("ab\xff" "cd");
  const std::vector<TokenId> ab = t->encode("ab"), cd = t->encode("cd"), ff = t->encode("\xff");
  ASSERT_EQ(ff.size(), 1u);
  std::vector<TokenId> expected = ab;
  expected.insert(expected.end(), ff.begin(), ff.end());
  expected.insert(expected.end(), cd.begin(), cd.end());
  EXPECT_EQ(ids, expected);
}

TEST(BpeTokenizer, BadFilesAreClearErrors) {
  test::expect_error([] { BpeTokenizer::from_tiktoken("/nonexistent/x.tiktoken", "cl100k_base"); },
                     {"/nonexistent/x.tiktoken", "no such file"});
  const std::string path = write_tiktoken({});
  test::expect_error([&] { BpeTokenizer::from_tiktoken(path, "mystery_base"); }, {"unknown encoding 'mystery_base'"});
  const std::string bad = test::temp_path("bad.tiktoken");
  std::ofstream(bad) << "IQ== 0\n!!notbase64 1\n";
  test::expect_error([&] { BpeTokenizer::from_tiktoken(bad, "r50k_base"); }, {"bad.tiktoken", "line 2", "base64"});
  const std::string dup = test::temp_path("dup.tiktoken");
  std::ofstream(dup) << "IQ== 0\nIQ== 1\n";
  test::expect_error([&] { BpeTokenizer::from_tiktoken(dup, "r50k_base"); }, {"line 2", "twice"});
  const std::string few = test::temp_path("few.tiktoken");
  std::ofstream(few) << "IQ== 0\n";
  test::expect_error([&] { BpeTokenizer::from_tiktoken(few, "r50k_base"); }, {"has no token", "byte-level"});
  const std::string json = test::temp_path("tokenizer.json");
  std::ofstream(json) << R"({"model": {"type": "Unigram"}, "pre_tokenizer": null})";
  test::expect_error([&] { BpeTokenizer::from_tokenizer_json(json, "x"); }, {"tokenizer.json", "BPE"});
  std::ofstream(json) << "{not json";
  test::expect_error([&] { BpeTokenizer::from_tokenizer_json(json, "x"); }, {"tokenizer.json", "not valid JSON"});
  // Ids are dense: below the vocabulary's size, added tokens below the total.
  const auto with_ids = [&](const std::string& vocab_id, const std::string& added_id) {
    std::ofstream(json) << R"({"model": {"type": "BPE", "vocab": {"a": )" << vocab_id
                        << R"(, "b": 1}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"},
                              "added_tokens": [{"id": )"
                        << added_id << R"(, "content": "<s>"}]})";
  };
  for (const auto& [vocab_id, added_id, message] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"2", "2", "the id of vocabulary entry 'a' must be an integer from 0 to 1, got 2"},
           {"0.5", "2", "the id of vocabulary entry 'a' must be an integer from 0 to 1, got 0.5"},
           {"-1", "2", "the id of vocabulary entry 'a' must be an integer from 0 to 1, got -1"},
           {"0", "3", "an added token's id must be an integer from 0 to 2, got 3"},
           {"0", "1e300", "an added token's id must be an integer from 0 to 2, got 1e+300"}}) {
    with_ids(vocab_id, added_id);
    test::expect_error([&] { BpeTokenizer::from_tokenizer_json(json, "x"); }, {"tokenizer.json': " + message});
  }
}

}  // namespace
}  // namespace ttt::text
