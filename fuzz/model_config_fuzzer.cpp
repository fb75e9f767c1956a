// Model configs (config/model_config.h), as JSON text: what checkpoints carry in their
// metadata and `--config` files hold. A config that parses must write back to itself.
#include <string>

#include "common/error.h"
#include "config/model_config.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ttt;
  ModelConfig config;
  try {
    config = ModelConfig::from_json_text(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const Error&) {
    return 0;  // refused with a one-line error: what malformed input must get
  }
  const std::string text = config.to_json_text();
  fuzz::check(ModelConfig::from_json_text(text).to_json_text() == text, "a config survives a round trip");
  return 0;
}
