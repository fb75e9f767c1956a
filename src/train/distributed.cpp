#include "train/distributed.h"

#include <cstdlib>

#include <torch/types.h>
#include <torch/version.h>

#include "common/error.h"
#include "ttt_build_features.h"

// A backend is usable where libtorch was built with it (its CMake target defines
// USE_C10D_GLOO, USE_C10D_NCCL) and CMake found its library's headers (ttt_build_features.h).
#if TTT_WITH_GLOO && defined(USE_C10D_GLOO)
#define TTT_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#if TTT_WITH_NCCL && defined(USE_C10D_NCCL)
#define TTT_NCCL 1
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace ttt {
namespace {

// libtorch 2.x made Gloo and NCCL backends of a ProcessGroup; in 1.13 they are process groups.
// Both have the collectives used here, with the same signatures.
#if TORCH_VERSION_MAJOR >= 2
using Backend = c10d::Backend;
#else
using Backend = c10d::ProcessGroup;
#endif

constexpr int64_t kBucketBytes = 25 << 20;  // DDP's default bucket size

int integer_variable(const char* name, std::optional<int> fallback) {
  const char* text = std::getenv(name);
  if (!text || !*text) {
    require(fallback.has_value(), std::string("$") + name + " is not set (a rank of a job needs RANK, WORLD_SIZE, " +
                                      "MASTER_ADDR and MASTER_PORT, as torchrun or `ttt launch` set them)");
    return *fallback;
  }
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  require(*end == '\0' && value >= 0 && value <= 1 << 30,
          std::string("$") + name + " must be a non-negative integer, got '" + text + "'");
  return static_cast<int>(value);
}

bool is_loopback(const std::string& address) {
  return address == "localhost" || address.rfind("127.", 0) == 0 || address == "::1";
}

// A collective's or the store's failure as one line naming what was waited for.
[[noreturn]] void fail(const std::string& what, int rank, const std::exception& e) {
  std::string reason = describe(e);
  reason = reason.substr(0, reason.find('\n'));
  throw Error("rank " + std::to_string(rank) + ": " + what + " failed (another rank died, hung, or runs another " +
              "configuration): " + reason);
}

std::vector<uint8_t> bytes(const std::string& text) { return {text.begin(), text.end()}; }

}  // namespace

std::optional<JobRank> JobRank::from_environment() {
  if (!std::getenv("WORLD_SIZE")) return std::nullopt;
  JobRank job;
  job.world_size = integer_variable("WORLD_SIZE", std::nullopt);
  job.rank = integer_variable("RANK", std::nullopt);
  job.local_rank = integer_variable("LOCAL_RANK", job.rank);
  job.local_world_size = integer_variable("LOCAL_WORLD_SIZE", job.world_size);
  require(job.world_size >= 1, "$WORLD_SIZE must be at least 1");
  require(job.local_world_size >= 1 && job.local_world_size <= job.world_size,
          "$LOCAL_WORLD_SIZE (" + std::to_string(job.local_world_size) + ") must be between 1 and $WORLD_SIZE (" +
              std::to_string(job.world_size) + ")");
  require(job.rank < job.world_size, "$RANK (" + std::to_string(job.rank) + ") must be less than $WORLD_SIZE (" +
                                         std::to_string(job.world_size) + ")");
  if (const char* addr = std::getenv("MASTER_ADDR"); addr && *addr) job.master_addr = addr;
  job.master_port = integer_variable("MASTER_PORT", job.master_port);
  require(job.master_port > 0 && job.master_port < 65536, "$MASTER_PORT must be a TCP port (1-65535)");
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  job.agent_store = agent && std::string(agent) == "True";
  job.store_prefix = "ttt/" + std::to_string(integer_variable("TORCHELASTIC_RESTART_COUNT", 0)) + "/";
  return job;
}

struct Communicator::Impl {
  int rank = 0, world_size = 1;
  // After a failed collective the group is left as it is: its threads may still wait on the
  // lost rank, and tearing it down could hang the process that is about to report the error.
  mutable bool failed = false;
  std::string backend_name;
  torch::Device device = torch::kCPU;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<Backend> backend;

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what) const {
    try {
      work->wait();
    } catch (const std::exception& e) {
      failed = true;
      fail(what, rank, e);
    }
  }
  template <typename Launch>
  c10::intrusive_ptr<c10d::Work> launch(Launch&& collective, const char* what) const {
    try {
      return collective();
    } catch (const std::exception& e) {
      failed = true;
      fail(what, rank, e);
    }
  }
};

Communicator::Communicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Communicator::~Communicator() {
  if (impl_->failed) {
    static_cast<void>(impl_->backend.release());
    static_cast<void>(impl_->store.release());
  }
}

int Communicator::rank() const { return impl_->rank; }
int Communicator::world_size() const { return impl_->world_size; }
const std::string& Communicator::backend() const { return impl_->backend_name; }

