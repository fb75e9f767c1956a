// `ttt` driven as a user drives it: files in, files out, exit codes and messages.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/cuda.h>

#include "eval/evaluate.h"
#include "infer/session.h"
#include "io/safetensors.h"
#include "io/token_file.h"
#include "model/checkpoint.h"
#include "model/layers.h"
#include "apps/cli_run.h"
#include "test_util.h"

namespace ttt {
namespace {

using test::CliRun;
using test::expect_clean_failure;
using test::run_ttt;
using test::temp_path;

std::string write_config(Variant variant) {
  ModelConfig c = test::tiny_config(variant);
  c.vocab_size = 50;
  const std::string path = temp_path("config.json");
  std::ofstream(path) << c.to_json().dump(2);
  return path;
}

std::string init_model(Variant variant, const std::string& dtype = "f32") {
  const std::string path = temp_path("model.safetensors");
  const CliRun run = run_ttt("init --config " + write_config(variant) + " --out " + path + " --seed 3 --dtype " + dtype);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  return path;
}

std::string write_tokens(const std::vector<int64_t>& tokens) {
  const std::string path = temp_path("tokens.u32");
  io::write_token_file(path, tokens);
  return path;
}

std::vector<int64_t> sample_tokens(int64_t n) {
  std::vector<int64_t> tokens;
  for (int64_t i = 0; i < n; ++i) tokens.push_back(i % 17 == 0 ? 1 : 3 + (i * 7) % 40);  // bos every 17
  return tokens;
}

TEST(Cli, HelpDescribesEveryCommand) {
  const CliRun help = run_ttt("--help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* command : {"init", "info", "eval", "grad"}) {
    EXPECT_NE(help.output.find(command), std::string::npos) << command;
    const CliRun sub = run_ttt(std::string(command) + " --help");
    EXPECT_EQ(sub.exit_code, 0) << command;
    EXPECT_NE(sub.output.find("--"), std::string::npos) << sub.output;
  }
}

TEST(Cli, UnknownCommandsAreNamed) {
  for (const char* args : {"nosuch", "nosuch --help", "--threads 1 nosuch"}) {
    expect_clean_failure(run_ttt(args), "ttt: error: unknown command 'nosuch' (see ttt --help)");
  }
}

class CliVariant : public ::testing::TestWithParam<Variant> {};

TEST_P(CliVariant, EvalAndGradFollowTheSpec) {
  const std::string model_path = init_model(GetParam());
  const std::vector<int64_t> ids = sample_tokens(40);
  const std::string tokens_path = write_tokens(ids);
  const std::string json_path = temp_path("eval.json");
  const CliRun eval = run_ttt("eval --model " + model_path + " --tokens " + tokens_path + " --json " + json_path);
  ASSERT_EQ(eval.exit_code, 0) << eval.output;

  const nlohmann::json out = nlohmann::json::parse(std::ifstream(json_path));
  ASSERT_EQ(out.size(), 2u);  // exactly {"loss", "nll"}
  const std::vector<double> nll = out.at("nll").get<std::vector<double>>();
  ASSERT_EQ(nll.size(), ids.size() - 1);

  // The loss follows from the per-token NLLs as SPEC section 8 defines it.
  const Model model = load_model(model_path);
  const torch::Tensor nll_t = torch::tensor(nll, torch::kFloat64);
  const torch::Tensor targets = torch::tensor(std::vector<int64_t>(ids.begin() + 1, ids.end()));
  double expected = 0;
  if (GetParam() == Variant::kFullAttention) {
    expected = masked_mean_loss(nll_t, targets, model.config.bos_id).item<double>();
  } else {
    const int64_t b = model.config.mini_batch, n = targets.size(0), chunks = (n + b - 1) / b;
    for (int64_t s = 0; s < n; s += b) {
      const int64_t len = std::min(b, n - s);
      expected += masked_mean_loss(nll_t.narrow(0, s, len), targets.narrow(0, s, len), model.config.bos_id)
                      .item<double>() / static_cast<double>(chunks);
    }
  }
  EXPECT_NEAR(out.at("loss").get<double>(), expected, 1e-6);
  const EvalResult direct = evaluate(model.config, model.params, checked_tokens(model.config, ids));
  EXPECT_NEAR(out.at("loss").get<double>(), direct.loss, 1e-9);

  const std::string grad_path = temp_path("grad.safetensors");
  const CliRun grad = run_ttt("grad --model " + model_path + " --tokens " + tokens_path + " --out " + grad_path);
  ASSERT_EQ(grad.exit_code, 0) << grad.output;
  const io::SafetensorsFile grads = io::read_safetensors(grad_path);
  EXPECT_NEAR(std::stod(grads.metadata.at("loss")), direct.loss, 1e-6);
  const GradResult reference = gradient(model.config, model.params, checked_tokens(model.config, ids));
  ASSERT_EQ(grads.tensors.size(), reference.grads.size());
  for (const auto& [name, g] : reference.grads) {
    ASSERT_TRUE(grads.tensors.count(name)) << name;
    EXPECT_TRUE(torch::allclose(grads.tensors.at(name), g, 1e-5, 1e-7)) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, CliVariant,
                         ::testing::Values(Variant::kFullAttention, Variant::kSlidingWindow, Variant::kTttE2E));

// `ttt bench --config-out` writes the paper's shape it benchmarks, a config `ttt init` takes.
TEST(Cli, BenchWritesTheConfigOfAShape) {
  const std::string path = temp_path("bench_config.json");
  const CliRun run = run_ttt("bench --sizes 760m --variants ttt-e2e --config-out " + path);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  std::ifstream in(path);
  const ModelConfig config = ModelConfig::from_json(nlohmann::json::parse(in));
  EXPECT_EQ(config.variant, Variant::kTttE2E);
  EXPECT_EQ(config.d_model, 1536);
  EXPECT_EQ(config.n_layers, 24);
  EXPECT_EQ(config.suffix_len, 6);
  EXPECT_EQ(config.vocab_size, 128256);
  expect_clean_failure(run_ttt("bench --sizes 125m,3b --variants fa --config-out " + path),
                       "ttt: error: --config-out takes one --sizes and one --variants");
  expect_clean_failure(run_ttt("bench --sizes 2b --variants fa --config-out " + path),
                       "ttt: error: unknown size '2b' (expected 125m, 760m or 3b)");
}

// `ttt bench --device cpu` of 125M swa with one run a row and `flags`, its rows written as JSON
// into `rows` (left as it was when the command fails).
CliRun bench_on_cpu(const std::string& flags, nlohmann::json* rows) {
  const std::string path = temp_path("bench_rows.json");
  const CliRun run = run_ttt("bench --device cpu --sizes 125m --variants swa --repeats 1 --json " + path + " " + flags);
  if (run.exit_code == 0) *rows = nlohmann::json::parse(std::ifstream(path));
  return run;
}

// `ttt bench` gives eval and train rows their model FLOPs and, against a peak, their MFU.
TEST(Cli, BenchReportsModelFlopsAndMfu) {
  nlohmann::json out;
  const CliRun run = bench_on_cpu("--modes eval,train --contexts 32 --train-contexts 16 --peak-tflops 2", &out);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("MFU against a matmul peak of 2 TFLOP/s"), std::string::npos) << run.output;
  EXPECT_EQ(out.at("peak_flops").get<double>(), 2e12);
  ASSERT_EQ(out.at("rows").size(), 2u);
  for (const auto& row : out.at("rows")) {
    const double flops = row.at("model_flops").get<double>(), seconds = row.at("seconds").get<double>();
    EXPECT_GT(flops, 0);
    EXPECT_NEAR(row.at("mfu").get<double>(), flops / seconds / 2e12, 1e-12);
  }
  EXPECT_NE(run.output.find("MFU"), run.output.rfind("MFU")) << run.output;  // the header and the rows
  // Without a known GPU nor --peak-tflops: model FLOPs, no MFU.
  const CliRun plain = bench_on_cpu("--modes eval --contexts 16", &out);
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  EXPECT_EQ(plain.output.find("MFU"), std::string::npos) << plain.output;
  EXPECT_FALSE(out.at("rows")[0].contains("mfu"));
}

// `ttt bench --prefix-span` sets the train rows' prefix spans (whole chunks) and records them.
TEST(Cli, BenchTakesThePrefixSpanOfTrainRows) {
  nlohmann::json out;
  const CliRun run = bench_on_cpu("--modes train --train-contexts 16 --prefix-span 2048", &out);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json& row = out.at("rows").at(0);
  EXPECT_EQ(row.at("prefix_span_tokens").get<int64_t>(), 2048);
  EXPECT_GT(row.at("tokens_per_s").get<double>(), 0);
  // Refused before any weights are drawn: no row runs.
  const CliRun odd = bench_on_cpu("--modes train --train-contexts 16 --prefix-span 1000", &out);
  EXPECT_NE(odd.exit_code, 0);
  EXPECT_NE(odd.output.find("--prefix-span 1000 is not a whole number of chunks (1024 tokens)"), std::string::npos)
      << odd.output;
  EXPECT_EQ(odd.output.find("variant"), std::string::npos) << odd.output;
}

TEST(Cli, InitStoresEveryDtypeAndInfoReadsIt) {
  for (const char* dtype : {"f32", "bf16", "f16"}) {
    const std::string path = init_model(Variant::kTttE2E, dtype);
    const CliRun info = run_ttt("info --model " + path);
    EXPECT_EQ(info.exit_code, 0) << info.output;
    EXPECT_NE(info.output.find("\"ttt-e2e\""), std::string::npos) << info.output;
    EXPECT_EQ(io::read_safetensors(path).tensors.at("embed.weight").scalar_type(), parse_dtype(dtype));
  }
}

// Several models over a folder of documents: the report's numbers are those of evaluating
// each document alone, bucketed by position.
TEST(Cli, EvalReportsLossByPositionOverDocuments) {
  const std::string swa = init_model(Variant::kSlidingWindow);
  const std::string ttt = init_model(Variant::kTttE2E);
  test::ScratchDir docs;
  const std::vector<std::vector<int64_t>> contents = {sample_tokens(30), sample_tokens(25), sample_tokens(12)};
  for (size_t d = 0; d < contents.size(); ++d) io::write_token_file(docs.path("doc" + std::to_string(d) + ".u32"), contents[d]);
  std::ofstream(docs.path("prepare.json"))
      << R"({"tokenizer": "t", "vocab_size": 50, "bos_id": 1, "splits": [{"name": "first", "file": "doc0.u32"},
            {"name": "second", "file": "doc1.u32"}, {"name": "short", "file": "doc2.u32"}]})";
  const std::string out = docs.path("report");
  const CliRun run = run_ttt("eval --model " + swa + " --model " + ttt + " --documents " + docs.path("") +
                             " --length 20 --buckets 0,3,6,19 --report " + out);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("skipped 1 of 3 documents shorter than --length 20"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("| ttt-e2e - swa |"), std::string::npos) << run.output;

  const nlohmann::json report = nlohmann::json::parse(std::ifstream(out + "/report.json"));
  ASSERT_EQ(report.at("documents").size(), 2u);
  EXPECT_EQ(report.at("documents")[1].at("name"), "second");
  const std::vector<int64_t> edges = {0, 3, 6, 19};
  EXPECT_EQ(report.at("bucket_edges").get<std::vector<int64_t>>(), edges);
  const std::vector<std::string> paths = {swa, ttt};
  for (size_t m = 0; m < 2; ++m) {
    const Model model = load_model(paths[m]);
    const auto& reported = report.at("models")[m].at("document_buckets");
    for (size_t d = 0; d < 2; ++d) {
      const std::vector<int64_t> ids(contents[d].begin(), contents[d].begin() + 20);
      const EvalResult direct = evaluate(model.config, model.params, checked_tokens(model.config, ids));
      for (size_t b = 0; b + 1 < edges.size(); ++b) {
        double sum = 0;
        int count = 0;
        for (int64_t t = edges[b]; t < edges[b + 1]; ++t) {
          if (ids[t + 1] == model.config.bos_id) continue;
          sum += direct.nll[t];
          ++count;
        }
        EXPECT_NEAR(reported[d][b].get<double>(), sum / count, 1e-6) << m << " " << d << " " << b;
      }
    }
  }
}

