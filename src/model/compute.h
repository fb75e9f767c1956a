// Where and in what precision the engine computes. SPEC section 6's GPU precision: matmuls
// in bf16 on fp32 parameters; the fast weights, their gradients and updates, softmax and
// losses in fp32. Everything else stays in the parameters' dtype.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "config/model_config.h"
#include "model/checkpoint.h"
#include "model/params.h"

namespace ttt {

struct ComputeOptions {
  torch::Device device = torch::kCPU;
  std::optional<torch::Dtype> matmul_dtype;  // unset: the parameters' own dtype
};

// "cpu", "cuda" or "cuda:N"; throws ttt::Error for anything else, or for CUDA on a build or
// machine without it.
torch::Device parse_device(const std::string& name);

// A precision as the commands (--dtype) and the train config name it: "auto" (bf16 on CUDA,
// f32 elsewhere), "bf16" (bf16 matmuls on fp32 parameters), "f32" or "f64". The first gives
// its matmul dtype (unset: the parameters' own), the second its parameters' dtype; both
// throw ttt::Error for another name.
std::optional<torch::Dtype> parse_matmul_dtype(const std::string& name, const torch::Device& device);
torch::Dtype parse_param_dtype(const std::string& name);

// The matmul dtype in effect on this thread; unset unless a MatmulDtypeGuard says otherwise.
std::optional<torch::Dtype> matmul_dtype();

// Sets the matmul dtype for this thread while it lives (like torch's AutoGradMode).
class MatmulDtypeGuard {
 public:
  explicit MatmulDtypeGuard(std::optional<torch::Dtype> dtype);
  ~MatmulDtypeGuard();
  MatmulDtypeGuard(const MatmulDtypeGuard&) = delete;
  MatmulDtypeGuard& operator=(const MatmulDtypeGuard&) = delete;

 private:
  std::optional<torch::Dtype> previous_;
};

// GPU memory of the caching allocator on `device` since the last reset (or the start): the
// peak of what tensors held and of what the allocator reserved from the driver (tensors,
// cached free blocks, CUDA graphs' pools). Unset on the CPU or a build without CUDA.
struct DeviceMemory {
  int64_t peak_allocated = 0, peak_reserved = 0;
};
std::optional<DeviceMemory> device_memory(const torch::Device& device);
void reset_device_memory_peaks(const torch::Device& device);
// The device's whole memory in bytes (CUDA); unset elsewhere.
std::optional<int64_t> device_total_memory(const torch::Device& device);
// Whether CUDA's caching allocator grows its segments on `device` in place
// (common/device_allocator.h), as the segments it holds there tell; unset where it holds none,
// on the CPU or a build without CUDA.
std::optional<bool> device_segments_expandable(const torch::Device& device);
// Hands the caching allocator's free blocks on `device` back to the driver (CUDA; nothing
// elsewhere): work that follows differently shaped work starts unfragmented.
void release_cached_device_memory(const torch::Device& device);

// The GPU's name as its driver reports it ("NVIDIA H200"), or "cpu".
std::string device_name(const torch::Device& device);

// Host memory that a GPU copies to and from without waiting (pinned by CUDA where the
// tensor `like` is on a GPU, plain otherwise): an uninitialised CPU tensor of `bytes` bytes.
torch::Tensor host_buffer(int64_t bytes, const torch::Tensor& like);
// dst.copy_(src) between a GPU tensor and pinned host memory queued on the current CUDA
// stream (cudaMemcpyAsync: the host does not wait, a CUDA graph captures it); both
// contiguous, of one dtype and size. A plain copy where neither is on a GPU.
void copy_queued(const torch::Tensor& dst, const torch::Tensor& src);

// copy_queued's copies on a CUDA stream of their own, so that they overlap the work of the
// current stream (a CUDA graph captures both, joined). A copy starts after everything the
// current stream queued before it; the current stream waits for copies only at settle()
// (those queued before the previous settle: a pipeline one step deep) and join() (all).
// Both tensors stay alive until then, so neither's memory is reused while a copy reads or
// writes it; the source must not be written meanwhile. Plain copies where no GPU is involved.
class CopyStream {
 public:
  CopyStream();
  ~CopyStream();
  CopyStream(const CopyStream&) = delete;  // its copies in flight belong to this one
  CopyStream& operator=(const CopyStream&) = delete;

  void copy(const torch::Tensor& dst, const torch::Tensor& src);
  void settle();
  void join();
  // A fresh start after a call that may have failed midway: joins what it holds, or, while
  // the current stream is being captured (a capture that failed before left them), drops it
  // without a CUDA call.
  void restart();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Copies between pageable host memory and a GPU through a few pinned buffers of its own: the
// host copies a piece into one (on all its cores) while the link carries the piece before,
// where a copy from pageable memory goes at the driver's pace (an H100: 9.4 GiB/s to the GPU
// and 14.2 back, against 51 from and to pinned memory). The copies are queued on the current
// stream, pieces of `slot_bytes` through `slots` buffers in turn; those to the host are
// whole once finish() (or the destructor) returns, those to the GPU are queued by then. Both
// tensors contiguous, of one dtype and size. Plain copies where no GPU is involved.
class PageableCopies {
 public:
  explicit PageableCopies(int64_t slot_bytes = int64_t{64} << 20, int slots = 4);
  ~PageableCopies();
  PageableCopies(const PageableCopies&) = delete;  // its pieces in flight belong to this one
  PageableCopies& operator=(const PageableCopies&) = delete;

  void to_device(const torch::Tensor& dst, const torch::Tensor& src);
  void to_host(const torch::Tensor& dst, const torch::Tensor& src);
  void finish();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Work queued on a CUDA stream of its own, beside the current stream's: independent work
// fills what the current stream's small kernels leave of the GPU (the blocks before the fast
// weights run ahead there while the chunk loop steps). run() queues work after everything
// the current stream queued up to the last mark() since the previous run() (without one:
// so far); wait() makes the current stream wait for all of it. Memory
// stays safe across the two: tensors made elsewhere that the work reads, writes or frees are
// named to run(), the results the current stream then uses to wait() (the caching allocator
// reuses neither's memory before the other stream is done with it). The stream is the calling
// thread's own, kept for the process (the allocator keeps freed memory per stream). The
// destructor waits. Where no GPU is involved, or with `enabled` false, run() runs the work in
// place.
class SideStream {
 public:
  SideStream(const torch::Device& device, bool enabled);
  ~SideStream();
  SideStream(const SideStream&) = delete;  // its work in flight belongs to this one
  SideStream& operator=(const SideStream&) = delete;

  void mark();
  void run(const std::function<void()>& work, const std::vector<torch::Tensor>& shared);
  void wait(const std::vector<torch::Tensor>& results);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// The matmul dtype params_for_inference gave `params`: their matrices' dtype where it
// differs from the gains' (which stay in the parameters' own dtype); unset otherwise.
std::optional<torch::Dtype> inference_matmul_dtype(const Params& params);

// The parameters on `options.device`, matrices other than the fast weights already in the
// matmul dtype, so inference does not cast them at every step. Not for training: the
// casts are not differentiable back to `params`.
Params params_for_inference(const ModelConfig& config, const Params& params, const ComputeOptions& options);

// A checkpoint ready for inference (no gradients w.r.t. its weights) on `device` ("cpu",
// "cuda", "cuda:N") in the precision `dtype` names ("auto", "bf16", "f32", "f64"): what the
// --device and --dtype flags of every command that runs a model mean.
Model load_for_inference(const std::string& path, const std::string& device, const std::string& dtype);

}  // namespace ttt
