#include "kernels/cudnn_window.h"

#include <cuda_runtime.h>
#include <cudnn.h>
#include <cudnn_frontend.h>

#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

namespace ttt::kernels {
namespace {
namespace fe = cudnn_frontend;
using TensorRef = std::shared_ptr<fe::graph::Tensor_attributes>;

enum Uid : int64_t { kQ = 1, kK, kV, kOut, kStats, kGrad, kDq, kDk, kDv, kSeqQ, kSeqKv };

// One pass's plan for one shape, in two stages: checked (cuDNN has an engine for it; no kernel
// built yet) and built (its kernel ready to run: the quarter of a second), or why cuDNN refused
// it.
struct Plan {
  bool checked = false, built = false;
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
  bool names_lengths = false;  // the backward's padding mask, with lengths of its own
  int32_t* lengths = nullptr;  // device {queries, keys}, where it names them
  std::string refusal;
};
struct Plans {
  Plan forward, backward;
};

thread_local std::string last_error;

const char* failed(std::string text) {
  last_error = std::move(text);
  return last_error.c_str();
}

std::string cuda_text(cudaError_t status) { return cudaGetErrorString(status); }

// One handle per device and thread (a handle is bound to the device current at its creation).
// Kept for the process, as the plans are: destroying them at exit would race CUDA's teardown.
cudnnHandle_t handle_for(int device, std::string* error) {
  thread_local auto* handles = new std::map<int, cudnnHandle_t>();
  auto found = handles->find(device);
  if (found != handles->end()) return found->second;
  cudnnHandle_t handle = nullptr;
  if (const cudnnStatus_t status = cudnnCreate(&handle); status != CUDNN_STATUS_SUCCESS) {
    *error = std::string("cudnnCreate: ") + cudnnGetErrorString(status);
    return nullptr;
  }
  handles->emplace(device, handle);
  return handle;
}

// Rows of [rows, heads, head_dim] as cuDNN's {batch 1, heads, rows, head_dim}.
TensorRef rows_tensor(fe::graph::Graph& graph, const char* name, Uid uid, const CudnnWindowShape& s, int64_t rows,
                      int64_t row_stride, int64_t head_stride) {
  return graph.tensor(fe::graph::Tensor_attributes()
                          .set_name(name)
                          .set_uid(uid)
                          .set_dim({1, s.heads, rows, s.head_dim})
                          .set_stride({rows * row_stride, head_stride, row_stride, 1}));
}

// Contiguous [rows, heads, head_dim], as an output.
void contiguous_rows(const TensorRef& t, Uid uid, const CudnnWindowShape& s, int64_t rows) {
  t->set_output(true)
      .set_uid(uid)
      .set_dim({1, s.heads, rows, s.head_dim})
      .set_stride({rows * s.heads * s.head_dim, s.head_dim, s.heads * s.head_dim, 1});
}

// The logsumexps, fp32 [heads, queries] contiguous (cuDNN's softmax statistics).
fe::graph::Tensor_attributes& stats_layout(fe::graph::Tensor_attributes& t, const CudnnWindowShape& s) {
  return t.set_uid(kStats)
      .set_data_type(fe::DataType_t::FLOAT)
      .set_dim({1, s.heads, s.queries, 1})
      .set_stride({s.heads * s.queries, s.queries, 1, 1});
}

std::shared_ptr<fe::graph::Graph> new_graph(const CudnnWindowShape& s) {
  auto graph = std::make_shared<fe::graph::Graph>();
  graph->set_io_data_type(s.type == Storage::kFloat16 ? fe::DataType_t::HALF : fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return graph;
}

// The band aligned to the last key: right bound 0 (causal), left bound the window.
template <typename Attributes>
void set_band(Attributes& attributes, const CudnnWindowShape& s) {
  attributes.set_attn_scale(static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim))))
      .set_diagonal_alignment(fe::DiagonalAlignment_t::BOTTOM_RIGHT)
      .set_diagonal_band_right_bound(0);
  if (s.window > 0) attributes.set_diagonal_band_left_bound(static_cast<int>(s.window));
}

// The graph checked into `plan` (cuDNN's engines queried, none built), or cuDNN's reason in its
// refusal.
void check_into(Plan& plan, const std::shared_ptr<fe::graph::Graph>& graph, cudnnHandle_t handle) {
  fe::error_t status = graph->validate();
  if (status.is_good()) status = graph->build_operation_graph(handle);
  if (status.is_good()) status = graph->create_execution_plans({fe::HeurMode_t::A});
  if (status.is_good()) status = graph->check_support();
  if (status.is_good()) {
    plan.graph = graph;
  } else {
    plan.refusal = status.get_message();
  }
}

