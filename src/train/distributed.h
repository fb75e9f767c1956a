// Data-parallel training's ranks, on libtorch's c10d: a TCPStore for the rendezvous,
// ProcessGroupGloo for CPU tensors, ProcessGroupNCCL for CUDA ones. c10d's C++ API differs
// between libtorch 1.13 (Debian's) and 2.x (PyTorch's), so its headers stay in distributed.cpp.
#pragma once
#include <torch/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ttt {

// This process's place in a job, from the variables torchrun gives its workers.
struct JobRank {
  int rank = 0, world_size = 1, local_rank = 0;
  int local_world_size = 1;  // the job's ranks on this host (all of them where unsaid)
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // torchrun's agent serves the store at master_addr:master_port (TORCHELASTIC_USE_AGENT_STORE);
  // otherwise rank 0 serves it.
  bool agent_store = false;
  // Keys of this attempt of the job (torchrun counts restarts in TORCHELASTIC_RESTART_COUNT).
  std::string store_prefix = "ttt/0/";

  // RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; nothing when WORLD_SIZE is unset (a
  // process of its own). A malformed or missing value is a ttt::Error naming the variable.
  static std::optional<JobRank> from_environment();
};

// The ranks of a job, joined. Every rank must make the same calls in the same order; a call
// that waits longer than the timeout (a rank died, hung or diverged) throws a ttt::Error.
class Communicator {
 public:
  // Joins the job for tensors on `device`. `backend`: "auto" (Gloo for the CPU, NCCL for CUDA),
  // "gloo" or "nccl". On CUDA the device becomes this thread's current one.
  static std::unique_ptr<Communicator> connect(const JobRank& job, const torch::Device& device,
                                               const std::string& backend, std::chrono::milliseconds timeout);
  ~Communicator();

  int rank() const;
  int world_size() const;
  const std::string& backend() const;

  // Sums every tensor over the ranks, in place. Contiguous tensors of one dtype on the
  // communicator's device; sent in buckets of about 25 MB, one in flight while the next is packed.
  void all_reduce_sum(const std::vector<torch::Tensor>& tensors);
  // Rank 0's values into every rank's tensors (contiguous, on the communicator's device).
  void broadcast_from_rank0(const std::vector<torch::Tensor>& tensors);
  // Whether any rank passed true: an all-reduce of one number, so it is also a barrier, and a
  // rank that died fails it at once (a wait on the store would last the whole timeout).
  bool any(bool flag);
  // Every rank's `text` under `name`, in rank order: small data through the store, not tensors.
  // Returns on every rank once every rank has read them all.
  std::vector<std::string> all_gather_text(const std::string& name, const std::string& text);

 private:
  struct Impl;
  explicit Communicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ttt
