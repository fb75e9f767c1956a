// `ttt train` driven as a user drives it: a step's gradient equals `ttt grad`'s, Ctrl-C
// saves a checkpoint that resumes exactly, SIGKILL at any moment (of training, of a session's
// save) never tears a file, flags and errors; data-parallel jobs (`ttt launch`,
// or ranks started as torchrun starts them) train as one process does, and fail cleanly.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <type_traits>
#include <variant>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "io/token_file.h"
#include "model/checkpoint.h"
#include "test_util.h"
#include "train/trainer.h"
#include "ttt_build_features.h"

namespace ttt {
namespace {

using nlohmann::json;
using test::temp_path;

using Environment = std::vector<std::pair<std::string, std::string>>;

// The spawned processes not yet waited for. Those a failed assertion leaves running are killed
// when the test's process ends, rather than loading the machine under the tests that run next
// (a launcher's ranks, in a group of their own, end with it: they get SIGTERM).
struct Spawned {
  std::set<pid_t> running;
  ~Spawned() {
    for (const pid_t pid : running) {
      kill(-pid, SIGKILL);  // its process group: what it started in its own
      waitpid(pid, nullptr, 0);
    }
  }
};
Spawned spawned;

// Starts `ttt args...` single-threaded with `environment` set, stdout and stderr into `log`, in
// a process group of its own.
pid_t spawn_ttt(const std::vector<std::string>& args, const std::string& log, const Environment& environment = {}) {
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    setenv("OMP_NUM_THREADS", "1", 1);
    for (const auto& [name, value] : environment) setenv(name.c_str(), value.c_str(), 1);
    if (!freopen(log.c_str(), "w", stdout) || dup2(fileno(stdout), STDERR_FILENO) < 0) _exit(127);
    std::vector<char*> argv{const_cast<char*>(TTT_BINARY)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(TTT_BINARY, argv.data());
    _exit(127);
  }
  setpgid(pid, 0);  // also here: whichever runs first
  spawned.running.insert(pid);
  return pid;
}

struct Finished {
  int exit_code;
  std::string output;
};

Finished wait_for(pid_t pid, const std::string& log) {
  int status = 0;
  waitpid(pid, &status, 0);
  spawned.running.erase(pid);
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), text.str()};
}

Finished run_ttt(const std::vector<std::string>& args) {
  const std::string log = temp_path("log.txt");
  return wait_for(spawn_ttt(args, log), log);
}

int64_t line_count(const std::string& path) {
  std::ifstream in(path);
  int64_t lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  return lines;
}

std::vector<int64_t> text_tokens(int64_t n) {
  std::ifstream in("/usr/share/common-licenses/GPL-3", std::ios::binary);
  std::vector<int64_t> tokens{256};
  for (char c; static_cast<int64_t>(tokens.size()) < n && in.get(c);) tokens.push_back(static_cast<unsigned char>(c));
  return tokens;
}

std::string model_config_file(Variant variant = Variant::kTttE2E) {
  ModelConfig c = test::tiny_config(variant);
  c.vocab_size = 258;
  c.d_model = 16;
  c.d_ff = 32;
  c.window = variant == Variant::kFullAttention ? 0 : 24;
  c.mini_batch = 16;
  c.bos_id = 256;
  c.eos_id = 257;
  const std::string path = temp_path("model.json");
  std::ofstream(path) << c.to_json().dump();
  return path;
}

