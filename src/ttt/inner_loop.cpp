#include "ttt/inner_loop.h"

#include <torch/autograd.h>

#include <algorithm>
#include <numeric>
#include <optional>

#include "common/error.h"
#include "model/compute.h"
#include "model/layers.h"
#include "model/transformer.h"
#include "ttt/chunk_scan.h"
#include "ttt_build_features.h"  // TTT_WITH_CUDA_KERNELS: our own kernels were built

#if TTT_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>

#include "kernels/inner_step.h"
#include "model/kernel_launch.h"
#endif

namespace ttt {
namespace {

FastWeights unflatten(const std::vector<torch::Tensor>& flat) {
  FastWeights weights;
  for (size_t i = 0; i + 2 < flat.size(); i += 3) weights.push_back({flat[i], flat[i + 1], flat[i + 2]});
  return weights;
}

// SPEC section 5's update from the gradients, as plain ops; the norm in the step size's
// dtype (the loss's). A gradient in a narrower dtype than its weight (fast_weight_leaves') is
// widened first, exactly.
std::vector<torch::Tensor> plain_clipped_update(double clip, torch::TensorList flat, std::vector<torch::Tensor> grads,
                                                const torch::Tensor& step_size) {
  for (size_t i = 0; i < grads.size(); ++i) grads[i] = grads[i].to(flat[i].scalar_type());
  torch::Tensor scale = torch::ones({}, step_size.options());
  if (clip > 0) {
    torch::Tensor squares = torch::zeros({}, step_size.options());
    for (const auto& g : grads) squares = squares + g.pow(2).sum();
    // sqrt'(0) is infinite: a chunk without valid targets (g = 0) takes its norm as 1 (the
    // update is 0 either way), which keeps the second order finite.
    const torch::Tensor norm = torch::sqrt(torch::where(squares > 0, squares, torch::ones_like(squares)));
    scale = clip / torch::clamp_min(norm, clip);  // = min(1, clip / norm)
  }
  const torch::Tensor factor = step_size * scale;
  std::vector<torch::Tensor> updated;
  for (size_t i = 0; i < flat.size(); ++i) updated.push_back(flat[i] - factor * grads[i]);
  return updated;
}

#if TTT_WITH_CUDA_KERNELS
bool f32_on_cuda(const torch::Tensor& t) {
  return t.is_cuda() && t.scalar_type() == torch::kFloat32 && t.is_contiguous();
}
// Where the step's kernels serve: fp32 weights and step size on CUDA, contiguous gradients of
// one stored dtype, and autograd not recording (nothing differentiates the kernels: it
// matters in the backward, which records for a third order; a forward never records).
bool sgd_kernels_serve(torch::TensorList flat, torch::TensorList grads, const torch::Tensor& step_size) {
  const torch::Dtype grad_dtype = grads.empty() ? torch::kFloat32 : grads[0].scalar_type();
  const bool stored = grad_dtype == torch::kFloat32 || grad_dtype == torch::kBFloat16 || grad_dtype == torch::kHalf;
  bool serves = stored && f32_on_cuda(step_size) && !flat.empty() &&
                flat.size() <= static_cast<size_t>(kernels::kSgdMaxTensors) && !torch::GradMode::is_enabled();
  for (size_t i = 0; serves && i < flat.size(); ++i) {
    serves = f32_on_cuda(flat[i]) && flat[i].device() == step_size.device() && grads[i].is_contiguous() &&
             grads[i].device() == step_size.device() && grads[i].scalar_type() == grad_dtype &&
             grads[i].sizes() == flat[i].sizes();
  }
  return serves;
}
#endif

// The update (SPEC section 5) as an autograd function: forward in two kernels
// (kernels/inner_step.h) where they serve, and a backward written out, where autograd's chain
// of the plain form takes about ten small kernels a tensor (the exact meta-gradient
// differentiates one step a chunk). The backward is kernels too unless autograd records it
// (a third order), then the plain formulas below, differentiable. Inputs: the weights, their
// gradients g, the step size and the clip.
class ClippedUpdate : public torch::autograd::Function<ClippedUpdate> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, torch::TensorList flat,
                                                torch::TensorList grads, const torch::Tensor& step_size, double clip) {
    // The backward reads g where it differentiates through the step size or g's norm; else
    // (first order, or no clip) dg = -step A at most, and g is not kept alive for it.
    bool grads_differentiated = false;
    for (const torch::Tensor& g : grads) grads_differentiated = grads_differentiated || g.requires_grad();
    const bool keep_grads = step_size.requires_grad() || (clip > 0 && grads_differentiated);
    std::vector<torch::Tensor> saved;
    if (keep_grads) saved.assign(grads.begin(), grads.end());
    saved.push_back(step_size);
    ctx->save_for_backward(saved);
    ctx->saved_data["clip"] = clip;
    ctx->saved_data["grads_kept"] = keep_grads;
    ctx->saved_data["grad_dtype"] = static_cast<int64_t>(grads.empty() ? torch::kFloat32 : grads[0].scalar_type());
    ctx->set_materialize_grads(false);  // an undefined adjoint is a zero one
#if TTT_WITH_CUDA_KERNELS
    if (sgd_kernels_serve(flat, grads, step_size)) {
      const c10::cuda::CUDAGuard device(step_size.device());
      std::vector<torch::Tensor> updated;
      std::vector<kernels::SgdTensor> described;
      for (size_t i = 0; i < flat.size(); ++i) {
        updated.push_back(torch::empty_like(flat[i]));
        described.push_back(
            {flat[i].data_ptr<float>(), grads[i].data_ptr(), updated.back().data_ptr<float>(), flat[i].numel()});
      }
      torch::Tensor partials = torch::empty({kernels::clipped_sgd_partials()}, step_size.options());
      check("clipped_sgd_step",
            kernels::clipped_sgd_step(described.data(), static_cast<int>(described.size()), storage_of(grads[0]),
                                      step_size.data_ptr<float>(), static_cast<float>(clip), partials.data_ptr<float>(),
                                      stream()));
      return updated;
    }
#endif
    return plain_clipped_update(clip, flat, grads.vec(), step_size);
  }