// A checked plan's kernel built, its workspace sized and, where the backward names them, its
// sequence lengths written to the device (once: a CUDA graph replays their address); or why not.
void build(Plan& plan, const CudnnWindowShape& s) {
  fe::error_t status = plan.graph->build_plans();
  if (status.is_good()) status = plan.graph->get_workspace_size(plan.workspace);
  if (!status.is_good()) {
    plan.refusal = status.get_message();
    return;
  }
  if (plan.names_lengths) {
    const int32_t lengths[2] = {static_cast<int32_t>(s.queries), static_cast<int32_t>(s.keys)};
    cudaError_t copied = cudaMalloc(&plan.lengths, sizeof(lengths));
    if (copied == cudaSuccess) copied = cudaMemcpy(plan.lengths, lengths, sizeof(lengths), cudaMemcpyHostToDevice);
    if (copied != cudaSuccess) {
      cudaFree(plan.lengths);
      cudaGetLastError();  // cleared: the next kernel's launch check must not report it
      plan.lengths = nullptr;
      plan.refusal = "sequence lengths: " + cuda_text(copied);
      return;
    }
  }
  plan.built = true;
}

struct Inputs {
  TensorRef q, k, v;
};
Inputs inputs_of(fe::graph::Graph& graph, const CudnnWindowShape& s) {
  return {rows_tensor(graph, "q", kQ, s, s.queries, s.q_row, s.q_head),
          rows_tensor(graph, "k", kK, s, s.keys, s.k_row, s.k_head),
          rows_tensor(graph, "v", kV, s, s.keys, s.v_row, s.v_head)};
}

Plan forward_plan(const CudnnWindowShape& s, cudnnHandle_t handle) {
  Plan plan;
  auto graph = new_graph(s);
  const Inputs in = inputs_of(*graph, s);
  auto options = fe::graph::SDPA_attributes().set_name("window").set_generate_stats(true);
  set_band(options, s);
  auto [out, stats] = graph->sdpa(in.q, in.k, in.v, options);
  contiguous_rows(out, kOut, s, s.queries);
  stats_layout(*stats, s).set_output(true);
  check_into(plan, graph, handle);
  return plan;
}

Plan backward_plan(const CudnnWindowShape& s, cudnnHandle_t handle) {
  Plan plan;
  auto graph = new_graph(s);
  const Inputs in = inputs_of(*graph, s);
  const int64_t packed = s.heads * s.head_dim;
  const TensorRef out = rows_tensor(*graph, "out", kOut, s, s.queries, packed, s.head_dim);
  const TensorRef grad = rows_tensor(*graph, "grad", kGrad, s, s.queries, packed, s.head_dim);
  fe::graph::Tensor_attributes stats_attributes;
  const TensorRef stats = graph->tensor(stats_layout(stats_attributes.set_name("stats"), s));
  auto options = fe::graph::SDPA_backward_attributes().set_name("window_backward");
  set_band(options, s);
  // The frontend masks keys past a count that is not a multiple of 128 on cuDNN <= 9.15 with
  // sequence lengths it copies from the host at every call, which a CUDA graph cannot replay:
  // name them here, in device memory written once (build).
  plan.names_lengths = s.keys % 128 != 0 && cudnnGetVersion() <= 91500;
  if (plan.names_lengths) {
    const auto length = [&](const char* name, Uid uid) {
      return graph->tensor(fe::graph::Tensor_attributes()
                               .set_name(name)
                               .set_uid(uid)
                               .set_dim({1, 1, 1, 1})
                               .set_stride({1, 1, 1, 1})
                               .set_data_type(fe::DataType_t::INT32));
    };
    options.set_padding_mask(true).set_seq_len_q(length("seq_q", kSeqQ)).set_seq_len_kv(length("seq_kv", kSeqKv));
  }
  auto [dq, dk, dv] = graph->sdpa_backward(in.q, in.k, in.v, out, grad, stats, options);
  contiguous_rows(dq, kDq, s, s.queries);
  contiguous_rows(dk, kDk, s, s.keys);
  contiguous_rows(dv, kDv, s, s.keys);
  check_into(plan, graph, handle);
  return plan;
}

struct Context {
  cudnnHandle_t handle = nullptr;
  const Plan* plan = nullptr;
  std::string error;  // no device, no handle
};