std::unique_ptr<Communicator> Communicator::connect(const JobRank& job, const torch::Device& device,
                                                    const std::string& backend, std::chrono::milliseconds timeout) {
  auto impl = std::make_unique<Impl>();
  impl->rank = job.rank;
  impl->world_size = job.world_size;
  impl->device = device;
  impl->backend_name = backend != "auto" ? backend : device.is_cuda() ? "nccl" : "gloo";
  require(impl->backend_name == "gloo" || impl->backend_name == "nccl",
          "unknown distributed backend '" + backend + "' (expected auto, gloo or nccl)");
  require(impl->backend_name == "gloo" || device.is_cuda(), "the nccl backend needs a CUDA device");
  const std::string where = job.master_addr + ":" + std::to_string(job.master_port);
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<uint16_t>(job.master_port);
    options.isServer = job.rank == 0 && !job.agent_store;
    // Every rank counts itself in, and the server waits for all of them: a rank without the
    // count would leave rank 0 waiting out the whole timeout (and, in libtorch 1.13, going on).
    options.numWorkers = job.world_size;
    options.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(job.master_addr, options);
    impl->store = c10::make_intrusive<c10d::PrefixStore>(job.store_prefix, tcp);
  } catch (const std::exception& e) {
    fail("the rendezvous at " + where, job.rank, e);
  }
  // Two processes given one rank would wait for each other until the timeout: name the mistake.
  require(impl->store->add("rank." + std::to_string(job.rank), 1) == 1,
          "rank " + std::to_string(job.rank) + " joined the job at " + where + " twice (check $RANK)");

  try {
    if (impl->backend_name == "gloo") {
#ifdef TTT_GLOO
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
      options->devices.push_back(interface && *interface ? c10d::ProcessGroupGloo::createDeviceForInterface(interface)
                                 : is_loopback(job.master_addr)
                                     ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                     : c10d::ProcessGroupGloo::createDefaultDevice());
      impl->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, job.rank, job.world_size, options);
#else
      throw Error("this ttt was built without Gloo (libtorch's or its headers): use --dist-backend nccl on CUDA");
#endif
    } else {
#ifdef TTT_NCCL
      c10::cuda::set_device(device.index());
      // wait() then blocks until the collective is done and throws after the timeout, so a lost
      // rank is this error line rather than the watchdog's abort (steps sync the host anyway).
      ::setenv("TORCH_NCCL_BLOCKING_WAIT", "1", /*overwrite=*/0);
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      impl->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl->store, job.rank, job.world_size, options);
#else
      throw Error("this ttt was built without NCCL (a CUDA libtorch with NCCL, and nccl.h, are needed)");
#endif
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("joining the " + impl->backend_name + " process group", job.rank, e);
  }
  return std::unique_ptr<Communicator>(new Communicator(std::move(impl)));
}

void Communicator::all_reduce_sum(const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  struct Bucket {
    std::vector<torch::Tensor> members;
    torch::Tensor flat;
    c10::intrusive_ptr<c10d::Work> work;
  };
  const auto finish = [&](Bucket& bucket) {
    impl_->wait(bucket.work, "all-reduce");
    if (bucket.members.size() == 1 && bucket.members[0].is_same(bucket.flat)) return;
    int64_t offset = 0;
    for (torch::Tensor& t : bucket.members) {
      t.copy_(bucket.flat.narrow(0, offset, t.numel()).view_as(t));
      offset += t.numel();
    }
  };
  std::optional<Bucket> in_flight;
  for (size_t i = 0; i < tensors.size();) {
    Bucket bucket;
    int64_t size = 0;
    for (; i < tensors.size() && (bucket.members.empty() || size < kBucketBytes); ++i) {
      require(tensors[i].is_contiguous(), "internal: all_reduce_sum takes contiguous tensors");
      bucket.members.push_back(tensors[i]);
      size += tensors[i].numel() * tensors[i].element_size();
    }
    if (bucket.members.size() == 1) {
      bucket.flat = bucket.members[0];
    } else {
      std::vector<torch::Tensor> flat_members;
      for (const torch::Tensor& t : bucket.members) flat_members.push_back(t.reshape(-1));
      bucket.flat = torch::cat(flat_members);
    }
    std::vector<torch::Tensor> operand{bucket.flat};
    bucket.work = impl_->launch([&] { return impl_->backend->allreduce(operand); }, "all-reduce");
    if (in_flight) finish(*in_flight);
    in_flight = std::move(bucket);
  }
  if (in_flight) finish(*in_flight);
}

void Communicator::broadcast_from_rank0(const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  for (const torch::Tensor& t : tensors) {
    std::vector<torch::Tensor> operand{t};
    impl_->wait(impl_->launch([&] { return impl_->backend->broadcast(operand); }, "broadcast"), "broadcast");
  }
}

bool Communicator::any(bool flag) {
  // Not c10d's barrier: on NCCL it guesses the device from the rank.
  const torch::Tensor count = torch::full({1}, flag ? 1.0 : 0.0, torch::TensorOptions().device(impl_->device));
  all_reduce_sum({count});
  return count.item<double>() > 0;
}

std::vector<std::string> Communicator::all_gather_text(const std::string& name, const std::string& text) {
  std::vector<std::string> texts;
  try {
    impl_->store->set(name + "." + std::to_string(impl_->rank), bytes(text));
    for (int r = 0; r < impl_->world_size; ++r) {
      const std::vector<uint8_t> value = impl_->store->get(name + "." + std::to_string(r));
      texts.emplace_back(value.begin(), value.end());
    }
  } catch (const std::exception& e) {
    fail("exchanging the " + name, impl_->rank, e);
  }
  // Every rank has read every text before any goes on: a rank that throws on what it read
  // (rank 0 serves the store) must not take the store down under a rank still reading.
  any(false);
  return texts;
}

}  // namespace ttt
