// Replays work of fixed shapes as CUDA graphs: a body runs eagerly the first time its
// key is seen (libraries pick and load their kernels, pools grow), is captured the
// second time and replayed from then on. The body must read its inputs from, and write
// its results to, tensors that outlive it at fixed addresses; whatever else it allocates
// lives in one memory pool that every graph of this object shares (their bodies run one
// after another, never at once, so they can reuse each other's memory).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>

namespace ttt {

// Whether CUDA graphs may serve: a build with CUDA, and TTT_CUDA_GRAPHS is not "0" (the
// switch that runs everything eagerly, for comparisons).
bool cuda_graphs_enabled();

class GraphReplay {
 public:
  GraphReplay();
  ~GraphReplay();
  GraphReplay(const GraphReplay&) = delete;
  GraphReplay& operator=(const GraphReplay&) = delete;

  // Runs `body` for `key` as above; on a build without CUDA, always eagerly.
  void run(int64_t key, const std::function<void()>& body);

  int64_t captures() const;  // graphs captured so far
  int64_t replays() const;   // runs that replayed one

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ttt