  // With n = ||g|| (1 for a zero gradient), s = clip / n where the clip binds (n > clip),
  // else 1, f = step s and k = sum <A, g> over the adjoints A of W':
  //   dW = A, dg = -f A + (f k / n^2) g where it binds, d(step) = -s k.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list adjoints) {
    const size_t count = adjoints.size();
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& step_size = saved.back();
    const double clip = ctx->saved_data["clip"].toDouble();
    torch::autograd::variable_list out(2 * count + 2);  // W, g, the step size, the clip
    for (size_t i = 0; i < count; ++i) out[i] = adjoints[i];
    const bool want_grads = ctx->needs_input_grad({{count, 2 * count}});
    const bool want_step = ctx->needs_input_grad(2 * count);
    bool any = false;
    for (const torch::Tensor& a : adjoints) any = any || a.defined();
    if (!any || (!want_grads && !want_step)) return out;
    if (!ctx->saved_data["grads_kept"].toBool()) {  // no clip and a constant step size: dg = -step A
      const auto grad_dtype = static_cast<torch::Dtype>(ctx->saved_data["grad_dtype"].toInt());
      for (size_t i = 0; i < count; ++i) {
        if (adjoints[i].defined()) out[count + i] = (-step_size * adjoints[i]).to(grad_dtype);
      }
      return out;
    }
    const std::vector<torch::Tensor> grads(saved.begin(), saved.begin() + static_cast<int64_t>(count));
#if TTT_WITH_CUDA_KERNELS
    std::vector<torch::Tensor> a_rows;
    bool serve = sgd_kernels_serve(grads, grads, step_size);
    for (size_t i = 0; serve && i < count; ++i) {
      a_rows.push_back(adjoints[i].defined() ? adjoints[i].to(torch::kFloat32).contiguous() : torch::Tensor());
      serve = !a_rows.back().defined() ||
              (a_rows.back().device() == step_size.device() && a_rows.back().sizes() == grads[i].sizes());
    }
    if (serve) {
      const c10::cuda::CUDAGuard device(step_size.device());
      std::vector<kernels::SgdAdjoint> described;
      for (size_t i = 0; i < count; ++i) {
        if (want_grads) out[count + i] = torch::empty_like(grads[i]);
        described.push_back({a_rows[i].defined() ? a_rows[i].data_ptr<float>() : nullptr, grads[i].data_ptr(),
                             want_grads ? out[count + i].data_ptr() : nullptr, grads[i].numel()});
      }
      torch::Tensor partials = torch::empty({kernels::clipped_sgd_backward_partials()}, step_size.options());
      torch::Tensor step_grad = want_step ? torch::empty({}, step_size.options()) : torch::Tensor();
      check("clipped_sgd_backward",
            kernels::clipped_sgd_backward(described.data(), static_cast<int>(count), storage_of(grads[0]),
                                          step_size.data_ptr<float>(), static_cast<float>(clip),
                                          partials.data_ptr<float>(), want_step ? step_grad.data_ptr<float>() : nullptr,
                                          stream()));
      out[2 * count] = step_grad;
      return out;
    }
#endif
    // Plain ops, in the step size's dtype (differentiable while autograd records).
    const torch::Dtype wide = step_size.scalar_type();
    torch::Tensor squares = torch::zeros({}, step_size.options()), dot = torch::zeros({}, step_size.options());
    std::vector<torch::Tensor> g;
    for (size_t i = 0; i < count; ++i) {
      g.push_back(grads[i].to(wide));
      squares = squares + g[i].pow(2).sum();
      if (adjoints[i].defined()) dot = dot + (adjoints[i].to(wide) * g[i]).sum();
    }
    const torch::Tensor norm = torch::sqrt(torch::where(squares > 0, squares, torch::ones_like(squares)));
    const torch::Tensor binds = torch::full({}, clip > 0, step_size.options().dtype(torch::kBool)) & (norm > clip);
    const torch::Tensor scale = torch::where(binds, clip / norm, torch::ones_like(norm));
    const torch::Tensor factor = step_size * scale;
    const torch::Tensor coef = torch::where(binds, factor * dot / (norm * norm), torch::zeros_like(norm));
    if (want_grads) {
      for (size_t i = 0; i < count; ++i) {
        torch::Tensor d = coef * g[i];
        if (adjoints[i].defined()) d = d - factor * adjoints[i].to(wide);
        out[count + i] = d.to(grads[i].scalar_type());
      }
    }
    if (want_step) out[2 * count] = -scale * dot;
    return out;
  }
};

