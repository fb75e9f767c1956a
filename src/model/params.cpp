#include "model/params.h"

#include "common/error.h"

namespace ttt {
namespace {

std::string shape_text(c10::IntArrayRef shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

}  // namespace

void visit_params(const ModelConfig& c, Params& p, const ParamVisitor& visit) {
  const int64_t V = c.vocab_size, D = c.d_model, F = c.d_ff, d = c.head_dim();
  const auto matrix = ParamKind::kMatrix;
  const auto gain = ParamKind::kGain;
  p.blocks.resize(c.n_layers);

  visit("embed.weight", {V, D}, matrix, p.embed);
  visit("final_norm", {D}, gain, p.final_norm);
  if (!c.tie_embeddings) visit("lm_head", {D, V}, matrix, p.lm_head);

  const auto visit_mlp = [&](const std::string& prefix, MlpParams& mlp) {
    visit(prefix + ".w1", {D, F}, matrix, mlp.w1);
    visit(prefix + ".w2", {F, D}, matrix, mlp.w2);
    visit(prefix + ".w3", {D, F}, matrix, mlp.w3);
  };
  for (int64_t i = 0; i < c.n_layers; ++i) {
    BlockParams& b = p.blocks[i];
    const std::string prefix = "blocks." + std::to_string(i);
    visit(prefix + ".attn_norm", {D}, gain, b.attn_norm);
    visit(prefix + ".attn_post_norm", {D}, gain, b.attn_post_norm);
    visit(prefix + ".attn.wq", {D, D}, matrix, b.attn.wq);
    visit(prefix + ".attn.wk", {D, D}, matrix, b.attn.wk);
    visit(prefix + ".attn.wv", {D, D}, matrix, b.attn.wv);
    visit(prefix + ".attn.wo", {D, D}, matrix, b.attn.wo);
    if (c.qk_norm) {
      visit(prefix + ".attn.q_norm", {d}, gain, b.attn.q_norm);
      visit(prefix + ".attn.k_norm", {d}, gain, b.attn.k_norm);
    }
    if (c.has_prime(i)) {
      visit(prefix + ".prime_norm", {D}, gain, b.prime_norm);
      visit(prefix + ".prime_post_norm", {D}, gain, b.prime_post_norm);
      visit_mlp(prefix + ".prime", b.prime);
    }
    visit(prefix + ".mlp_norm", {D}, gain, b.mlp_norm);
    visit(prefix + ".mlp_post_norm", {D}, gain, b.mlp_post_norm);
    visit_mlp(prefix + ".mlp", b.mlp);
  }
}

Params init_params(const ModelConfig& config, uint64_t seed, torch::Dtype dtype) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  Params params;
  visit_params(config, params, [&](const std::string&, const std::vector<int64_t>& shape, ParamKind kind,
                                   torch::Tensor& slot) {
    if (kind == ParamKind::kGain) {
      slot = torch::ones(shape, torch::dtype(dtype));
    } else {
      // Drawn in fp32 whatever the dtype, so a seed gives the same model in every precision.
      slot = at::normal(0.0, 0.02, shape, generator, torch::dtype(torch::kFloat32)).to(dtype);
    }
  });
  return params;
}

std::map<std::string, torch::Tensor> named_params(const ModelConfig& config, const Params& params) {
  std::map<std::string, torch::Tensor> named;
  Params view = params;  // shares storage; visit_params needs mutable slots
  visit_params(config, view, [&](const std::string& name, const std::vector<int64_t>&, ParamKind,
                                 torch::Tensor& slot) { named.emplace(name, slot); });
  return named;
}

bool GradientBuffer::clear(const ModelConfig& config, const Params& params) {
  torch::NoGradGuard no_grad;
  const auto named = named_params(config, params);
  const torch::Tensor& first = named.begin()->second;
  bool fits = flat_.defined() && views_.size() == named.size() && flat_.device() == first.device() &&
              flat_.dtype() == first.dtype();
  int64_t total = 0;
  size_t i = 0;
  for (const auto& [name, p] : named) {
    require(p.dtype() == first.dtype() && p.device() == first.device(),
            "internal: the parameters differ in dtype or device (" + name + ")");
    fits = fits && views_[i++].sizes() == p.sizes();
    total += p.numel();
  }
  const bool allocate = !fits || total != flat_.numel();
  if (allocate) {
    // The old gradients (ours or others') go first: they are being replaced, and a 3B model's
    // are 12 GB.
    for (const auto& [name, p] : named) p.mutable_grad() = torch::Tensor();
    views_.clear();
    flat_ = torch::Tensor();
    flat_ = torch::zeros({total}, first.options());
    int64_t offset = 0;
    for (const auto& [name, p] : named) {
      views_.push_back(flat_.narrow(0, offset, p.numel()).view(p.sizes()));
      offset += p.numel();
    }
  } else {
    flat_.zero_();
  }
  i = 0;
  for (const auto& [name, p] : named) {
    const torch::Tensor& view = views_[i++];
    if (!p.grad().is_same(view)) p.mutable_grad() = view;
  }
  return allocate;
}

Params params_from_named(const ModelConfig& config, const std::map<std::string, torch::Tensor>& named,
                         torch::Dtype dtype) {
  Params params;
  size_t used = 0;
  visit_params(config, params, [&](const std::string& name, const std::vector<int64_t>& shape, ParamKind,
                                   torch::Tensor& slot) {
    const auto found = named.find(name);
    require(found != named.end(), "missing tensor '" + name + "' (expected shape " + shape_text(shape) + ")");
    const torch::Tensor& tensor = found->second;
    require(tensor.sizes() == c10::IntArrayRef(shape),
            "tensor '" + name + "' has shape " + shape_text(tensor.sizes()) + ", expected " + shape_text(shape));
    slot = tensor.to(dtype).contiguous();
    ++used;
  });
  if (used != named.size()) {
    const auto expected = named_params(config, params);
    for (const auto& [name, tensor] : named) {
      require(expected.count(name) > 0, "unknown tensor '" + name + "' for a " + variant_name(config.variant) +
                                            " model with this config");
    }
  }
  return params;
}

FastWeights initial_fast_weights(const ModelConfig& config, const Params& params) {
  FastWeights weights;
  for (int64_t i = config.first_suffix_block(); i < config.n_layers; ++i) weights.push_back(params.blocks[i].prime);
  return weights;
}

Params convert_params(const ModelConfig& config, const Params& params, torch::Dtype dtype, bool requires_grad,
                      std::optional<torch::Device> device) {
  Params converted = params;
  visit_params(config, converted, [&](const std::string&, const std::vector<int64_t>&, ParamKind,
                                      torch::Tensor& slot) {
    slot = slot.detach().to(device.value_or(slot.device()), dtype).clone().set_requires_grad(requires_grad);
  });
  return converted;
}

void place_side_by_side(const std::vector<torch::Tensor*>& parts) {
  std::vector<torch::Tensor> matrices;
  for (const torch::Tensor* part : parts) matrices.push_back(*part);
  const torch::Tensor joint = torch::cat(matrices, 1);
  int64_t column = 0;
  for (torch::Tensor* part : parts) {
    const int64_t width = part->size(1);
    *part = joint.narrow(1, column, width);
    column += width;
  }
}

torch::Tensor joint_columns(const std::vector<torch::Tensor>& parts) {
  if (parts.empty() || !parts[0].defined() || parts[0].dim() != 2) return {};
  const torch::Tensor& first = parts[0];
  int64_t width = 0;
  for (const torch::Tensor& part : parts) width += part.defined() ? part.size(-1) : 0;
  int64_t column = 0;
  for (const torch::Tensor& part : parts) {
    const bool placed = part.defined() && part.dim() == 2 && part.size(0) == first.size(0) && part.stride(1) == 1 &&
                        part.stride(0) == width && part.scalar_type() == first.scalar_type() &&
                        part.device() == first.device() && part.storage().is_alias_of(first.storage()) &&
                        part.storage_offset() == first.storage_offset() + column;
    if (!placed) return {};
    column += part.size(1);
  }
  return first.as_strided({first.size(0), width}, {width, 1});
}

std::vector<torch::Tensor> flatten(const FastWeights& weights) {
  std::vector<torch::Tensor> flat;
  for (const MlpParams& w : weights) flat.insert(flat.end(), {w.w1, w.w2, w.w3});
  return flat;
}

FastWeights detach_fast_weights(const FastWeights& weights, bool requires_grad) {
  FastWeights out;
  for (const MlpParams& w : weights) {
    out.push_back({w.w1.detach().requires_grad_(requires_grad), w.w2.detach().requires_grad_(requires_grad),
                   w.w3.detach().requires_grad_(requires_grad)});
  }
  return out;
}

Params detach_params(const ModelConfig& config, const Params& params) {
  Params detached = params;
  visit_params(config, detached, [](const std::string&, const std::vector<int64_t>&, ParamKind,
                                    torch::Tensor& slot) { slot = slot.detach(); });
  return detached;
}

int64_t count_params(const ModelConfig& config, const Params& params) {
  int64_t total = 0;
  for (const auto& [name, tensor] : named_params(config, params)) total += tensor.numel();
  return total;
}

}  // namespace ttt
