#include "model/compute.h"

#include <torch/cuda.h>
#include <torch/version.h>

#include <algorithm>
#include <map>

#include "common/error.h"
#include "ttt_build_features.h"

#if TTT_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <cuda_runtime_api.h>
#endif

namespace ttt {
namespace {

thread_local std::optional<torch::Dtype> g_matmul_dtype;

}  // namespace

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    int index = 0;
    if (name.size() > 5) {
      size_t used = 0;
      try {
        index = std::stoi(name.substr(5), &used);
      } catch (const std::exception&) {
        used = 0;
      }
      require(used == name.size() - 5 && index >= 0, "bad device '" + name + "' (expected cpu, cuda or cuda:N)");
    }
    require(torch::cuda::is_available(),
            "device '" + name + "': no CUDA GPU is usable here (this build's libtorch has no CUDA, or no GPU is visible)");
    require(index < static_cast<int>(torch::cuda::device_count()),
            "device '" + name + "': only " + std::to_string(torch::cuda::device_count()) + " CUDA device(s)");
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  throw Error("unknown device '" + name + "' (expected cpu, cuda or cuda:N)");
}

std::optional<torch::Dtype> parse_matmul_dtype(const std::string& name, const torch::Device& device) {
  if (name == "bf16" || (name == "auto" && device.is_cuda())) return torch::kBFloat16;
  if (name == "auto" || name == "f32" || name == "f64") return std::nullopt;
  throw Error("unknown precision '" + name + "' (expected auto, bf16, f32 or f64)");
}

torch::Dtype parse_param_dtype(const std::string& name) {
  parse_matmul_dtype(name, torch::kCPU);  // the same names, the same error
  return name == "f64" ? torch::kFloat64 : torch::kFloat32;
}

std::optional<torch::Dtype> matmul_dtype() { return g_matmul_dtype; }

MatmulDtypeGuard::MatmulDtypeGuard(std::optional<torch::Dtype> dtype) : previous_(g_matmul_dtype) {
  g_matmul_dtype = dtype;
}
MatmulDtypeGuard::~MatmulDtypeGuard() { g_matmul_dtype = previous_; }

std::string device_name(const torch::Device& device) {
#if TTT_WITH_CUDA
  if (device.is_cuda()) {
    cudaDeviceProp properties{};
    if (cudaGetDeviceProperties(&properties, device.has_index() ? device.index() : 0) == cudaSuccess) {
      return properties.name;
    }
    return "cuda";
  }
#endif
  return device.str();
}

std::optional<DeviceMemory> device_memory(const torch::Device& device) {
#if TTT_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
    constexpr size_t kAll = 0;  // StatType::AGGREGATE: every pool
    return DeviceMemory{stats.allocated_bytes[kAll].peak, stats.reserved_bytes[kAll].peak};
  }
#endif
  (void)device;
  return std::nullopt;
}

std::optional<int64_t> device_total_memory(const torch::Device& device) {
#if TTT_WITH_CUDA
  // ATen keeps each device's properties once read: no driver call per gradient.
  if (device.is_cuda()) {
    return static_cast<int64_t>(
        at::cuda::getDeviceProperties(device.has_index() ? device.index() : c10::cuda::current_device())
            ->totalGlobalMem);
  }
#endif
  (void)device;
  return std::nullopt;
}

std::optional<bool> device_segments_expandable(const torch::Device& device) {
#if TTT_WITH_CUDA && TORCH_VERSION_MAJOR >= 2
  // From the allocator's segments: its settings' own getter is inline in PyTorch's headers and
  // built here without the driver API it tests for, so it would answer false.
  if (device.is_cuda()) {
    const int index = device.has_index() ? device.index() : c10::cuda::current_device();
    std::optional<bool> expandable;
    try {
      for (const auto& segment : c10::cuda::CUDACachingAllocator::snapshot().segments) {
        if (segment.device == index) expandable = expandable.value_or(false) || segment.is_expandable;
      }
    } catch (const c10::Error&) {  // a backend without segments (backend:cudaMallocAsync)
      return std::nullopt;
    }
    return expandable;
  }
#endif
  (void)device;
  return std::nullopt;
}

void reset_device_memory_peaks(const torch::Device& device) {
#if TTT_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
#endif
  (void)device;
}

void release_cached_device_memory(const torch::Device& device) {
#if TTT_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
  (void)device;
}

