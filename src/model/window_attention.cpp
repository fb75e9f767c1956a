#include "model/window_attention.h"

#include <torch/autograd.h>
#include <torch/types.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/error.h"
#include "ttt_build_features.h"  // TTT_WITH_CUDA_KERNELS, TTT_WITH_CUDNN_WINDOW: what was built

#if TTT_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>

#include "kernels/window_merge.h"
#include "model/kernel_launch.h"
#endif
#if TTT_WITH_CUDNN_WINDOW
#include "kernels/cudnn_window.h"
#endif

namespace ttt {
namespace {

// One rectangle of the band, by head: q [H, Tq, d], k and v [H, Tk, d] (head_dim contiguous);
// causal: query i sees keys 0..i.
struct Part {
  torch::Tensor q, k, v;
  bool causal = false;
  bool reversed = false;  // queries and keys in reverse order
};

double scale_of(const torch::Tensor& q) { return 1.0 / std::sqrt(static_cast<double>(q.size(2))); }

[[maybe_unused]] bool cudnn_serves(const torch::Tensor& q) {  // unused before libtorch 2
  return TORCH_VERSION_MAJOR >= 2 && q.is_cuda() &&
         (q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kHalf);
}

torch::Dtype wide_dtype(const torch::Tensor& q) {
  return q.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// Plain ops: the scaled scores, -inf above the diagonal where causal.
torch::Tensor plain_scores(const Part& p) {
  const torch::Dtype wide = wide_dtype(p.q);
  torch::Tensor s = torch::matmul(p.q.to(wide), p.k.to(wide).transpose(1, 2)) * scale_of(p.q);
  if (p.causal) {
    const torch::Tensor above = torch::ones({s.size(1), s.size(2)}, s.options().dtype(torch::kBool)).triu(1);
    s = s.masked_fill(above, -INFINITY);
  }
  return s;
}

// The part's attention: its output [H, Tq, d] in q's dtype and the logsumexp [H, Tq] of its
// scaled scores (fp32, or fp64 for fp64 inputs).
std::pair<torch::Tensor, torch::Tensor> part_forward(const Part& p) {
#if TORCH_VERSION_MAJOR >= 2
  if (cudnn_serves(p.q)) {
    const auto outputs = at::_scaled_dot_product_cudnn_attention(p.q.unsqueeze(0), p.k.unsqueeze(0), p.v.unsqueeze(0),
                                                                 /*attn_bias=*/std::nullopt,
                                                                 /*compute_log_sumexp=*/true, /*dropout_p=*/0.0,
                                                                 p.causal, /*return_debug_mask=*/false);
    return {std::get<0>(outputs).squeeze(0), std::get<1>(outputs).reshape({p.q.size(0), p.q.size(1)})};
  }
#endif
  const torch::Tensor s = plain_scores(p);
  const torch::Tensor lse = torch::logsumexp(s, -1);
  const torch::Tensor out = torch::matmul((s - lse.unsqueeze(-1)).exp(), p.v.to(s.scalar_type()));
  return {out.to(p.q.scalar_type()), lse};
}

// The part's adjoints of q, k and v for the output's adjoint `grad` [H, Tq, d], given the
// merged output and logsumexp (the whole softmax's): P = exp(S - lse) is this part's share.
std::vector<torch::Tensor> part_backward(const Part& p, const torch::Tensor& grad, const torch::Tensor& out,
                                         const torch::Tensor& lse) {
#if TORCH_VERSION_MAJOR >= 2
  if (cudnn_serves(p.q)) {
    const torch::Tensor no_seed = torch::zeros({}, p.q.options().dtype(torch::kInt64));
    const auto grads = at::_scaled_dot_product_cudnn_attention_backward(
        grad.unsqueeze(0), p.q.unsqueeze(0), p.k.unsqueeze(0), p.v.unsqueeze(0), out.unsqueeze(0),
        lse.reshape({1, p.q.size(0), p.q.size(1), 1}).contiguous(), no_seed, no_seed, /*attn_bias=*/torch::Tensor(),
        /*cum_seq_q=*/torch::Tensor(), /*cum_seq_k=*/torch::Tensor(), p.q.size(1), p.k.size(1), /*dropout_p=*/0.0,
        p.causal);
    return {std::get<0>(grads).squeeze(0), std::get<1>(grads).squeeze(0), std::get<2>(grads).squeeze(0)};
  }
#endif
  const torch::Tensor s = plain_scores(p);
  const torch::Dtype wide = s.scalar_type();
  const torch::Tensor probs = (s - lse.to(wide).unsqueeze(-1)).exp();
  const torch::Tensor g = grad.to(wide);
  const torch::Tensor grad_p = torch::matmul(g, p.v.to(wide).transpose(1, 2));
  const torch::Tensor rows = (g * out.to(wide)).sum(-1, /*keepdim=*/true);
  const torch::Tensor grad_s = probs * (grad_p - rows) * scale_of(p.q);
  return {torch::matmul(grad_s, p.k.to(wide)), torch::matmul(grad_s.transpose(1, 2), p.q.to(wide)),
          torch::matmul(probs.transpose(1, 2), g)};
}

// Along the rows of [H, T, d] or [H, T] (a copy).
torch::Tensor reversed(const torch::Tensor& t) { return t.flip({1}); }

// The three parts of q, k and v by head ([H, T, d]; views where not reversed: cuDNN takes
// strides, head_dim contiguous).
std::vector<Part> parts_of(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t window) {
  const int64_t Tq = q.size(1), cache = window - 1;
  std::vector<Part> parts;
  parts.push_back({reversed(q), reversed(k.narrow(1, 0, Tq)), reversed(v.narrow(1, 0, Tq)), true, true});
  if (cache > Tq) {
    parts.push_back({q, k.narrow(1, Tq, cache - Tq), v.narrow(1, Tq, cache - Tq), false});
  }
  parts.push_back({q, k.narrow(1, cache, Tq), v.narrow(1, cache, Tq), true});
  return parts;
}

// The parts' outputs and logsumexps merged: out [Tq, H, d] in the parts' dtype, lse [H, Tq]
// in the wide dtype. One kernel on CUDA; plain ops elsewhere.
std::pair<torch::Tensor, torch::Tensor> merged(const std::vector<Part>& parts, const std::vector<torch::Tensor>& outs,
                                               const std::vector<torch::Tensor>& lses) {
  const torch::Tensor& like = outs[0];
  const int64_t H = like.size(0), Tq = like.size(1), d = like.size(2);
#if TTT_WITH_CUDA_KERNELS
  if (like.is_cuda() && like.scalar_type() != torch::kFloat32 && like.scalar_type() != torch::kFloat64) {
    std::vector<kernels::WindowPart> described;
    std::vector<torch::Tensor> held;  // contiguous logsumexps, alive through the launch
    for (size_t i = 0; i < parts.size(); ++i) {
      const torch::Tensor out = outs[i].stride(2) == 1 ? outs[i] : outs[i].contiguous();
      held.push_back(out);
      held.push_back(lses[i].to(torch::kFloat32).contiguous());
      described.push_back(
          {out.data_ptr(), out.stride(0), out.stride(1), held.back().data_ptr<float>(), parts[i].reversed});
    }
    const c10::cuda::CUDAGuard device(like.device());
    torch::Tensor out = torch::empty({Tq, H, d}, like.options());
    torch::Tensor lse = torch::empty({H, Tq}, like.options().dtype(torch::kFloat32));
    check("window_merge", kernels::window_merge(described.data(), static_cast<int>(described.size()), storage_of(like),
                                                H, Tq, d, out.data_ptr(), lse.data_ptr<float>(), stream()));
    return {out, lse};
  }
#endif
  // lse = log sum_k exp(lse_k); out = sum_k exp(lse_k - lse) out_k, in the wide dtype.
  std::vector<torch::Tensor> in_order;
  for (size_t i = 0; i < parts.size(); ++i) in_order.push_back(parts[i].reversed ? reversed(lses[i]) : lses[i]);
  const torch::Tensor lse = torch::logsumexp(torch::stack(in_order), 0);
  torch::Tensor sum = torch::zeros({H, Tq, d}, lse.options());
  for (size_t i = 0; i < parts.size(); ++i) {
    const torch::Tensor out = parts[i].reversed ? reversed(outs[i]) : outs[i];
    sum.add_(out.to(lse.scalar_type()) * (in_order[i] - lse).exp().unsqueeze(-1));
  }
  return {sum.to(like.scalar_type()).transpose(0, 1).contiguous(), lse};
}

// The span's gradients from its parts' ([H, T, d] in each part's order): of q [Tq, H, d], the
// parts' sum in the wide dtype rounded once; of k and v [Tk, H, d], the parts' rows one after
// the other. One kernel on CUDA in bf16 or fp16 (the same numbers); plain ops elsewhere.
std::vector<torch::Tensor> gathered_grads(const std::vector<Part>& parts,
                                          const std::vector<std::vector<torch::Tensor>>& grads) {
  const torch::Tensor& like = grads[0][0];
  const torch::Dtype dtype = parts[0].q.scalar_type();
  const int64_t H = like.size(0), Tq = like.size(1), d = like.size(2);
#if TTT_WITH_CUDA_KERNELS
  bool in_dtype = true;  // the parts' gradients as cuDNN hands them (not the plain ops' fp32)
  for (const auto& part : grads) {
    for (const torch::Tensor& g : part) in_dtype = in_dtype && g.scalar_type() == dtype;
  }
  if (like.is_cuda() && (dtype == torch::kBFloat16 || dtype == torch::kHalf) && in_dtype) {
    std::vector<kernels::WindowPartGrads> described;
    std::vector<torch::Tensor> held;  // head_dim contiguous, alive through the launch
    const auto rows = [&](const torch::Tensor& t) {
      held.push_back(t.stride(2) == 1 ? t : t.contiguous());
      return kernels::PartRows{held.back().data_ptr(), held.back().stride(0), held.back().stride(1)};
    };
    int64_t Tk = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      described.push_back(
          {rows(grads[i][0]), rows(grads[i][1]), rows(grads[i][2]), grads[i][1].size(1), parts[i].reversed});
      Tk += grads[i][1].size(1);
    }
    const c10::cuda::CUDAGuard device(like.device());
    const auto options = like.options().dtype(dtype);
    torch::Tensor dq = torch::empty({Tq, H, d}, options), dk = torch::empty({Tk, H, d}, options),
                  dv = torch::empty({Tk, H, d}, options);
    check("window_part_grads",
          kernels::window_part_grads(described.data(), static_cast<int>(described.size()), storage_of(dtype), H, Tq, d,
                                     dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), stream()));
    return {dq, dk, dv};
  }
#endif
  torch::Tensor grad_q = torch::zeros({H, Tq, d}, like.options().dtype(wide_dtype(parts[0].q)));
  std::vector<torch::Tensor> grad_k, grad_v;
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto flipped = [&](const torch::Tensor& t) { return parts[i].reversed ? reversed(t) : t; };
    grad_q.add_(flipped(grads[i][0]));
    grad_k.push_back(flipped(grads[i][1]));
    grad_v.push_back(flipped(grads[i][2]));
  }
  const auto joined_rows = [&](const std::vector<torch::Tensor>& g) {
    return torch::cat(g, 1).transpose(0, 1).to(dtype);  // [Tk, H, d]
  };
  return {grad_q.transpose(0, 1).to(dtype), joined_rows(grad_k), joined_rows(grad_v)};
}

