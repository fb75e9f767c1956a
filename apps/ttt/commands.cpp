// `ttt init`, `info` and `grad`.
#include <chrono>
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli_support.h"
#include "commands.h"
#include "eval/evaluate.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"

namespace ttt::cli {
namespace {

// What grad takes: a model, a token file, the device and the precision.
struct ModelInput {
  std::string model_path, tokens_path;
  ComputeFlags compute;

  void add_to(CLI::App* command) {
    command->add_option("--model", model_path, "model checkpoint (.safetensors)")->required();
    command->add_option("--tokens", tokens_path, "token file: raw little-endian uint32 ids, no header (.u32)")
        ->required();
    compute.add_to(command);
  }

  // Loads both onto the device, checking the tokens against the model's vocabulary.
  std::pair<Model, torch::Tensor> load() const {
    const torch::Device device = compute.compute().device;
    Model model = load_model(model_path, compute.param_dtype());
    model.params = convert_params(model.config, model.params, compute.param_dtype(), false, device);
    torch::Tensor tokens = load_tokens_for(model.config, tokens_path).to(device);
    return {std::move(model), tokens};
  }
};

}  // namespace

void add_init_command(CLI::App& app) {
  struct Options {
    std::string config_path, out_path, dtype = "f32";
    uint64_t seed = 0;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand(
      "init", "Create a model from a config, initialised per the spec: N(0, 0.02^2) matrices, unit gains.");
  command->add_option("--config", options->config_path, "model config (JSON, the keys of SPEC section 2)")->required();
  command->add_option("--out", options->out_path, "checkpoint to write (.safetensors)")->required();
  command->add_option("--seed", options->seed, "random seed")->check(CLI::NonNegativeNumber)->capture_default_str();
  command->add_option("--dtype", options->dtype, "storage dtype")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->capture_default_str();
  command->callback([options] {
    Model model;
    model.config = ModelConfig::from_file(options->config_path);
    model.params = init_params(model.config, options->seed);
    save_model(options->out_path, model, parse_dtype(options->dtype));
    std::cout << "wrote " << options->out_path << ": " << variant_name(model.config.variant) << " model, "
              << count_params(model.config, model.params) << " parameters\n";
  });
}

void add_info_command(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* command = app.add_subcommand("info", "Print a checkpoint's config and parameter count.");
  command->add_option("--model", *path, "model checkpoint (.safetensors)")->required();
  command->callback([path] {
    const Model model = load_model(*path);
    std::cout << model.config.to_json().dump(2) << "\nparameters: " << count_params(model.config, model.params)
              << "\n";
  });
}

void add_grad_command(CLI::App& app) {
  struct Options {
    ModelInput input;
    std::string out_path;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand(
      "grad",
      "Write the gradient of `ttt eval`'s loss w.r.t. every parameter, under the parameter's name, with\n"
      "__metadata__[\"loss\"]. For ttt-e2e this is the exact meta-gradient: through every inner step\n"
      "(second order) and through the KV cache carried between chunks.");
  options->input.add_to(command);
  command->add_option("--out", options->out_path, "gradient file to write (.safetensors)")->required();
  command->callback([options] {
    const auto start = std::chrono::steady_clock::now();
    const MatmulDtypeGuard precision(options->input.compute.compute().matmul_dtype);
    const auto [model, tokens] = options->input.load();
    const GradResult result = gradient(model.config, model.params, tokens, progress_reporter("grad"));
    require_finite_loss(result.loss);
    char loss_text[64];
    std::snprintf(loss_text, sizeof loss_text, "%.17g", result.loss);
    io::write_safetensors(options->out_path, result.grads, {{"loss", loss_text}});
    std::printf("loss %.6f, gradient of %zu tensors written to %s, %.2f s\n", result.loss, result.grads.size(),
                options->out_path.c_str(), seconds_since(start));
  });
}

}  // namespace ttt::cli