torch::Tensor host_buffer(int64_t bytes, const torch::Tensor& like) {
#if TTT_WITH_CUDA
  if (like.is_cuda()) {
    const c10::cuda::CUDAGuard on(like.device());  // no context made on another GPU
    void* memory = nullptr;
    const cudaError_t status = cudaHostAlloc(&memory, static_cast<size_t>(std::max<int64_t>(bytes, 1)), 0);
    require(status == cudaSuccess,
            "cannot pin " + std::to_string(bytes >> 20) + " MiB of host memory: " + cudaGetErrorString(status));
    return torch::from_blob(
        memory, {bytes}, [](void* p) { cudaFreeHost(p); }, torch::kUInt8);
  }
#endif
  (void)like;
  return torch::empty({bytes}, torch::kUInt8);
}

namespace {

// What copy_queued and PageableCopies (`who`) copy between: contiguous tensors of one dtype and size.
void require_copyable(const torch::Tensor& dst, const torch::Tensor& src, const char* who) {
  require(dst.is_contiguous() && src.is_contiguous() && dst.scalar_type() == src.scalar_type() &&
              dst.numel() == src.numel(),
          std::string("internal: ") + who + " needs contiguous tensors of one dtype and size");
}

}  // namespace

void copy_queued(const torch::Tensor& dst, const torch::Tensor& src) {
  require_copyable(dst, src, "copy_queued");
#if TTT_WITH_CUDA
  if (dst.is_cuda() || src.is_cuda()) {
    const auto kind =
        dst.is_cuda() ? (src.is_cuda() ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice) : cudaMemcpyDeviceToHost;
    const cudaError_t status =
        cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), src.numel() * src.element_size(), kind,
                        c10::cuda::getCurrentCUDAStream(dst.is_cuda() ? dst.get_device() : src.get_device()).stream());
    require(status == cudaSuccess, std::string("cudaMemcpyAsync: ") + cudaGetErrorString(status));
    return;
  }
#endif
  torch::NoGradGuard no_graph;
  dst.copy_(src);
}

#if TTT_WITH_CUDA
namespace {

// A stream of this thread's own on `device`, made at its first use and kept for the process
// (a thread that ends leaves it, and the allocator's blocks cached for it, behind): the
// caching allocator reuses freed memory only on the stream that freed it (a fresh stream per
// use would strand it), and no other thread's work can land on it (a pool stream might be
// another thread's CUDA graph capture stream).
c10::cuda::CUDAStream thread_stream(const torch::Device& on) {
  const c10::DeviceIndex device = on.has_index() ? on.index() : c10::cuda::current_device();
  thread_local std::map<c10::DeviceIndex, cudaStream_t> streams;
  cudaStream_t& stream = streams[device];
  if (stream == nullptr) {
    const c10::cuda::CUDAGuard guard(device);
    const cudaError_t status = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    require(status == cudaSuccess, std::string("cudaStreamCreateWithFlags: ") + cudaGetErrorString(status));
  }
  return c10::cuda::getStreamFromExternal(stream, device);
}

// Makes `stream` wait for everything queued on `on_top_of` so far.
void wait_for_queued(const c10::cuda::CUDAStream& stream, const c10::cuda::CUDAStream& on_top_of) {
  at::cuda::CUDAEvent queued_so_far;
  queued_so_far.record(on_top_of);
  queued_so_far.block(stream);
}

void record_on(const std::vector<torch::Tensor>& tensors, const c10::cuda::CUDAStream& stream) {
  for (const torch::Tensor& t : tensors) {
    if (t.defined() && t.is_cuda()) t.record_stream(stream);
  }
}

}  // namespace
#endif

struct PageableCopies::State {
  int64_t slot_bytes;
  struct Slot {
    torch::Tensor buffer;  // pinned, made at first use
#if TTT_WITH_CUDA
    std::optional<at::cuda::CUDAEvent> copied;  // the slot's last copy, on the current stream
#endif
    torch::Tensor pending;  // where the slot's piece goes on the host once copied (to_host)
  };
  std::vector<Slot> slots;
  size_t next = 0;

  // The slot after the last one, its previous piece done with: copied, and on the host.
  Slot& take(const torch::Tensor& on_gpu) {
    Slot& slot = slots[next];
    next = (next + 1) % slots.size();
    settle(slot);
    if (!slot.buffer.defined()) slot.buffer = host_buffer(slot_bytes, on_gpu);
    return slot;
  }
  static void settle(Slot& slot) {
#if TTT_WITH_CUDA
    if (slot.copied) slot.copied->synchronize();
    slot.copied.reset();
#endif
    if (slot.pending.defined()) slot.pending.copy_(slot.buffer.narrow(0, 0, slot.pending.numel()));
    slot.pending = torch::Tensor();
  }
  static void mark_copied(Slot& slot, const torch::Tensor& on_gpu) {
#if TTT_WITH_CUDA
    slot.copied.emplace();
    slot.copied->record(c10::cuda::getCurrentCUDAStream(on_gpu.get_device()));
#else
    (void)slot;
    (void)on_gpu;
#endif
  }
};