TEST(TrainCli, StepGradientIsTttGrad) {
  const std::string model_path = temp_path("init.safetensors");
  Model model;
  model.config = ModelConfig::from_file(model_config_file());
  model.params = init_params(model.config, 5);
  save_model(model_path, model);
  const std::string data = temp_path("train.u32");
  io::write_token_file(data, text_tokens(5000));

  for (const bool remat : {true, false}) {
    TrainConfig c;
    c.init = model_path;
    c.train_tokens = data;
    c.seq_len = 48;  // 3 chunks: 2 inner steps
    c.batch_size = 2;
    c.ilr_warmup_frac = 0;  // ttt grad runs at inner-LR multiplier 1
    c.dtype = "f64";
    c.remat = remat;
    test::ScratchDir dir;
    auto trainer = Trainer::start(c, dir.path("run"));
    const double loss = trainer->accumulate_gradients(0).value();

    // The batch-mean of `ttt grad` over the step's sequences.
    std::map<std::string, torch::Tensor> expected;
    double expected_loss = 0;
    for (const torch::Tensor& sequence : trainer->batch(0)) {
      const std::string tokens = temp_path("seq.u32"), grads = temp_path("grad.safetensors");
      io::write_token_file(tokens, std::vector<int64_t>(sequence.data_ptr<int64_t>(),
                                                        sequence.data_ptr<int64_t>() + sequence.numel()));
      const Finished run =
          run_ttt({"grad", "--model", model_path, "--tokens", tokens, "--out", grads, "--dtype", "f64"});
      ASSERT_EQ(run.exit_code, 0) << run.output;
      const io::SafetensorsFile file = io::read_safetensors(grads);
      expected_loss += std::stod(file.metadata.at("loss")) / 2;
      for (const auto& [name, g] : file.tensors) {
        expected[name] = expected.count(name) ? expected[name] + g / 2 : g / 2;
      }
    }
    EXPECT_NEAR(loss, expected_loss, 1e-12);
    const auto params = named_params(trainer->model().config, trainer->model().params);
    ASSERT_EQ(expected.size(), params.size());
    for (const auto& [name, g] : expected) {
      const torch::Tensor actual = params.at(name).grad();
      ASSERT_TRUE(actual.defined()) << name;
      const double scale = std::max(1e-3, g.abs().max().item<double>());
      EXPECT_LT((actual - g).abs().max().item<double>(), 1e-11 * scale) << name << (remat ? " remat" : "");
    }
  }
}

