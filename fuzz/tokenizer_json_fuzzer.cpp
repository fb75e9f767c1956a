// Hugging Face tokenizer.json files of byte-level BPE models (text/bpe_tokenizer.h). A file
// that loads must give a tokenizer that encodes and decodes any text back to itself.
#include "common/error.h"
#include "fuzz_input.h"
#include "text/bpe_tokenizer.h"
#include "tokenizer_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ttt;
  const fuzz::InputFile input(data, size, "tokenizer.json");
  std::unique_ptr<text::BpeTokenizer> tokenizer;
  try {
    tokenizer = text::BpeTokenizer::from_tokenizer_json(input.path, "fuzz");
  } catch (const Error&) {
    return 0;  // refused with a one-line error: what malformed input must get
  }
  fuzz::check_tokenizer(*tokenizer);
  return 0;
}
