// What the benchmark programs share: the small model they measure and memory readings.
#pragma once
#include <sys/resource.h>

#include <string>

#include <nlohmann/json.hpp>

#include "common/blas.h"
#include "common/device_allocator.h"
#include "common/malloc_tuning.h"
#include "config/model_config.h"

namespace ttt::bench {

// 4 blocks, 4 heads, d_ff 2 x width; ttt-e2e with one suffix block; the last two ids are
// bos and eos.
inline ModelConfig small_model(const std::string& variant, int64_t vocab_size, int64_t d_model, int64_t window,
                               int64_t mini_batch) {
  return ModelConfig::from_json(
      {{"variant", variant}, {"vocab_size", vocab_size}, {"d_model", d_model}, {"n_layers", 4}, {"n_heads", 4},
       {"d_ff", 2 * d_model}, {"rms_eps", 1e-6}, {"rope_theta", 10000.0}, {"window", window},
       {"mini_batch", mini_batch}, {"suffix_len", variant == "ttt-e2e" ? 1 : 0}, {"inner_lr", 1.0},
       {"inner_clip", 1.0}, {"tie_embeddings", true}, {"qk_norm", true}, {"bos_id", vocab_size - 2}, {"eos_id", vocab_size - 1}});
}

// The process's peak resident set size in MiB.
inline double peak_resident_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024;  // KiB on Linux
}

// Benchmarks run on one thread with the allocators tuned as `ttt` tunes them.
inline void setup_process() {
  tune_malloc_for_tensors();
  prefer_expandable_device_segments();
  set_cpu_threads(1);
}

}  // namespace ttt::bench
