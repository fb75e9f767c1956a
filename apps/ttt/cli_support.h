// Small pieces the model commands share.
#pragma once
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "common/error.h"
#include "eval/evaluate.h"
#include "io/paths.h"
#include "io/token_file.h"
#include "io/token_table.h"
#include "model/checkpoint.h"
#include "model/compute.h"

namespace ttt::cli {

// A progress line on stderr when it is a terminal: long runs show they are alive.
// `unit` names what is counted.
inline ProgressFn progress_reporter(const std::string& what, const std::string& unit = "chunk") {
  if (!isatty(STDERR_FILENO)) return {};
  return [what, unit](int64_t done, int64_t total) {
    std::fprintf(stderr, "\r%s: %s %lld/%lld", what.c_str(), unit.c_str(), static_cast<long long>(done),
                 static_cast<long long>(total));
    if (done == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  };
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::max(1e-9, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

// JSON has no NaN or infinity, and neither is a usable result: fail instead of writing one.
inline void require_finite_loss(double loss) {
  require(std::isfinite(loss), "the loss is " + std::to_string(loss) +
                                   ": the checkpoint holds non-finite weights or the inner steps diverged"
                                   " (try a smaller inner_lr, or inner_clip > 0)");
}

// A token file's ids checked against the model's vocabulary; errors name the file.
inline torch::Tensor load_tokens_for(const ModelConfig& config, const std::string& path) {
  const std::vector<int64_t> ids = io::read_token_file(path);
  try {
    return checked_tokens(config, ids);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

// A flag's comma-separated integers ("0,64,256"); an item that is not one is an error
// naming the flag, the item and `expected` (an example of the right form).
inline std::vector<int64_t> parse_integers(const std::string& flag, const std::string& text,
                                           const std::string& expected) {
  std::vector<int64_t> values;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      size_t used = 0;
      values.push_back(std::stoll(item, &used));
      require(used == item.size(), "");
    } catch (const std::exception&) {
      throw Error(flag + ": '" + item + "' is not an integer (expected " + expected + ")");
    }
  }
  return values;
}

// A flag's comma-separated lengths in tokens, each a positive integer with an optional K
// (x1024) or M (x1024^2) suffix: "8K,16K,1000" gives 8192, 16384, 1000.
inline std::vector<int64_t> parse_token_counts(const std::string& flag, const std::string& text) {
  std::vector<int64_t> counts;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    std::string digits = item;
    int64_t scale = 1;
    if (!digits.empty() && (digits.back() == 'K' || digits.back() == 'k')) scale = 1024;
    if (!digits.empty() && (digits.back() == 'M' || digits.back() == 'm')) scale = 1024 * 1024;
    if (scale > 1) digits.pop_back();
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(digits, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    require(!digits.empty() && used == digits.size() && value > 0,
            flag + ": '" + item + "' is not a number of tokens (expected e.g. 8K,16K or 4096)");
    counts.push_back(value * scale);
  }
  require(!counts.empty(), flag + ": give at least one length (e.g. 8K,16K)");
  return counts;
}

// The tokenizer given, else tokenizer.model beside the checkpoint (where `scripts/main_job.sh`
// keeps it); "" when there is none.
inline std::string tokenizer_for(const std::string& model_path, const std::string& given) {
  if (!given.empty()) return given;
  const std::string beside = io::parent_directory(model_path) + "/tokenizer.model";
  return ::access(beside.c_str(), R_OK) == 0 ? beside : "";
}

// The tokenizer's pieces (from ttt-data, written to `path`), checked to fit the model: no
// more tokens than its vocab_size, and its bos.
inline io::TokenTable token_table_for(const ModelConfig& config, const std::string& tokenizer,
                                      const std::string& path) {
  run_data_program({"data", "tokenizer-info", "--tokenizer", tokenizer, "--pieces", path});
  io::TokenTable table = io::TokenTable::read(path);
  require(static_cast<int64_t>(table.pieces.size()) <= config.vocab_size,
          "tokenizer " + table.tokenizer + " has " + std::to_string(table.pieces.size()) +
              " tokens, more than the model's vocab_size " + std::to_string(config.vocab_size));
  require(table.bos_id == config.bos_id, "tokenizer " + table.tokenizer + "'s bos id " + std::to_string(table.bos_id) +
                                             " is not the model's bos_id " + std::to_string(config.bos_id));
  return table;
}

// --device and --dtype, shared by every command that runs a model.
struct ComputeFlags {
  std::string device = "cpu", dtype = "auto";

  void add_to(CLI::App* command) {
    command->add_option("--device", device, "where to compute: cpu, cuda or cuda:N")->capture_default_str();
    command->add_option("--dtype", dtype,
                        "precision: bf16 (matmuls in bf16 on fp32 parameters; fast weights, softmax and losses\n"
                        "in fp32), f32, f64 (the reference), or auto: bf16 on cuda, f32 on cpu")
        ->check(CLI::IsMember({"auto", "bf16", "f32", "f64"}))
        ->capture_default_str();
  }

  ComputeOptions compute() const {
    const torch::Device on = parse_device(device);
    return {on, parse_matmul_dtype(dtype, on)};
  }
  torch::Dtype param_dtype() const { return parse_param_dtype(dtype); }

  // A checkpoint ready for inference on the device (no gradients w.r.t. its weights).
  Model load_for_inference(const std::string& path) const { return ttt::load_for_inference(path, device, dtype); }
};

}  // namespace ttt::cli
