// The gradient of a sequence's loss (SPEC sections 5 and 6) w.r.t. every parameter, by
// recomputation, so memory grows only by what recomputing needs (per token: the cache rows
// of every block, h and its gradient), not by activations.
//
// The prefix (the blocks without fast weights; every block of fa and swa) runs over the
// sequence by spans without a graph, keeping the hidden states h it hands to the suffix and
// the cache rows each span leaves for later ones; the outer gradient reaches it only through
// h, first order, so fused kernels serve it. The suffix then runs the inner loop: a forward
// pass without an outer graph saves each chunk's KV-cache rows and the fast weights of
// every so many chunks; a reverse scan recomputes one chunk at a time (the fast weights it
// starts from recomputed from the last kept ones where needed), its inner step included
// (second order for ttt-e2e), with those weights, the cache it reads and h as fresh leaves,
// and backpropagates the chunk's weighted loss plus the adjoints of the weights and cache it
// hands to the next chunk. The last chunks (the tail) skip the forward pass: the reverse scan
// starts by running them once, as one graph. Last, the gradient of h goes back through the
// prefix span by span from the last, each span recomputed with the rows before it as leaves
// (DESIGN.md).
// On a GPU beyond 16 chunks (or where the fast weights of every chunk would crowd it), the
// saved rows and fast weights wait in pinned host memory (park_on_host), so the device keeps
// per token only h and its gradient.
// The result equals differentiating run_sequence with OuterGradient::kExact (or
// kFirstOrder), which keeps every chunk's graph instead (tests/ttt/sequence_gradient_test.cpp).
#pragma once
#include <torch/types.h>

#include <functional>
#include <memory>
#include <optional>

#include "config/model_config.h"
#include "model/params.h"

