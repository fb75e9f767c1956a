#include "train/trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/types.h>

#include "common/error.h"
#include "common/host_memory.h"
#include "io/atomic_file.h"
#include "io/input_file.h"
#include "io/json_input.h"
#include "io/paths.h"
#include "io/safetensors.h"
#include "model/compute.h"
#include "ttt/inner_loop.h"
#include "ttt/sequence_gradient.h"

namespace ttt {
namespace {

using nlohmann::json;

constexpr const char* kCheckpointFormat = "ttt-train-checkpoint/2";
constexpr const char* kOptimizerPrefix = "optimizer.";

std::string checkpoint_path(const std::string& dir) { return dir + "/checkpoint.safetensors"; }
std::string metrics_path(const std::string& dir) { return dir + "/metrics.jsonl"; }

// Paths in a run's config are stored absolute, so it resumes from any working directory.
TrainConfig with_absolute_paths(TrainConfig config) {
  for (std::string* path : {&config.init, &config.train_tokens, &config.val_tokens}) {
    if (path->empty()) continue;
    if (char* resolved = ::realpath(path->c_str(), nullptr)) {
      *path = resolved;
      std::free(resolved);
    }
  }
  return config;
}

// The training precision's dtypes (bf16 trains fp32 parameters with bf16 matmuls).
torch::Dtype param_dtype(const TrainConfig& config) { return parse_param_dtype(config.dtype); }

std::optional<torch::Dtype> matmul_dtype(const TrainConfig& config) {
  return parse_matmul_dtype(config.dtype, parse_device(config.device));
}

// Where this process trains: the ranks of a job on a GPU machine take one GPU each, so there
// "cuda" means cuda:LOCAL_RANK.
torch::Device training_device(const TrainConfig& config, const std::optional<JobRank>& job) {
  if (job && config.device == "cuda") return parse_device("cuda:" + std::to_string(job->local_rank));
  return parse_device(config.device);
}

// The parameters as fresh leaves of the training dtype, on the training device.
Params trainable(const Model& model, const TrainConfig& config, const torch::Device& device) {
  return convert_params(model.config, model.params, param_dtype(config), /*requires_grad=*/true, device);
}

// The weights `init` names (a model file, or a run directory's latest model.safetensors):
// under the checkpoint's own config, or under `config.model` where given (the same tensor
// names and shapes, checked); `changed` gets the model keys that differ, as "key old -> new".
Model initial_model(const TrainConfig& config, torch::Dtype dtype, std::vector<std::string>& changed) {
  const std::string path = io::is_directory(config.init) ? config.init + "/model.safetensors" : config.init;
  require(io::exists(path), "train config: 'init': " + path + " does not exist");
  Model model = load_model(path, dtype);
  if (!config.model) return model;
  const json saved = model.config.to_json(), given = config.model->to_json();
  for (const auto& [key, value] : given.items()) {
    if (!saved.contains(key) || saved.at(key) != value) {
      changed.push_back(key + " " + (saved.contains(key) ? saved.at(key).dump() : "(none)") + " -> " + value.dump());
    }
  }
  try {
    model.params = params_from_named(*config.model, named_params(model.config, model.params), dtype);
  } catch (const Error& e) {
    throw Error("train config: 'init' (" + path + ") does not fit 'model': " + e.what());
  }
  model.config = *config.model;
  return model;
}

// What every rank of a job must agree on, as a JSON object of named settings: the training
// config but the paths (each rank's may differ; the data's sizes stand for them) and the keys
// that act on one rank alone, the model that was built, and the step it starts from.
json rank_setup(const TrainConfig& config, const ModelConfig& model, int64_t step, const TokenDataset& train,
                const TokenDataset* val) {
  json setup = config.to_json();
  for (const char* key : {"init", "train_tokens", "val_tokens", "log_every", "dist_timeout"}) setup.erase(key);
  setup["model"] = model.to_json();
  setup["train_tokens (tokens)"] = train.size();
  setup["val_tokens (tokens)"] = val ? val->size() : 0;
  setup["step"] = step;
  return setup;
}

std::string gigabytes(uint64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GB", static_cast<double>(bytes) / 1e9);
  return text;
}

}  // namespace

uint64_t disk_needed_for_saves(const SaveSizes& sizes, int64_t saves) {
  const auto c = static_cast<int64_t>(sizes.checkpoint), m = static_cast<int64_t>(sizes.model);
  const auto ec = static_cast<int64_t>(sizes.existing_checkpoint), em = static_cast<int64_t>(sizes.existing_model);
  if (saves <= 0) return 0;
  // The checkpoint's temporary beside the old checkpoint; then, that one gone, the model's.
  int64_t needed = std::max(c, c - ec + m);
  // What the first save leaves taken, then room for the larger temporary of the next.
  if (saves > 1) needed = std::max(needed, (c - ec) + (m - em) + std::max(c, m));
  return static_cast<uint64_t>(std::max<int64_t>(needed, 0));
}

void check_room_to_save(const std::string& dir, const SaveSizes& sizes, int64_t saves, uint64_t free_bytes,
                        const std::string& context, const std::string& remedy) {
  const uint64_t needed = disk_needed_for_saves(sizes, saves);
  if (needed <= free_bytes) return;
  std::string message = context + dir + " has " + gigabytes(free_bytes) + " free, but " +
                        (saves > 1 ? "this run's saves need " : "saving needs ") + gigabytes(needed) +
                        " there (each writes a checkpoint of " + gigabytes(sizes.checkpoint) +
                        ", weights and optimiser state, then a model of " + gigabytes(sizes.model) +
                        ", each whole beside the file it replaces); " + remedy;
  if (saves > 1 && disk_needed_for_saves(sizes, 1) <= free_bytes) {
    message += ", or save only at the end (--checkpoint-every 0)";
  }
  throw Error(message);
}

int64_t planned_saves(int64_t steps, int64_t steps_done, int64_t checkpoint_every) {
  if (steps_done >= steps) return 0;
  // Those at multiples of checkpoint_every before the last step, and the last.
  return (checkpoint_every > 0 ? (steps - 1) / checkpoint_every - steps_done / checkpoint_every : 0) + 1;
}

bool pin_host_moments(bool gradient_parks, int64_t moment_bytes, int64_t ranks_here, int64_t host_bytes) {
  return !gradient_parks && moment_bytes * ranks_here <= pinned_host_budget(host_bytes);
}

bool moments_on_host_by_default(int64_t training_state_bytes, std::optional<int64_t> device_bytes) {
  return device_bytes && training_state_bytes > *device_bytes / 20 * 9;
}

std::string out_of_memory_advice(const TrainConfig& config, bool ttt_e2e, bool moments_on_host, int64_t moment_bytes) {
  std::string advice = "To fit: ";
  if (!moments_on_host) {
    advice += "--moments-on-host true (AdamW's moments, " + gigabytes(static_cast<uint64_t>(moment_bytes)) +
              ", wait in host memory between updates); ";
  }
  if (ttt_e2e && config.tail_chunks != 1) {
    advice += "--tail-chunks 1 (the last chunks' graphs, alive together, take up to 8 GiB by default); ";
  }
  return advice +
         "a shorter --seq-len, a smaller model or a GPU with more memory (--batch-size does not matter: a step's "
         "sequences run one at a time)";
}

Trainer::Trainer(TrainConfig config, Model model, std::string out_dir, const std::optional<JobRank>& job)
    : config_(std::move(config)), model_(std::move(model)), out_dir_(std::move(out_dir)) {
  config_.validate_for(model_.config);
  if (job) {
    require(config_.batch_size % job->world_size == 0,
            "train config: 'batch_size' (" + std::to_string(config_.batch_size) +
                ") must be divisible by the number of ranks (" + std::to_string(job->world_size) + ")");
    const auto timeout = std::chrono::milliseconds(std::llround(config_.dist_timeout * 1000));
    ranks_ = Communicator::connect(*job, model_.params.embed.device(), config_.dist_backend, timeout);
    ranks_on_host_ = job->local_world_size;
  }
  open_data();
  AdamWOptions adam{config_.beta1, config_.beta2, config_.adam_eps, config_.weight_decay};
  int64_t moment_bytes = 0;
  for (const auto& [name, p] : named_params(model_.config, model_.params))
    moment_bytes += 2 * p.numel() * p.element_size();
  // The parameters and their gradients take as much as the two moments.
  adam.moments_on_host =
      config_.moments_on_host == "true" ||
      (config_.moments_on_host == "auto" &&
       moments_on_host_by_default(2 * moment_bytes, device_total_memory(model_.params.embed.device())));
  if (adam.moments_on_host) {
    GradientOptions gradient;
    gradient.tail_chunks = config_.tail_chunks;
    gradient.processes_on_host = ranks_on_host_;
    const bool parks =
        config_.remat && resolve_gradient_options(model_.config, model_.params, config_.seq_len, gradient).park_on_host;
    adam.pin_host_moments = pin_host_moments(parks, moment_bytes, ranks_on_host_, host_memory_limit());
  }
  optimizer_ = std::make_unique<AdamW>(named_params(model_.config, model_.params), adam);
}

std::unique_ptr<Trainer> Trainer::start(const TrainConfig& requested, const std::string& out_dir,
                                        const std::optional<JobRank>& job) {
  const TrainConfig config = with_absolute_paths(requested);
  config.validate();
  require(config.model || !config.init.empty(),
          "train config: give the model, as 'model' (a config to start from scratch) or 'init' (a checkpoint)");
  require(!config.train_tokens.empty(), "train config: 'train_tokens' (the training token file) is required");
  require(!io::exists(checkpoint_path(out_dir)),
          out_dir + " already holds a training run: resume it (--resume) or choose another directory");
  const torch::Dtype dtype = param_dtype(config);
  const torch::Device device = training_device(config, job);  // an unusable one fails before anything is written
  Model model;
  std::vector<std::string> changed;
  if (!config.init.empty()) {
    model = initial_model(config, dtype, changed);
  } else {
    model.config = *config.model;
    model.params = init_params(model.config, static_cast<uint64_t>(config.init_seed), dtype);
  }
  model.params = trainable(model, config, device);
  std::unique_ptr<Trainer> trainer(new Trainer(config, std::move(model), out_dir, job));
  trainer->changed_from_init_ = std::move(changed);
  trainer->check_ranks_agree();
  trainer->check_disk_room(planned_saves(config.steps, 0, config.checkpoint_every), "",
                           "free some space or choose another directory");
  if (trainer->is_main_rank()) {
    io::make_directories(out_dir);
    io::write_text_file(out_dir + "/config.json", config.to_json().dump(2) + "\n");
    io::write_text_file(metrics_path(out_dir), "");
  }
  return trainer;
}

std::unique_ptr<Trainer> Trainer::resume(const std::string& out_dir, const json& overrides,
                                         const std::optional<JobRank>& job) {
  const std::string path = checkpoint_path(out_dir);
  require(io::exists(path), out_dir + ": no training run to resume (" + path + " is missing)");
  io::SafetensorsFile file = io::read_safetensors(path);
  const auto meta = [&](const std::string& key) {
    const auto it = file.metadata.find(key);
    require(it != file.metadata.end(), path + ": not a training checkpoint (no '" + key + "' in its metadata)");
    return it->second;
  };
  // Version 2 added the checksum; checkpoints written before it still resume.
  const std::string format = meta("format");
  require(format == kCheckpointFormat || format == "ttt-train-checkpoint/1",
          path + ": unsupported checkpoint format '" + format + "' (expected " + kCheckpointFormat + ")");
  io::check_integrity(file.checksum_verified, path, format == kCheckpointFormat);
  // save_checkpoint writes these numbers as decimal text, which is JSON; errors name the file and key.
  const auto meta_number = [&](const std::string& key) {
    return io::parse_json_input(meta(key), path + ": metadata '" + key + "': ");
  };
  const int64_t step =
      io::json_integer(meta_number("step"), 0, std::numeric_limits<int64_t>::max(), path + ": metadata 'step'");
  const json elapsed_s = meta_number("elapsed_s");
  require(elapsed_s.is_number() && elapsed_s.get<double>() >= 0,
          path + ": metadata 'elapsed_s' must be a number >= 0, got " + elapsed_s.dump());
  const std::string saved_text = meta("train_config");
  const TrainConfig saved = [&] {
    try {
      return TrainConfig::from_json(io::parse_json_input(saved_text, "train_config metadata: "));
    } catch (const Error& e) {
      throw Error(path + ": " + e.what());
    }
  }();
  json merged = saved.to_json();
  require(overrides.is_object(), "internal: resume overrides must be a JSON object");
  for (const auto& [key, value] : overrides.items()) merged[key] = value;
  const TrainConfig requested = with_absolute_paths(TrainConfig::from_json(merged));
  const std::vector<std::string> differences = saved.training_differences(requested);
  if (!differences.empty()) {
    std::string list;
    for (const std::string& key : differences) {
      list += (list.empty() ? "" : ", ") + key;
      if (key != "model") list += " (saved " + saved.to_json().at(key).dump() + ", now " + requested.to_json().at(key).dump() + ")";
    }
    throw Error(out_dir + " was trained with a different config: " + list +
                ". Resume with the saved config (" + out_dir + "/config.json), or start a new run elsewhere");
  }

  std::map<std::string, torch::Tensor> model_tensors, optimizer_state;
  for (auto& [name, tensor] : file.tensors) {
    if (name.rfind(kOptimizerPrefix, 0) == 0) {
      optimizer_state.emplace(name.substr(std::strlen(kOptimizerPrefix)), tensor);
    } else {
      model_tensors.emplace(name, tensor);
    }
  }
  const torch::Dtype dtype = param_dtype(saved);
  Model model;
  try {
    model.config = ModelConfig::from_json_text(meta("config"));
    model.params = params_from_named(model.config, model_tensors, dtype);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  model.params = trainable(model, requested, training_device(requested, job));
  std::unique_ptr<Trainer> trainer(new Trainer(requested, std::move(model), out_dir, job));
  trainer->step_ = step;
  trainer->saved_step_ = step;
  trainer->elapsed_before_ = elapsed_s.get<double>();
  trainer->optimizer_->load_state(optimizer_state, trainer->step_);
  trainer->check_ranks_agree();
  if (trainer->is_main_rank()) {
    // A run killed while saving (or while a resume rewrote its config and metrics) left the
    // temporary of that write.
    for (const std::string& file :
         {path, out_dir + "/model.safetensors", out_dir + "/config.json", metrics_path(out_dir)}) {
      io::remove_stale_temporaries(file);
    }
  }
  trainer->check_disk_room(planned_saves(requested.steps, step, requested.checkpoint_every), "", "free some space");
  if (!trainer->is_main_rank()) return trainer;
  io::write_text_file(out_dir + "/config.json", requested.to_json().dump(2) + "\n");

  // Steps after the checkpoint will be taken again: their metrics go.
  const std::string metrics_file = metrics_path(out_dir);
  std::istringstream lines(io::exists(metrics_file) ? io::read_whole_file(metrics_file, metrics_file + ": ") : "");
  std::string kept;
  for (std::string line; std::getline(lines, line);) {
    try {
      const json metrics = io::parse_json_input(line, metrics_file + ": ");
      require(metrics.is_object() && metrics.contains("step"), "not a step's metrics");
      io::json_integer(metrics.at("step"), 0, trainer->step_, "a step up to the checkpoint's");
      kept += line + "\n";
    } catch (const Error&) {
      // A step after the checkpoint, or a line torn by a crash mid-write: dropped, as every line
      // that is not a kept step's metrics.
    }
  }
  io::write_text_file(metrics_path(out_dir), kept);
  return trainer;
}

void Trainer::open_data() {
  const int64_t need = config_.seq_len + 1;
  check_tokenizer_fits_model(config_.train_tokens, model_.config.vocab_size, model_.config.bos_id);
  train_data_ = std::make_unique<TokenDataset>(config_.train_tokens, model_.config.vocab_size, need);
  if (!config_.val_tokens.empty() && config_.val_sequences > 0) {
    check_tokenizer_fits_model(config_.val_tokens, model_.config.vocab_size, model_.config.bos_id);
    val_data_ = std::make_unique<TokenDataset>(config_.val_tokens, model_.config.vocab_size, need);
  }
}

void Trainer::check_ranks_agree() {
  if (!ranks_) return;
  const json mine = rank_setup(config_, model_.config, step_, *train_data_, val_data_.get());
  const std::vector<std::string> setups = ranks_->all_gather_text("setup", mine.dump());
  const auto setup_of = [&](int rank) {
    return io::parse_json_input(setups[static_cast<size_t>(rank)], "rank " + std::to_string(rank) + "'s setup: ");
  };
  const json first = setup_of(0);
  for (int r = 1; r < ranks_->world_size(); ++r) {
    const json other = setup_of(r);
    for (const auto& [key, value] : first.items()) {
      if (other.contains(key) && other.at(key) == value) continue;
      throw Error("the ranks of this job disagree on '" + key + "': " + value.dump() + " on rank 0, " +
                  (other.contains(key) ? other.at(key).dump() : "nothing") + " on rank " + std::to_string(r));
    }
  }
  std::vector<torch::Tensor> weights;
  for (const auto& [name, p] : named_params(model_.config, model_.params)) weights.push_back(p.detach());
  ranks_->broadcast_from_rank0(weights);
}

std::vector<torch::Tensor> Trainer::batch(int64_t step) const {
  const int64_t length = config_.seq_len + 1;
  std::vector<torch::Tensor> sequences;
  const int64_t rank = ranks_ ? ranks_->rank() : 0;
  for (int64_t j = rank; j < config_.batch_size; j += world_size()) {
    const int64_t offset =
        sequence_offset(static_cast<uint64_t>(config_.seed), step, j, train_data_->size() - length);
    sequences.push_back(train_data_->slice(offset, length).to(model_.params.embed.device()));
  }
  return sequences;
}

std::optional<double> Trainer::accumulate_gradients(int64_t step, const std::function<bool()>& stop_requested) {
  if (gradients_.clear(model_.config, model_.params)) gradient_graphs_.reset();  // it held the old views
  const double scale = 1.0 / static_cast<double>(config_.batch_size);
  const double ilr_mult = inner_lr_multiplier(config_, step);
  const MatmulDtypeGuard precision(matmul_dtype(config_));
  if (config_.remat && (!gradient_graphs_ || !gradient_graphs_->serves(model_.params))) {
    gradient_graphs_ = GradientGraphs::where_supported(model_.config, model_.params);
  }
  double total = 0;
  bool stopped = false;
  for (const torch::Tensor& tokens : batch(step)) {
    if (stop_requested && stop_requested()) {
      stopped = true;
      break;
    }
    if (config_.remat) {
      GradientOptions options;
      options.graphs = gradient_graphs_.get();
      options.ilr_mult = ilr_mult;
      options.loss_scale = scale;
      options.first_order = config_.first_order;
      options.tail_chunks = config_.tail_chunks;
      options.processes_on_host = ranks_on_host_;
      total += accumulate_sequence_gradient(model_.config, model_.params, tokens, options).item<double>();
    } else {
      SequenceOptions options;
      options.ilr_mult = ilr_mult;
      options.outer_gradient = config_.first_order ? OuterGradient::kFirstOrder : OuterGradient::kExact;
      const torch::Tensor loss = run_sequence(model_.config, model_.params, tokens, options).loss;
      (loss * scale).backward();
      total += loss.item<double>();
    }
  }
  if (ranks_) {
    // One collective settles the step for every rank: the batch's loss, and whether any rank stopped.
    torch::Tensor shared =
        torch::tensor({total, stopped ? 1.0 : 0.0}, torch::kFloat64).to(model_.params.embed.device());
    ranks_->all_reduce_sum({shared});
    total = shared[0].item<double>();
    stopped = shared[1].item<double>() > 0;
    if (!stopped) ranks_->all_reduce_sum({gradients_.flat()});
  }
  if (stopped) return std::nullopt;
  return total * scale;
}

double Trainer::validation_loss() const {
  require(val_data_ != nullptr, "internal: no validation data");
  const Params frozen = detach_params(model_.config, model_.params);
  const MatmulDtypeGuard precision(matmul_dtype(config_));
  const int64_t length = config_.seq_len + 1, count = config_.val_sequences;
  const int64_t span = val_data_->size() - length;
  double total = 0;
  for (int64_t i = ranks_ ? ranks_->rank() : 0; i < count; i += world_size()) {
    const int64_t offset = count > 1 ? span * i / (count - 1) : 0;
    const torch::Tensor tokens = val_data_->slice(offset, length).to(frozen.embed.device());
    total += run_sequence(model_.config, frozen, tokens).loss.item<double>();
  }
  if (ranks_) {
    torch::Tensor sum = torch::tensor({total}, torch::kFloat64).to(frozen.embed.device());
    ranks_->all_reduce_sum({sum});
    total = sum.item<double>();
  }
  return total / static_cast<double>(count);
}

double Trainer::clip_and_update(double lr) {
  torch::NoGradGuard no_grad;
  const auto params = named_params(model_.config, model_.params);
  std::vector<torch::Tensor> grads;
  for (const auto& [name, p] : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  // Multi-tensor kernels: a pass or two for all the gradients, where a pow and a sum each
  // took ~4.6 ms a step at 125M on an H200 (kernel launches, ~110 tensors).
  const double grad_norm = grads.empty() ? 0.0 : torch::stack(at::_foreach_norm(grads)).norm().item<double>();
  require(std::isfinite(grad_norm), "training diverged at step " + std::to_string(step_ + 1) +
                                        " (the gradient is not finite); " + saved_so_far() + "; a smaller lr may help");
  if (config_.grad_clip > 0 && grad_norm > config_.grad_clip) at::_foreach_mul_(grads, config_.grad_clip / grad_norm);
  optimizer_->step(lr);
  return grad_norm;
}

std::string Trainer::saved_so_far() const {
  return io::exists(checkpoint_path(out_dir_)) ? "the last checkpoint in " + out_dir_ + " is intact"
                                               : "nothing was saved (no checkpoint yet)";
}

double Trainer::elapsed_s() const {
  return elapsed_before_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - session_start_).count();
}

void Trainer::save_checkpoint() {
  // check_disk_room waits for every rank to finish the step (the weights are then the same on all
  // of them): rank 0 writes.
  check_disk_room(
      1,
      "cannot save step " + std::to_string(step_) + ", nothing written (" +
          (saved_step_ ? "the checkpoint of step " + std::to_string(*saved_step_) + " stays; --resume continues from it"
                       : "no checkpoint saved yet") +
          "): ",
      "free some space");
  if (!is_main_rank()) {
    saved_step_ = step_;
    return;
  }
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& [name, p] : named_params(model_.config, model_.params)) tensors.emplace(name, p.detach());
  for (const auto& [name, moment] : optimizer_->state()) tensors.emplace(kOptimizerPrefix + name, moment);
  std::ostringstream elapsed;
  elapsed.precision(17);
  elapsed << elapsed_s();
  io::write_safetensors(checkpoint_path(out_dir_), tensors,
                        {{"format", kCheckpointFormat},
                         {"config", model_.config.to_json_text()},
                         {"train_config", config_.to_json().dump()},
                         {"step", std::to_string(step_)},
                         {"elapsed_s", elapsed.str()}});
  save_model(out_dir_ + "/model.safetensors", model_, torch::kFloat32);
  saved_step_ = step_;
}

SaveSizes Trainer::save_sizes() const {
  // The files' headers (names, shapes, the configs) take well under this.
  constexpr uint64_t kHeaderBytes = 1 << 20;
  SaveSizes sizes;
  sizes.checkpoint = sizes.model = kHeaderBytes;
  for (const auto& [name, p] : named_params(model_.config, model_.params)) {
    sizes.checkpoint += static_cast<uint64_t>(p.numel() * p.element_size());
    sizes.model += static_cast<uint64_t>(p.numel()) * sizeof(float);  // save_model writes fp32
  }
  for (const auto& [name, moment] : optimizer_->state()) {
    sizes.checkpoint += static_cast<uint64_t>(moment.numel() * moment.element_size());
  }
  sizes.existing_checkpoint = io::file_size_or_zero(checkpoint_path(out_dir_));
  sizes.existing_model = io::file_size_or_zero(out_dir_ + "/model.safetensors");
  return sizes;
}

void Trainer::check_disk_room(int64_t saves, const std::string& context, const std::string& remedy) const {
  std::string refusal;
  const std::optional<uint64_t> free_bytes = is_main_rank() ? io::free_disk_bytes(out_dir_) : std::nullopt;
  try {
    if (free_bytes) check_room_to_save(out_dir_, save_sizes(), saves, *free_bytes, context, remedy);
  } catch (const Error& e) {
    refusal = e.what();
  }
  // The verdict goes as a flag, which fails at once where a rank died; the store, which carries
  // the text, would wait out the timeout for it. A refusal ends the run: one exchange at most.
  if (ranks_ && ranks_->any(!refusal.empty())) refusal = ranks_->all_gather_text("disk room", refusal).front();
  if (!refusal.empty()) throw Error(refusal);
}

void Trainer::append_metrics(const StepReport& r) const {
  json line = {{"step", r.step},         {"loss", r.loss},           {"lr", r.lr},
               {"ilr_mult", r.ilr_mult}, {"grad_norm", r.grad_norm}, {"tokens_per_s", r.tokens_per_s},
               {"update_s", r.update_s}, {"elapsed_s", r.elapsed_s}};
  if (r.val_loss) line["val_loss"] = *r.val_loss;
  if (r.gpu_peak_gib) line["gpu_peak_gib"] = *r.gpu_peak_gib;
  if (r.gpu_reserved_gib) line["gpu_reserved_gib"] = *r.gpu_reserved_gib;
  std::ofstream out(metrics_path(out_dir_), std::ios::app);
  out << line.dump() << "\n";
  out.flush();
  require(out.good(), metrics_path(out_dir_) + ": cannot append the metrics");
}

Trainer::Outcome Trainer::run(const std::function<void(const StepReport&)>& on_step,
                              const std::function<bool()>& stop_requested) {
  const torch::Device device = model_.params.embed.device();
  // Where the GPU runs out of memory, the error says what to change (the step's text alone names
  // only the allocation that failed).
  const auto fitting = [&](const auto& work) {
    try {
      return work();
    } catch (const c10::OutOfMemoryError& e) {
      int64_t moment_bytes = 0;
      for (const auto& [name, moment] : optimizer_->state()) moment_bytes += moment.numel() * moment.element_size();
      throw Error(describe(e) + " (step " + std::to_string(step_ + 1) + "; " + saved_so_far() + "). " +
                  out_of_memory_advice(config_, model_.config.is_ttt(), optimizer_->moments_on_host(), moment_bytes));
    }
  };
  while (step_ < config_.steps) {
    const auto step_start = std::chrono::steady_clock::now();
    reset_device_memory_peaks(device);
    const std::optional<double> loss = fitting([&] { return accumulate_gradients(step_, stop_requested); });
    if (!loss) {
      save_checkpoint();
      return Outcome::kStopped;
    }
    require(std::isfinite(*loss), "training diverged at step " + std::to_string(step_ + 1) + " (loss " +
                                      std::to_string(*loss) + "); " + saved_so_far() + "; a smaller lr may help");

    StepReport report;
    report.lr = learning_rate(config_, step_);
    report.ilr_mult = inner_lr_multiplier(config_, step_);
    const auto update_start = std::chrono::steady_clock::now();
    report.grad_norm = fitting([&] { return clip_and_update(report.lr); });
    if (device.is_cuda()) torch::cuda::synchronize(device.index());  // the update's kernels in its time
    report.update_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - update_start).count();
    ++step_;

    report.step = step_;
    report.total_steps = config_.steps;
    report.loss = *loss;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    report.tokens_per_s = static_cast<double>(config_.batch_size * config_.seq_len) / std::max(seconds, 1e-9);
    if (const std::optional<DeviceMemory> memory = device_memory(device)) {
      report.gpu_peak_gib = static_cast<double>(memory->peak_allocated) / (1 << 30);
      report.gpu_reserved_gib = static_cast<double>(memory->peak_reserved) / (1 << 30);
    }
    const bool last = step_ == config_.steps;
    if (val_data_ && (last || (config_.eval_every > 0 && step_ % config_.eval_every == 0))) {
      report.val_loss = fitting([&] { return validation_loss(); });
    }
    report.elapsed_s = elapsed_s();
    report.saving = last || (config_.checkpoint_every > 0 && step_ % config_.checkpoint_every == 0);
    if (is_main_rank()) append_metrics(report);
    if (on_step) on_step(report);
    if (report.saving) save_checkpoint();
  }
  return Outcome::kFinished;
}

}  // namespace ttt