std::vector<torch::Tensor> clipped_update(const ModelConfig& config, const std::vector<torch::Tensor>& flat,
                                          const std::vector<torch::Tensor>& grads, const torch::Tensor& step_size) {
  // As TensorLists: autograd takes a std::vector argument for no tensor at all.
  return ClippedUpdate::apply(torch::TensorList(flat), torch::TensorList(grads), step_size, config.inner_clip);
}

// autograd::grad's grad_outputs for an inner loss: none for a loss itself.
std::vector<torch::Tensor> adjoints_of(const InnerLoss& loss) {
  return loss.adjoint.defined() ? std::vector<torch::Tensor>{loss.adjoint} : std::vector<torch::Tensor>{};
}

}  // namespace

torch::Tensor inner_step_size(const ModelConfig& config, double ilr_mult, const torch::Tensor& like) {
  return torch::full({}, config.inner_lr * ilr_mult, like.options());
}

FastWeights inner_step(const ModelConfig& config, const FastWeights& weights, const InnerLoss& loss,
                       const torch::Tensor& step_size, OuterGradient outer) {
  const std::vector<torch::Tensor> flat = flatten(weights);
  const std::vector<torch::Tensor> grads =
      torch::autograd::grad({loss.output}, flat, adjoints_of(loss), /*retain_graph=*/outer != OuterGradient::kNone,
                            /*create_graph=*/outer == OuterGradient::kExact);
  return unflatten(clipped_update(config, flat, grads, step_size));
}

