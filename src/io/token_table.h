// A tokenizer's pieces as a file: the bytes of every token id, which are special, and the
// bos/eos ids. `ttt data tokenizer-info --pieces F` writes it (in ttt-data, where the
// tokenizers live); `ttt generate` reads it to turn sampled ids into text as they come,
// since a token's text is its bytes (decode is their concatenation).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ttt::io {

struct TokenTable {
  std::string tokenizer;            // its name
  std::vector<std::string> pieces;  // [vocab_size]: a token's bytes; a special token's text
  std::vector<uint8_t> special;     // [vocab_size]: 1 for special tokens, 2 for unused ids
  uint32_t bos_id = 0, eos_id = 0;

  // Binary, little-endian: "ttt-token-table/1\n", name length + name, count, bos, eos,
  // then per id: kind (uint8), length (uint32), bytes. Atomic write; read errors name the file.
  void write(const std::string& path) const;
  static TokenTable read(const std::string& path);
};

}  // namespace ttt::io