class WindowAttentionByParts : public torch::autograd::Function<WindowAttentionByParts> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, int64_t window) {
    const auto heads = [](const torch::Tensor& t) { return t.transpose(0, 1); };  // views, [H, T, d]
    const std::vector<Part> parts = parts_of(heads(q), heads(k), heads(v), window);
    std::vector<torch::Tensor> outs, lses, saved;
    for (const Part& p : parts) {
      auto [out, lse] = part_forward(p);
      outs.push_back(out);
      lses.push_back(lse);
      saved.insert(saved.end(), {p.q, p.k, p.v});
    }
    auto [out, lse] = merged(parts, outs, lses);  // [Tq, H, d], [H, Tq]
    saved.insert(saved.end(), {out, lse});
    ctx->save_for_backward(saved);
    std::vector<int64_t> shape;  // per part: causal, reversed
    for (const Part& p : parts) shape.insert(shape.end(), {p.causal, p.reversed});
    ctx->saved_data["parts"] = shape;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const std::vector<int64_t> shape = ctx->saved_data["parts"].toIntVector();
    const size_t count = shape.size() / 2;
    const torch::Tensor &out = saved[3 * count], &lse = saved[3 * count + 1];
    const torch::Dtype dtype = saved[0].scalar_type();
    const auto by_head = [&](const torch::Tensor& t) { return t.transpose(0, 1).to(dtype).contiguous(); };
    const torch::Tensor grad = by_head(grads[0]), out_h = by_head(out);  // [H, Tq, d]
    std::vector<Part> parts;
    std::vector<std::vector<torch::Tensor>> part_grads;  // per part: of q, k, v, in its order
    for (size_t i = 0; i < count; ++i) {
      parts.push_back({saved[3 * i], saved[3 * i + 1], saved[3 * i + 2], shape[2 * i] != 0, shape[2 * i + 1] != 0});
      const auto flipped = [&](const torch::Tensor& t) { return parts.back().reversed ? reversed(t).contiguous() : t; };
      part_grads.push_back(part_backward(parts.back(), flipped(grad), flipped(out_h), flipped(lse)));
    }
    std::vector<torch::Tensor> gathered = gathered_grads(parts, part_grads);
    gathered.push_back(torch::Tensor());  // window
    return gathered;
  }
};

}  // namespace

