// Model checkpoints (SPEC section 7): one safetensors file with canonical tensor names and
// the config as JSON in __metadata__["config"].
#pragma once
#include <string>

#include <torch/types.h>

#include "config/model_config.h"
#include "model/params.h"

namespace ttt {

struct Model {
  ModelConfig config;
  Params params;
};

// Reads a checkpoint and converts every tensor to `dtype`; throws ttt::Error naming the
// file and, where it applies, the tensor.
Model load_model(const std::string& path, torch::Dtype dtype = torch::kFloat32);

// Writes every parameter in `dtype` (F32, BF16, F16 or F64), atomically.
void save_model(const std::string& path, const Model& model, torch::Dtype dtype = torch::kFloat32);

// "f32", "f64", "bf16", "f16" -> dtype; throws ttt::Error otherwise.
torch::Dtype parse_dtype(const std::string& name);

}  // namespace ttt