// --inner-lr evaluates a ttt-e2e model with another inner learning rate: 0 is its
// meta-learned weights without test-time training.
TEST(Cli, EvalInnerLrOverridesTheModelsOwn) {
  const std::string ttt = init_model(Variant::kTttE2E);
  const std::vector<int64_t> ids = sample_tokens(40);
  const std::string tokens = write_tokens(ids);
  Model model = load_model(ttt);
  ASSERT_GT(model.config.inner_lr, 0);
  const double own = evaluate(model.config, model.params, checked_tokens(model.config, ids)).loss;
  model.config.inner_lr = 0;
  const double without = evaluate(model.config, model.params, checked_tokens(model.config, ids)).loss;
  ASSERT_GT(std::abs(own - without), 1e-6);  // the tokens span several inner steps

  const std::string json_path = temp_path("eval.json");
  const CliRun run = run_ttt("eval --model " + ttt + " --tokens " + tokens + " --inner-lr 0 --json " + json_path);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NEAR(nlohmann::json::parse(std::ifstream(json_path)).at("loss").get<double>(), without, 1e-9);

  const std::string out = temp_path("report");
  const CliRun report = run_ttt("eval --model " + ttt + " --tokens " + tokens + " --inner-lr 0 --report " + out);
  ASSERT_EQ(report.exit_code, 0) << report.output;
  EXPECT_NE(report.output.find("| ttt-e2e (inner_lr 0) |"), std::string::npos) << report.output;

  const std::string swa = init_model(Variant::kSlidingWindow);
  expect_clean_failure(run_ttt("eval --model " + swa + " --tokens " + tokens + " --inner-lr 0"),
                       "--inner-lr applies to ttt-e2e models; this one is swa");
  expect_clean_failure(run_ttt("eval --model " + ttt + " --tokens " + tokens + " --inner-lr -1"), "--inner-lr");
}

