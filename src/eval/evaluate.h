// SPEC section 8's procedures over one token sequence: the loss with per-target NLLs
// (`ttt eval`) and its gradient w.r.t. every parameter (`ttt grad`).
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

#include "config/model_config.h"
#include "model/params.h"

namespace ttt {

// Token ids as an int64 tensor; throws ttt::Error for an id outside the vocabulary or
// fewer than 2 tokens.
torch::Tensor checked_tokens(const ModelConfig& config, const std::vector<int64_t>& tokens);

struct EvalResult {
  double loss = 0;
  std::vector<double> nll;  // one per target token
  int64_t inner_steps = 0;
};

using ProgressFn = std::function<void(int64_t done, int64_t total)>;

class ChunkGraphs;

// `params` and `tokens` on one device; matmuls in the thread's matmul dtype (model/compute.h).
// ttt-e2e on a GPU runs its chunks as CUDA graphs (ttt/chunk_graphs.h): `graphs` where
// given (made for these parameters: callers that evaluate many sequences keep theirs),
// else graphs of this call's own.
EvalResult evaluate(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                    const ProgressFn& progress = {}, ChunkGraphs* graphs = nullptr);

struct GradResult {
  double loss = 0;
  std::map<std::string, torch::Tensor> grads;  // canonical parameter name -> gradient, on the CPU
};

// For ttt-e2e the exact meta-gradient: through every inner step (second order) and the KV
// cache carried between chunks. Computed in the dtype of `params`, by per-chunk
// recomputation (ttt/sequence_gradient.h): memory does not grow with the sequence. The
// progress callback counts the forward chunks, then the reverse scan's.
GradResult gradient(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                    const ProgressFn& progress = {});

}  // namespace ttt
