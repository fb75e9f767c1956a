// `ttt generate`: a prompt in, text out as it is made, the model learning as it reads
// (infer/session.h). Tokenizers live in `ttt-data` (no libtorch there, see data_main.cpp):
// it encodes the prompt and writes the token table that turns sampled ids into bytes here.
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "cli_support.h"
#include "commands.h"
#include "infer/sampler.h"
#include "infer/session.h"
#include "io/atomic_file.h"
#include "io/scratch_dir.h"
#include "io/token_file.h"
#include "io/token_table.h"
#include "model/checkpoint.h"
#include "model/compute.h"

namespace ttt::cli {
namespace {

struct GenerateOptions {
  std::string model_path, tokenizer, prompt, prompt_file, prompt_tokens, save_session, load_session;
  int64_t max_tokens = 200;
  bool no_bos = false, stats = false, special = false;
  SamplingOptions sampling{.temperature = 0.8, .top_k = 0, .top_p = 0.95, .repetition_penalty = 1.0, .seed = 0};
  ComputeFlags compute;
};

double peak_rss_mb() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

void generate(const GenerateOptions& options) {
  require(options.max_tokens > 0, "--max-tokens must be at least 1");
  const int given = !options.prompt.empty() + !options.prompt_file.empty() + !options.prompt_tokens.empty();
  require(given == 1 || (given == 0 && !options.load_session.empty()),
          "give one prompt: --prompt TEXT, --prompt-file F or --prompt-tokens X.u32");
  const Model model = options.compute.load_for_inference(options.model_path);
  const std::string tokenizer = tokenizer_for(options.model_path, options.tokenizer);

  const io::ScratchDir scratch("ttt-generate");  // files exchanged with ttt-data
  io::TokenTable table;
  const bool have_text = !tokenizer.empty();
  if (have_text) {
    table = token_table_for(model.config, tokenizer, scratch.path("pieces.bin"));
  } else {
    require(options.prompt_tokens.empty() == false || given == 0,
            "no tokenizer: give --tokenizer, keep tokenizer.model beside the model, or use --prompt-tokens");
  }

  std::vector<int64_t> prompt;
  if (!options.prompt_tokens.empty()) {
    prompt = io::read_token_file(options.prompt_tokens);
  } else if (given == 1) {
    std::string input = options.prompt_file;
    if (input.empty()) {
      io::write_text_file(scratch.path("prompt.txt"), options.prompt);
      input = scratch.path("prompt.txt");
    }
    std::vector<std::string> args = {
        "tokenize", "--tokenizer", tokenizer, "--input", input, "--out", scratch.path("prompt.u32")};
    if (options.special) args.push_back("--special");
    run_data_program(args);
    struct stat info {};
    require(::stat(scratch.path("prompt.u32").c_str(), &info) == 0 && info.st_size > 0, "the prompt is empty");
    prompt = io::read_token_file(scratch.path("prompt.u32"));
  }
  require(given == 0 || !prompt.empty(), "the prompt is empty");
  // Documents begin with bos in training (SPEC section 4), so a fresh prompt does too.
  if (options.load_session.empty() && !options.no_bos && (prompt.empty() || prompt[0] != model.config.bos_id)) {
    prompt.insert(prompt.begin(), model.config.bos_id);
  }

  Session session(model.config, model.params);
  if (!options.load_session.empty()) session.restore(options.load_session);
  const auto start = std::chrono::steady_clock::now();
  if (!prompt.empty()) session.feed(prompt);
  const double prefill_s = seconds_since(start);
  const int64_t prefill_steps = session.inner_steps();
  if (!options.save_session.empty()) session.save(options.save_session);

  Sampler sampler(options.sampling);
  std::vector<int64_t> context = prompt;
  const auto decode_start = std::chrono::steady_clock::now();
  int64_t generated = 0;
  torch::Tensor logits = session.last_logits();
  for (; generated < options.max_tokens; ++generated) {
    const int64_t token = sampler.sample(logits, context);
    if (token == model.config.eos_id) break;
    if (have_text) {
      if (token < static_cast<int64_t>(table.pieces.size()) && table.special[token] == 0) {
        std::fwrite(table.pieces[token].data(), 1, table.pieces[token].size(), stdout);
      }
    } else {
      std::printf("%s%lld", generated ? " " : "", static_cast<long long>(token));
    }
    std::fflush(stdout);
    context.push_back(token);
    if (generated + 1 < options.max_tokens) logits = session.feed(std::vector<int64_t>{token});
  }
  // The text ends its line, and reaches the terminal or file before the stats on stderr.
  std::printf("\n");
  std::fflush(stdout);
  const double decode_s = seconds_since(decode_start);
  if (options.stats) {
    std::fprintf(stderr,
                 "prompt %zu tokens in %.2f s (%.0f tokens/s, %lld inner steps); generated %lld tokens in %.2f s "
                 "(%.1f tokens/s, %lld inner steps); session state %.2f MB at position %lld; peak memory %.0f MB\n",
                 prompt.size(), prefill_s, static_cast<double>(prompt.size()) / prefill_s,
                 static_cast<long long>(prefill_steps), static_cast<long long>(generated), decode_s,
                 static_cast<double>(generated) / decode_s,
                 static_cast<long long>(session.inner_steps() - prefill_steps),
                 static_cast<double>(session.state_bytes()) / 1e6, static_cast<long long>(session.position()),
                 peak_rss_mb());
    if (const std::optional<DeviceMemory> memory = device_memory(model.params.final_norm.device())) {
      std::fprintf(stderr, "GPU memory peak %.0f MB in tensors, %.0f MB reserved\n",
                   static_cast<double>(memory->peak_allocated) / 1e6, static_cast<double>(memory->peak_reserved) / 1e6);
    }
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto options = std::make_shared<GenerateOptions>();
  CLI::App* command = app.add_subcommand(
      "generate",
      "Generate text from a prompt, streaming it as it is made. ttt-e2e keeps learning as it reads: every\n"
      "full mini-batch of prompt or generated tokens takes one inner step (SPEC section 5). The tokenizer is\n"
      "--tokenizer or tokenizer.model beside the model; without one, --prompt-tokens in and ids out.");
  command->add_option("--model", options->model_path, "model checkpoint (.safetensors)")->required();
  options->compute.add_to(command);
  command->add_option("--prompt", options->prompt, "the prompt text");
  command->add_option("--prompt-file", options->prompt_file, "read the prompt from this file");
  command->add_option("--prompt-tokens", options->prompt_tokens, "the prompt as a token file (.u32)");
  command->add_option("--tokenizer", options->tokenizer,
                      "bytes, cl100k_base, llama3, ... or a tokenizer file (see `ttt tokenize --help`)");
  command->add_flag("--special", options->special, "special tokens' text in the prompt becomes their ids");
  command->add_flag("--no-bos", options->no_bos, "do not start the prompt with bos");
  command->add_option("--max-tokens", options->max_tokens, "tokens to generate at most (stops earlier at eos)")
      ->capture_default_str();
  command->add_option("--temperature", options->sampling.temperature, "sampling temperature (0: greedy)")
      ->capture_default_str();
  command->add_option("--top-k", options->sampling.top_k, "sample from the k most likely tokens (0: all)")
      ->capture_default_str();
  command->add_option("--top-p", options->sampling.top_p, "sample from the smallest set of tokens with this mass")
      ->capture_default_str();
  command->add_option("--repetition-penalty", options->sampling.repetition_penalty,
                      "divide positive logits of tokens already seen by this (multiply negative ones)")
      ->capture_default_str();
  command->add_option("--seed", options->sampling.seed, "seed of the sampler")->capture_default_str();
  command->add_option("--save-session", options->save_session,
                      "after the prompt, save the session (fast weights, cache) here to query the document again");
  command->add_option("--load-session", options->load_session,
                      "start from a saved session; the prompt (optional) continues it");
  command->add_flag("--stats", options->stats,
                    "print prefill and decode tokens/s, inner steps and memory to stderr at the end");
  command->callback([options] {
    options->sampling.validate();
    generate(*options);
  });
}

}  // namespace ttt::cli