namespace {

// A contiguous tensor's bytes, flat.
torch::Tensor bytes_of(const torch::Tensor& t) { return t.reshape({-1}).view(torch::kUInt8); }

}  // namespace

PageableCopies::PageableCopies(int64_t slot_bytes, int slots) : state_(std::make_unique<State>()) {
  require(slot_bytes > 0 && slots > 0, "internal: PageableCopies needs slots of some bytes");
  state_->slot_bytes = slot_bytes;
  state_->slots.resize(static_cast<size_t>(slots));
}

PageableCopies::~PageableCopies() {
  try {
    finish();
  } catch (...) {  // a failed GPU: nothing to wait for
  }
}

void PageableCopies::to_device(const torch::Tensor& dst, const torch::Tensor& src) {
  require_copyable(dst, src, "PageableCopies");
  if (!dst.is_cuda() || src.is_cuda()) return void(dst.copy_(src));
  const torch::Tensor to = bytes_of(dst), from = bytes_of(src);
  for (int64_t at = 0; at < from.numel(); at += state_->slot_bytes) {
    const int64_t n = std::min(state_->slot_bytes, from.numel() - at);
    State::Slot& slot = state_->take(dst);
    const torch::Tensor piece = slot.buffer.narrow(0, 0, n);
    piece.copy_(from.narrow(0, at, n));
    copy_queued(to.narrow(0, at, n), piece);
    State::mark_copied(slot, dst);
  }
}

void PageableCopies::to_host(const torch::Tensor& dst, const torch::Tensor& src) {
  require_copyable(dst, src, "PageableCopies");
  if (!src.is_cuda() || dst.is_cuda()) return void(dst.copy_(src));
  const torch::Tensor to = bytes_of(dst), from = bytes_of(src);
  for (int64_t at = 0; at < from.numel(); at += state_->slot_bytes) {
    const int64_t n = std::min(state_->slot_bytes, from.numel() - at);
    State::Slot& slot = state_->take(src);
    copy_queued(slot.buffer.narrow(0, 0, n), from.narrow(0, at, n));
    State::mark_copied(slot, src);
    slot.pending = to.narrow(0, at, n);
  }
}

void PageableCopies::finish() {
  for (State::Slot& slot : state_->slots) State::settle(slot);
}

struct CopyStream::State {
  std::vector<torch::Tensor> queued, settling;  // held since the last settle(), and the one before
#if TTT_WITH_CUDA
  std::optional<c10::cuda::CUDAStream> stream;       // made at the first GPU copy, on its device
  std::optional<at::cuda::CUDAEvent> settling_done;  // recorded on `stream` at the last settle()

  c10::cuda::CUDAStream current() const { return c10::cuda::getCurrentCUDAStream(stream->device_index()); }
#endif
};

CopyStream::CopyStream() : state_(std::make_unique<State>()) {}
CopyStream::~CopyStream() {
  try {
    join();
  } catch (...) {  // a failed GPU: nothing to wait for
  }
}

void CopyStream::copy(const torch::Tensor& dst, const torch::Tensor& src) {
#if TTT_WITH_CUDA
  if (dst.is_cuda() || src.is_cuda()) {
    const c10::DeviceIndex device = dst.is_cuda() ? dst.get_device() : src.get_device();
    if (!state_->stream) state_->stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device);
    require(state_->stream->device_index() == device, "internal: a CopyStream serves one GPU");
    const c10::cuda::CUDAGuard on(device);
    wait_for_queued(*state_->stream, state_->current());
    const c10::cuda::CUDAStreamGuard side(*state_->stream);
    copy_queued(dst, src);
    state_->queued.insert(state_->queued.end(), {dst, src});
    return;
  }
#endif
  copy_queued(dst, src);
}

void CopyStream::settle() {
#if TTT_WITH_CUDA
  if (state_->stream) {
    const c10::cuda::CUDAGuard on(state_->stream->device_index());
    if (state_->settling_done) state_->settling_done->block(state_->current());
    state_->settling_done.emplace();
    state_->settling_done->record(*state_->stream);
  }
#endif
  state_->settling = std::move(state_->queued);
  state_->queued.clear();
}

void CopyStream::join() {
#if TTT_WITH_CUDA
  if (state_->stream && !(state_->queued.empty() && state_->settling.empty())) {
    const c10::cuda::CUDAGuard on(state_->stream->device_index());
    at::cuda::CUDAEvent all_done;
    all_done.record(*state_->stream);
    all_done.block(state_->current());
  }
  // Even with nothing held: a settle's event of an eager run must not reach a later capture.
  state_->settling_done.reset();
#endif
  state_->queued.clear();
  state_->settling.clear();
}

