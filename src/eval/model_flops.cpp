#include "eval/model_flops.h"

#include <algorithm>

namespace ttt {
namespace {

// Keys seen by the tokens at positions [0, n): the sum of k(t).
double keys_seen(const ModelConfig& c, int64_t n) {
  const auto triangle = [](double m) { return m * (m + 1) / 2; };
  const int64_t w = c.attention_window();
  if (w == 0 || n <= w) return triangle(static_cast<double>(n));
  return triangle(static_cast<double>(w)) + static_cast<double>(n - w) * static_cast<double>(w);
}

}  // namespace

double evaluation_flops(const ModelConfig& c, int64_t tokens) {
  const double d = static_cast<double>(c.d_model), f = static_cast<double>(c.d_ff);
  const double L = static_cast<double>(c.n_layers), s = c.is_ttt() ? static_cast<double>(c.suffix_len) : 0.0;
  const double projections = 8 * d * d, mlp = 6 * d * f, head = 2 * d * static_cast<double>(c.vocab_size);
  const double n = static_cast<double>(tokens);
  double flops = n * (L * (projections + mlp) + s * mlp + head) + L * 4 * d * keys_seen(c, tokens);
  if (c.is_ttt() && c.suffix_len > 0) {
    // Chunks that update: every full one but the last chunk of the sequence.
    const int64_t full = tokens / c.mini_batch;
    const int64_t updating = tokens % c.mini_batch == 0 ? std::max<int64_t>(0, full - 1) : full;
    const int64_t end = updating * c.mini_batch;
    const double per_token = head + s * (6 + 8) * d * f + (s - 1) * (4 * d * f + projections);
    flops += static_cast<double>(end) * per_token + (s - 1) * 8 * d * keys_seen(c, end);
  }
  return flops;
}

double training_flops(const ModelConfig& config, int64_t tokens) { return 3 * evaluation_flops(config, tokens); }

std::optional<double> peak_half_precision_flops(const std::string& device_name) {
  const auto has = [&](const char* part) { return device_name.find(part) != std::string::npos; };
  if ((has("H100") || has("H200")) && has("NVL")) return 835e12;
  if (has("H100") && has("PCIe")) return 756e12;
  if (has("H100") || has("H200")) return 989e12;
  if (has("A100")) return 312e12;
  return std::nullopt;
}

}  // namespace ttt
