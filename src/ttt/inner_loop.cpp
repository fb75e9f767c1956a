#include "ttt/inner_loop.h"

#include <torch/autograd.h>

#include "common/error.h"
#include "model/layers.h"
#include "model/transformer.h"

namespace ttt {
namespace {

std::vector<torch::Tensor> flatten(const FastWeights& weights) {
  std::vector<torch::Tensor> flat;
  for (const MlpParams& w : weights) flat.insert(flat.end(), {w.w1, w.w2, w.w3});
  return flat;
}

// Fresh leaves that require grad, so an inner gradient can be taken without an outer graph.
FastWeights as_leaves(const FastWeights& weights) {
  FastWeights leaves;
  for (const MlpParams& w : weights) {
    leaves.push_back({w.w1.detach().requires_grad_(), w.w2.detach().requires_grad_(), w.w3.detach().requires_grad_()});
  }
  return leaves;
}

}  // namespace

FastWeights inner_step(const ModelConfig& config, const FastWeights& weights, const torch::Tensor& loss,
                       double ilr_mult, OuterGradient outer) {
  const std::vector<torch::Tensor> flat = flatten(weights);
  const std::vector<torch::Tensor> grads =
      torch::autograd::grad({loss}, flat, /*grad_outputs=*/{}, /*retain_graph=*/outer != OuterGradient::kNone,
                            /*create_graph=*/outer == OuterGradient::kExact);

  torch::Tensor scale = torch::ones({}, loss.options());
  if (config.inner_clip > 0) {
    torch::Tensor squares = torch::zeros({}, loss.options());
    for (const auto& g : grads) squares = squares + g.pow(2).sum();
    // sqrt'(0) is infinite: a chunk without valid targets (g = 0) would poison the second
    // order with NaN, so its norm is taken at 1 instead (the update is 0 either way).
    const torch::Tensor norm = torch::sqrt(torch::where(squares > 0, squares, torch::ones_like(squares)));
    scale = config.inner_clip / torch::clamp_min(norm, config.inner_clip);  // = min(1, clip / norm)
  }
  const double lr = config.inner_lr * ilr_mult;
  FastWeights updated;
  for (size_t i = 0; i < weights.size(); ++i) {
    const auto step = [&](const torch::Tensor& w, const torch::Tensor& g) { return w - lr * scale * g; };
    updated.push_back({step(flat[3 * i], grads[3 * i]), step(flat[3 * i + 1], grads[3 * i + 1]),
                       step(flat[3 * i + 2], grads[3 * i + 2])});
  }
  return updated;
}

SequenceResult run_sequence(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                            const SequenceOptions& options) {
  const int64_t n = tokens.size(0) - 1;
  require(n >= 1, "need at least 2 tokens (one input and one target), got " + std::to_string(tokens.size(0)));
  const torch::Tensor inputs = tokens.narrow(0, 0, n);
  const torch::Tensor targets = tokens.narrow(0, 1, n);
  const auto index_options = torch::TensorOptions().dtype(torch::kInt64).device(tokens.device());

  KvCache cache(config.n_layers);
  FastWeights weights = initial_fast_weights(config, params);
  std::vector<torch::Tensor> chunk_losses, chunk_nlls;
  SequenceResult result;
  const int64_t n_chunks = (n + config.mini_batch - 1) / config.mini_batch;
  for (int64_t start = 0; start < n; start += config.mini_batch) {
    const int64_t length = std::min(config.mini_batch, n - start);
    // Every chunk but the last is full; the last one's update would never be used.
    const bool update = config.is_ttt() && start + length < n;
    const bool differentiable = options.outer_gradient != OuterGradient::kNone;
    const FastWeights chunk_weights = update && !differentiable ? as_leaves(weights) : weights;

    const torch::Tensor positions = torch::arange(start, start + length, index_options);
    const torch::Tensor chunk_targets = targets.narrow(0, start, length);
    const torch::Tensor logits =
        forward_span(config, params, inputs.narrow(0, start, length), positions, cache, &chunk_weights);
    torch::Tensor nll = token_nll(logits, chunk_targets);
    torch::Tensor loss = masked_mean_loss(nll, chunk_targets, config.bos_id);

    if (update) {
      weights = inner_step(config, chunk_weights, loss, options.ilr_mult, options.outer_gradient);
      ++result.inner_steps;
    }
    if (!differentiable) {
      for (auto& w : weights) w = {w.w1.detach(), w.w2.detach(), w.w3.detach()};
      cache.detach();
      loss = loss.detach();
      nll = nll.detach();
    }
    chunk_losses.push_back(loss);
    chunk_nlls.push_back(nll);
    if (options.on_chunk) options.on_chunk(static_cast<int64_t>(chunk_losses.size()), n_chunks);
  }

  const torch::Tensor nll = torch::cat(chunk_nlls);
  result.loss = config.variant == Variant::kFullAttention ? masked_mean_loss(nll, targets, config.bos_id)
                                                          : torch::stack(chunk_losses).mean();
  result.nll = nll.detach();
  return result;
}

}  // namespace ttt
