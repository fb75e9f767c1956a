#include "text/byte_tokenizer.h"

namespace ttt::text {

ByteTokenizer::ByteTokenizer() : specials_{{"<|bos|>", 256}, {"<|eos|>", 257}} {}

std::vector<TokenId> ByteTokenizer::encode(std::string_view text) const {
  std::vector<TokenId> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

bool ByteTokenizer::token_bytes(TokenId id, std::string& out) const {
  if (id >= 256) return false;
  out.assign(1, static_cast<char>(id));
  return true;
}

}  // namespace ttt::text