TEST(Cli, EvalReportInputErrors) {
  const std::string swa = init_model(Variant::kSlidingWindow);
  const std::string tokens = write_tokens(sample_tokens(20));
  expect_clean_failure(run_ttt("eval --model " + swa + " --model " + swa + " --tokens " + tokens + " --json " +
                               temp_path("x.json")), "--report");
  expect_clean_failure(run_ttt("eval --model " + swa + " --tokens " + tokens + " --length 50"), "all 1 are shorter than --length 50");
  expect_clean_failure(run_ttt("eval --model " + swa + " --tokens " + tokens + " --buckets 0,5"), "cover every target");
  expect_clean_failure(run_ttt("eval --model " + swa + " --tokens " + tokens + " --buckets 0,x,40"), "'x'");
  expect_clean_failure(run_ttt("eval --model " + swa + " --documents /nonexistent"), "not a directory");
  expect_clean_failure(run_ttt("eval --model " + swa), "--tokens or --documents");
  test::ScratchDir docs;
  io::write_token_file(docs.path("a.u32"), sample_tokens(20));
  std::ofstream(docs.path("prepare.json"))
      << R"({"tokenizer": "big", "vocab_size": 4096, "bos_id": 1, "splits": [{"name": "a", "file": "a.u32"}]})";
  expect_clean_failure(run_ttt("eval --model " + swa + " --documents " + docs.path("")), "big of 4096 tokens");
}