bool window_attention_by_parts_serves(int64_t queries, int64_t keys, int64_t window, int64_t min_queries) {
  return window > 1 && keys == window - 1 + queries && queries >= min_queries && queries <= window - 1;
}

torch::Tensor window_attention_by_parts(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                        int64_t window) {
  require(q.dim() == 3 && k.sizes() == v.sizes() && k.dim() == 3 && q.scalar_type() == k.scalar_type() &&
              k.scalar_type() == v.scalar_type() && window_attention_by_parts_serves(q.size(0), k.size(0), window, 1),
          "internal: window_attention_by_parts needs q [Tq, H, d] and k, v [window - 1 + Tq, H, d] of one dtype");
  return WindowAttentionByParts::apply(q, k, v, window);
}

namespace {
#if TTT_WITH_CUDNN_WINDOW
kernels::CudnnWindowShape cudnn_shape(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      int64_t window) {
  return {storage_of(q), q.size(1),   q.size(0),   k.size(0),   q.size(2),   window,
          q.stride(0),   q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1)};
}

// A workspace of `bytes` on the current stream (a CUDA graph's pool while one is captured).
torch::Tensor workspace_of(int64_t bytes, const torch::Tensor& like) {
  return torch::empty({std::max<int64_t>(bytes, 1)}, like.options().dtype(torch::kUInt8));
}