namespace ttt {

class GradientGraphs;

struct GradientOptions {
  double ilr_mult = 1.0;     // inner-LR multiplier (SPEC section 6's warm-up)
  double loss_scale = 1.0;   // the gradient accumulated is that of loss_scale * loss
  bool first_order = false;  // inner gradients as constants (for comparison only)
  // The forward pass keeps the fast weights of every so many chunks, and the reverse scan
  // recomputes the others from them (ttt-e2e); 0: default_keep_weights_every (below). The
  // gradient is the same whatever it is.
  int64_t keep_weights_every = 0;
  // Inputs per span of the prefix's checkpoints (whole chunks); 0: default_prefix_span_tokens
  // (below). The gradient is the same whatever it is.
  int64_t prefix_span_tokens = 0;
  // The last so many chunks skip the forward pass: the reverse scan runs them once, as one
  // graph (their graphs alive together); 0: default_tail_chunks (below). The gradient is the
  // same whatever it is, up to rounding (the tail sums its chunks' gradients before the sinks).
  int64_t tail_chunks = 0;
  // Whether what grows with the sequence until the backward pass reads it again (the cache
  // rows every span and chunk leaves, the fast weights kept) waits in host memory; unset:
  // default_park_on_host (below), so that the device's peak stays flat in the length. The
  // gradient is the same whatever it is.
  std::optional<bool> park_on_host;
  // Processes that share this host's memory for their parking (a job's ranks on it): each
  // takes its part of the budget below.
  int64_t processes_on_host = 1;
  // Called after each chunk of the forward pass and of the reverse scan: (done, 2 * chunks),
  // the tail's 2 * tail_chunks calls at once after it; not where graphs replay the whole
  // sequence.
  std::function<void(int64_t, int64_t)> on_chunk;
  // On a GPU: the whole computation replayed as a CUDA graph per sequence length (below),
  // made for the same parameters and precision.
  GradientGraphs* graphs = nullptr;
};

// Inputs per span of the prefix's checkpoints (whole chunks) for a sequence of `inputs` tokens when
// GradientOptions asks none: where the fused kernels serve (`fused`, a GPU) 4K tokens, fewer where
// such a span's graph would take more than a fifth of `device_bytes` by 2.5 times a rough count
// (the device a parked sequence's span shares with the reverse scan: 3B on an 80 GB H100 takes 3K;
// unset: no limit), and a sequence of at most two spans as one where that span's graph is small
// (nothing is recomputed then: 125M at 8K, a step 10% faster for 0.8 GB more; 760M does not
// qualify); elsewhere one chunk, like the scan.
int64_t default_prefix_span_tokens(const ModelConfig& config, int64_t inputs, bool fused,
                                   std::optional<int64_t> device_bytes = std::nullopt);

// The tail's chunks (GradientOptions::tail_chunks) for a sequence of `inputs` tokens when the
// options ask none, on a GPU of `device_bytes` (unset: 1) where the fused kernels serve (the
// caller asks only there): for ttt-e2e the last chunks whose graphs fit 8 GiB and a quarter of
// the device by a rough count, where they are at least half the sequence (125M at 8K: 6 of 8
// chunks, a step 5% faster than with 4 for a GPU peak of 12.3 GiB against 10.3, measured),
// else 1 (longer sequences, larger models, fa, swa).
int64_t default_tail_chunks(const ModelConfig& config, int64_t inputs, std::optional<int64_t> device_bytes);

// Whether what grows with the sequence waits in host memory (GradientOptions::park_on_host)
// when the options say nothing, for `chunks` chunks whose fast weights take `weight_bytes` a
// chunk on a GPU of `device_bytes` (unset: the CPU, never): beyond 16 chunks, or where every
// chunk's fast weights would take more than a sixth of the device (3B at 16K on an 80 GB
// H100: 22 GB of 85, which ran out of memory kept there).
bool default_park_on_host(int64_t chunks, int64_t weight_bytes, std::optional<int64_t> device_bytes);

// How often the forward pass keeps the fast weights (GradientOptions::keep_weights_every) when the
// options ask none, for `chunks` chunks whose fast weights take `weight_bytes` a chunk: every
// chunk's up to 16 chunks (where they are parked, if they fit as below), and where they are parked
// (`parked_rows_bytes` set: the cache rows parked beside them) as many as fit 60% of `host_bytes`
// with those rows; else one in k, k the fewest whose kept sets fit with the k - 2 slots the reverse
// scan parks the others in when it recomputes them, at most ceil(sqrt(chunks)). The chunks
// recomputed cost one more forward pass of the suffix each (760M at 128K with k = 12: ~15% of a
// step by the model FLOPs).
int64_t default_keep_weights_every(int64_t chunks, int64_t weight_bytes, std::optional<int64_t> parked_rows_bytes,
                                   int64_t host_bytes);

// The pinned host memory a process may hold, of the `host_bytes` it has: 60% (the OS cannot
// page it out). The parking's rows and weights fit in it, and the trainer's pinned moments.
int64_t pinned_host_budget(int64_t host_bytes);

// Whether, with every keep_weights_every-th chunk's fast weights parked, the k - 2 sets a
// recomputation parks at a time (in slots it reuses) fit the same 60% of `host_bytes` too;
// where they do not (no k fits), they stay on the device as the scan recomputes them.
bool recomputed_weights_fit(int64_t chunks, int64_t keep_weights_every, int64_t weight_bytes, int64_t parked_rows_bytes,
                            int64_t host_bytes);

// GradientOptions as a sequence of `inputs` inputs runs them on params' device, every choice
// left to the engine made (default_prefix_span_tokens, default_tail_chunks, ...). None changes
// the gradient; together they shape the computation (GradientGraphs keeps a graph per length
// and resolved options, so an option left to the engine and the same one asked share it).
struct ResolvedGradientOptions {
  bool park_on_host = false;
  // Parked, the fast weights the reverse scan recomputes wait in host slots too
  // (recomputed_weights_fit), else on the device.
  bool park_recomputed = false;
  int64_t keep_weights_every = 1, prefix_span_tokens = 0, tail_chunks = 1;
};
ResolvedGradientOptions resolve_gradient_options(const ModelConfig& config, const Params& params, int64_t inputs,
                                                 const GradientOptions& options);

// Adds d(loss_scale * loss)/d(theta) to the .grad of every tensor of `params` (leaves that
// require grad) and returns the loss (a detached scalar). `tokens`: [n] int64, n >= 2.
torch::Tensor accumulate_sequence_gradient(const ModelConfig& config, const Params& params,
                                           const torch::Tensor& tokens, const GradientOptions& options = {});

// accumulate_sequence_gradient as CUDA graphs, one per sequence length: training reads
// thousands of sequences of one length, and eagerly the reverse scan's ~2,500 kernels per
// chunk cost the host more time than the GPU spends on them. The graph adds the gradient
// into buffers that it lends the parameters as their .grad, so there is no second copy of
// the gradient (3B: 12 GB): the parameters' own .grad when the graphs are made (contiguous,
// of their shape: the trainer's one allocation for all gradients), else its own. The inner
// step size and loss_scale are device tensors too, so the inner-LR warm-up and any scale
// replay the same graph. Like GraphReplay, a length runs eagerly first, is captured the
// second time, replayed after.
// The parameters must stay where they are (optimisers update them in place), and a .grad
// set to another tensor is copied into the lent buffer at the next call.
class GradientGraphs {
 public:
  // Whether graphs can serve this model here: a CUDA build and device, graphs not switched
  // off (TTT_CUDA_GRAPHS=0), the fused kernels allowed, and not fa (whose chunk weights in
  // the loss depend on the tokens).
  static bool supported(const ModelConfig& config, const Params& params);
  // Graphs for these parameters where supported(), else null (the caller runs eagerly).
  static std::unique_ptr<GradientGraphs> where_supported(const ModelConfig& config, const Params& params);

  // For `params` as they are now, under the thread's matmul dtype, which later calls must
  // keep. Throws ttt::Error unless supported().
  GradientGraphs(const ModelConfig& config, const Params& params);
  ~GradientGraphs();
  GradientGraphs(const GradientGraphs&) = delete;
  GradientGraphs& operator=(const GradientGraphs&) = delete;

  // Whether these are the parameters (the same tensors) the graphs were made for.
  bool serves(const Params& params) const;
  // accumulate_sequence_gradient(config, params, tokens, options), through a graph.
  torch::Tensor accumulate(const Params& params, const torch::Tensor& tokens, const GradientOptions& options);

  int64_t captures() const;
  int64_t replays() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ttt
