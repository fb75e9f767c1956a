#include "io/orbax/orbax_checkpoint.h"

#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/input_file.h"
#include "io/json_input.h"
#include "io/paths.h"

namespace ttt::io::orbax {
namespace {

// ordered: the leaves keep _METADATA's order (the tree's).
using json = nlohmann::ordered_json;

const char* kMetadataFile = "_METADATA";
const char* kItem = "model_weights";  // the item the authors' checkpoint.py saves the weights as

bool is_file(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

// A step folder's name: digits only (orbax's temporary folders have suffixes).
std::optional<int64_t> step_number(const std::string& name) {
  if (name.empty() || name.size() > 18 || !std::all_of(name.begin(), name.end(), ::isdigit)) return std::nullopt;
  return std::stoll(name);
}

std::vector<OrbaxLeaf> read_leaves(const std::string& dir) {
  const std::string path = dir + "/" + kMetadataFile;
  const std::string prefix = "orbax checkpoint '" + path + "': ";
  InputFile input = open_input_file(path, prefix);
  require(input.size <= (64u << 20), prefix + "is " + std::to_string(input.size) + " bytes, too large for metadata");
  std::stringstream text;
  text << input.stream.rdbuf();
  json doc = parse_ordered_json_input(text.str(), prefix);
  require(doc.is_object() && doc.contains("tree_metadata") && doc["tree_metadata"].is_object(),
          prefix + "has no \"tree_metadata\" object");
  // Only what this reader implements: zarr v2 arrays in one OCDBT store.
  require(doc.value("use_ocdbt", true) == true, prefix + "the arrays are not in an OCDBT store (use_ocdbt false)");
  require(doc.value("use_zarr3", false) == false, prefix + "the arrays are zarr v3 (use_zarr3), not supported");

  std::vector<OrbaxLeaf> leaves;
  for (const auto& [tree_key, leaf] : doc["tree_metadata"].items()) {
    const std::string where = prefix + "leaf " + tree_key + ": ";
    require(leaf.is_object() && leaf.contains("key_metadata") && leaf["key_metadata"].is_array() &&
                leaf.contains("value_metadata") && leaf["value_metadata"].is_object(),
            where + "needs \"key_metadata\" (an array) and \"value_metadata\" (an object)");
    const json& value = leaf["value_metadata"];
    if (value.value("skip_deserialize", false) == true) continue;
    std::string name;
    for (const json& key : leaf["key_metadata"]) {
      require(key.is_object() && key.contains("key"), where + "a key_metadata entry has no \"key\"");
      if (!name.empty()) name += '.';
      name += key["key"].is_string() ? key["key"].get<std::string>() : key["key"].dump();
    }
    require(value.contains("value_type") && value["value_type"].is_string(), where + "has no \"value_type\"");
    leaves.push_back({name, value["value_type"].get<std::string>()});
  }
  return leaves;
}

}  // namespace

bool is_array_type(const std::string& value_type) { return value_type == "jax.Array" || value_type == "np.ndarray"; }

std::string resolve_model_weights(const std::string& dir, std::optional<int64_t> step) {
  const std::string prefix = "orbax checkpoint '" + dir + "': ";
  require(is_directory(dir), prefix + "no such directory");
  const bool is_item = is_file(dir + "/" + kMetadataFile);
  const bool is_step = is_directory(dir + "/" + kItem);
  if (is_item || is_step) {
    require(!step.has_value(), prefix + "--step picks a step folder, but this is " +
                                   (is_item ? "an item folder" : "a step folder") +
                                   " already (give the folder of step folders)");
    return is_item ? dir : dir + "/" + kItem;
  }

  // Step number -> folder name (names may carry leading zeros).
  std::map<int64_t, std::string> steps;
  for (const std::string& name : list_directories(dir)) {
    const std::optional<int64_t> number = step_number(name);
    if (number && is_directory(dir + "/" + name + "/" + kItem)) steps.emplace(*number, name);
  }
  require(!steps.empty(), prefix + "no " + kMetadataFile + ", no " + kItem +
                              "/ and no step folders (numeric names with " + kItem + "/ inside)");
  const int64_t chosen = step.value_or(steps.rbegin()->first);
  if (!steps.count(chosen)) {
    std::string present;
    for (const auto& entry : steps) present += (present.empty() ? "" : ", ") + std::to_string(entry.first);
    throw Error(prefix + "step " + std::to_string(chosen) + " is not there (steps present: " + present + ")");
  }
  return dir + "/" + steps.at(chosen) + "/" + kItem;
}

OrbaxCheckpoint::OrbaxCheckpoint(const std::string& item_dir) : leaves_(read_leaves(item_dir)), store_(item_dir) {}

}  // namespace ttt::io::orbax
