#include "ttt/inner_loop.h"

#include <torch/autograd.h>

#include <algorithm>
#include <optional>

#include "common/error.h"
#include "model/compute.h"
#include "model/layers.h"
#include "model/transformer.h"
#include "ttt/chunk_graphs.h"

namespace ttt {
int64_t run_ahead_tokens(const ModelConfig& config, int64_t n) {
  constexpr int64_t kTokens = 16384;
  if (config.variant == Variant::kFullAttention) return n;
  return std::max<int64_t>(1, kTokens / config.mini_batch) * config.mini_batch;
}

torch::Tensor inner_step_size(const ModelConfig& config, double ilr_mult, const torch::Tensor& like) {
  return torch::full({}, config.inner_lr * ilr_mult, like.options());
}

FastWeights inner_step(const ModelConfig& config, const FastWeights& weights, const torch::Tensor& loss,
                       const torch::Tensor& step_size, OuterGradient outer) {
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
  const torch::Tensor factor = step_size * scale;
  FastWeights updated;
  for (size_t i = 0; i < weights.size(); ++i) {
    const auto step = [&](const torch::Tensor& w, const torch::Tensor& g) { return w - factor * g; };
    updated.push_back({step(flat[3 * i], grads[3 * i]), step(flat[3 * i + 1], grads[3 * i + 1]),
                       step(flat[3 * i + 2], grads[3 * i + 2])});
  }
  return updated;
}

ChunkStep run_chunk(const ModelConfig& config, const Params& params, const torch::Tensor& hidden, int64_t first_block,
                    const torch::Tensor& targets, const torch::Tensor& positions, KvCache& cache,
                    const FastWeights& weights, bool update, const torch::Tensor& step_size, OuterGradient outer) {
  // The exact meta-gradient differentiates the inner step's graph again: no fused kernels from
  // the fast weights on, where that graph begins (none without an inner step).
  std::optional<ComposableKernelsGuard> composable;
  if (outer == OuterGradient::kExact && config.is_ttt() && update) composable.emplace(ComposableFrom::kFastWeights);
  // Without an outer graph the inner gradient needs leaves of its own.
  const FastWeights chunk_weights =
      update && outer == OuterGradient::kNone ? detach_fast_weights(weights, /*requires_grad=*/true) : weights;
  const torch::Tensor logits = lm_logits(
      config, params, run_blocks(config, params, hidden, positions, cache, first_block, config.n_layers, &chunk_weights));
  ChunkStep step;
  step.nll = token_nll(logits, targets);
  step.loss = masked_mean_loss(step.nll, targets, config.bos_id);
  step.next_weights = update ? inner_step(config, chunk_weights, step.loss, step_size, outer) : chunk_weights;
  return step;
}

std::vector<double> chunk_loss_weights(const ModelConfig& config, const torch::Tensor& targets) {
  const int64_t n = targets.size(0);
  const int64_t n_chunks = (n + config.mini_batch - 1) / config.mini_batch;
  std::vector<double> weights(n_chunks, 1.0 / static_cast<double>(n_chunks));
  if (config.variant == Variant::kFullAttention) {
    const torch::Tensor valid = (targets != config.bos_id).to(torch::kFloat64).cpu();
    const double total = std::max(valid.sum().item<double>(), 1e-10);
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t start = c * config.mini_batch;
      weights[c] = valid.narrow(0, start, std::min(config.mini_batch, n - start)).sum().item<double>() / total;
    }
  }
  return weights;
}

SequenceResult run_sequence(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                            const SequenceOptions& options) {
  const int64_t n = tokens.size(0) - 1;
  require(n >= 1, "need at least 2 tokens (one input and one target), got " + std::to_string(tokens.size(0)));
  const torch::Tensor inputs = tokens.narrow(0, 0, n);
  const torch::Tensor targets = tokens.narrow(0, 1, n);
  const bool differentiable = options.outer_gradient != OuterGradient::kNone;
  const std::vector<double> loss_weights = chunk_loss_weights(config, targets);
  const int64_t n_chunks = static_cast<int64_t>(loss_weights.size());

  std::vector<torch::Tensor> weighted_losses, chunk_nlls;
  SequenceResult result;
  KvCache cache(config.n_layers);
  // The blocks before the first with fast weights (all of them for fa and swa) do not depend
  // on the inner loop. On a fused kernel they run ahead over many chunks at once (bigger
  // GEMMs, fewer launches; fa: the whole sequence as one causal square, keeping no cache),
  // and only the other blocks and the head go chunk by chunk. The exact meta-gradient of
  // ttt-e2e keeps the plain chunk loop: it is the reference the faster trainer is held to.
  const bool run_ahead = fused_attention_available(params.final_norm) && !(config.is_ttt() && differentiable);
  const int64_t ahead_blocks = !run_ahead ? 0 : config.is_ttt() ? config.first_suffix_block() : config.n_layers;
  const int64_t ahead_span = run_ahead_tokens(config, n);
  if (config.variant == Variant::kFullAttention && run_ahead) cache.keep_entries = false;
  torch::Tensor ahead;  // hidden states after block ahead_blocks - 1 of tokens from ahead_start
  int64_t ahead_start = 0;
  FastWeights weights = initial_fast_weights(config, params);
  const torch::Tensor step_size = inner_step_size(config, options.ilr_mult, params.final_norm);
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t start = c * config.mini_batch;
    const int64_t length = std::min(config.mini_batch, n - start);
    const torch::Tensor chunk_targets = targets.narrow(0, start, length);
    if (run_ahead && (!ahead.defined() || start >= ahead_start + ahead.size(0))) {
      std::optional<torch::NoGradGuard> no_grad;
      if (!differentiable) no_grad.emplace();
      ahead = hidden_states(config, params, inputs.narrow(0, start, std::min(ahead_span, n - start)), start, cache,
                            ahead_blocks);
      ahead_start = start;
    }
    const torch::Tensor hidden =
        run_ahead ? ahead.narrow(0, start - ahead_start, length) : embed_tokens(params, inputs.narrow(0, start, length));
    // Every chunk but the last is full; the last one's update would never be used.
    const bool update = config.is_ttt() && c + 1 < n_chunks;
    const torch::Tensor positions = span_positions(start, length, hidden.device());
    ChunkStep step = options.graphs && update && !differentiable && run_ahead
                         ? options.graphs->step(params, hidden, chunk_targets, positions, cache, weights, step_size)
                         : run_chunk(config, params, hidden, ahead_blocks, chunk_targets, positions, cache, weights,
                                     update, step_size, options.outer_gradient);
    weights = std::move(step.next_weights);
    result.inner_steps += update ? 1 : 0;
    if (!differentiable) {
      weights = detach_fast_weights(weights, /*requires_grad=*/false);
      cache.detach();
    }
    const torch::Tensor loss = step.loss * loss_weights[c];
    weighted_losses.push_back(differentiable ? loss : loss.detach());
    chunk_nlls.push_back(step.nll.detach());
    if (options.on_chunk) options.on_chunk(c + 1, n_chunks);
  }
  result.loss = torch::stack(weighted_losses).sum();
  result.nll = torch::cat(chunk_nlls);
  return result;
}

}  // namespace ttt
