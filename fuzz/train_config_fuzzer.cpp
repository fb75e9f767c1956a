// Training configs (train/train_config.h) as `ttt train --config` reads them from a file. A
// config that parses must write back to one that parses the same.
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "fuzz_input.h"
#include "train/train_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ttt;
  const fuzz::InputFile input(data, size, "train.json");
  TrainConfig config;
  try {
    config = TrainConfig::from_file(input.path);
  } catch (const Error&) {
    return 0;  // refused with a one-line error: what malformed input must get
  }
  const nlohmann::json json = config.to_json();
  fuzz::check(TrainConfig::from_json(json).to_json() == json, "a config survives a round trip");
  return 0;
}
