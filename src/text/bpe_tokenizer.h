// Byte-level BPE as tiktoken and Hugging Face `tokenizers` run it: text is split into pieces
// by the encoding's pre-tokenisation regex (PCRE2, Unicode properties), each piece's bytes
// are merged by rank, and special tokens are whole strings outside the merges.
//
// Reads OpenAI's `.tiktoken` files (base64 token, rank per line: r50k_base, p50k_base,
// cl100k_base, o200k_base, with their regexes and special tokens built in by name) and
// Hugging Face `tokenizer.json` files of byte-level BPE models (Llama 3: the regex, merges
// and added tokens come from the file).
#pragma once
#include <memory>
#include <string>
#include <unordered_map>

#include "text/tokenizer.h"

namespace ttt::text {

class BpeTokenizer final : public Tokenizer {
 public:
  // `encoding` names the tiktoken encoding (r50k_base, p50k_base, cl100k_base, o200k_base):
  // it decides the regex and the special tokens. Errors name the file and line.
  static std::unique_ptr<BpeTokenizer> from_tiktoken(const std::string& path, const std::string& encoding);
  // A byte-level BPE `tokenizer.json`; `name` is what name() reports.
  static std::unique_ptr<BpeTokenizer> from_tokenizer_json(const std::string& path, const std::string& name);
  ~BpeTokenizer() override;

  std::string name() const override { return name_; }
  int64_t vocab_size() const override { return vocab_size_; }
  TokenId bos_id() const override { return bos_id_; }
  TokenId eos_id() const override { return eos_id_; }
  const std::vector<SpecialToken>& special_tokens() const override { return specials_; }
  std::vector<TokenId> encode(std::string_view text) const override;
  bool token_bytes(TokenId id, std::string& out) const override;

  // The pre-tokenisation regex (PCRE2 syntax).
  const std::string& pattern() const { return pattern_; }
  // The pieces the regex cuts `text` into (bytes that are not valid UTF-8 form pieces of
  // their own): what the merges then work on. For tests and inspection.
  std::vector<std::string> split(std::string_view text) const;

 private:
  struct Merge {
    uint32_t rank;
    TokenId merged;
  };
  class Regex;
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };

  BpeTokenizer() = default;
  // Shared by both loaders once tokens_ holds the ordinary tokens.
  void finish(const std::string& pattern, std::vector<SpecialToken> specials, const std::string& bos,
              const std::string& eos, const std::string& source);
  void add_merge(TokenId left, TokenId right, uint32_t rank, TokenId merged);
  const Merge* find_merge(TokenId left, TokenId right) const;
  template <typename Fn>
  void for_each_piece(std::string_view text, Fn&& fn) const;
  void encode_piece(std::string_view piece, std::vector<TokenId>& out) const;
  void merge_long_piece(std::string_view piece, std::vector<TokenId>& out) const;

  std::string name_;
  std::string pattern_;
  std::vector<std::string> tokens_;    // bytes of each ordinary token by id ("" where none)
  std::vector<char> is_token_;         // 1 where tokens_[id] is an ordinary token
  std::unordered_map<std::string, TokenId, StringHash, std::equal_to<>> ids_;
  std::unordered_map<uint64_t, Merge> merges_;
  TokenId byte_ids_[256] = {};
  bool whole_piece_first_ = true;      // a piece that is a token is taken whole (tiktoken, ignore_merges)
  std::vector<SpecialToken> specials_;
  TokenId bos_id_ = 0, eos_id_ = 0;
  int64_t vocab_size_ = 0;
  std::unique_ptr<Regex> regex_;
};

}  // namespace ttt::text
