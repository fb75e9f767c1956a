// What every tokenizer that loads must do, whatever file it came from: encode any bytes to ids
// of its vocabulary, and decode them back to the same bytes.
#pragma once
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_input.h"
#include "text/tokenizer.h"

namespace ttt::fuzz {

// Bytes outside printable ASCII as \xNN, for a failure's report.
inline std::string escaped(std::string_view bytes) {
  std::string out;
  for (const char c : bytes) {
    char hex[5];
    std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(c));
    out += c >= 0x20 && c < 0x7f ? std::string(1, c) : std::string(hex);
  }
  return out;
}

inline void check_tokenizer(const text::Tokenizer& tokenizer) {
  for (const std::string_view sample : {std::string_view("Hello, world! 123  tabs\tand\nlines"),
                                        std::string_view("caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82"),
                                        std::string_view("\xff\xfe\x00\x80 not UTF-8", 14)}) {
    const std::vector<text::TokenId> ids = tokenizer.encode(sample);
    for (const text::TokenId id : ids) check(int64_t{id} < tokenizer.vocab_size(), "ids are in the vocabulary");
    const std::string decoded = tokenizer.decode(ids);
    if (decoded != sample) {
      std::fprintf(stderr, "text:    %s\ndecoded: %s\n", escaped(sample).c_str(), escaped(decoded).c_str());
    }
    check(decoded == sample, "decode(encode(text)) == text");
  }
}

}  // namespace ttt::fuzz