// The ids `ttt generate` prints without a tokenizer.
std::vector<int64_t> ids_of(const std::string& text) {
  std::vector<int64_t> ids;
  std::istringstream in(text);
  for (int64_t id; in >> id;) ids.push_back(id);
  return ids;
}

// `ttt generate` with token ids in and out: greedy decoding is the session's argmax chain,
// and a saved session continued with the rest of the prompt gives what the whole prompt gives.
TEST(Cli, GenerateFollowsTheSessionAndResumesSavedSessions) {
  const std::string model_path = init_model(Variant::kTttE2E);
  const Model model = load_model(model_path);
  const std::vector<int64_t> first = {1, 5, 9, 12, 7, 30, 4}, second = {22, 8, 15, 40, 3};
  std::vector<int64_t> whole = first;
  whole.insert(whole.end(), second.begin(), second.end());
  const CliRun run = run_ttt("generate --model " + model_path + " --prompt-tokens " + write_tokens(whole) +
                             " --temperature 0 --max-tokens 12");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const std::vector<int64_t> generated = ids_of(run.output);

  Session session(model.config, model.params);
  torch::Tensor logits = session.feed(whole);
  std::vector<int64_t> expected;
  for (int i = 0; i < 12; ++i) {
    const int64_t token = logits.argmax().item<int64_t>();
    if (token == model.config.eos_id) break;
    expected.push_back(token);
    logits = session.feed(std::vector<int64_t>{token});
  }
  EXPECT_EQ(generated, expected);
  EXPECT_FALSE(expected.empty());

  const std::string saved = temp_path("session.safetensors");
  ASSERT_EQ(run_ttt("generate --model " + model_path + " --prompt-tokens " + write_tokens(first) +
                    " --max-tokens 1 --save-session " + saved).exit_code, 0);
  const CliRun resumed = run_ttt("generate --model " + model_path + " --load-session " + saved +
                                 " --prompt-tokens " + write_tokens(second) + " --temperature 0 --max-tokens 12");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(ids_of(resumed.output), generated);

  const CliRun stats = run_ttt("generate --model " + model_path + " --prompt-tokens " + write_tokens(whole) +
                               " --max-tokens 5 --seed 3 --stats");
  ASSERT_EQ(stats.exit_code, 0) << stats.output;
  EXPECT_NE(stats.output.find("inner steps"), std::string::npos) << stats.output;
  EXPECT_NE(stats.output.find("tokens/s"), std::string::npos) << stats.output;
  // The ids (stdout) end their line before the stats line (stderr) begins.
  const size_t stats_line = stats.output.find("prompt ");
  ASSERT_NE(stats_line, std::string::npos) << stats.output;
  EXPECT_EQ(stats.output.find('\n'), stats_line - 1) << stats.output;
  EXPECT_FALSE(ids_of(stats.output.substr(0, stats_line)).empty()) << stats.output;

  expect_clean_failure(run_ttt("generate --model " + model_path + " --prompt-tokens " + write_tokens({3, 50})),
                       "outside the model's vocabulary");
  expect_clean_failure(run_ttt("generate --model " + model_path + " --prompt-tokens " + write_tokens({3}) +
                               " --max-tokens 0"), "--max-tokens");
  expect_clean_failure(run_ttt("generate --model " + model_path), "give one prompt");
  expect_clean_failure(run_ttt("generate --model " + model_path + " --prompt-tokens " + write_tokens({3}) +
                               " --top-p 2"), "top-p");
  expect_clean_failure(run_ttt("generate --model " + model_path + " --prompt hello"), "no tokenizer");
}

