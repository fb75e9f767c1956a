#include "config/model_config.h"

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json_input.h"

namespace ttt {
namespace {

using nlohmann::json;

// Keys every variant needs, keys only some variants need, and keys only ttt-e2e may set.
const std::set<std::string> kCommonKeys = {
    "variant", "vocab_size", "d_model", "n_layers",  "n_heads", "d_ff",   "rms_eps",
    "rope_theta", "mini_batch", "tie_embeddings", "qk_norm", "bos_id", "eos_id"};

std::string config_error(const std::string& key, const std::string& what) { return "config: '" + key + "' " + what; }

int64_t get_int(const json& j, const std::string& key) {
  const json& value = j.at(key);
  if (!value.is_number_integer()) throw Error(config_error(key, "must be an integer, got " + value.dump()));
  return value.get<int64_t>();
}

double get_real(const json& j, const std::string& key) {
  const json& value = j.at(key);
  if (!value.is_number()) throw Error(config_error(key, "must be a number, got " + value.dump()));
  const double x = value.get<double>();
  if (!std::isfinite(x)) throw Error(config_error(key, "must be finite"));
  return x;
}

bool get_bool(const json& j, const std::string& key) {
  const json& value = j.at(key);
  if (!value.is_boolean()) throw Error(config_error(key, "must be true or false, got " + value.dump()));
  return value.get<bool>();
}

Variant parse_variant(const json& j) {
  const json& value = j.at("variant");
  if (const std::optional<Variant> variant = variant_named(value.is_string() ? value.get<std::string>() : value.dump())) {
    return *variant;
  }
  throw Error(config_error("variant", "must be \"fa\", \"swa\" or \"ttt-e2e\", got " + value.dump()));
}

void require_positive(int64_t value, const std::string& key) {
  require(value > 0, config_error(key, "must be positive, got " + std::to_string(value)));
}

}  // namespace

std::optional<Variant> variant_named(const std::string& name) {
  for (Variant variant : {Variant::kFullAttention, Variant::kSlidingWindow, Variant::kTttE2E}) {
    if (name == variant_name(variant)) return variant;
  }
  return std::nullopt;
}

const char* variant_name(Variant variant) {
  switch (variant) {
    case Variant::kFullAttention: return "fa";
    case Variant::kSlidingWindow: return "swa";
    case Variant::kTttE2E: return "ttt-e2e";
  }
  return "?";
}

ModelConfig ModelConfig::from_json(const json& j) {
  require(j.is_object(), "config: expected a JSON object, got " + std::string(j.type_name()));
  require(j.contains("variant"), config_error("variant", "is missing"));
  ModelConfig c;
  c.variant = parse_variant(j);

  // window: needed by the windowed variants; fa may carry one but never uses it.
  // inner_lr / inner_clip: needed by ttt-e2e; ignored by the others.
  // suffix_len: ttt-e2e only; elsewhere only 0 is accepted (configs that list every key),
  // since any other value would suggest prime MLPs that do not exist.
  std::set<std::string> required = kCommonKeys;
  std::set<std::string> optional;
  if (c.variant == Variant::kFullAttention) {
    optional = {"window", "inner_lr", "inner_clip"};
  } else if (c.variant == Variant::kSlidingWindow) {
    required.insert("window");
    optional = {"inner_lr", "inner_clip"};
  } else {
    required.insert({"window", "suffix_len", "inner_lr", "inner_clip"});
  }
  for (const auto& [key, value] : j.items()) {
    if (required.count(key) || optional.count(key)) continue;
    if (key == "suffix_len") {
      if (value.is_number_integer() && value.get<int64_t>() == 0) continue;
      throw Error(config_error(key, std::string("is only for variant \"ttt-e2e\", not \"") +
                                        variant_name(c.variant) + "\" (0 or absent there)"));
    }
    throw Error(config_error(key, "is not a known key"));
  }
  for (const auto& key : required) require(j.contains(key), config_error(key, "is missing"));

  c.vocab_size = get_int(j, "vocab_size");
  c.d_model = get_int(j, "d_model");
  c.n_layers = get_int(j, "n_layers");
  c.n_heads = get_int(j, "n_heads");
  c.d_ff = get_int(j, "d_ff");
  c.rms_eps = get_real(j, "rms_eps");
  c.rope_theta = get_real(j, "rope_theta");
  c.mini_batch = get_int(j, "mini_batch");
  c.tie_embeddings = get_bool(j, "tie_embeddings");
  c.qk_norm = get_bool(j, "qk_norm");
  c.bos_id = get_int(j, "bos_id");
  c.eos_id = get_int(j, "eos_id");
  if (j.contains("window")) c.window = get_int(j, "window");
  if (c.is_ttt()) {
    c.suffix_len = get_int(j, "suffix_len");
    c.inner_lr = get_real(j, "inner_lr");
    c.inner_clip = get_real(j, "inner_clip");
  }
  c.validate();
  return c;
}

ModelConfig ModelConfig::from_json_text(const std::string& text) {
  return from_json(io::parse_json_input(text, "config: "));
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  require(in.good(), "cannot open config file '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();
  try {
    return from_json_text(text.str());
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

void ModelConfig::validate() const {
  require_positive(vocab_size, "vocab_size");
  require_positive(d_model, "d_model");
  require_positive(n_layers, "n_layers");
  require_positive(n_heads, "n_heads");
  require_positive(d_ff, "d_ff");
  require_positive(mini_batch, "mini_batch");
  require(d_model % n_heads == 0, config_error("d_model", std::to_string(d_model) +
                                                              " is not divisible by n_heads " +
                                                              std::to_string(n_heads)));
  require(head_dim() % 2 == 0,
          config_error("n_heads", "gives an odd head dimension " + std::to_string(head_dim()) +
                                      " (RoPE rotates pairs)"));
  require(rms_eps > 0, config_error("rms_eps", "must be positive"));
  require(rope_theta > 0, config_error("rope_theta", "must be positive"));
  if (variant != Variant::kFullAttention) {
    require_positive(window, "window");
    require(window >= mini_batch, config_error("window", std::to_string(window) +
                                                             " is smaller than mini_batch " +
                                                             std::to_string(mini_batch)));
  } else {
    require(window >= 0, config_error("window", "must not be negative"));
  }
  // An id beyond the vocabulary is allowed (it then never occurs, so nothing is masked):
  // small test models keep the Llama-3 ids.
  require(bos_id >= 0, config_error("bos_id", "must not be negative"));
  require(eos_id >= 0, config_error("eos_id", "must not be negative"));
  if (is_ttt()) {
    require(suffix_len >= 1 && suffix_len <= n_layers,
            config_error("suffix_len", std::to_string(suffix_len) + " must be between 1 and n_layers " +
                                           std::to_string(n_layers)));
    require(inner_lr >= 0, config_error("inner_lr", "must not be negative"));
    require(inner_clip >= 0, config_error("inner_clip", "must not be negative (0 turns clipping off)"));
  } else {
    require(suffix_len == 0, config_error("suffix_len", "is only for variant \"ttt-e2e\""));
  }
}

json ModelConfig::to_json() const {
  json j = {{"variant", variant_name(variant)},
            {"vocab_size", vocab_size},
            {"d_model", d_model},
            {"n_layers", n_layers},
            {"n_heads", n_heads},
            {"d_ff", d_ff},
            {"rms_eps", rms_eps},
            {"rope_theta", rope_theta},
            {"mini_batch", mini_batch},
            {"tie_embeddings", tie_embeddings},
            {"qk_norm", qk_norm},
            {"bos_id", bos_id},
            {"eos_id", eos_id}};
  if (window != 0) j["window"] = window;
  if (is_ttt()) {
    j["suffix_len"] = suffix_len;
    j["inner_lr"] = inner_lr;
    j["inner_clip"] = inner_clip;
  }
  return j;
}

std::string ModelConfig::to_json_text() const { return to_json().dump(); }

}  // namespace ttt
