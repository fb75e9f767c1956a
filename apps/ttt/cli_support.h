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

#include "common/error.h"
#include "eval/evaluate.h"
#include "io/token_file.h"
#include "model/checkpoint.h"
#include "model/compute.h"

namespace ttt::cli {

// A progress line on stderr when it is a terminal: long runs show they are alive.
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
  Model load_for_inference(const std::string& path) const {
    Model model = load_model(path, param_dtype());
    model.params = params_for_inference(model.config, model.params, compute());
    return model;
  }
};

}  // namespace ttt::cli
