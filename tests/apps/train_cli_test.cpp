// `ttt train` driven as a user drives it: a step's gradient equals `ttt grad`'s, Ctrl-C
// saves a checkpoint that resumes exactly, flags and errors.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <fstream>
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

namespace ttt {
namespace {

using nlohmann::json;
using test::temp_path;

// Starts `ttt args...` single-threaded with stdout and stderr into `log`.
pid_t spawn_ttt(const std::vector<std::string>& args, const std::string& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    setenv("OMP_NUM_THREADS", "1", 1);
    if (!freopen(log.c_str(), "w", stdout) || dup2(fileno(stdout), STDERR_FILENO) < 0) _exit(127);
    std::vector<char*> argv{const_cast<char*>(TTT_BINARY)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(TTT_BINARY, argv.data());
    _exit(127);
  }
  return pid;
}

struct Finished {
  int exit_code;
  std::string output;
};

Finished wait_for(pid_t pid, const std::string& log) {
  int status = 0;
  waitpid(pid, &status, 0);
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

std::string model_config_file() {
  ModelConfig c = test::tiny_config(Variant::kTttE2E);
  c.vocab_size = 258;
  c.d_model = 16;
  c.d_ff = 32;
  c.window = 24;
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

TEST(TrainCli, FlagsOverrideTheConfigAndErrorsAreOneLine) {
  const Finished help = run_ttt({"train", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  // Every key has a flag that shows its type, as CLI11 names it.
  for (const auto& field : TrainConfig::fields()) {
    std::string flag = std::string("--") + field.key;
    std::replace(flag.begin(), flag.end(), '_', '-');
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
  expect_one_line_error(run_ttt({"train", "--config", config, "--out", dir.path("y"), "--steps", "many"}),
                        "--steps");
  expect_one_line_error(run_ttt({"train", "--config", config, "--out", dir.path("y"), "--lr", "fast"}), "--lr");
  expect_one_line_error(run_ttt({"train", "--config", config, "--out", dir.path("y"), "--remat", "maybe"}), "--remat");
}

}  // namespace
}  // namespace ttt