// On the GPU (fp32 matmuls, so that greedy choices match the CPU's): the same tokens as on
// the CPU, and a session saved on the GPU continues identically on either device.
TEST(Cli, GenerateOnCudaMatchesTheCpuAndResumesAnywhere) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const std::string model = init_model(Variant::kTttE2E);
  const std::vector<int64_t> first = {1, 5, 9, 12, 7, 30, 4}, second = {22, 8, 15, 40, 3};
  std::vector<int64_t> whole = first;
  whole.insert(whole.end(), second.begin(), second.end());
  const std::string greedy = " --temperature 0 --max-tokens 12";
  const CliRun cpu = run_ttt("generate --model " + model + " --prompt-tokens " + write_tokens(whole) + greedy);
  const CliRun gpu = run_ttt("generate --model " + model + " --device cuda --dtype f32 --prompt-tokens " +
                             write_tokens(whole) + greedy + " --stats");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.output;
  ASSERT_EQ(gpu.exit_code, 0) << gpu.output;
  const std::vector<int64_t> expected = ids_of(cpu.output);
  EXPECT_FALSE(expected.empty());
  EXPECT_EQ(ids_of(gpu.output), expected) << gpu.output;  // reading stops at the stats' text
  EXPECT_NE(gpu.output.find("tokens/s"), std::string::npos) << gpu.output;
  EXPECT_NE(gpu.output.find("GPU memory peak"), std::string::npos) << gpu.output;

  const std::string saved = temp_path("gpu-session.safetensors");
  ASSERT_EQ(run_ttt("generate --model " + model + " --device cuda --dtype f32 --prompt-tokens " + write_tokens(first) +
                    " --max-tokens 1 --save-session " + saved).exit_code, 0);
  for (const std::string device : {"cuda --dtype f32", "cpu"}) {
    const CliRun resumed = run_ttt("generate --model " + model + " --device " + device + " --load-session " + saved +
                                   " --prompt-tokens " + write_tokens(second) + greedy);
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    EXPECT_EQ(ids_of(resumed.output), expected) << device;
  }
}

