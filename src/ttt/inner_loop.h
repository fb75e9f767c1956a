// Test-time training (SPEC section 5): a model reads a sequence chunk by chunk and, for
// ttt-e2e, takes one SGD step on its fast weights after each chunk. The same procedure
// serves evaluation and, kept differentiable, meta-learning (SPEC section 6).
#pragma once
#include <functional>
#include <utility>

#include <torch/types.h>

#include "config/model_config.h"
#include "model/params.h"
#include "model/transformer.h"

namespace ttt {

// What the returned loss can be differentiated for (w.r.t. all parameters).
enum class OuterGradient {
  kNone,        // evaluation: each chunk's graph is dropped once its inner step is taken
  kExact,       // meta-learning: through every inner step (second order) and the KV cache
  kFirstOrder,  // inner gradients treated as constants; for comparison, never the default
};

class ChunkGraphs;

struct SequenceOptions {
  // Multiplier of inner_lr (the inner-LR warm-up of pre-training); 1 at evaluation.
  double ilr_mult = 1.0;
  OuterGradient outer_gradient = OuterGradient::kNone;
  // Called after each chunk with (chunks done, chunks in all), for progress reports.
  std::function<void(int64_t, int64_t)> on_chunk;
  // Evaluation on a GPU: full chunks with an update go through these CUDA graphs
  // (ttt/chunk_graphs.h), made for the same parameters and precision.
  ChunkGraphs* graphs = nullptr;
};

struct SequenceResult {
  torch::Tensor loss;  // scalar; fa: masked mean over all targets; swa, ttt-e2e: mean of chunk losses
  torch::Tensor nll;   // [n - 1] per-target NLL, detached
  int64_t inner_steps = 0;
};

// The inner loop's step size inner_lr * ilr_mult as it takes it: a 0-dim tensor in `like`'s
// dtype and on its device (a value CUDA graphs read at replay, not one fixed at capture).
torch::Tensor inner_step_size(const ModelConfig& config, double ilr_mult, const torch::Tensor& like);

// One chunk of the inner loop: the model runs on the chunk's hidden states at `entry`
// (embed_tokens of its tokens for block 0; what ran ahead: the prefix's output, or past the
// first suffix block's attention), at absolute `positions` (span_positions of its start),
// attending through `cache`, which it extends (blocks past `entry`), with fast weights
// `weights`; the chunk's loss is recorded, then, if `update`, one inner step of `step_size`
// (inner_step_size) gives the next weights.
struct ChunkStep {
  torch::Tensor nll;           // [length] per-target NLL
  torch::Tensor loss;          // masked mean of nll (SPEC section 4)
  FastWeights next_weights;    // after the inner step; `weights` itself without an update
};
ChunkStep run_chunk(const ModelConfig& config, const Params& params, const torch::Tensor& hidden, BlockPoint entry,
                    const torch::Tensor& targets, const torch::Tensor& positions, KvCache& cache,
                    const FastWeights& weights, bool update, const torch::Tensor& step_size, OuterGradient outer);

// How much chunk c's loss weighs in the sequence loss: 1/C for swa and ttt-e2e (mean of
// chunk losses), valid_c / valid for fa (masked mean over all targets).
std::vector<double> chunk_loss_weights(const ModelConfig& config, const torch::Tensor& targets);

// Runs the model's own procedure over `tokens` ([n] int64 ids, n >= 2): inputs
// tokens[0..n-2] predict targets tokens[1..n-1] in chunks of mini_batch positions, each
// chunk's loss recorded before its update; the trailing partial chunk is scored, not trained on.
SequenceResult run_sequence(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                            const SequenceOptions& options = {});

// The inner loss as autograd differentiates it for the inner step: `output` against
// `adjoint`, i.e. the loss itself (no adjoint), or, as run_chunk takes it, the head's input
// against the loss's gradient there (head_loss's hidden_grad).
struct InnerLoss {
  InnerLoss(torch::Tensor loss) : output(std::move(loss)) {}  // NOLINT: a loss is an inner loss
  InnerLoss(torch::Tensor output, torch::Tensor adjoint) : output(std::move(output)), adjoint(std::move(adjoint)) {}
  torch::Tensor output, adjoint;
};

// One inner SGD step: W - step_size * s * dloss/dW, s = min(1, inner_clip / ||g||)
// over all fast weights together (s = 1 when inner_clip = 0). Unless `outer` is kNone,
// the graph of `loss` is kept for the outer backward pass, and the result stays
// differentiable w.r.t. `weights` (and, for kExact, through g and s too).
FastWeights inner_step(const ModelConfig& config, const FastWeights& weights, const InnerLoss& loss,
                       const torch::Tensor& step_size, OuterGradient outer);

// Where nothing differentiates the step (OuterGradient::kNone): the leaves the chunk ran on
// are the fast weights in the matmul dtype (the projections read them without a cast of their
// own, the gradients come out in that dtype, their exact fp32 values), made by
// fast_weight_leaves; the step updates `weights` from those gradients (on CUDA in two
// kernels: kernels/inner_step.h).
FastWeights fast_weight_leaves(const FastWeights& weights);
FastWeights inner_step_from_leaves(const ModelConfig& config, const FastWeights& weights, const FastWeights& leaves,
                                   const InnerLoss& loss, const torch::Tensor& step_size);

}  // namespace ttt