// Rows cuDNN reads 16 bytes at a time: head_dim contiguous, the start and the strides of rows
// and heads in whole 16 bytes.
bool packed_rows(const torch::Tensor& t) {
  const int64_t pack = 16 / t.element_size();
  return t.stride(2) == 1 && t.stride(0) > 0 && t.stride(1) > 0 && t.stride(0) % pack == 0 && t.stride(1) % pack == 0 &&
         reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

class CudnnWindowAttention : public torch::autograd::Function<CudnnWindowAttention> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, int64_t window) {
    const kernels::CudnnWindowShape shape = cudnn_shape(q, k, v, window);
    const c10::cuda::CUDAGuard device(q.device());
    torch::Tensor out = torch::empty({q.size(0), q.size(1), q.size(2)}, q.options());
    torch::Tensor lse = torch::empty({q.size(1), q.size(0)}, q.options().dtype(torch::kFloat32));
    const torch::Tensor workspace = workspace_of(kernels::cudnn_window_workspace(shape, /*backward=*/false), q);
    check("cudnn_window_forward",
          kernels::cudnn_window_forward(shape, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                                        lse.data_ptr<float>(), workspace.data_ptr(), stream()));
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["window"] = window;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const kernels::CudnnWindowShape shape = cudnn_shape(q, k, v, ctx->saved_data["window"].toInt());
    const c10::cuda::CUDAGuard device(q.device());
    torch::Tensor grad = grads[0].to(q.scalar_type()).contiguous();
    if (!packed_rows(grad)) grad = grad.clone();  // a view at an odd offset: cuDNN reads 16 bytes at a time
    torch::Tensor dq = torch::empty(q.sizes(), q.options()), dk = torch::empty(k.sizes(), k.options()),
                  dv = torch::empty(v.sizes(), v.options());
    // The forward's refusal check only asked cuDNN for an engine; this thread builds the kernel,
    // which cuDNN may still refuse: then the error says how to run without it.
    const torch::Tensor workspace = workspace_of(kernels::cudnn_window_workspace(shape, /*backward=*/true), q);
    check("cudnn_window_backward (TTT_CUDNN_WINDOW=0 runs without it)",
          kernels::cudnn_window_backward(shape, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                                         grad.data_ptr(), lse.data_ptr<float>(), dq.data_ptr(), dk.data_ptr(),
                                         dv.data_ptr(), workspace.data_ptr(), stream()));
    return {dq, dk, dv, torch::Tensor()};
  }
};

