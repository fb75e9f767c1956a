// AdamW with decoupled weight decay (the optax form the reference uses):
//   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,
//   p -= lr * (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + weight_decay * p).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <torch/types.h>

namespace ttt {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  // Where every parameter is on one CUDA device and libtorch has it (PyTorch 2), the update is
  // libtorch's fused multi-tensor AdamW: one pass over p, g, m, v (760M: 9 ms a step where the
  // plain ops took 34). The same update, rounded in another order.
  bool fused = true;
  // Where the parameters are on a GPU: the moments wait in host memory between updates and
  // come to the GPU for each one (3B: 21.6 GiB of the GPU left to the gradient, for two copies
  // of 23 GB a step). The same update.
  bool moments_on_host = false;
  // With moments on the host: in pinned memory, so that their copies run at the link's speed,
  // queued, a group's moments going back while the next group's come (the GPU then holds two
  // groups' moments); else pageable, their copies through 256 MiB of pinned buffers
  // (PageableCopies, rather than at the driver's pace from pageable memory). Pinned
  // memory is the host's to spare: the trainer pins where the gradient parks nothing there
  // (pin_host_moments).
  bool pin_host_moments = false;
  // With moments on the host: the parameters are updated in groups of about this many bytes,
  // the GPU holding one group's moments at a time (3B at 128K: the captured chunk graphs keep
  // 47 GiB of their pool through the update, too much beside all of them).
  int64_t host_moment_group_bytes = int64_t{1} << 30;
};

class PageableCopies;

class AdamW {
 public:
  // `params` are the tensors to update in place (by name); their .grad is the gradient.
  AdamW(std::map<std::string, torch::Tensor> params, AdamWOptions options);
  ~AdamW();

  // One update with learning rate `lr`; a parameter without a gradient counts as g = 0.
  void step(double lr);
  int64_t steps_taken() const { return steps_; }
  // Whether step() is the fused update (AdamWOptions::fused).
  bool fused() const { return step_counts_.defined(); }
  // Whether the moments wait in host memory between updates (AdamWOptions::moments_on_host,
  // for parameters on a GPU).
  bool moments_on_host() const { return moments_on_host_; }
  // Whether those are in pinned memory (AdamWOptions::pin_host_moments).
  bool host_moments_pinned() const { return moments_on_host_ && options_.pin_host_moments; }

  // The moments by name ("m.<param>", "v.<param>"), for checkpoints.
  std::map<std::string, torch::Tensor> state() const;
  // Restores state() and the step count; throws ttt::Error naming a missing or misshapen moment.
  void load_state(const std::map<std::string, torch::Tensor>& state, int64_t steps);

 private:
  using Moments = std::map<std::string, torch::Tensor>;
  // The update of the parameters named in `m` with moments `m` and `v` on their devices.
  void update(double lr, Moments& m, Moments& v);
  void fused_update(double lr, Moments& m, Moments& v);

  std::map<std::string, torch::Tensor> params_;
  Moments m_, v_;
  AdamWOptions options_;
  bool moments_on_host_ = false;
  int64_t steps_ = 0;
  // The fused update's step count, an entry a parameter (views of one tensor, filled each
  // step); undefined where the update is the plain one.
  torch::Tensor step_counts_;
  std::map<std::string, torch::Tensor> step_count_views_;
  // Pageable host moments' copies, its pinned buffers kept from step to step.
  std::unique_ptr<PageableCopies> pageable_;
};

}  // namespace ttt
