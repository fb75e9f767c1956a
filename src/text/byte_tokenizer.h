// Raw bytes: ids 0..255 are the bytes, 256 is bos ("<|bos|>"), 257 is eos ("<|eos|>").
// Dependency-free; any byte string round-trips.
#pragma once
#include "text/tokenizer.h"

namespace ttt::text {

class ByteTokenizer final : public Tokenizer {
 public:
  ByteTokenizer();
  std::string name() const override { return "bytes"; }
  int64_t vocab_size() const override { return 258; }
  TokenId bos_id() const override { return 256; }
  TokenId eos_id() const override { return 257; }
  const std::vector<SpecialToken>& special_tokens() const override { return specials_; }
  std::vector<TokenId> encode(std::string_view text) const override;
  bool token_bytes(TokenId id, std::string& out) const override;

 private:
  std::vector<SpecialToken> specials_;
};

}  // namespace ttt::text
