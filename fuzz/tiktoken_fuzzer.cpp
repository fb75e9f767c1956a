// OpenAI's .tiktoken files (text/bpe_tokenizer.h), read as r50k_base (its one special token,
// id 50256, is the smallest of the known encodings'). A file that loads must give a tokenizer
// that encodes and decodes any text back to itself.
#include "common/error.h"
#include "fuzz_input.h"
#include "text/bpe_tokenizer.h"
#include "tokenizer_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ttt;
  const fuzz::InputFile input(data, size, "vocab.tiktoken");
  std::unique_ptr<text::BpeTokenizer> tokenizer;
  try {
    tokenizer = text::BpeTokenizer::from_tiktoken(input.path, "r50k_base");
  } catch (const Error&) {
    return 0;  // refused with a one-line error: what malformed input must get
  }
  fuzz::check_tokenizer(*tokenizer);
  return 0;
}
