// `ttt convert orbax`: the TTT-E2E authors' orbax checkpoints as our safetensors models
// (model/orbax_import.h).
#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli_support.h"
#include "commands.h"
#include "io/json_input.h"
#include "io/orbax/orbax_checkpoint.h"
#include "model/orbax_import.h"

namespace ttt::cli {
namespace {

struct ConvertOrbaxOptions {
  std::string checkpoint, config_path, variant, dtype = "f32", out_path;
  int64_t step = -1;  // -1: the latest
};

nlohmann::json read_partial_config(const std::string& path) {
  const std::string prefix = "--config '" + path + "': ";
  const nlohmann::json config = io::read_json_file(path, prefix);
  require(config.is_object(), prefix + "expected a JSON object of SPEC config keys");
  return config;
}

void convert_orbax(const ConvertOrbaxOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const std::string item = io::orbax::resolve_model_weights(
      options.checkpoint, options.step >= 0 ? std::optional<int64_t>(options.step) : std::nullopt);
  const io::orbax::OrbaxCheckpoint checkpoint(item);

  OrbaxImportOptions import;
  if (!options.config_path.empty()) import.config = read_partial_config(options.config_path);
  if (!options.variant.empty()) import.variant = variant_named(options.variant);
  import.dtype = options.dtype;
  const OrbaxImportPlan plan = plan_orbax_import(checkpoint, import);

  std::printf("orbax checkpoint %s: %zu arrays, %.1f MB stored\nconfig (value, where it comes from):\n", item.c_str(),
              plan.sources.size(), double(plan.stored_bytes) / 1e6);
  for (const std::string& line : plan.config_lines) std::printf("%s\n", line.c_str());
  for (const std::string& leaf : plan.ignored_leaves) std::printf("ignored (not an array): %s\n", leaf.c_str());
  std::fflush(stdout);

  const ProgressFn report = progress_reporter("convert", "MB");
  int64_t reported = -1;
  write_orbax_import(checkpoint, plan, options.dtype, options.out_path, [&](uint64_t done, uint64_t total) {
    const int64_t mb = int64_t(done / 1000000);
    if (report && (mb != reported || done == total)) report(mb, int64_t(total / 1000000));
    reported = mb;
  });
  const double seconds = seconds_since(start);
  size_t tensors = 0;
  for (const OrbaxTensorSource& source : plan.sources) tensors += source.targets.size();
  std::printf("wrote %s: %s model, %zu tensors, %.1f MB in %.2f s (%.0f MB/s read)\n", options.out_path.c_str(),
              variant_name(plan.config.variant), tensors, double(plan.output_bytes) / 1e6, seconds,
              double(plan.stored_bytes) / 1e6 / seconds);
}

}  // namespace

void add_convert_command(CLI::App& app) {
  CLI::App* convert = app.add_subcommand("convert", "Convert other programs' checkpoints into ttt models.");
  convert->require_subcommand(1);
  auto options = std::make_shared<ConvertOrbaxOptions>();
  CLI::App* command = convert->add_subcommand(
      "orbax",
      "Convert a TTT-E2E authors' orbax checkpoint (their JAX code's model weights) into a safetensors model.\n"
      "The config is inferred from the arrays' shapes; the keys they cannot tell default to the authors'\n"
      "released models (rope_theta 500000, window 8192, mini_batch 1024, Llama-3 bos/eos, inner_lr 1, ...)\n"
      "and --config overrides any of them. Prints every key with where its value comes from.");
  command
      ->add_option("--checkpoint", options->checkpoint,
                   "a folder of step folders (<step>/model_weights/), one step folder, or model_weights/ itself")
      ->required();
  command->add_option("--step", options->step, "the step folder to convert (default: the highest)")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--config", options->config_path,
                      "JSON with any subset of SPEC's config keys, for what the arrays cannot tell");
  command
      ->add_option("--variant", options->variant,
                   "ttt-e2e (default when prime storage exists), swa (default otherwise) or fa")
      ->check(CLI::IsMember({"fa", "swa", "ttt-e2e"}));
  command->add_option("--dtype", options->dtype, "storage dtype of the written model (bf16 rounds to nearest even)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  command->add_option("--out", options->out_path, "model to write (.safetensors)")->required();
  command->callback([options] { convert_orbax(*options); });
}

}  // namespace ttt::cli
