// `ttt`: the command-line program of the ttt-e2e engine.
#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>
#include <torch/types.h>

#include "commands.h"
#include "run_app.h"
#include "common/blas.h"
#include "common/error.h"
#include "common/device_allocator.h"
#include "common/malloc_tuning.h"

int main(int argc, char** argv) {
  ttt::tune_malloc_for_tensors();
  ttt::prefer_expandable_device_segments();
  CLI::App app{
      "ttt: long-context language models that learn while they read (TTT-E2E).\n"
      "Models are fa (full attention), swa (sliding window) or ttt-e2e (sliding window plus\n"
      "test-time training of the last blocks' prime MLPs), stored as safetensors checkpoints."};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads for tensor math (default: $OMP_NUM_THREADS, else all cores)")
      ->check(CLI::NonNegativeNumber);
  ttt::cli::add_init_command(app);
  ttt::cli::add_info_command(app);
  ttt::cli::add_eval_command(app);
  ttt::cli::add_grad_command(app);
  ttt::cli::add_train_command(app);
  ttt::cli::add_launch_command(app);
  ttt::cli::add_generate_command(app);
  ttt::cli::add_bench_command(app);
#ifdef TTT_WITH_ORBAX
  ttt::cli::add_convert_command(app);
#endif
#ifdef TTT_WITH_SERVE
  ttt::cli::add_serve_command(app);
#endif
#ifdef TTT_WITH_TEXT
  ttt::cli::add_text_commands(app);
#endif
  app.parse_complete_callback([&] {
    if (threads == 0) {
      const char* omp_threads = std::getenv("OMP_NUM_THREADS");
      threads = omp_threads ? std::atoi(omp_threads) : 0;
      if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
    }
    ttt::set_cpu_threads(std::max(threads, 1));
    if (const auto blas = ttt::blas_info(); !blas.optimized) {
      std::cerr << "ttt: warning: libtorch runs on an unoptimised BLAS (" << blas.library
                << "); install libopenblas-dev (scripts/setup.sh) for ~25x faster CPU math\n";
    }
  });

  return ttt::cli::run_app(app, argc, argv, ttt::describe);
}
