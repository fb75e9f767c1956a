// The TTT-E2E authors' orbax checkpoints (their JAX code's `model.weights()` tree) as our
// safetensors models: their leaves mapped to SPEC section 7's names, the config inferred
// from the arrays' shapes, the data streamed through one array's worth of memory.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/model_config.h"
#include "io/orbax/orbax_checkpoint.h"

namespace ttt {

struct OrbaxImportOptions {
  // Any subset of SPEC section 2's keys: values the arrays cannot tell (they must agree with
  // what the arrays do tell).
  nlohmann::json config = nlohmann::json::object();
  std::optional<Variant> variant;  // default: ttt-e2e with prime storage, else swa
  std::string dtype = "f32";       // of the output: "f32" or "bf16"
};

// One leaf of their tree and the tensors it becomes: one, or one per stacked slice.
struct OrbaxTensorSource {
  std::string leaf;
  std::vector<std::string> targets;
  std::vector<int64_t> target_shape;
};

// What a conversion will do, decided from metadata alone (no array data is read).
struct OrbaxImportPlan {
  ModelConfig config;
  // One line per config key: its value and where it came from (the arrays, --config, default).
  std::vector<std::string> config_lines;
  std::vector<std::string> ignored_leaves;  // leaves that hold no array (scalars)
  std::vector<OrbaxTensorSource> sources;   // in the order they are read and written
  uint64_t stored_bytes = 0;                // read: the arrays' chunks as stored
  uint64_t output_bytes = 0;                // written: tensor data
};

// Maps the leaves, infers and validates the config and checks every array's shape; errors
// name the leaf or the config key at fault.
OrbaxImportPlan plan_orbax_import(const io::orbax::OrbaxCheckpoint& checkpoint, const OrbaxImportOptions& options);

// Writes the plan's model to `out_path` (atomically: nothing there on failure), reading each
// array once; memory is about the largest array. `progress(done, total)` in stored bytes.
void write_orbax_import(const io::orbax::OrbaxCheckpoint& checkpoint, const OrbaxImportPlan& plan,
                        const std::string& dtype, const std::string& out_path,
                        const std::function<void(uint64_t done, uint64_t total)>& progress = {});

}  // namespace ttt