TEST(TrainCli, CtrlCSavesAndResumeContinuesExactly) {
  const std::string data = temp_path("train.u32");
  io::write_token_file(data, text_tokens(20000));
  const std::string config = temp_path("train.json");
  std::ofstream(config) << json{{"train_tokens", data}, {"seq_len", 64}, {"batch_size", 2}, {"steps", 30},
                                {"checkpoint_every", 1000}, {"lr", 2e-3}}
                               .dump();
  test::ScratchDir dir;
  const std::vector<std::string> args{"train", "--config", config, "--model-config", model_config_file()};
  const auto with = [](std::vector<std::string> a, const std::vector<std::string>& more) {
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };

  const Finished whole = run_ttt(with(args, {"--out", dir.path("whole")}));
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  // The last step's line says a save follows (3B's takes a minute); no other step saves.
  const size_t last_line = whole.output.find("step 30/30 ");
  ASSERT_NE(last_line, std::string::npos) << whole.output;
  EXPECT_NE(whole.output.find(" | saving a checkpoint", last_line), std::string::npos) << whole.output;
  EXPECT_EQ(whole.output.find(" | saving a checkpoint"), whole.output.find(" | saving a checkpoint", last_line))
      << whole.output;

  const std::string log = temp_path("log.txt");
  const pid_t pid = spawn_ttt(with(args, {"--out", dir.path("split")}), log);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (line_count(dir.path("split/metrics.jsonl")) < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  kill(pid, SIGINT);
  const Finished stopped = wait_for(pid, log);
  EXPECT_EQ(stopped.exit_code, 130) << stopped.output;
  EXPECT_NE(stopped.output.find("ttt train --resume " + dir.path("split")), std::string::npos) << stopped.output;
  const int64_t saved = line_count(dir.path("split/metrics.jsonl"));
  EXPECT_GE(saved, 2);
  EXPECT_LT(saved, 30) << "the run ended before the signal: the test proves nothing";

  const Finished resumed = run_ttt({"train", "--resume", dir.path("split"), "--log-every", "5"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resuming " + dir.path("split") + " at step " + std::to_string(saved)),
            std::string::npos)
      << resumed.output;
  std::ifstream a(dir.path("whole/metrics.jsonl")), b(dir.path("split/metrics.jsonl"));
  int64_t compared = 0;
  for (std::string la, lb; std::getline(a, la) && std::getline(b, lb); ++compared) {
    EXPECT_EQ(json::parse(la).at("loss"), json::parse(lb).at("loss")) << "step " << compared + 1;
  }
  EXPECT_EQ(compared, 30);
}

std::vector<std::string> joined(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Whether `dir` holds a temporary of an atomic write: what a kill inside a write leaves.
bool holds_temporary(const test::ScratchDir& dir) {
  const std::vector<std::string> names = dir.files();
  return std::any_of(names.begin(), names.end(), [](const std::string& n) { return n.find(".tmp.") != n.npos; });
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// SIGKILL at random moments of a run that saves a checkpoint every step (soon after each start
// or resume has taken a step, so that the kills land in training and some inside a
// checkpoint's write): the run directory always holds a complete checkpoint (or none yet), and
// resuming after every kill ends with the uninterrupted run's losses and weights.
TEST(TrainCli, SigkillAnywhereLeavesACheckpointThatResumesExactly) {
  const std::string data = temp_path("train.u32");
  io::write_token_file(data, text_tokens(20000));
  const std::string config = temp_path("train.json");
  const int64_t steps = 40;
  std::ofstream(config) << json{{"train_tokens", data}, {"seq_len", 64},         {"batch_size", 2},
                                {"steps", steps},       {"checkpoint_every", 1}, {"lr", 2e-3}}
                               .dump();
  const std::vector<std::string> start{"train", "--config", config, "--model-config", model_config_file(), "--out"};
  test::ScratchDir whole, split;
  const Finished uninterrupted = run_ttt(joined(start, {whole.dir()}));
  ASSERT_EQ(uninterrupted.exit_code, 0) << uninterrupted.output;

  // Up to about 3 steps' time after the first step of each start or resume.
  std::mt19937 random(23);
  std::uniform_real_distribution<double> moment(0.0, 0.2);
  const std::string checkpoint = split.path("checkpoint.safetensors");
  int kills = 0, inside_writes = 0;
  for (int attempt = 0; attempt < 10; ++attempt) {
    const std::string log = temp_path("log.txt");
    const bool resuming = test::file_size(checkpoint) >= 0;
    const int64_t saved = resuming ? std::stoll(io::read_safetensors(checkpoint).metadata.at("step")) : 0;
    // A kill inside a save leaves a step's metrics beyond the checkpoint: the resume drops them
    // and takes the step again, so a new step shows only past what is there now.
    const int64_t shown = std::max(saved, line_count(split.path("metrics.jsonl")));
    const pid_t pid = spawn_ttt(
        resuming ? std::vector<std::string>{"train", "--resume", split.dir()} : joined(start, {split.dir()}), log);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (line_count(split.path("metrics.jsonl")) <= shown && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(moment(random)));
    kill(pid, SIGKILL);
    const Finished killed = wait_for(pid, log);
    if (killed.exit_code == 0) break;  // it finished first
    ASSERT_EQ(killed.exit_code, 128 + SIGKILL) << killed.output;
    ++kills;
    inside_writes += holds_temporary(split);
    if (test::file_size(checkpoint) >= 0) {
      EXPECT_TRUE(io::read_safetensors(checkpoint).checksum_verified) << "after kill " << kills;
    }
  }
  const Finished finished =
      run_ttt(test::file_size(checkpoint) >= 0 ? std::vector<std::string>{"train", "--resume", split.dir()}
                                               : joined(start, {split.dir()}));
  ASSERT_EQ(finished.exit_code, 0) << finished.output;
  std::cout << kills << " kills, " << inside_writes << " inside a write (a temporary left behind)\n";
  EXPECT_FALSE(holds_temporary(split)) << "resuming removes the temporaries of killed saves";
  EXPECT_GE(kills, 8) << "most kills should land before the run ends";

  std::ifstream a(whole.path("metrics.jsonl")), b(split.path("metrics.jsonl"));
  int64_t compared = 0;
  for (std::string la, lb; std::getline(a, la) && std::getline(b, lb); ++compared) {
    EXPECT_EQ(json::parse(la).at("loss"), json::parse(lb).at("loss")) << "step " << compared + 1;
  }
  EXPECT_EQ(compared, steps);
  const Model expected = load_model(whole.path("model.safetensors")), got = load_model(split.path("model.safetensors"));
  for (const auto& [name, p] : named_params(expected.config, expected.params)) {
    EXPECT_TRUE(torch::equal(p, named_params(got.config, got.params).at(name))) << name;
  }
}

// SIGKILL at random moments of `ttt generate --save-session S` (a model with a megabyte of fast
// weights, so that the write takes a while) over an older session at S, and as soon as the
// save's temporary file appears (inside the write, for certain): S is always the old session
// or the new one, whole, and loads.
TEST(TrainCli, SigkillWhileSavingASessionNeverTearsIt) {
  ModelConfig config = test::tiny_config(Variant::kTttE2E);
  config.vocab_size = 258;
  config.bos_id = 256;
  config.eos_id = 257;
  config.d_ff = 4096;
  const std::string model = temp_path("model.safetensors");
  save_model(model, {config, test::random_params(config, 3, 0.3, torch::kFloat32)});
  const std::string prompt = temp_path("prompt.u32"), short_prompt = temp_path("short.u32");
  io::write_token_file(prompt, text_tokens(200));
  io::write_token_file(short_prompt, text_tokens(40));
  test::ScratchDir dir;
  const std::string session = dir.path("session.safetensors");
  const auto save = [&](const std::string& tokens) {
    return std::vector<std::string>{"generate", "--model",        model,  "--prompt-tokens", tokens, "--max-tokens",
                                    "1",        "--save-session", session};
  };
  ASSERT_EQ(run_ttt(save(short_prompt)).exit_code, 0);
  const std::string old_bytes = test::read_bytes(session);
  const std::string reference_log = temp_path("log.txt");
  const auto begun = std::chrono::steady_clock::now();
  const pid_t reference = spawn_ttt(save(prompt), reference_log);
  const Finished whole = wait_for(reference, reference_log);
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  const double run_seconds = seconds_since(begun);
  const std::string new_bytes = test::read_bytes(session);
  ASSERT_NE(old_bytes, new_bytes);

  std::mt19937 random(29);
  std::uniform_real_distribution<double> moment(0, run_seconds);
  int olds = 0, news = 0, inside_writes = 0;
  for (int attempt = 0; attempt < 14; ++attempt) {
    test::write_bytes(session, old_bytes);
    for (const std::string& name : dir.files()) {
      if (name.find(".tmp.") != std::string::npos) std::filesystem::remove(dir.path(name));  // an earlier kill's
    }
    const std::string log = temp_path("log.txt");
    const pid_t pid = spawn_ttt(save(prompt), log);
    if (attempt < 4) {
      // Polled without pause: the write (a megabyte, then fsync) outlasts a directory scan.
      const auto running = [pid] {
        siginfo_t info{};
        return waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == 0;
      };
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!holds_temporary(dir) && running() && std::chrono::steady_clock::now() < give_up) {
      }
    } else {
      std::this_thread::sleep_for(std::chrono::duration<double>(moment(random)));
    }
    kill(pid, SIGKILL);
    wait_for(pid, log);
    inside_writes += holds_temporary(dir);
    const std::string bytes = test::read_bytes(session);
    olds += bytes == old_bytes;
    news += bytes == new_bytes;
    EXPECT_TRUE(bytes == old_bytes || bytes == new_bytes) << "attempt " << attempt << ": a torn session file";
  }
  std::cout << olds << " old, " << news << " new, " << inside_writes << " kills inside a write\n";
  EXPECT_GE(inside_writes, 1) << "no kill landed inside a write";
  const Finished loaded = run_ttt({"generate", "--model", model, "--load-session", session, "--max-tokens", "2"});
  EXPECT_EQ(loaded.exit_code, 0) << loaded.output;
}

TEST(TrainCli, FlagsOverrideTheConfigAndErrorsAreOneLine) {
  const Finished help = run_ttt({"train", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  // Every key has a flag that shows its type, as CLI11 names it.
  for (const auto& field : TrainConfig::fields()) {
    std::string flag = std::string("--") + field.key;
    std::replace(flag.begin(), flag.end(), '_', '-');
    if (flag == "--init") flag += ",--init-from";  // the extension fine-tune's wording too
    const std::string type = std::visit(
        [](auto member) -> std::string {
          using Value = std::remove_cvref_t<decltype(TrainConfig{}.*member)>;
          if constexpr (std::is_same_v<Value, bool>) return "BOOLEAN";
          if constexpr (std::is_integral_v<Value>) return "INT";
          if constexpr (std::is_floating_point_v<Value>) return "FLOAT";
          return "TEXT";
        },
        field.member);
    const size_t at = help.output.find("  " + flag + " " + type);
    ASSERT_NE(at, std::string::npos) << flag << " " << type << "\n" << help.output;
    EXPECT_TRUE(std::isspace(help.output[at + flag.size() + type.size() + 3])) << flag << " " << type;
  }

  const std::string data = temp_path("train.u32");
  io::write_token_file(data, text_tokens(3000));
  const std::string config = temp_path("train.json");
  std::ofstream(config) << json{{"train_tokens", data}, {"seq_len", 32}, {"batch_size", 1}, {"steps", 50}}.dump();
  test::ScratchDir dir;
  const Finished run = run_ttt({"train", "--config", config, "--model-config", model_config_file(), "--out",
                                dir.path("run"), "--steps", "3", "--lr", "1e-3", "--remat", "false"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(line_count(dir.path("run/metrics.jsonl")), 3);
  const json saved = json::parse(std::ifstream(dir.path("run/config.json")));
  EXPECT_EQ(saved.at("lr"), 1e-3);
  EXPECT_EQ(saved.at("seq_len"), 32);
  EXPECT_EQ(saved.at("remat"), false);

  // The extension fine-tune: the run's weights under a config with a larger rope_theta, at a
  // longer sequence length; the changed key is printed.
  json longer = json::parse(std::ifstream(model_config_file()));
  longer["rope_theta"] = 1e6;
  const std::string longer_path = temp_path("longer.json");
  std::ofstream(longer_path) << longer.dump();
  const Finished extension = run_ttt({"train", "--config", config, "--init-from", dir.path("run"), "--model-config",
                                      longer_path, "--out", dir.path("ext"), "--steps", "1", "--seq-len", "64"});
  ASSERT_EQ(extension.exit_code, 0) << extension.output;
  EXPECT_NE(extension.output.find("starting from the weights of " + dir.path("run")), std::string::npos)
      << extension.output;
  EXPECT_NE(extension.output.find("model config changed: rope_theta 10000.0 -> 1000000.0"), std::string::npos)
      << extension.output;

  const auto expect_one_line_error = [](const Finished& f, const std::string& fragment) {
    EXPECT_NE(f.exit_code, 0) << f.output;
    EXPECT_EQ(f.output.rfind("ttt: error: ", 0), 0u) << f.output;
    EXPECT_EQ(std::count(f.output.begin(), f.output.end(), '\n'), 1) << f.output;
    EXPECT_NE(f.output.find(fragment), std::string::npos) << f.output;
  };
  expect_one_line_error(run_ttt({"train", "--config", config, "--model-config", model_config_file()}), "--out");
  expect_one_line_error(run_ttt({"train", "--config", config, "--model-config", model_config_file(), "--out",
                                 dir.path("x"), "--seq-len", "30"}),
                        "multiple of the model's mini_batch");
  expect_one_line_error(run_ttt({"train", "--resume", dir.path("run"), "--lr", "0.5"}), "different config");
  const std::string binary_config = temp_path("binary.json");
  std::ofstream(binary_config) << "{\"seq_len\": \"\xff\xfe\"}";
  expect_one_line_error(run_ttt({"train", "--config", binary_config, "--out", dir.path("y")}),
                        "not valid JSON");  // the parser's quote of the bad byte as \xFF, not the byte
  EXPECT_NE(run_ttt({"train", "--config", binary_config, "--out", dir.path("y")}).output.find("\\xFF"),
            std::string::npos);
  expect_one_line_error(run_ttt({"train", "--config", config, "--out", dir.path("y"), "--steps", "many"}),
                        "--steps");
  expect_one_line_error(run_ttt({"train", "--config", config, "--out", dir.path("y"), "--lr", "fast"}), "--lr");
  expect_one_line_error(run_ttt({"train", "--config", config, "--out", dir.path("y"), "--remat", "maybe"}), "--remat");
}

// Data parallelism.

// CPU ranks need c10d's Gloo, which a build without Gloo's headers (PyTorch's wheel) lacks.
#if TTT_WITH_GLOO && defined(USE_C10D_GLOO)
constexpr bool kWithGloo = true;
#else
constexpr bool kWithGloo = false;
#endif

std::vector<json> metrics(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

// Two runs' metrics and final weights agree to `tolerance` relative to each value (at least 1):
// what N ranks and one process may differ by is the order of fp32 sums.
void expect_same_training(const std::string& a, const std::string& b, double tolerance) {
  const std::vector<json> ma = metrics(a), mb = metrics(b);
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    for (const char* key : {"loss", "grad_norm", "val_loss"}) {
      ASSERT_EQ(ma[i].contains(key), mb[i].contains(key)) << key << " at step " << i + 1;
      if (!ma[i].contains(key)) continue;
      const double x = ma[i].at(key), y = mb[i].at(key);
      EXPECT_NEAR(x, y, tolerance * std::max(1.0, std::abs(x))) << key << " at step " << i + 1;
    }
  }
  const io::SafetensorsFile wa = io::read_safetensors(a + "/model.safetensors");
  const io::SafetensorsFile wb = io::read_safetensors(b + "/model.safetensors");
  ASSERT_EQ(wa.tensors.size(), wb.tensors.size());
  for (const auto& [name, x] : wa.tensors) {
    const torch::Tensor y = wb.tensors.at(name);
    const double scale = std::max(1.0, x.abs().max().item<double>());
    EXPECT_LE((x - y).abs().max().item<double>(), tolerance * scale) << name;
  }
}

// The environment torchrun gives rank `rank` of `world`.
Environment rank_environment(int rank, int world, int port) {
  return {{"RANK", std::to_string(rank)},
          {"LOCAL_RANK", std::to_string(rank)},
          {"WORLD_SIZE", std::to_string(world)},
          {"MASTER_ADDR", "127.0.0.1"},
          {"MASTER_PORT", std::to_string(port)}};
}

// Waits until `run_dir` has `lines` metrics lines (steps done); false after a minute.
bool wait_for_steps(const std::string& run_dir, int64_t lines) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (line_count(run_dir + "/metrics.jsonl") < lines) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// A data-parallel training config on byte tokens: `steps` steps of 4 sequences.
std::string parallel_config(int64_t steps, const json& more = json::object()) {
  const std::string train = temp_path("train.u32"), val = temp_path("val.u32");
  io::write_token_file(train, text_tokens(20000));
  io::write_token_file(val, text_tokens(3000));
  json config = {{"train_tokens", train}, {"val_tokens", val}, {"seq_len", 32},     {"batch_size", 4},
                 {"steps", steps},        {"lr", 3e-3},        {"eval_every", 2},   {"val_sequences", 3},
                 {"checkpoint_every", 1}, {"log_every", 1},    {"dist_timeout", 60}};
  config.update(more);
  const std::string path = temp_path("parallel.json");
  std::ofstream(path) << config.dump();
  return path;
}

TEST(DataParallel, TwoRanksTrainAsOneProcess) {
  if (!kWithGloo) GTEST_SKIP() << "ttt was built without Gloo";
  for (const Variant variant : {Variant::kFullAttention, Variant::kTttE2E}) {
    test::ScratchDir dir;
    const std::vector<std::string> train{"train", "--config", parallel_config(4), "--model-config",
                                         model_config_file(variant)};
    const Finished one = run_ttt(joined(train, {"--out", dir.path("one")}));
    ASSERT_EQ(one.exit_code, 0) << one.output;
    const Finished two =
        run_ttt(joined({"launch", "--nproc-per-node", "2", "--"}, joined(train, {"--out", dir.path("two")})));
    ASSERT_EQ(two.exit_code, 0) << two.output;
    expect_same_training(dir.path("one"), dir.path("two"), 1e-5);
    EXPECT_EQ(metrics(dir.path("two")).size(), 4u);
    // Rank 0 speaks for the job.
    EXPECT_NE(two.output.find("data parallel: 2 ranks, 2 sequences each per step"), std::string::npos) << two.output;
    EXPECT_EQ(two.output.find("trained 4 steps"), two.output.rfind("trained 4 steps")) << two.output;
  }
}

TEST(DataParallel, AKilledRankFailsTheJobAndItsCheckpointResumesOnOneRank) {
  if (!kWithGloo) GTEST_SKIP() << "ttt was built without Gloo";
  const int64_t steps = 40;
  test::ScratchDir dir;
  const std::vector<std::string> train{"train", "--config", parallel_config(steps, {{"eval_every", 0}}),
                                       "--model-config", model_config_file()};
  const Finished whole = run_ttt(joined(train, {"--out", dir.path("whole")}));
  ASSERT_EQ(whole.exit_code, 0) << whole.output;

  const std::string log = temp_path("launch.txt");
  const pid_t launcher =
      spawn_ttt(joined({"launch", "-n", "2", "--grace", "20", "--"}, joined(train, {"--out", dir.path("split")})), log);
  ASSERT_TRUE(wait_for_steps(dir.path("split"), 2));
  std::ifstream children("/proc/" + std::to_string(launcher) + "/task/" + std::to_string(launcher) + "/children");
  pid_t rank0 = 0, rank1 = 0;
  ASSERT_TRUE(children >> rank0 >> rank1);
  kill(rank1, SIGKILL);
  const Finished failed = wait_for(launcher, log);
  EXPECT_EQ(failed.exit_code, 1) << failed.output;
  EXPECT_NE(failed.output.find("rank 1 was killed by signal 9"), std::string::npos) << failed.output;
  // Rank 0 saw it for itself (c10d's error), before the launcher stopped it.
  EXPECT_NE(failed.output.find("ttt: error: rank 0: "), std::string::npos) << failed.output;

  // Step 2's metrics were out, so step 1's checkpoint was complete (a step starts after the one
  // before it is saved); step 2's may not be: the kill can land before its barrier.
  const int64_t saved = std::stoll(io::read_safetensors(dir.path("split/checkpoint.safetensors")).metadata.at("step"));
  EXPECT_GE(saved, 1);
  EXPECT_LT(saved, steps) << "the run ended before the kill: the test proves nothing";
  const Finished resumed = run_ttt({"train", "--resume", dir.path("split")});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_same_training(dir.path("whole"), dir.path("split"), 1e-5);
}

TEST(DataParallel, CtrlCStopsEveryRankWithOneCheckpoint) {
  if (!kWithGloo) GTEST_SKIP() << "ttt was built without Gloo";
  const int64_t steps = 200;
  test::ScratchDir dir;
  const std::vector<std::string> launch{"launch",
                                        "-n",
                                        "2",
                                        "--",
                                        "train",
                                        "--config",
                                        parallel_config(steps),
                                        "--model-config",
                                        model_config_file(),
                                        "--out",
                                        dir.path("run")};
  const std::string log = temp_path("launch.txt");
  const pid_t launcher = spawn_ttt(launch, log);
  ASSERT_TRUE(wait_for_steps(dir.path("run"), 2));
  kill(launcher, SIGINT);
  const Finished stopped = wait_for(launcher, log);
  EXPECT_EQ(stopped.exit_code, 130) << stopped.output;
  EXPECT_EQ(stopped.output.find("continue with"), stopped.output.rfind("continue with")) << stopped.output;
  const int64_t saved = std::stoll(io::read_safetensors(dir.path("run/checkpoint.safetensors")).metadata.at("step"));
  EXPECT_EQ(saved, line_count(dir.path("run/metrics.jsonl")));
  EXPECT_LT(saved, steps) << "the run ended before the signal: the test proves nothing";
}

TEST(DataParallel, RanksThatDisagreeOrHangAreNamed) {
  if (!kWithGloo) GTEST_SKIP() << "ttt was built without Gloo";
  test::ScratchDir dir;
  const std::string config = parallel_config(1000);
  const std::vector<std::string> train{"train", "--config", config, "--model-config", model_config_file()};
  // Ranks started by hand as torchrun would, rank r with the flags extra[r]; pids and logs.
  struct Started {
    pid_t pid;
    std::string log;
  };
  const auto start_ranks = [&](const std::vector<std::vector<std::string>>& extra, const std::string& run) {
    const int port = test::free_port();
    std::vector<Started> ranks;
    for (size_t r = 0; r < extra.size(); ++r) {
      const std::string log = temp_path("rank" + std::to_string(r) + ".txt");
      ranks.push_back({spawn_ttt(joined(train, joined({"--out", dir.path(run)}, extra[r])), log,
                                 rank_environment(static_cast<int>(r), static_cast<int>(extra.size()), port)),
                       log});
    }
    return ranks;
  };

  // A different batch on rank 1: every rank names the key, and nothing is trained.
  for (const Started& rank : start_ranks({{}, {"--batch-size", "8"}}, "disagree")) {
    const Finished f = wait_for(rank.pid, rank.log);
    EXPECT_EQ(f.exit_code, 1) << f.output;
    EXPECT_NE(f.output.find("disagree on 'batch_size': 4 on rank 0, 8 on rank 1"), std::string::npos) << f.output;
  }
  EXPECT_EQ(test::file_size(dir.path("disagree/checkpoint.safetensors")), -1);

  const Finished uneven =
      run_ttt(joined({"launch", "-n", "2", "--"}, joined(train, {"--out", dir.path("uneven"), "--batch-size", "3"})));
  EXPECT_EQ(uneven.exit_code, 1);
  EXPECT_NE(uneven.output.find("'batch_size' (3) must be divisible by the number of ranks (2)"), std::string::npos)
      << uneven.output;

  // A rank that stops answering: the other gives up after dist_timeout.
  // The timeout covers the start too (the rendezvous, a slow disk's first save) under CI's load.
  const std::vector<Started> hang = start_ranks({{"--dist-timeout", "10"}, {"--dist-timeout", "10"}}, "hang");
  ASSERT_TRUE(wait_for_steps(dir.path("hang"), 1));
  kill(hang[1].pid, SIGSTOP);
  const auto stopped_at = std::chrono::steady_clock::now();
  const Finished timed_out = wait_for(hang[0].pid, hang[0].log);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped_at).count();
  kill(hang[1].pid, SIGKILL);
  wait_for(hang[1].pid, hang[1].log);
  EXPECT_EQ(timed_out.exit_code, 1) << timed_out.output;
  EXPECT_NE(timed_out.output.find("ttt: error: rank 0: "), std::string::npos) << timed_out.output;
  EXPECT_LT(waited, 30) << timed_out.output;
}

// The NCCL path on a GPU: a world of one rank gives the plain trainer's run (an all-reduce over
// one rank changes nothing), for the lent one-GPU machine.
TEST(DataParallel, NcclWorldOfOneTrainsAsThePlainTrainer) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  test::ScratchDir dir;
  const std::vector<std::string> train{
      "train", "--config", parallel_config(4), "--model-config", model_config_file(), "--device", "cuda"};
  const Finished plain = run_ttt(joined(train, {"--out", dir.path("plain")}));
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  const Finished nccl = run_ttt(joined({"launch", "-n", "1", "--"}, joined(train, {"--out", dir.path("nccl")})));
  ASSERT_EQ(nccl.exit_code, 0) << nccl.output;
  expect_same_training(dir.path("plain"), dir.path("nccl"), 1e-6);
}

}  // namespace
}  // namespace ttt
