// Peak memory of one sequence's training gradient against the number of chunks, with and
// without per-chunk recomputation (remat). One configuration per process, because the
// peak resident set size only grows: run it through bench/train_memory.sh.
//
//   ttt_bench_memory --variant ttt-e2e --chunks 16 --remat 1
// prints one JSON line: the resident memory before the gradient (model, data, libraries),
// the peak during it, their difference (activations and saved chunk states) and the time.
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "bench_common.h"
#include "model/params.h"
#include "ttt/inner_loop.h"
#include "ttt/sequence_gradient.h"

namespace {

double resident_mb() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 20);
}


}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Peak memory of one training gradient (see bench/train_memory.sh)"};
  std::string variant = "ttt-e2e";
  int64_t chunks = 4, mini_batch = 128, d_model = 128;
  int remat = 1;
  app.add_option("--variant", variant, "fa, swa or ttt-e2e")->capture_default_str();
  app.add_option("--chunks", chunks, "chunks of mini_batch tokens in the sequence")->capture_default_str();
  app.add_option("--mini-batch", mini_batch, "tokens per chunk (also the window)")->capture_default_str();
  app.add_option("--d-model", d_model, "model width")->capture_default_str();
  app.add_option("--remat", remat, "1: per-chunk recomputation; 0: one graph through all chunks")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  ttt::bench::setup_process();
  const ttt::ModelConfig config = ttt::bench::small_model(variant, 258, d_model, mini_batch, mini_batch);
  const ttt::Params params = ttt::convert_params(config, ttt::init_params(config, 1), torch::kFloat32, true);
  torch::manual_seed(2);
  const torch::Tensor tokens = torch::randint(0, 256, {chunks * mini_batch + 1}, torch::kInt64);

  const double before = resident_mb();
  const auto start = std::chrono::steady_clock::now();
  double loss = 0;
  if (remat) {
    loss = ttt::accumulate_sequence_gradient(config, params, tokens).item<double>();
  } else {
    ttt::SequenceOptions options;
    options.outer_gradient = ttt::OuterGradient::kExact;
    const torch::Tensor l = ttt::run_sequence(config, params, tokens, options).loss;
    l.backward();
    loss = l.item<double>();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double peak = ttt::bench::peak_resident_mb();
  std::cout << nlohmann::json{{"variant", variant}, {"chunks", chunks}, {"mini_batch", mini_batch},
                              {"d_model", d_model}, {"remat", remat != 0}, {"loss", loss},
                              {"before_mb", before}, {"peak_mb", peak}, {"gradient_mb", peak - before},
                              {"seconds", seconds}}
                   .dump()
            << std::endl;
  return 0;
}