FastWeights inner_step_from_leaves(const ModelConfig& config, const FastWeights& weights, const FastWeights& leaves,
                                   const InnerLoss& loss, const torch::Tensor& step_size) {
  const std::vector<torch::Tensor> flat = flatten(weights);
  const std::vector<torch::Tensor> grads = torch::autograd::grad({loss.output}, flatten(leaves), adjoints_of(loss));
  const torch::NoGradGuard no_grad;
  return unflatten(clipped_update(config, flat, grads, step_size));
}

FastWeights fast_weight_leaves(const FastWeights& weights) {
  FastWeights leaves;
  const auto leaf = [](const torch::Tensor& w) { return w.detach().to(matmul_dtype_for(w)).requires_grad_(true); };
  for (const MlpParams& w : weights) leaves.push_back({leaf(w.w1), leaf(w.w2), leaf(w.w3)});
  return leaves;
}

ChunkStep run_chunk(const ModelConfig& config, const Params& params, const torch::Tensor& hidden, BlockPoint entry,
                    const torch::Tensor& targets, const torch::Tensor& positions, KvCache& cache,
                    const FastWeights& weights, bool update, const torch::Tensor& step_size, OuterGradient outer) {
  // The exact meta-gradient differentiates the inner step's graph again, which begins at the
  // first prime MLP; a chunk without an inner step has no such graph.
  const Order after_fast_weights = outer == OuterGradient::kExact && update ? Order::kSecond : Order::kFirst;
  // Without an outer graph the inner gradient needs leaves of its own.
  const bool own_leaves = update && outer == OuterGradient::kNone;
  const FastWeights chunk_weights = own_leaves ? fast_weight_leaves(weights) : weights;
  const torch::Tensor h = run_blocks(config, params, hidden, positions, cache, entry, config.n_layers,
                                     &chunk_weights, after_fast_weights);
  ChunkStep step;
  if (!update) {
    step.nll = token_nll(lm_logits(config, params, h), targets);
    step.loss = masked_mean_loss(step.nll, targets, config.bos_id);
    step.next_weights = chunk_weights;
    return step;
  }
  // The inner gradient starts at the head's input, from the loss's gradient there (on CUDA
  // the head and the loss fused with it: layers.h).
  const torch::Tensor normed = final_normed(config, params, h);
  const torch::Tensor inner_weights = masked_mean_weights(
      targets, config.bos_id, normed.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32);
  const std::optional<Order> head_order =
      outer == OuterGradient::kNone ? std::nullopt : std::optional<Order>(after_fast_weights);
  const HeadLoss head = head_loss(normed, head_matrix(config, params), targets, inner_weights, head_order);
  step.nll = head.nll;
  step.loss = masked_mean_loss(step.nll, targets, config.bos_id);
  const InnerLoss inner(normed, head.hidden_grad);
  step.next_weights = own_leaves ? inner_step_from_leaves(config, weights, chunk_weights, inner, step_size)
                                 : inner_step(config, chunk_weights, inner, step_size, outer);
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
  const torch::Tensor inputs = tokens.narrow(0, 0, n), targets = tokens.narrow(0, 1, n);
  const bool differentiable = options.outer_gradient != OuterGradient::kNone;
  // Only ttt-e2e's inner steps need autograd when nothing is differentiated afterwards.
  std::optional<torch::NoGradGuard> no_grad;
  if (!differentiable && !config.is_ttt()) no_grad.emplace();

  // The blocks before the fast weights (all of them for fa and swa) do not depend on the
  // inner loop: on a fused kernel they run ahead over many chunks at once (fa: the whole
  // sequence as one causal square, keeping no cache). The exact meta-gradient of ttt-e2e
  // keeps the plain chunk loop: it is the reference the faster trainer is held to.
  const bool run_ahead = fused_attention_available(params.final_norm) && !(config.is_ttt() && differentiable);
  // Evaluated, ttt-e2e's first suffix block runs its attention ahead too (it reads no fast
  // weight): large spans on cuDNN's kernel instead of a chunk at a time.
  const BlockPoint entry = !run_ahead         ? BlockPoint(0)
                           : !config.is_ttt() ? BlockPoint(config.n_layers)
                                              : BlockPoint(config.first_suffix_block(), /*past_attention=*/true);
  ChunkInputs chunk_inputs = run_ahead ? ChunkInputs::run_ahead(config, params, inputs, entry, differentiable)
                                       : ChunkInputs::embedded(params, inputs);
  // fa's whole sequence in one span needs no cache after it; autograd goes through windows.
  const bool one_span = config.variant == Variant::kFullAttention && run_ahead;
  KvCache cache = one_span         ? KvCache::none(config)
                  : differentiable ? KvCache::window(config)
                                   : KvCache::for_inference(config);
  ScanState state{initial_fast_weights(config, params), std::move(cache)};
  const ScanOptions scan{options.outer_gradient, inner_step_size(config, options.ilr_mult, params.final_norm),
                         options.graphs};

  const std::vector<double> loss_weights = chunk_loss_weights(config, targets);
  const std::vector<ChunkSpan> chunks = plan_chunks(config, n, 0, /*update_last=*/false);
  std::vector<torch::Tensor> weighted_losses, chunk_nlls;
  SequenceResult result;
  const auto record = [&](const ChunkSpan& chunk, const ChunkStep& step) {
    const torch::Tensor loss = step.loss * loss_weights[chunk.index];
    weighted_losses.push_back(differentiable ? loss : loss.detach());
    chunk_nlls.push_back(step.nll.detach());
    result.inner_steps += chunk.update ? 1 : 0;
    if (options.on_chunk) options.on_chunk(chunk.index + 1, static_cast<int64_t>(chunks.size()));
  };
  if (run_ahead && !config.is_ttt() && !differentiable) {
    // fa and swa evaluated: with every block run ahead, nothing happens between chunks, so
    // the head and the NLL take groups of chunks (GEMMs of 8K rows, fewer launches), each
    // chunk's loss then read from its rows. A group stays within a span run ahead.
    const int64_t per_span =
        one_span ? static_cast<int64_t>(chunks.size()) : run_ahead_tokens(config, n) / config.mini_batch;
    const auto group = static_cast<size_t>(std::gcd(std::max<int64_t>(1, 8192 / config.mini_batch), per_span));
    for (size_t first = 0; first < chunks.size(); first += group) {
      const size_t end = std::min(chunks.size(), first + group);
      ChunkSpan rows = chunks[first];
      rows.length = chunks[end - 1].start + chunks[end - 1].length - rows.start;
      const torch::Tensor nll = token_nll(lm_logits(config, params, chunk_inputs.of(rows, state.cache)),
                                          targets.narrow(0, rows.start, rows.length));
      chunk_inputs.queue_ahead(state.cache);  // the next span beside the head's work (on a GPU)
      for (size_t i = first; i < end; ++i) {
        ChunkStep step;
        step.nll = nll.narrow(0, chunks[i].start - rows.start, chunks[i].length);
        step.loss = masked_mean_loss(step.nll, targets.narrow(0, chunks[i].start, chunks[i].length), config.bos_id);
        record(chunks[i], step);
      }
    }
  } else {
    scan_chunks(config, params, chunk_inputs, targets, chunks, state, scan, record);
  }
  result.loss = torch::stack(weighted_losses).sum();
  result.nll = torch::cat(chunk_nlls);
  return result;
}

}  // namespace ttt
