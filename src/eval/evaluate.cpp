#include "eval/evaluate.h"

#include <memory>

#include "common/error.h"
#include "ttt/chunk_graphs.h"
#include "ttt/inner_loop.h"
#include "ttt/sequence_gradient.h"

namespace ttt {

torch::Tensor checked_tokens(const ModelConfig& config, const std::vector<int64_t>& tokens) {
  require(tokens.size() >= 2,
          "need at least 2 tokens (one input and one target), got " + std::to_string(tokens.size()));
  for (size_t i = 0; i < tokens.size(); ++i) {
    require(tokens[i] >= 0 && tokens[i] < config.vocab_size,
            "token " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                " is outside the model's vocabulary (vocab_size " + std::to_string(config.vocab_size) + ")");
  }
  return torch::tensor(tokens, torch::kInt64);
}

EvalResult evaluate(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                    const ProgressFn& progress, ChunkGraphs* graphs) {
  std::unique_ptr<ChunkGraphs> own;
  if (!graphs) {
    own = ChunkGraphs::where_supported(config, params);
    graphs = own.get();
  }
  SequenceOptions options;
  options.on_chunk = progress;
  options.graphs = graphs;
  const SequenceResult run = run_sequence(config, params, tokens, options);
  const torch::Tensor nll = run.nll.to(torch::kCPU, torch::kFloat64).contiguous();
  EvalResult result;
  result.loss = run.loss.item<double>();
  result.nll.assign(nll.data_ptr<double>(), nll.data_ptr<double>() + nll.numel());
  result.inner_steps = run.inner_steps;
  return result;
}

GradResult gradient(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                    const ProgressFn& progress) {
  const Params leaves = convert_params(config, params, params.embed.scalar_type(), /*requires_grad=*/true);
  GradientOptions options;
  options.on_chunk = progress;
  const torch::Tensor loss = accumulate_sequence_gradient(config, leaves, tokens, options);

  GradResult result;
  result.loss = loss.item<double>();
  for (const auto& [name, tensor] : named_params(config, leaves)) {
    result.grads.emplace(name, (tensor.grad().defined() ? tensor.grad() : torch::zeros_like(tensor)).cpu());
  }
  return result;
}

}  // namespace ttt
