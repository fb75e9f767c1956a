// The training configuration: every key declared once, with its default and help text,
// for the JSON file and the command line alike.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "config/model_config.h"

namespace ttt {

struct TrainConfig {
  // Where the model comes from: a config to initialise from scratch, or a checkpoint's
  // weights (a model file, or a run directory's model.safetensors) under its own config or,
  // with both, under `model` (the paper's Stage 2: a new rope_theta; shapes must agree).
  std::optional<ModelConfig> model;
  std::string init;
  int64_t init_seed = 0;

  std::string train_tokens, val_tokens;
  int64_t seq_len = 1024;
  int64_t batch_size = 8;
  int64_t steps = 1000;
  int64_t seed = 0;

  double lr = 3e-3;
  double lr_min = 1e-5;
  double warmup_frac = 0.1;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double adam_eps = 1e-8;
  double grad_clip = 1.0;
  double ilr_init = 0.1;
  double ilr_warmup_frac = 0.1;
  bool first_order = false;
  bool remat = true;
  int64_t tail_chunks = 0;
  std::string moments_on_host = "auto";  // "auto", "true" or "false"
  std::string dtype = "f32";
  std::string device = "cpu";
  std::string dist_backend = "auto";
  double dist_timeout = 600;

  int64_t log_every = 10;
  int64_t eval_every = 100;
  int64_t val_sequences = 8;
  int64_t checkpoint_every = 100;

  using Member = std::variant<int64_t TrainConfig::*, double TrainConfig::*, bool TrainConfig::*,
                              std::string TrainConfig::*>;
  struct Field {
    const char* key;
    Member member;
    const char* help;
    // False for keys that only change reporting, so a resumed run may set them anew.
    bool shapes_training;
  };
  // Every scalar key ("model" is the nested model config, not listed here).
  static const std::vector<Field>& fields();

  // Parses and validates the keys present (the rest keep their defaults); unknown keys,
  // wrong types and bad values are ttt::Errors naming the key.
  static TrainConfig from_json(const nlohmann::json& json);
  static TrainConfig from_file(const std::string& path);
  nlohmann::json to_json() const;

  // Ranges of every value; throws ttt::Error naming the key.
  void validate() const;
  // What depends on the model too: seq_len a multiple of mini_batch for ttt-e2e.
  void validate_for(const ModelConfig& model) const;

  // Keys that shape training and differ between the two (empty: compatible for a resume).
  std::vector<std::string> training_differences(const TrainConfig& other) const;

  int64_t warmup_steps() const;
  int64_t ilr_warmup_steps() const;
};

// SPEC section 6's schedules, step counted from 0. The learning rate rises linearly from 0
// over the warm-up steps, then follows a cosine down to lr_min at the last step.
double learning_rate(const TrainConfig& config, int64_t step);
// ilr_init + (1 - ilr_init) * min(1, (step + 1) / ilr_warmup_steps); 1 without warm-up.
double inner_lr_multiplier(const TrainConfig& config, int64_t step);

}  // namespace ttt
