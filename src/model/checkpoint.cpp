#include "model/checkpoint.h"

#include "common/error.h"
#include "io/safetensors.h"

namespace ttt {

Model load_model(const std::string& path, torch::Dtype dtype) {
  const io::SafetensorsFile file = io::read_safetensors(path);
  const auto config_text = file.metadata.find("config");
  require(config_text != file.metadata.end(), path + ": no model config in __metadata__[\"config\"]");
  try {
    Model model;
    model.config = ModelConfig::from_json_text(config_text->second);
    model.params = params_from_named(model.config, file.tensors, dtype);
    return model;
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

void save_model(const std::string& path, const Model& model, torch::Dtype dtype) {
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& [name, tensor] : named_params(model.config, model.params)) tensors.emplace(name, tensor.to(dtype));
  io::write_safetensors(path, tensors, {{"config", model.config.to_json_text()}});
}

torch::Dtype parse_dtype(const std::string& name) {
  if (name == "f32") return torch::kFloat32;
  if (name == "f64") return torch::kFloat64;
  if (name == "bf16") return torch::kBFloat16;
  if (name == "f16") return torch::kFloat16;
  throw Error("unknown dtype '" + name + "' (expected f32, f64, bf16 or f16)");
}

}  // namespace ttt