TEST(Cli, BadInputGetsAClearError) {
  const std::string model = init_model(Variant::kTttE2E);
  const std::string tokens = write_tokens(sample_tokens(20));
  const std::string out = temp_path("out.json");

  expect_clean_failure(run_ttt("eval --model /nonexistent.safetensors --tokens " + tokens), "/nonexistent.safetensors");
  expect_clean_failure(run_ttt("eval --model " + model + " --tokens /nonexistent.u32"), "/nonexistent.u32");

  const std::string garbage = temp_path("garbage.safetensors");
  std::ofstream(garbage) << "this is not a checkpoint at all";
  expect_clean_failure(run_ttt("eval --model " + garbage + " --tokens " + tokens), garbage);

  const std::string empty = temp_path("empty.u32");
  std::ofstream(empty).close();
  expect_clean_failure(run_ttt("eval --model " + model + " --tokens " + empty), "empty");

  const std::string odd = temp_path("odd.u32");
  std::ofstream(odd) << "12345";
  expect_clean_failure(run_ttt("grad --model " + model + " --tokens " + odd + " --out " + out), "multiple of 4");

  const std::string too_large = write_tokens({3, 4, 50, 5});
  expect_clean_failure(run_ttt("eval --model " + model + " --tokens " + too_large), "outside the model's vocabulary");

  expect_clean_failure(run_ttt("eval --model " + model + " --tokens " + write_tokens({3})), "at least 2 tokens");
  expect_clean_failure(run_ttt("eval --tokens " + tokens), "--model");
  expect_clean_failure(run_ttt("eval --model " + model + " --tokens " + tokens + " --bogus"), "--bogus");
  expect_clean_failure(run_ttt("eval --model " + model + " --tokens " + tokens + " --dtype f8"), "f8");

  const std::string bad_config = temp_path("bad.json");
  std::ofstream(bad_config) << R"({"variant": "swa"})";
  expect_clean_failure(run_ttt("init --config " + bad_config + " --out " + temp_path("m.safetensors")), "missing");

  // Diverging inner steps give a non-finite loss: an error, not a JSON null.
  const std::string diverging_config = temp_path("diverging.json");
  ModelConfig diverging = test::tiny_config(Variant::kTttE2E);
  diverging.vocab_size = 50;
  diverging.inner_lr = 1e30;
  diverging.inner_clip = 0;
  std::ofstream(diverging_config) << diverging.to_json().dump();
  const std::string diverging_model = temp_path("diverging.safetensors");
  ASSERT_EQ(run_ttt("init --config " + diverging_config + " --out " + diverging_model).exit_code, 0);
  expect_clean_failure(run_ttt("eval --model " + diverging_model + " --tokens " + tokens + " --json " + out),
                       "diverged");
  expect_clean_failure(run_ttt("init --config " + diverging_config + " --out " + temp_path("m.safetensors") +
                               " --seed -1"), "--seed");

  // Nothing is written on failure.
  EXPECT_FALSE(std::ifstream(out).good());
}

}  // namespace
}  // namespace ttt
