#include "ttt/graph_replay.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "model/compute.h"
#include "ttt_build_features.h"  // TTT_WITH_CUDA: libtorch has CUDA

#if TTT_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/cuda.h>
#endif

namespace ttt {

bool cuda_graphs_enabled() {
  const char* setting = std::getenv("TTT_CUDA_GRAPHS");
  return TTT_WITH_CUDA && !(setting != nullptr && std::strcmp(setting, "0") == 0);
}

struct GraphReplay::State {
  std::set<int64_t> seen;
  int64_t captures = 0, replays = 0;
#if TTT_WITH_CUDA
  decltype(at::cuda::graph_pool_handle()) pool = at::cuda::graph_pool_handle();
  // Every capture on one stream: the allocator reuses a pool's freed blocks only on the
  // stream that freed them, so graphs captured on different streams would not share memory.
  c10::cuda::CUDAStream capture_stream = c10::cuda::getStreamFromPool();
  std::map<int64_t, std::unique_ptr<at::cuda::CUDAGraph>> graphs;
#endif
};

GraphReplay::GraphReplay() : state_(std::make_unique<State>()) {}
GraphReplay::~GraphReplay() = default;

int64_t GraphReplay::captures() const { return state_->captures; }
int64_t GraphReplay::replays() const { return state_->replays; }

void GraphReplay::run(int64_t key, const std::function<void()>& body) {
  State& s = *state_;
#if TTT_WITH_CUDA
  auto graph = s.graphs.find(key);
  if (graph == s.graphs.end() && s.seen.count(key) > 0) {
    // Captured on a side stream (graphs cannot be captured on the default one); nothing runs.
    auto captured = std::make_unique<at::cuda::CUDAGraph>();
    // One capture at a time in the process (`ttt serve --slots N` decodes sessions on threads
    // of their own): the synchronization and the cache release below would break another
    // thread's capture. Thread-local capture mode lets the other threads compute meanwhile.
    static std::mutex one_capture;
    const std::lock_guard lock(one_capture);
    torch::cuda::synchronize();
    // The eager run's freed blocks back to the driver: the graph's private pool needs memory
    // of its own (the 3B training step ran out with 70 GiB cached but free).
    release_cached_device_memory(torch::Device(torch::kCUDA, c10::cuda::current_device()));
    {
      const c10::cuda::CUDAStreamGuard side(s.capture_stream);
      captured->capture_begin(s.pool, cudaStreamCaptureModeThreadLocal);
      try {
        body();
      } catch (...) {
        try {
          captured->capture_end();
        } catch (...) {
        }
        throw;
      }
      captured->capture_end();
    }
    graph = s.graphs.emplace(key, std::move(captured)).first;
    ++s.captures;
  }
  if (graph != s.graphs.end()) {
    graph->second->replay();
    ++s.replays;
    return;
  }
#endif
  body();
  s.seen.insert(key);
}

}  // namespace ttt
