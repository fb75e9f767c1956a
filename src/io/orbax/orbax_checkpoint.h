// An orbax checkpoint item as orbax's CheckpointManager writes it: `<dir>/<step>/<item>/`
// with `_METADATA` (the tree of leaves) and an OCDBT store of zarr arrays, one per leaf.
// No libtorch.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/orbax/ocdbt.h"
#include "io/orbax/zarr.h"

namespace ttt::io::orbax {

// The item folder that `dir` names: `dir` itself when it holds `_METADATA` (an item such as
// model_weights/), `dir`/model_weights for a step folder, else `dir`/<step>/model_weights
// for a folder of step folders (numeric names), the highest step unless `step` is given.
// Errors name the folder; a step that is not there lists the steps that are.
std::string resolve_model_weights(const std::string& dir, std::optional<int64_t> step);

// A leaf of the tree that holds data: its path joined by "." (orbax's parameter name, also
// the zarr array's path in the store) and orbax's value type ("jax.Array", "np.ndarray", ...).
struct OrbaxLeaf {
  std::string name;
  std::string value_type;
};

class OrbaxCheckpoint {
 public:
  // Opens an item folder: parses _METADATA and the OCDBT store.
  explicit OrbaxCheckpoint(const std::string& item_dir);

  const std::string& dir() const { return store_.root(); }
  // Leaves in _METADATA's order, without those marked skip_deserialize (empty ones).
  const std::vector<OrbaxLeaf>& leaves() const { return leaves_; }
  const OcdbtStore& store() const { return store_; }
  // The array of a leaf whose value type is an array.
  ZarrArray array(const std::string& leaf) const { return ZarrArray(store_, leaf); }

 private:
  std::vector<OrbaxLeaf> leaves_;
  OcdbtStore store_;
};

// Whether orbax stores a leaf of this value type as a zarr array.
bool is_array_type(const std::string& value_type);

}  // namespace ttt::io::orbax
