// The model configuration of SPEC section 2: parsed from JSON, validated, written back.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace ttt {

enum class Variant { kFullAttention, kSlidingWindow, kTttE2E };

// "fa", "swa" or "ttt-e2e".
const char* variant_name(Variant variant);
// The variant of that name, if any.
std::optional<Variant> variant_named(const std::string& name);

struct ModelConfig {
  Variant variant = Variant::kTttE2E;
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t d_ff = 0;
  double rms_eps = 1e-6;
  double rope_theta = 500000.0;
  int64_t window = 0;      // attention window k; 0 for fa (it attends to everything)
  int64_t mini_batch = 0;  // TTT mini-batch b, also the chunk size of evaluation
  int64_t suffix_len = 0;  // blocks with a prime MLP (ttt-e2e only)
  bool tie_embeddings = true;
  bool qk_norm = true;
  int64_t bos_id = 0;
  int64_t eos_id = 0;
  double inner_lr = 0.0;    // ttt-e2e only
  double inner_clip = 0.0;  // ttt-e2e only; 0 = no clipping

  int64_t head_dim() const { return d_model / n_heads; }
  // The window attention applies: 0 (unbounded) for fa, whatever `window` says.
  int64_t attention_window() const { return variant == Variant::kFullAttention ? 0 : window; }
  bool is_ttt() const { return variant == Variant::kTttE2E; }
  // Whether block `i` carries a prime MLP (the last suffix_len blocks of ttt-e2e).
  bool has_prime(int64_t i) const { return is_ttt() && i >= n_layers - suffix_len; }
  // Index of the first block with a prime MLP (n_layers when there is none).
  int64_t first_suffix_block() const { return is_ttt() ? n_layers - suffix_len : n_layers; }

  // Parses and validates; throws ttt::Error naming the offending key.
  static ModelConfig from_json(const nlohmann::json& json);
  static ModelConfig from_json_text(const std::string& text);
  static ModelConfig from_file(const std::string& path);
  nlohmann::json to_json() const;
  std::string to_json_text() const;

  // Throws ttt::Error describing the first inconsistency.
  void validate() const;
};

}  // namespace ttt
