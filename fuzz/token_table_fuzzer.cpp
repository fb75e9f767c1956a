// Token tables (io/token_table.h), which `ttt generate` reads to print tokens as text. What
// reads must write back the same.
#include "common/error.h"
#include "fuzz_input.h"
#include "io/token_table.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ttt;
  const fuzz::InputFile input(data, size, "pieces");
  io::TokenTable table;
  try {
    table = io::TokenTable::read(input.path);
  } catch (const Error&) {
    return 0;  // refused with a one-line error: what malformed input must get
  }
  const fuzz::ScratchFile copy("copy.pieces");
  table.write(copy.path);
  const io::TokenTable again = io::TokenTable::read(copy.path);
  fuzz::check(again.pieces == table.pieces && again.special == table.special && again.bos_id == table.bos_id &&
                  again.eos_id == table.eos_id && again.tokenizer == table.tokenizer,
              "a table survives a round trip");
  return 0;
}
