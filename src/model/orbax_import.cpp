#include "model/orbax_import.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>

#include "common/error.h"
#include "io/safetensors.h"

namespace ttt {
namespace {

using io::orbax::OrbaxCheckpoint;
using io::orbax::StoredDtype;
using io::orbax::ZarrArray;
using nlohmann::json;

const std::string kTreePrefix = "language_model.model.";

// Which leading axis a leaf stacks: none, one slice per block, or one per suffix block.
enum class Stack { kNone, kLayers, kPrime };
// The shape of one (unstacked) tensor.
enum class Dims { kVocabByModel, kModel, kModelByModel, kHead, kModelByFf, kFfByModel };

struct LeafRule {
  const char* leaf;    // under kTreePrefix
  const char* target;  // SPEC name, after "blocks.{i}." when stacked
  Stack stack;
  Dims dims;
};

// Their tree (the fixtures README's table), in the order the tensors are read and written.
const LeafRule kRules[] = {
    {"wte.weight", "embed.weight", Stack::kNone, Dims::kVocabByModel},
    {"ln_f.weight", "final_norm", Stack::kNone, Dims::kModel},
    {"h.blocks.seq_norm.weight", "attn_norm", Stack::kLayers, Dims::kModel},
    {"h.blocks.seq_modeling_block.wq.weight", "attn.wq", Stack::kLayers, Dims::kModelByModel},
    {"h.blocks.seq_modeling_block.wk.weight", "attn.wk", Stack::kLayers, Dims::kModelByModel},
    {"h.blocks.seq_modeling_block.wv.weight", "attn.wv", Stack::kLayers, Dims::kModelByModel},
    {"h.blocks.seq_modeling_block.wo.weight", "attn.wo", Stack::kLayers, Dims::kModelByModel},
    {"h.blocks.seq_modeling_block.q_norm.weight", "attn.q_norm", Stack::kLayers, Dims::kHead},
    {"h.blocks.seq_modeling_block.k_norm.weight", "attn.k_norm", Stack::kLayers, Dims::kHead},
    {"h.blocks.seq_post_norm.weight", "attn_post_norm", Stack::kLayers, Dims::kModel},
    {"h.prime_storage.ffn_prime_norm.weight", "prime_norm", Stack::kPrime, Dims::kModel},
    {"h.prime_storage.feed_forward_prime.w1.weight", "prime.w1", Stack::kPrime, Dims::kModelByFf},
    {"h.prime_storage.feed_forward_prime.w2.weight", "prime.w2", Stack::kPrime, Dims::kFfByModel},
    {"h.prime_storage.feed_forward_prime.w3.weight", "prime.w3", Stack::kPrime, Dims::kModelByFf},
    {"h.prime_storage.ffn_prime_post_norm.weight", "prime_post_norm", Stack::kPrime, Dims::kModel},
    {"h.blocks.ffn_norm.weight", "mlp_norm", Stack::kLayers, Dims::kModel},
    {"h.blocks.feed_forward.w1.weight", "mlp.w1", Stack::kLayers, Dims::kModelByFf},
    {"h.blocks.feed_forward.w2.weight", "mlp.w2", Stack::kLayers, Dims::kFfByModel},
    {"h.blocks.feed_forward.w3.weight", "mlp.w3", Stack::kLayers, Dims::kModelByFf},
    {"h.blocks.ffn_post_norm.weight", "mlp_post_norm", Stack::kLayers, Dims::kModel},
};

// What the authors' released models use for the keys the arrays cannot tell (their
// configs/model/*.yaml; the fixtures README).
const json kReleasedDefaults = {{"rms_eps", 1e-6},  {"rope_theta", 500000.0}, {"window", 8192},  {"mini_batch", 1024},
                                {"bos_id", 128000}, {"eos_id", 128001},       {"inner_lr", 1.0}, {"inner_clip", 1.0}};

std::string show_shape(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

std::vector<int64_t> tensor_shape(Dims dims, const ModelConfig& c) {
  switch (dims) {
    case Dims::kVocabByModel:
      return {c.vocab_size, c.d_model};
    case Dims::kModel:
      return {c.d_model};
    case Dims::kModelByModel:
      return {c.d_model, c.d_model};
    case Dims::kHead:
      return {c.head_dim()};
    case Dims::kModelByFf:
      return {c.d_model, c.d_ff};
    case Dims::kFfByModel:
      return {c.d_ff, c.d_model};
  }
  return {};
}

// A key's value and where it came from.
struct Setting {
  json value;
  std::string source;
};

class Planner {
 public:
  Planner(const OrbaxCheckpoint& checkpoint, const OrbaxImportOptions& options)
      : checkpoint_(checkpoint), options_(options), prefix_(checkpoint.store().prefix()) {}

  OrbaxImportPlan plan() {
    OrbaxImportPlan plan;
    for (const io::orbax::OrbaxLeaf& leaf : checkpoint_.leaves()) {
      if (!io::orbax::is_array_type(leaf.value_type)) {
        plan.ignored_leaves.push_back(leaf.name + " (" + leaf.value_type + ")");
        continue;
      }
      const LeafRule* rule = rule_for(leaf.name);
      require(rule != nullptr,
              prefix_ + "leaf '" + leaf.name + "' is not part of the authors' model tree: no SPEC name to map it to");
      arrays_.emplace(rule, std::make_unique<ZarrArray>(checkpoint_.store(), leaf.name));
    }
    infer();
    apply_overrides();
    plan.config = ModelConfig::from_json(config_json());
    const json config = plan.config.to_json();  // kept: items() only refers to it
    for (const auto& [key, value] : config.items()) {
      char line[160];
      std::snprintf(line, sizeof line, "  %-15s %-10s %s", key.c_str(), value.dump().c_str(),
                    settings_.at(key).source.c_str());
      plan.config_lines.push_back(line);
    }
    add_sources(plan);
    return plan;
  }

 private:
  static const LeafRule* rule_for(const std::string& leaf) {
    for (const LeafRule& rule : kRules) {
      if (leaf == kTreePrefix + rule.leaf) return &rule;
    }
    return nullptr;
  }
  static const LeafRule& rule_named(const std::string& leaf) { return *rule_for(kTreePrefix + leaf); }

  const ZarrArray* array(const std::string& leaf) const {
    const auto it = arrays_.find(&rule_named(leaf));
    return it == arrays_.end() ? nullptr : it->second.get();
  }

  // The shape of a leaf that inference needs, with the rank it must have.
  const std::vector<int64_t>& shape_of(const std::string& leaf, size_t rank, const std::string& expected) const {
    const ZarrArray* found = array(leaf);
    require(found != nullptr, prefix_ + "no leaf '" + kTreePrefix + leaf + "': not a checkpoint of the authors' model");
    const std::vector<int64_t>& shape = found->metadata().shape;
    require(shape.size() == rank,
            prefix_ + "leaf '" + found->path() + "' has shape " + show_shape(shape) + ", expected " + expected);
    return shape;
  }

  void infer() {
    const auto from = [&](const std::string& leaf) {
      return "from " + leaf + " " + show_shape(array(leaf)->metadata().shape);
    };
    const std::vector<int64_t>& wte = shape_of("wte.weight", 2, "[vocab_size, d_model]");
    settings_["vocab_size"] = {wte[0], from("wte.weight")};
    settings_["d_model"] = {wte[1], from("wte.weight")};
    const std::string wq = "h.blocks.seq_modeling_block.wq.weight";
    settings_["n_layers"] = {shape_of(wq, 3, "[n_layers, d_model, d_model]")[0], from(wq)};
    const std::string w1 = "h.blocks.feed_forward.w1.weight";
    settings_["d_ff"] = {shape_of(w1, 3, "[n_layers, d_model, d_ff]")[2], from(w1)};
    settings_["tie_embeddings"] = {true, "no lm_head leaf"};

    // The head width is q_norm's: n_heads = d_model / width. Without QK-norm only --config can tell.
    const std::string q_norm = "h.blocks.seq_modeling_block.q_norm.weight";
    settings_["qk_norm"] = {array(q_norm) != nullptr, array(q_norm) ? from(q_norm) : "no q_norm leaf"};
    if (array(q_norm) != nullptr) {
      const int64_t width = shape_of(q_norm, 2, "[n_layers, head_dim]")[1];
      require(width > 0 && wte[1] % width == 0, prefix_ + "leaf '" + array(q_norm)->path() + "' has head width " +
                                                    std::to_string(width) + ", which does not divide d_model " +
                                                    std::to_string(wte[1]));
      settings_["n_heads"] = {wte[1] / width, "d_model / head width " + from(q_norm)};
    }

    // Prime storage makes a ttt-e2e model; its leading axis is the suffix.
    const std::string prime_w1 = "h.prime_storage.feed_forward_prime.w1.weight";
    has_prime_ = array(prime_w1) != nullptr;
    if (has_prime_) {
      settings_["suffix_len"] = {shape_of(prime_w1, 3, "[suffix_len, d_model, d_ff]")[0], from(prime_w1)};
    }
    settings_["variant"] = {has_prime_ ? "ttt-e2e" : "swa",
                            has_prime_ ? "prime storage present" : "no prime storage (--variant fa if it is fa)"};
    for (const auto& [key, value] : kReleasedDefaults.items()) {
      settings_[key] = {value, "default (the authors' released models)"};
    }
  }

  // --config values replace defaults, and must agree with what the arrays say; --variant last.
  void apply_overrides() {
    require(options_.config.is_object(), "--config: expected a JSON object");
    for (const auto& [key, value] : options_.config.items()) {
      const auto it = settings_.find(key);
      const bool from_arrays = it != settings_.end() && it->second.source.rfind("default", 0) != 0 && key != "variant";
      if (from_arrays) {
        require(it->second.value == value, "--config: '" + key + "' is " + value.dump() + " but the checkpoint says " +
                                               it->second.value.dump() + " (" + it->second.source + ")");
      }
      settings_[key] = {value, from_arrays ? it->second.source + ", as --config says" : "--config"};
    }
    if (options_.variant) settings_["variant"] = {variant_name(*options_.variant), "--variant"};
    const json& variant = settings_.at("variant").value;
    require(variant != "ttt-e2e" || has_prime_,
            prefix_ + "variant ttt-e2e needs prime storage (h.prime_storage), which this checkpoint has not");
    require(variant == "ttt-e2e" || !has_prime_,
            prefix_ + "the checkpoint has prime storage (a ttt-e2e model), but the variant is " + variant.dump());
    require(settings_.count("n_heads"), prefix_ + "no q_norm leaf to tell the head width: give n_heads in --config");
  }

  // The config's keys for its variant: ttt-e2e's own keys only there, fa's window only if given.
  json config_json() {
    const json& variant = settings_.at("variant").value;
    json j = json::object();
    for (const auto& [key, setting] : settings_) {
      const bool ttt_only = key == "suffix_len" || key == "inner_lr" || key == "inner_clip";
      const bool defaulted = setting.source.rfind("default", 0) == 0;
      if (defaulted && ((ttt_only && variant != "ttt-e2e") || (key == "window" && variant == "fa"))) continue;
      j[key] = setting.value;
    }
    return j;
  }

  void add_sources(OrbaxImportPlan& plan) {
    const ModelConfig& c = plan.config;
    for (const LeafRule& rule : kRules) {
      const auto it = arrays_.find(&rule);
      if (it == arrays_.end()) {
        // Every tensor SPEC defines for this config must come from somewhere.
        const bool needed = (rule.stack != Stack::kPrime || c.is_ttt()) && (rule.dims != Dims::kHead || c.qk_norm);
        require(!needed, prefix_ + "no leaf '" + kTreePrefix + rule.leaf + "' (for " + rule.target + ")");
        continue;
      }
      const ZarrArray& source = *it->second;
      OrbaxTensorSource entry{source.path(), {}, tensor_shape(rule.dims, c)};
      std::vector<int64_t> expected = entry.target_shape;
      if (rule.stack == Stack::kNone) {
        entry.targets.push_back(rule.target);
      } else {
        const int64_t first = rule.stack == Stack::kLayers ? 0 : c.first_suffix_block();
        const int64_t count = rule.stack == Stack::kLayers ? c.n_layers : c.suffix_len;
        expected.insert(expected.begin(), count);
        for (int64_t i = first; i < first + count; ++i) {
          entry.targets.push_back("blocks." + std::to_string(i) + "." + rule.target);
        }
      }
      require(source.metadata().shape == expected, prefix_ + "leaf '" + source.path() + "' has shape " +
                                                       show_shape(source.metadata().shape) + ", expected " +
                                                       show_shape(expected) + " for this config");
      plan.stored_bytes += source.stored_bytes();
      plan.output_bytes += source.metadata().elements() * (options_.dtype == "bf16" ? 2 : 4);
      plan.sources.push_back(std::move(entry));
    }
  }

  const OrbaxCheckpoint& checkpoint_;
  const OrbaxImportOptions& options_;
  std::string prefix_;
  std::map<const LeafRule*, std::unique_ptr<ZarrArray>> arrays_;
  std::map<std::string, Setting> settings_;
  bool has_prime_ = false;
};

torch::Dtype torch_dtype(StoredDtype dtype) {
  switch (dtype) {
    case StoredDtype::kFloat32:
      return torch::kFloat32;
    case StoredDtype::kBFloat16:
      return torch::kBFloat16;
    case StoredDtype::kFloat16:
      return torch::kFloat16;
  }
  return torch::kFloat32;
}

}  // namespace

OrbaxImportPlan plan_orbax_import(const OrbaxCheckpoint& checkpoint, const OrbaxImportOptions& options) {
  require(options.dtype == "f32" || options.dtype == "bf16", "--dtype: '" + options.dtype + "' is not f32 or bf16");
  return Planner(checkpoint, options).plan();
}

void write_orbax_import(const OrbaxCheckpoint& checkpoint, const OrbaxImportPlan& plan, const std::string& dtype,
                        const std::string& out_path, const std::function<void(uint64_t, uint64_t)>& progress) {
  const torch::Dtype out_dtype = dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  const std::string out_name = dtype == "bf16" ? "BF16" : "F32";

  // The header is known from the metadata: it goes first, then each array's slices in order
  // (a stacked array's slices are contiguous, so the whole array is written as it was read).
  std::vector<io::TensorLayout> layouts;
  std::vector<ZarrArray> arrays;
  uint64_t largest = 0;
  for (const OrbaxTensorSource& source : plan.sources) {
    for (const std::string& target : source.targets) layouts.push_back({target, out_name, source.target_shape});
    arrays.emplace_back(checkpoint.store(), source.leaf);
    largest = std::max(largest, arrays.back().metadata().bytes());
  }
  io::SafetensorsWriter out(out_path, layouts, {{"config", plan.config.to_json_text()}});

  std::unique_ptr<char[]> buffer(new char[largest]);  // uninitialised: every byte is read into
  constexpr int64_t kPiece = int64_t(1) << 22;        // elements converted at a time
  torch::Tensor converted;
  uint64_t done = 0;
  for (const ZarrArray& array : arrays) {
    array.read_into(buffer.get(), [&](uint64_t bytes) {
      done += bytes;
      if (progress) progress(done, plan.stored_bytes);
    });
    const torch::Dtype stored = torch_dtype(array.metadata().dtype);
    if (stored == out_dtype) {
      out.write(buffer.get(), array.metadata().bytes());
      continue;
    }
    // Converted piece by piece (bf16 rounds to nearest even, as torch does).
    if (!converted.defined()) converted = torch::empty({kPiece}, torch::TensorOptions().dtype(out_dtype));
    const int64_t elements = int64_t(array.metadata().elements());
    const uint64_t stored_size = io::orbax::dtype_size(array.metadata().dtype);
    for (int64_t start = 0; start < elements; start += kPiece) {
      const int64_t n = std::min(kPiece, elements - start);
      const torch::Tensor piece =
          torch::from_blob(buffer.get() + uint64_t(start) * stored_size, {n}, torch::TensorOptions().dtype(stored));
      torch::Tensor target = converted.narrow(0, 0, n);
      target.copy_(piece);
      out.write(target.data_ptr(), uint64_t(n) * target.element_size());
    }
  }
  out.commit();
}

}  // namespace ttt
