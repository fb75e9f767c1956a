// Decode speed of a streaming session (infer/session.h) after a context of N tokens, per
// variant: the prompt is fed at once (prefill), then tokens are generated one at a time
// (greedy; each fed back). One configuration per process; bench/decode.sh runs the grid.
//
//   ttt_bench_decode --variant ttt-e2e --context 16384 --decode 128
// prints one JSON line: prefill time and tokens/s; decode tokens/s (amortised), the
// median and the worst per-token latency (for ttt-e2e the worst includes an inner step);
// the session's state and the process's peak memory.
#include <algorithm>
#include <chrono>
#include <iostream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "bench_common.h"
#include "infer/session.h"
#include "model/params.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Decode speed of a streaming session after N tokens of context (see bench/decode.sh)"};
  std::string variant = "ttt-e2e";
  int64_t context = 1024, decode = 128, d_model = 128, window = 256, mini_batch = 64;
  app.add_option("--variant", variant, "fa, swa or ttt-e2e")->capture_default_str();
  app.add_option("--context", context, "prompt tokens fed before decoding")->capture_default_str();
  app.add_option("--decode", decode, "tokens generated after it")->capture_default_str();
  app.add_option("--d-model", d_model, "model width (4 blocks, 4 heads, d_ff 2 x width)")->capture_default_str();
  app.add_option("--window", window, "attention window of swa and ttt-e2e")->capture_default_str();
  app.add_option("--mini-batch", mini_batch, "ttt-e2e's inner-step size")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  ttt::bench::setup_process();
  const ttt::ModelConfig config = ttt::bench::small_model(variant, 2048, d_model, window, mini_batch);
  const ttt::Params params = ttt::init_params(config, 1);
  torch::manual_seed(2);
  const torch::Tensor prompt = torch::randint(3, config.vocab_size, {context}, torch::kInt64);

  ttt::Session session(config, params);
  auto start = std::chrono::steady_clock::now();
  torch::Tensor logits = session.feed(prompt);
  const double prefill_s = seconds_since(start);
  const int64_t prefill_steps = session.inner_steps();

  std::vector<double> latencies;
  start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < decode; ++i) {
    const auto token_start = std::chrono::steady_clock::now();
    logits = session.feed(std::vector<int64_t>{logits.argmax().item<int64_t>()});
    latencies.push_back(seconds_since(token_start));
  }
  const double decode_s = seconds_since(start);
  std::vector<double> sorted = latencies;
  std::sort(sorted.begin(), sorted.end());
  std::cout << nlohmann::json{{"variant", variant},
                              {"context", context},
                              {"decode", decode},
                              {"d_model", d_model},
                              {"window", window},
                              {"mini_batch", mini_batch},
                              {"prefill_s", prefill_s},
                              {"prefill_tokens_per_s", static_cast<double>(context) / prefill_s},
                              {"prefill_inner_steps", prefill_steps},
                              {"decode_tokens_per_s", static_cast<double>(decode) / decode_s},
                              {"decode_median_ms", 1e3 * sorted[sorted.size() / 2]},
                              {"decode_worst_ms", 1e3 * sorted.back()},
                              {"decode_inner_steps", session.inner_steps() - prefill_steps},
                              {"state_mb", static_cast<double>(session.state_bytes()) / 1e6},
                              {"peak_mb", ttt::bench::peak_resident_mb()}}
                   .dump()
            << std::endl;
  return 0;
}
