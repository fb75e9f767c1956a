// The gradient of a sequence's loss (SPEC sections 5 and 6) w.r.t. every parameter, by
// per-chunk recomputation of the suffix.
//
// The prefix (the blocks without fast weights; every block of fa and swa) runs once over
// the sequence with its graph kept: the outer gradient reaches it only through its output
// h, first order, so it takes fused kernels and whole-sequence spans on the GPU. Its
// activations are what grows with the sequence's length. The suffix then runs the inner
// loop: a forward pass without an outer graph saves, per chunk, the fast weights it starts
// from and the KV-cache entries it adds; a reverse scan recomputes one chunk at a time, its
// inner step included (second order for ttt-e2e), with those weights, the cache it reads
// and h as fresh leaves, and backpropagates the chunk's weighted loss plus the adjoints of
// the weights and cache it hands to the next chunk. Last, the summed gradient of h goes
// back through the prefix in one pass (DESIGN.md). The result equals differentiating
// run_sequence with OuterGradient::kExact (or kFirstOrder), which keeps every chunk's graph
// instead (tests/ttt/sequence_gradient_test.cpp).
#pragma once
#include <functional>

#include <torch/types.h>

#include "config/model_config.h"
#include "model/params.h"

namespace ttt {

struct GradientOptions {
  double ilr_mult = 1.0;     // inner-LR multiplier (SPEC section 6's warm-up)
  double loss_scale = 1.0;   // the gradient accumulated is that of loss_scale * loss
  bool first_order = false;  // inner gradients as constants (for comparison only)
  // Called after each chunk of the forward pass and of the reverse scan: (done, 2 * chunks).
  std::function<void(int64_t, int64_t)> on_chunk;
};

// Adds d(loss_scale * loss)/d(theta) to the .grad of every tensor of `params` (leaves that
// require grad) and returns the loss (a detached scalar). `tokens`: [n] int64, n >= 2.
torch::Tensor accumulate_sequence_gradient(const ModelConfig& config, const Params& params,
                                           const torch::Tensor& tokens, const GradientOptions& options = {});

}  // namespace ttt
