// `ttt train`: flags generated from the training config's single list of keys.
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <type_traits>
#include <variant>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "common/error.h"
#include "io/json_input.h"
#include "train/trainer.h"

namespace ttt::cli {
namespace {

using nlohmann::json;

volatile std::sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int signal) { g_stop_signal = signal; }

// The first Ctrl-C (or SIGTERM) asks the trainer to save and stop; the handler then
// resets, so a second one ends the process at once.
void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  action.sa_flags = SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

std::string flag_name(const std::string& key) {
  std::string flag = "--" + key;
  for (char& c : flag) c = c == '_' ? '-' : c;
  return key == "init" ? flag + ",--init-from" : flag;  // the extension fine-tune's wording
}

std::string duration(double seconds) {
  const auto s = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  char text[32];
  if (s >= 3600) {
    std::snprintf(text, sizeof text, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(text, sizeof text, "%lld:%02lld", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  }
  return text;
}

// Progress: a redrawn line on a terminal, plain lines every log_every steps otherwise.
class ProgressPrinter {
 public:
  ProgressPrinter(int64_t first_step, int64_t log_every)
      : first_step_(first_step), log_every_(log_every), terminal_(isatty(STDERR_FILENO)) {}

  void operator()(const StepReport& r) {
    const auto now = std::chrono::steady_clock::now();
    // A session's first two steps run eagerly and capture the CUDA graphs (3B at 128K: 89 and
    // 55 s, then 35): the ETA counts the steps after them once there are some.
    constexpr int64_t kWarmSteps = 2;
    const int64_t done = r.step - first_step_;
    if (done == kWarmSteps) warm_ = now;
    const auto since = done > kWarmSteps ? warm_ : start_;
    const double per_step = std::chrono::duration<double>(now - since).count() /
                            static_cast<double>(done > kWarmSteps ? done - kWarmSteps : done);
    const double eta = per_step * static_cast<double>(r.total_steps - r.step);
    const int bar_width = 24;
    const int filled = static_cast<int>(bar_width * r.step / r.total_steps);
    char line[256];
    char memory[32] = "";  // what PyTorch's allocator held of the GPU (StepReport::gpu_reserved_gib)
    if (r.gpu_reserved_gib) std::snprintf(memory, sizeof memory, " | GPU %.1f GiB", *r.gpu_reserved_gib);
    std::snprintf(line, sizeof line, "step %lld/%lld loss %.4f%s | %.0f tok/s%s | lr %.2e | elapsed %s ETA %s%s",
                  static_cast<long long>(r.step), static_cast<long long>(r.total_steps), r.loss,
                  r.val_loss ? (" val " + format(*r.val_loss)).c_str() : "", r.tokens_per_s, memory, r.lr,
                  duration(r.elapsed_s).c_str(), duration(eta).c_str(), r.saving ? " | saving a checkpoint" : "");
    if (terminal_) {
      std::fprintf(stderr, "\r\033[K[%s%s] %s", std::string(filled, '#').c_str(),
                   std::string(bar_width - filled, '.').c_str(), line);
      if (r.val_loss || r.step == r.total_steps) std::fprintf(stderr, "\n");
    } else if (r.step % log_every_ == 0 || r.step == r.total_steps || r.val_loss || r.saving) {
      std::fprintf(stderr, "%s\n", line);
    }
    std::fflush(stderr);
  }

 private:
  static std::string format(double x) {
    char text[32];
    std::snprintf(text, sizeof text, "%.4f", x);
    return text;
  }
  int64_t first_step_, log_every_;
  bool terminal_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), warm_;
};

}  // namespace

void add_train_command(CLI::App& app) {
  struct Options {
    std::string config_path, model_config_path, out_dir, resume_dir;
    std::map<std::string, json> values;  // key -> value given on the command line
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand(
      "train",
      "Train a model on token files: fa and swa by next-token loss, ttt-e2e by meta-learning through its\n"
      "test-time training (exact second-order gradients, per-chunk recomputation). Every key of the\n"
      "training config (JSON, --config) can be set by its flag, which wins over the file. A run\n"
      "directory holds config.json, checkpoint.safetensors (model + optimiser state, written atomically),\n"
      "model.safetensors and metrics.jsonl. Ctrl-C saves a checkpoint and stops; --resume continues\n"
      "exactly where it stopped.");
  command->add_option("--config", options->config_path, "training config (JSON); may hold the model config under \"model\"");
  command->add_option("--model-config", options->model_config_path,
                      "model config (JSON, as for ttt init) to train from scratch");
  command->add_option("--out", options->out_dir, "run directory for a new run");
  command->add_option("--resume", options->resume_dir, "continue the run in this directory")
      ->excludes(command->get_option("--out"))
      ->excludes(command->get_option("--model-config"));
  // One flag per key, of the key's type (INT, FLOAT, BOOLEAN, TEXT in the help; CLI11 checks the value).
  const TrainConfig defaults;
  for (const TrainConfig::Field& field : TrainConfig::fields()) {
    std::visit(
        [&](auto member) {
          using Value = std::remove_cvref_t<decltype(defaults.*member)>;
          const std::string key = field.key;
          command->add_option_function<Value>(
              flag_name(key), [options, key](const Value& value) { options->values[key] = value; },
              std::string(field.help) + " (default " + json(defaults.*member).dump() + ")");
        },
        field.member);
  }

  command->callback([options] {
    // What the user set: the config file, then --model-config, then the flags.
    json requested = options->config_path.empty()
                         ? json::object()
                         : io::read_json_file(options->config_path, options->config_path + ": ");
    require(requested.is_object(), options->config_path + ": the training config must be a JSON object");
    if (!options->model_config_path.empty()) {
      requested["model"] = io::read_json_file(options->model_config_path, options->model_config_path + ": ");
    }
    for (const auto& [key, value] : options->values) requested[key] = value;

    // One rank of a job when started as torchrun starts its workers (or as `ttt launch` does).
    const std::optional<JobRank> job = JobRank::from_environment();
    std::unique_ptr<Trainer> trainer;
    if (!options->resume_dir.empty()) {
      trainer = Trainer::resume(options->resume_dir, requested, job);
      if (trainer->is_main_rank())
        std::cerr << "resuming " << options->resume_dir << " at step " << trainer->steps_done() << "/"
                  << trainer->config().steps << "\n";
    } else {
      require(!options->out_dir.empty(), "--out (a directory for the new run) or --resume DIR is required");
      TrainConfig config;
      try {
        config = TrainConfig::from_json(requested);
      } catch (const Error& e) {
        throw Error((options->config_path.empty() ? std::string() : options->config_path + ": ") + e.what());
      }
      trainer = Trainer::start(config, options->out_dir, job);
      const Model& model = trainer->model();
      if (trainer->is_main_rank()) {
        std::cerr << "training " << model.config.to_json().at("variant").get<std::string>() << " ("
                  << count_params(model.config, model.params) << " parameters) for " << config.steps << " steps of "
                  << config.batch_size << " x " << config.seq_len << " tokens into " << options->out_dir << "\n";
        if (!config.init.empty()) {
          std::cerr << "starting from the weights of " << config.init << " (new optimiser state and schedule)";
          for (size_t i = 0; i < trainer->changed_from_init().size(); ++i) {
            std::cerr << (i == 0 ? "; model config changed: " : ", ") << trainer->changed_from_init()[i];
          }
          std::cerr << "\n";
        }
      }
    }
    if (job && trainer->is_main_rank()) {
      std::cerr << "data parallel: " << job->world_size << " ranks, " << trainer->config().batch_size / job->world_size
                << " sequences each per step\n";
    }
    if (trainer->optimizer().moments_on_host() && trainer->is_main_rank()) {
      std::cerr << "AdamW's moments wait in "
                << (trainer->optimizer().host_moments_pinned()
                        ? "pinned host memory"
                        : "pageable host memory (the host's pinned memory goes to the sequences' parking)")
                << (trainer->config().moments_on_host == "auto"
                        ? " (--moments-on-host auto: the parameters, their gradients and the moments would take more "
                          "than 45% of the GPU)"
                        : "")
                << "\n";
    }
    // Rank 0 speaks for the job; the other ranks print only their errors.
    const bool main_rank = trainer->is_main_rank();

    install_stop_handlers();
    ProgressPrinter progress(trainer->steps_done(), trainer->config().log_every);
    StepReport last;
    const auto outcome = trainer->run(
        [&](const StepReport& r) {
          last = r;
          if (main_rank) progress(r);
        },
        [] { return g_stop_signal != 0; });
    const std::string dir = trainer->out_dir();
    if (outcome == Trainer::Outcome::kStopped) {
      if (main_rank) {
        // Under a job the signal may have reached another rank only: the ranks stop together.
        const std::string cause = g_stop_signal ? "by signal " + std::to_string(g_stop_signal) : "with another rank";
        std::cerr << "\nttt: stopped " << cause << "; checkpoint at step " << trainer->steps_done() << " saved in "
                  << dir << "; continue with: ttt train --resume " << dir << "\n";
      }
      std::exit(130);
    }
    if (!main_rank) return;
    std::cout << "trained " << trainer->steps_done() << " steps";
    if (last.step > 0) std::cout << ": loss " << last.loss;
    if (last.val_loss) std::cout << ", validation loss " << *last.val_loss;
    std::cout << "; model in " << dir << "/model.safetensors, metrics in " << dir << "/metrics.jsonl\n";
  });
}

}  // namespace ttt::cli
