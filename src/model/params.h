// The model's parameters (SPEC sections 3 and 7), with their canonical checkpoint names.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "config/model_config.h"

namespace ttt {

// A SwiGLU MLP: (silu(x @ w1) * (x @ w3)) @ w2, with w1, w3: [D, F] and w2: [F, D].
struct MlpParams {
  torch::Tensor w1, w2, w3;
};

struct AttentionParams {
  torch::Tensor wq, wk, wv, wo;  // [D, D]
  torch::Tensor q_norm, k_norm;  // [head_dim]; undefined without qk_norm
};

struct BlockParams {
  torch::Tensor attn_norm, attn_post_norm;
  AttentionParams attn;
  torch::Tensor prime_norm, prime_post_norm;  // suffix blocks of ttt-e2e only
  MlpParams prime;                            // suffix blocks of ttt-e2e only
  torch::Tensor mlp_norm, mlp_post_norm;
  MlpParams mlp;
};

struct Params {
  torch::Tensor embed;       // [V, D]
  torch::Tensor final_norm;  // [D]
  torch::Tensor lm_head;     // [D, V]; undefined with tie_embeddings
  std::vector<BlockParams> blocks;
};

// The fast weights of test-time training: the prime MLP of every suffix block, in order.
using FastWeights = std::vector<MlpParams>;

enum class ParamKind { kMatrix, kGain };

// Calls `visit(name, shape, kind, tensor)` for every parameter the config defines, in a
// fixed order, with the tensor's slot in `params` (resized to the config). This is the
// single list of names and shapes that initialisation, checkpoints and gradients share.
using ParamVisitor = std::function<void(const std::string& name, const std::vector<int64_t>& shape,
                                        ParamKind kind, torch::Tensor& tensor)>;
void visit_params(const ModelConfig& config, Params& params, const ParamVisitor& visit);

// SPEC initialisation: every matrix and the embedding ~ N(0, 0.02^2), every gain = 1.
Params init_params(const ModelConfig& config, uint64_t seed, torch::Dtype dtype = torch::kFloat32);

// Name -> tensor view of all parameters (sharing storage with `params`).
std::map<std::string, torch::Tensor> named_params(const ModelConfig& config, const Params& params);

// Every parameter's gradient in one allocation (llm.c's way): a data-parallel all-reduce sends
// it whole, with no packing into buckets and back (760M: 11 ms a step on an H200), and clearing
// it is one fill where a fill per parameter costs a launch each (125M: 173, 2 ms of a 95 ms
// step on an H200). Each parameter's .grad is a view of it, the same view objects every step:
// CUDA graphs of the gradient (ttt/sequence_gradient.h) take them as their own buffers.
class GradientBuffer {
 public:
  // Zeroes the buffer and points every parameter's .grad at its view (again where a .grad was
  // replaced); allocates it at the first call, or anew where the parameters' shapes, dtype or
  // device changed. Returns whether it allocated: whatever held the old views (gradient
  // graphs) must let them go then.
  bool clear(const ModelConfig& config, const Params& params);
  // The whole buffer, [number of parameters], in named_params' order.
  const torch::Tensor& flat() const { return flat_; }

 private:
  torch::Tensor flat_;
  std::vector<torch::Tensor> views_;  // one a parameter, in named_params' order
};

// Builds Params from named tensors, converted to `dtype`; throws ttt::Error naming any
// missing or unknown tensor or a shape mismatch.
Params params_from_named(const ModelConfig& config, const std::map<std::string, torch::Tensor>& named,
                         torch::Dtype dtype);

// The prime MLPs of the suffix blocks as stored in `params` (W_0 of the inner loop).
FastWeights initial_fast_weights(const ModelConfig& config, const Params& params);

// The fast weights' tensors in order (w1, w2, w3 of each suffix block).
std::vector<torch::Tensor> flatten(const FastWeights& weights);

// The fast weights cut from any graph (sharing storage), as fresh leaves if `requires_grad`.
FastWeights detach_fast_weights(const FastWeights& weights, bool requires_grad);

// Matrices [D, n_i] moved side by side into one [D, sum n_i] matrix, each replaced by its
// column block (a view): where one row is projected by all of them (a decoded token's q, k
// and v; an MLP's two input projections), joint_columns makes that one matmul.
void place_side_by_side(const std::vector<torch::Tensor*>& parts);
// The [D, sum n_i] matrix whose consecutive column blocks `parts` are, or an undefined tensor
// where they are not views laid out so (place_side_by_side's).
torch::Tensor joint_columns(const std::vector<torch::Tensor>& parts);

// Every parameter converted to `dtype` (and moved to `device` if given), optionally as
// fresh leaves that require grad.
Params convert_params(const ModelConfig& config, const Params& params, torch::Dtype dtype,
                      bool requires_grad = false, std::optional<torch::Device> device = std::nullopt);

// Every parameter detached from any graph, sharing storage with `params`.
Params detach_params(const ModelConfig& config, const Params& params);

int64_t count_params(const ModelConfig& config, const Params& params);

}  // namespace ttt
