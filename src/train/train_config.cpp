#include "train/train_config.h"

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json_input.h"

namespace ttt {
namespace {

using nlohmann::json;

std::string key_name(const std::string& key) { return "train config: '" + key + "'"; }

std::string key_error(const std::string& key, const std::string& what) { return key_name(key) + " " + what; }

}  // namespace

const std::vector<TrainConfig::Field>& TrainConfig::fields() {
  using T = TrainConfig;
  static const std::vector<Field> kFields = {
      {"init", &T::init,
       "start from these weights (a model .safetensors or a run directory) instead of fresh ones: parameters only "
       "(new optimiser state and schedule), under the checkpoint's model config or, if 'model' is given too, under "
       "that one (same shapes; e.g. a new rope_theta)",
       true},
      {"init_seed", &T::init_seed, "seed of the fresh model's initial weights", true},
      {"train_tokens", &T::train_tokens, "training token file (.u32; documents separated by bos_id)", true},
      {"val_tokens", &T::val_tokens, "validation token file (.u32); empty: no validation", false},
      {"seq_len", &T::seq_len, "tokens per training sequence (ttt-e2e: a multiple of mini_batch)", true},
      {"batch_size", &T::batch_size, "sequences per optimiser step (their gradients are accumulated)", true},
      {"steps", &T::steps, "optimiser steps in all", true},
      {"seed", &T::seed, "seed of the sequence sampler", true},
      {"lr", &T::lr, "peak learning rate", true},
      {"lr_min", &T::lr_min, "learning rate at the end of the cosine decay", true},
      {"warmup_frac", &T::warmup_frac, "fraction of the steps with linear LR warm-up from 0", true},
      {"weight_decay", &T::weight_decay, "AdamW decoupled weight decay, on every parameter", true},
      {"beta1", &T::beta1, "AdamW first-moment decay", true},
      {"beta2", &T::beta2, "AdamW second-moment decay", true},
      {"adam_eps", &T::adam_eps, "AdamW epsilon", true},
      {"grad_clip", &T::grad_clip, "global-norm clip of the batch gradient (0: off)", true},
      {"ilr_init", &T::ilr_init, "ttt-e2e: inner-LR multiplier at step 0 (rises to 1)", true},
      {"ilr_warmup_frac", &T::ilr_warmup_frac, "ttt-e2e: fraction of the steps over which the inner LR warms up", true},
      {"first_order", &T::first_order, "ttt-e2e: drop the second-order terms (for comparison only)", true},
      {"remat", &T::remat, "recompute each chunk in the backward pass (memory flat in the sequence length)", true},
      {"tail_chunks", &T::tail_chunks,
       "with remat: the last chunks of a sequence run once, as one graph (more: faster, more GPU memory; 1: "
       "the least); 0: the engine's choice (ttt-e2e on a GPU: the last chunks whose graphs fit 8 GiB and a "
       "quarter of the GPU, where they are at least half the sequence)",
       false},
      {"moments_on_host", &T::moments_on_host,
       "on a GPU: AdamW's moments wait in host memory between updates, the GPU's memory left to the gradient "
       "(3B: 21.6 GiB more; two copies of 23 GB a step), the same numbers: true, false, or auto (where the "
       "parameters, their gradients and the moments would take more than 45% of the GPU: 3B on an 80 GB H100, "
       "not on an H200)",
       false},
      {"dtype", &T::dtype, "training precision: f32, f64, or bf16 (matmuls in bf16 on fp32 parameters)", true},
      {"device", &T::device, "where to train: cpu, cuda or cuda:N (cuda: each rank of a job on cuda:LOCAL_RANK)",
       false},
      {"dist_backend", &T::dist_backend,
       "data parallelism's c10d backend: auto (gloo on cpu, nccl on cuda), gloo or nccl", false},
      {"dist_timeout", &T::dist_timeout, "seconds a rank waits for the others before the job fails", false},
      {"log_every", &T::log_every, "steps between progress lines when not on a terminal", false},
      {"eval_every", &T::eval_every, "steps between validation losses (0: only at the end)", false},
      {"val_sequences", &T::val_sequences, "validation sequences of seq_len + 1 tokens, evenly spaced", false},
      {"checkpoint_every", &T::checkpoint_every, "steps between checkpoints (0: only at the end)", false},
  };
  return kFields;
}

TrainConfig TrainConfig::from_json(const json& j) {
  require(j.is_object(), "train config: expected a JSON object, got " + j.dump());
  TrainConfig config;
  for (const auto& item : j.items()) {
    // Named, not a structured binding: the lambdas below capture them (clang 14, the fuzz build).
    const std::string& key = item.key();
    const json& value = item.value();
    if (key == "model") {
      try {
        config.model = ModelConfig::from_json(value);
      } catch (const Error& e) {
        throw Error(std::string("train config: 'model': ") + e.what());
      }
      continue;
    }
    const Field* field = nullptr;
    for (const Field& f : fields()) {
      if (key == f.key) field = &f;
    }
    require(field != nullptr, key_error(key, "is not a training key (see ttt train --help)"));
    std::visit(
        [&](auto member) {
          using Value = std::remove_reference_t<decltype(config.*member)>;
          if constexpr (std::is_same_v<Value, int64_t>) {
            // Ranges are validate()'s, with its messages.
            config.*member = io::json_integer(value, std::numeric_limits<int64_t>::min(),
                                              std::numeric_limits<int64_t>::max(), key_name(key));
          } else {
            if constexpr (std::is_same_v<Value, double>) {
              require(value.is_number(), key_error(key, "must be a number, got " + value.dump()));
            } else if constexpr (std::is_same_v<Value, bool>) {
              require(value.is_boolean(), key_error(key, "must be true or false, got " + value.dump()));
            } else if (key == "moments_on_host" && value.is_boolean()) {
              // Run directories' config.json held it as a boolean before "auto".
              config.*member = value.get<bool>() ? "true" : "false";
              return;
            } else {
              require(value.is_string(), key_error(key, "must be a string, got " + value.dump()));
            }
            config.*member = value.get<Value>();
          }
        },
        field->member);
  }
  config.validate();
  return config;
}

TrainConfig TrainConfig::from_file(const std::string& path) {
  const json j = io::read_json_file(path, path + ": ");
  try {
    return from_json(j);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

json TrainConfig::to_json() const {
  json j = json::object();
  if (model) j["model"] = model->to_json();
  for (const Field& f : fields()) {
    std::visit([&](auto member) { j[f.key] = this->*member; }, f.member);
  }
  return j;
}

void TrainConfig::validate() const {
  const auto positive = [](int64_t value, const char* key) {
    require(value > 0, key_error(key, "must be positive, got " + std::to_string(value)));
  };
  const auto non_negative = [](double value, const char* key) {
    require(std::isfinite(value) && value >= 0, key_error(key, "must be a finite number >= 0"));
  };
  const auto fraction = [](double value, const char* key) {
    require(value >= 0 && value <= 1, key_error(key, "must lie in [0, 1], got " + std::to_string(value)));
  };
  positive(seq_len, "seq_len");
  positive(batch_size, "batch_size");
  positive(steps, "steps");
  positive(log_every, "log_every");
  require(seed >= 0, key_error("seed", "must be >= 0"));
  require(init_seed >= 0, key_error("init_seed", "must be >= 0"));
  require(std::isfinite(lr) && lr > 0, key_error("lr", "must be a finite number > 0"));
  non_negative(lr_min, "lr_min");
  require(lr_min <= lr, key_error("lr_min", "must not exceed lr"));
  fraction(warmup_frac, "warmup_frac");
  non_negative(weight_decay, "weight_decay");
  require(beta1 >= 0 && beta1 < 1, key_error("beta1", "must lie in [0, 1)"));
  require(beta2 >= 0 && beta2 < 1, key_error("beta2", "must lie in [0, 1)"));
  require(std::isfinite(adam_eps) && adam_eps > 0, key_error("adam_eps", "must be a finite number > 0"));
  non_negative(grad_clip, "grad_clip");
  fraction(ilr_init, "ilr_init");
  fraction(ilr_warmup_frac, "ilr_warmup_frac");
  require(eval_every >= 0, key_error("eval_every", "must be >= 0"));
  require(tail_chunks >= 0, key_error("tail_chunks", "must be >= 0"));
  require(checkpoint_every >= 0, key_error("checkpoint_every", "must be >= 0"));
  require(val_sequences >= 0, key_error("val_sequences", "must be >= 0"));
  require(dist_backend == "auto" || dist_backend == "gloo" || dist_backend == "nccl",
          key_error("dist_backend", "must be \"auto\", \"gloo\" or \"nccl\", got \"" + dist_backend + "\""));
  require(std::isfinite(dist_timeout) && dist_timeout > 0, key_error("dist_timeout", "must be a finite number > 0"));
  require(moments_on_host == "auto" || moments_on_host == "true" || moments_on_host == "false",
          key_error("moments_on_host", "must be \"auto\", \"true\" or \"false\", got \"" + moments_on_host + "\""));
  require(dtype == "f32" || dtype == "f64" || dtype == "bf16",
          key_error("dtype", "must be \"f32\", \"f64\" or \"bf16\", got \"" + dtype + "\""));
}

void TrainConfig::validate_for(const ModelConfig& m) const {
  if (m.is_ttt()) {
    require(seq_len % m.mini_batch == 0,
            key_error("seq_len", "must be a multiple of the model's mini_batch (" + std::to_string(m.mini_batch) +
                                     ") for ttt-e2e, got " + std::to_string(seq_len)));
  }
}

std::vector<std::string> TrainConfig::training_differences(const TrainConfig& other) const {
  std::vector<std::string> keys;
  if (model.has_value() != other.model.has_value() ||
      (model && model->to_json() != other.model->to_json())) {
    keys.push_back("model");
  }
  for (const Field& f : fields()) {
    if (!f.shapes_training) continue;
    const bool same = std::visit([&](auto member) { return this->*member == other.*member; }, f.member);
    if (!same) keys.push_back(f.key);
  }
  return keys;
}

int64_t TrainConfig::warmup_steps() const { return std::llround(warmup_frac * static_cast<double>(steps)); }
int64_t TrainConfig::ilr_warmup_steps() const {
  return std::llround(ilr_warmup_frac * static_cast<double>(steps));
}

double learning_rate(const TrainConfig& c, int64_t step) {
  const int64_t warmup = c.warmup_steps();
  if (step < warmup) return c.lr * static_cast<double>(step) / static_cast<double>(warmup);
  const int64_t decay = c.steps - 1 - warmup;
  if (decay <= 0) return c.lr;
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(decay));
  return c.lr_min + (c.lr - c.lr_min) * 0.5 * (1 + std::cos(M_PI * progress));
}

double inner_lr_multiplier(const TrainConfig& c, int64_t step) {
  const int64_t warmup = c.ilr_warmup_steps();
  if (warmup <= 0) return 1.0;
  return c.ilr_init + (1 - c.ilr_init) * std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(warmup));
}

}  // namespace ttt
