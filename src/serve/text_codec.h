// Text to token ids and back for the server. Encoding runs in a `ttt-data tokenize --frames`
// coprocess started once (libtorch and the tokenizers never share a process, see
// apps/ttt/data_main.cpp); decoding is the token table's bytes (a token's text is its bytes).
// Torch-free.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "io/token_table.h"

namespace ttt::serve {

class TextCodec {
 public:
  // Starts `data_program tokenize --tokenizer TOKENIZER --frames`; `table` is its token table.
  TextCodec(const std::string& data_program, const std::string& tokenizer, io::TokenTable table);
  ~TextCodec();
  TextCodec(const TextCodec&) = delete;
  TextCodec& operator=(const TextCodec&) = delete;

  // Throws ttt::Error when the coprocess fails (its message) or is gone.
  std::vector<int64_t> encode(const std::string& text);
  // A generated token's bytes: "" for special tokens and ids the tokenizer does not have.
  std::string piece(int64_t id) const;
  const std::string& name() const { return table_.tokenizer; }

 private:
  io::TokenTable table_;
  std::mutex mutex_;  // one request at a time on the pipes
  int pid_ = -1, to_child_ = -1, from_child_ = -1;
};

}  // namespace ttt::serve
