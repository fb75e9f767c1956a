// SentencePiece models (text/sentencepiece_tokenizer.h), as `ttt data train-tokenizer` writes
// them. Debian's libsentencepiece parses the protobuf uninstrumented; our checks around it are
// fuzzed. A model that loads must encode and decode any text back to itself.
#include "common/error.h"
#include "fuzz_input.h"
#include "text/sentencepiece_tokenizer.h"
#include "tokenizer_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ttt;
  std::unique_ptr<text::SentencePieceTokenizer> tokenizer;
  try {
    tokenizer = text::SentencePieceTokenizer::from_serialized(std::string(reinterpret_cast<const char*>(data), size),
                                                              "fuzz.model");
  } catch (const Error&) {
    return 0;  // refused with a one-line error: what malformed input must get
  }
  fuzz::check_tokenizer(*tokenizer);
  return 0;
}