void CopyStream::restart() {
#if TTT_WITH_CUDA
  if (state_->stream) {
    const c10::cuda::CUDAGuard on(state_->stream->device_index());
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    const cudaError_t status = cudaStreamIsCapturing(state_->current().stream(), &capturing);
    if (status != cudaSuccess || capturing != cudaStreamCaptureStatusNone) {
      state_->settling_done.reset();
      state_->queued.clear();
      state_->settling.clear();
      return;
    }
  }
#endif
  join();
}

struct SideStream::State {
#if TTT_WITH_CUDA
  std::optional<c10::cuda::CUDAStream> stream;  // set where the work goes to a stream of its own
  std::optional<at::cuda::CUDAEvent> done;      // recorded on `stream` after the last run()
  std::optional<at::cuda::CUDAEvent> marked;    // recorded on the current stream at mark()

  c10::cuda::CUDAStream current() const { return c10::cuda::getCurrentCUDAStream(stream->device_index()); }
#endif
};

SideStream::SideStream(const torch::Device& device, bool enabled) : state_(std::make_unique<State>()) {
#if TTT_WITH_CUDA
  if (enabled && device.is_cuda()) {
    state_->stream = thread_stream(device);
  }
#else
  (void)device;
  (void)enabled;
#endif
}

SideStream::~SideStream() {
  try {
    wait({});
  } catch (...) {  // a failed GPU: nothing to wait for
  }
}

void SideStream::run(const std::function<void()>& work, const std::vector<torch::Tensor>& shared) {
#if TTT_WITH_CUDA
  if (state_->stream) {
    const c10::cuda::CUDAGuard on(state_->stream->device_index());
    if (state_->marked) {
      state_->marked->block(*state_->stream);
      state_->marked.reset();
    } else {
      wait_for_queued(*state_->stream, state_->current());
    }
    record_on(shared, *state_->stream);
    // The event goes after whatever the work queued, even work that failed midway.
    const auto mark_done = [&] {
      state_->done.emplace();
      state_->done->record(*state_->stream);
    };
    try {
      const c10::cuda::CUDAStreamGuard side(*state_->stream);
      work();
    } catch (...) {
      mark_done();
      throw;
    }
    mark_done();
    return;
  }
#endif
  (void)shared;
  work();
}

void SideStream::wait(const std::vector<torch::Tensor>& results) {
#if TTT_WITH_CUDA
  if (state_->stream) {
    const c10::cuda::CUDAGuard on(state_->stream->device_index());
    if (state_->done) {
      state_->done->block(state_->current());
      state_->done.reset();
    }
    record_on(results, state_->current());
  }
#endif
  (void)results;
}

void SideStream::mark() {
#if TTT_WITH_CUDA
  if (state_->stream) {
    const c10::cuda::CUDAGuard on(state_->stream->device_index());
    state_->marked.emplace();
    state_->marked->record(state_->current());
  }
#endif
}

std::optional<torch::Dtype> inference_matmul_dtype(const Params& params) {
  const torch::Dtype matrices = params.embed.scalar_type();
  return matrices == params.final_norm.scalar_type() ? std::nullopt : std::optional<torch::Dtype>(matrices);
}

Params params_for_inference(const ModelConfig& config, const Params& params, const ComputeOptions& options) {
  Params out = detach_params(config, params);
  visit_params(config, out, [&](const std::string& name, const std::vector<int64_t>&, ParamKind kind,
                                torch::Tensor& tensor) {
    const bool fast_weight = name.find(".prime.") != std::string::npos;
    const bool cast = kind == ParamKind::kMatrix && !fast_weight && options.matmul_dtype &&
                      tensor.scalar_type() != torch::kFloat64;
    tensor = tensor.to(options.device, cast ? *options.matmul_dtype : tensor.scalar_type());
  });
  // Projections that read the same input, side by side: a decoded token's are one matmul each.
  for (BlockParams& b : out.blocks) {
    place_side_by_side({&b.attn.wq, &b.attn.wk, &b.attn.wv});
    place_side_by_side({&b.mlp.w1, &b.mlp.w3});
  }
  return out;
}

Model load_for_inference(const std::string& path, const std::string& device, const std::string& dtype) {
  const torch::Device on = parse_device(device);
  Model model = load_model(path, parse_param_dtype(dtype));
  model.params = params_for_inference(model.config, model.params, {on, parse_matmul_dtype(dtype, on)});
  return model;
}

}  // namespace ttt