// The handle and the shape's plan for one pass on the current device, checked at its first use
// and built where `run` asks for a kernel to run. Plans are kept per thread, as PyTorch keeps
// its cuDNN attention's: cuDNN does not promise every engine's plans are safe to share across
// threads. So the forward's thread only checks the backward (whether autograd may take this
// path), and autograd's device thread, which runs it, builds it: one build per pass and shape.
Context context_for(const CudnnWindowShape& s, bool backward, bool run) {
  Context context;
  int device = 0;
  if (const cudaError_t status = cudaGetDevice(&device); status != cudaSuccess) {
    context.error = "cudaGetDevice: " + cuda_text(status);
    return context;
  }
  context.handle = handle_for(device, &context.error);
  if (context.handle == nullptr) return context;
  using Key = std::array<int64_t, 13>;
  thread_local auto* cache = new std::map<Key, Plans>();
  const Key key{device,   static_cast<int64_t>(s.type),
                s.heads,  s.queries,
                s.keys,   s.head_dim,
                s.window, s.q_row,
                s.q_head, s.k_row,
                s.k_head, s.v_row,
                s.v_head};
  Plans& plans = (*cache)[key];
  Plan& plan = backward ? plans.backward : plans.forward;
  if (!plan.checked) {
    if (s.type != Storage::kBFloat16 && s.type != Storage::kFloat16) {
      plan.refusal = "cuDNN's window attention takes bf16 or fp16";
    } else {
      plan = backward ? backward_plan(s, context.handle) : forward_plan(s, context.handle);
    }
    plan.checked = true;
  }
  if (run && plan.refusal.empty() && !plan.built) build(plan, s);
  context.plan = &plan;
  return context;
}

const char* executed(const Context& context, std::unordered_map<int64_t, void*>& pack, void* workspace, void* stream) {
  if (const cudnnStatus_t status = cudnnSetStream(context.handle, static_cast<cudaStream_t>(stream));
      status != CUDNN_STATUS_SUCCESS) {
    return failed(std::string("cudnnSetStream: ") + cudnnGetErrorString(status));
  }
  fe::error_t status = context.plan->graph->execute(context.handle, pack, workspace);
  return status.is_good() ? nullptr : failed("cuDNN: " + status.get_message());
}

// The context's error or refusal, where it has one.
const char* unusable(const Context& context) {
  if (!context.error.empty()) return failed(context.error);
  if (!context.plan->refusal.empty()) return failed(context.plan->refusal);
  return nullptr;
}

}  // namespace

const char* cudnn_window_refusal(const CudnnWindowShape& shape, bool backward) {
  if (const char* error = unusable(context_for(shape, false, true))) return error;
  return backward ? unusable(context_for(shape, true, false)) : nullptr;
}

int64_t cudnn_window_workspace(const CudnnWindowShape& shape, bool backward) {
  const Context context = context_for(shape, backward, true);
  return unusable(context) == nullptr ? context.plan->workspace : 0;
}

const char* cudnn_window_forward(const CudnnWindowShape& shape, const void* q, const void* k, const void* v, void* out,
                                 float* lse, void* workspace, void* stream) {
  const Context context = context_for(shape, false, true);
  if (const char* error = unusable(context)) return error;
  std::unordered_map<int64_t, void*> pack{
      {kQ, const_cast<void*>(q)}, {kK, const_cast<void*>(k)}, {kV, const_cast<void*>(v)}, {kOut, out}, {kStats, lse}};
  return executed(context, pack, workspace, stream);
}

const char* cudnn_window_backward(const CudnnWindowShape& shape, const void* q, const void* k, const void* v,
                                  const void* out, const void* grad, const float* lse, void* dq, void* dk, void* dv,
                                  void* workspace, void* stream) {
  const Context context = context_for(shape, true, true);
  if (const char* error = unusable(context)) return error;
  std::unordered_map<int64_t, void*> pack{{kQ, const_cast<void*>(q)},
                                          {kK, const_cast<void*>(k)},
                                          {kV, const_cast<void*>(v)},
                                          {kOut, const_cast<void*>(out)},
                                          {kGrad, const_cast<void*>(grad)},
                                          {kStats, const_cast<float*>(lse)},
                                          {kDq, dq},
                                          {kDk, dk},
                                          {kDv, dv}};
  if (int32_t* lengths = context.plan->lengths) pack.insert({{kSeqQ, lengths}, {kSeqKv, lengths + 1}});
  return executed(context, pack, workspace, stream);
}

}  // namespace ttt::kernels
