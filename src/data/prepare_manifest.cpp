#include "data/prepare_manifest.h"

#include <limits>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json_input.h"
#include "io/paths.h"

namespace ttt {

std::optional<PrepareManifest> PrepareManifest::read(const std::string& dir) {
  const std::string path = dir + "/prepare.json";
  if (!io::exists(path)) return std::nullopt;
  const std::string prefix = path + ": not a valid prepare manifest: ";
  const nlohmann::json j = io::read_json_file(path, prefix);
  try {
    constexpr int64_t kHighest = std::numeric_limits<int64_t>::max();
    PrepareManifest manifest;
    manifest.tokenizer = j.at("tokenizer").get<std::string>();
    manifest.vocab_size = io::json_integer(j.at("vocab_size"), 1, kHighest, "\"vocab_size\"");
    manifest.bos_id = io::json_integer(j.at("bos_id"), 0, kHighest, "\"bos_id\"");
    for (const auto& split : j.at("splits")) {
      const auto file = split.at("file").get<std::string>();
      const bool no_documents = split.contains("documents") &&
                                io::json_integer(split.at("documents"), 0, kHighest, "a split's \"documents\"") == 0;
      if (file.empty() && no_documents) continue;  // an empty split has no file
      require(!file.empty() && file.find('/') == std::string::npos, "a split's file is not a plain file name");
      manifest.entries.push_back({split.at("name").get<std::string>(), dir + "/" + file});
    }
    return manifest;
  } catch (const nlohmann::json::exception& e) {
    throw Error(prefix + e.what());
  } catch (const Error& e) {
    throw Error(prefix + e.what());
  }
}

void PrepareManifest::check_fits_model(const std::string& what, int64_t model_vocab_size, int64_t model_bos_id) const {
  require(vocab_size <= model_vocab_size,
          what + ": prepared with tokenizer " + tokenizer + " of " + std::to_string(vocab_size) +
              " tokens, more than the model's vocab_size " + std::to_string(model_vocab_size) +
              " (`ttt data tokenizer-info` gives the vocab_size a model needs)");
  require(bos_id == model_bos_id, what + ": prepared with tokenizer " + tokenizer + " whose bos id is " +
                                      std::to_string(bos_id) + ", but the model's bos_id is " +
                                      std::to_string(model_bos_id));
}

}  // namespace ttt
