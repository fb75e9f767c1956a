#include "text/tokenizer.h"

#include "common/error.h"

namespace ttt::text {

std::vector<TokenId> Tokenizer::encode_with_special(std::string_view text) const {
  const std::vector<SpecialToken>& specials = special_tokens();
  if (specials.empty()) return encode(text);
  // Which bytes start a special token: positions without one are skipped at once.
  bool starts[256] = {};
  for (const SpecialToken& s : specials) {
    if (!s.text.empty()) starts[static_cast<unsigned char>(s.text[0])] = true;
  }
  std::vector<TokenId> ids;
  size_t segment_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const SpecialToken* best = nullptr;
    if (starts[static_cast<unsigned char>(text[pos])]) {
      for (const SpecialToken& s : specials) {
        if (!s.text.empty() && text.compare(pos, s.text.size(), s.text) == 0 &&
            (!best || s.text.size() > best->text.size())) {
          best = &s;
        }
      }
    }
    if (!best) {
      ++pos;
      continue;
    }
    const std::vector<TokenId> part = encode(text.substr(segment_start, pos - segment_start));
    ids.insert(ids.end(), part.begin(), part.end());
    ids.push_back(best->id);
    pos += best->text.size();
    segment_start = pos;
  }
  const std::vector<TokenId> part = encode(text.substr(segment_start));
  ids.insert(ids.end(), part.begin(), part.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const TokenId> ids, bool skip_special) const {
  std::string text;
  std::string piece;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (token_bytes(ids[i], piece)) {
      text += piece;
    } else if (const SpecialToken* special = find_special(ids[i])) {
      if (!skip_special) text += special->text;
    } else {
      throw Error(name() + ": token " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                  " is not in the vocabulary (size " + std::to_string(vocab_size()) + ")");
    }
  }
  return text;
}

const SpecialToken* Tokenizer::find_special(TokenId id) const {
  for (const SpecialToken& s : special_tokens()) {
    if (s.id == id) return &s;
  }
  return nullptr;
}

int utf8_sequence_length(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b0 = byte(pos);
  if (b0 < 0x80) return 1;
  int length;
  uint32_t min_code;
  uint32_t code;
  if ((b0 & 0xE0) == 0xC0) {
    length = 2, min_code = 0x80, code = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    length = 3, min_code = 0x800, code = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    length = 4, min_code = 0x10000, code = b0 & 0x07;
  } else {
    return 0;
  }
  if (pos + length > text.size()) return 0;
  for (int i = 1; i < length; ++i) {
    const unsigned char b = byte(pos + i);
    if ((b & 0xC0) != 0x80) return 0;
    code = (code << 6) | (b & 0x3F);
  }
  if (code < min_code || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
  return length;
}

bool is_valid_utf8(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    const int length = utf8_sequence_length(text, pos);
    if (length == 0) return false;
    pos += length;
  }
  return true;
}

}  // namespace ttt::text
