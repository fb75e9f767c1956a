// NIAH specs (eval/niah.h): the JSON `ttt eval niah` hands to `ttt data niah-prompts`. A spec
// that parses must write back to itself.
#include <string>

#include "common/error.h"
#include "eval/niah.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ttt;
  niah::Spec spec;
  try {
    spec = niah::Spec::from_json(std::string(reinterpret_cast<const char*>(data), size), "spec");
  } catch (const Error&) {
    return 0;  // refused with a one-line error: what malformed input must get
  }
  const std::string text = spec.to_json();
  fuzz::check(niah::Spec::from_json(text, "spec").to_json() == text, "a spec survives a round trip");
  return 0;
}
