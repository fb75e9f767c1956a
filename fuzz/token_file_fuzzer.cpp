// Token files (io/token_file.h): raw uint32 ids. What reads must write back the same.
#include <vector>

#include "common/error.h"
#include "fuzz_input.h"
#include "io/token_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ttt;
  const fuzz::InputFile input(data, size, "tokens.u32");
  std::vector<int64_t> tokens;
  try {
    tokens = io::read_token_file(input.path);
  } catch (const Error&) {
    return 0;  // refused with a one-line error: what malformed input must get
  }
  const fuzz::ScratchFile copy("copy.u32");
  io::write_token_file(copy.path, tokens);
  fuzz::check(io::read_token_file(copy.path) == tokens, "tokens survive a round trip");
  return 0;
}
