// Tokenizers: text (any bytes) to token ids and back, behind one interface.
// This library has no libtorch dependency (see docs/ARCHITECTURE.md, "Text and data").
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ttt::text {

using TokenId = uint32_t;

// A special token: a string that encode_with_special() turns into one id, never split.
struct SpecialToken {
  std::string text;
  TokenId id;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // What it is, e.g. "bytes", "cl100k_base", "llama3", "sentencepiece-bpe-4096".
  virtual std::string name() const = 0;
  // Every id this tokenizer produces or accepts is below this (the model's vocab_size must
  // be at least this much).
  virtual int64_t vocab_size() const = 0;
  // Ids that separate documents (SPEC: targets equal to bos_id carry no loss) and end them.
  virtual TokenId bos_id() const = 0;
  virtual TokenId eos_id() const = 0;
  virtual const std::vector<SpecialToken>& special_tokens() const = 0;

  // Ordinary text: special-token strings in it are encoded as the text they are. Accepts any
  // bytes; bytes that are not valid UTF-8 are encoded as byte tokens, so decode() gives them back.
  virtual std::vector<TokenId> encode(std::string_view text) const = 0;
  // Like encode(), but every occurrence of a special token's text becomes that token's id
  // (leftmost first, the longest where several start at one place).
  std::vector<TokenId> encode_with_special(std::string_view text) const;
  // The bytes of the tokens, concatenated (special tokens as their text unless skip_special).
  // decode(encode(x)) == x for every byte string x. Error (ttt::Error) on an id that is not
  // a token of this vocabulary.
  std::string decode(std::span<const TokenId> ids, bool skip_special = false) const;

  // The bytes of one ordinary (non-special) token; false if `id` is special or unused.
  virtual bool token_bytes(TokenId id, std::string& out) const = 0;

 protected:
  const SpecialToken* find_special(TokenId id) const;
};

// UTF-8 helpers shared by the tokenizers.
// Length of the valid UTF-8 sequence (1..4) starting at text[pos], or 0 if the bytes there
// are not valid UTF-8 (overlong forms, surrogates and code points above U+10FFFF included).
int utf8_sequence_length(std::string_view text, size_t pos);
bool is_valid_utf8(std::string_view text);

}  // namespace ttt::text