#endif
}  // namespace

bool cudnn_window_sizes_served(int64_t queries, int64_t keys, int64_t window) {
  return window > 1 && queries > 1 && queries % 64 == 0 && keys - queries == window - 1;
}

std::string cudnn_window_attention_refusal(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                           int64_t window) {
  if (q.dim() != 3 || k.dim() != 3 || k.sizes() != v.sizes() || q.size(1) != k.size(1) || q.size(2) != k.size(2)) {
    return "operands not [T, heads, head_dim] alike";
  }
  if (!cudnn_window_sizes_served(q.size(0), k.size(0), window)) {
    return "not a span of whole blocks of 64 rows after a full window's cache";
  }
#if TTT_WITH_CUDNN_WINDOW
  if (!q.is_cuda() || !k.is_cuda() || !v.is_cuda()) return "not on CUDA";
  if ((q.scalar_type() != torch::kBFloat16 && q.scalar_type() != torch::kHalf) || k.scalar_type() != q.scalar_type() ||
      v.scalar_type() != q.scalar_type()) {
    return "not bf16 or fp16 alike";
  }
  if (!packed_rows(q) || !packed_rows(k) || !packed_rows(v)) return "rows not packed in 16 bytes";
  const c10::cuda::CUDAGuard device(q.device());
  const bool backward = torch::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  const char* refusal = kernels::cudnn_window_refusal(cudnn_shape(q, k, v, window), backward);
  return refusal == nullptr ? std::string() : std::string("cuDNN: ") + refusal;
#else
  return "built without cuDNN's frontend";
#endif
}

torch::Tensor cudnn_window_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     int64_t window) {
#if TTT_WITH_CUDNN_WINDOW
  return CudnnWindowAttention::apply(q, k, v, window);
#else
  (void)q, (void)k, (void)v, (void)window;
  throw Error("internal: cudnn_window_attention in a build without cuDNN's frontend");
#endif
}

}  // namespace ttt
