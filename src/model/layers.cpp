#include "model/layers.h"

#include <cmath>
#include <optional>

#include <torch/version.h>

#include "model/compute.h"
#include "ttt_build_features.h"  // TTT_WITH_CUDA_KERNELS: our own kernels were built

#if TTT_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/autograd.h>

#include "common/error.h"
#include "kernels/token_nll.h"
#endif

namespace ttt {
namespace {

// The dtype for numerically sensitive reductions: the input's, but never below fp32.
torch::Tensor at_least_fp32(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32);
}

#if TTT_WITH_CUDA_KERNELS
// kernels/token_nll.h as an autograd function. First order only (its backward is not
// differentiable again): the exact meta-gradient holds a ComposableKernelsGuard.
class FusedTokenNll : public torch::autograd::Function<FusedTokenNll> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& targets) {
    const c10::cuda::CUDAGuard device(logits.device());
    const torch::Tensor nll = torch::empty({logits.size(0)}, logits.options().dtype(torch::kFloat32));
    const torch::Tensor lse = torch::empty_like(nll);
    check(kernels::token_nll_forward(logits.data_ptr(), type_of(logits), targets.data_ptr<int64_t>(), logits.size(0),
                                     logits.size(1), nll.data_ptr<float>(), lse.data_ptr<float>(), stream()));
    ctx->save_for_backward({logits, targets, lse});
    return nll;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &logits = saved[0], &targets = saved[1], &lse = saved[2];
    const c10::cuda::CUDAGuard device(logits.device());
    const torch::Tensor grad_nll = grads[0].to(torch::kFloat32).contiguous();
    torch::Tensor grad = torch::empty_like(logits);
    check(kernels::token_nll_backward(logits.data_ptr(), type_of(logits), targets.data_ptr<int64_t>(),
                                      lse.data_ptr<float>(), grad_nll.data_ptr<float>(), logits.size(0),
                                      logits.size(1), grad.data_ptr(), stream()));
    return {grad, torch::Tensor()};
  }

 private:
  static kernels::LogitsType type_of(const torch::Tensor& logits) {
    switch (logits.scalar_type()) {
      case torch::kBFloat16:
        return kernels::LogitsType::kBFloat16;
      case torch::kHalf:
        return kernels::LogitsType::kFloat16;
      default:
        return kernels::LogitsType::kFloat32;
    }
  }
  static void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
  static void check(const char* error) {
    if (error != nullptr) throw Error(std::string("CUDA kernel token_nll: ") + error);
  }
};
#endif

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& gain, double eps) {
#if TORCH_VERSION_MAJOR >= 2
  // One kernel instead of six on the GPU (the same formula, accumulated in fp32).
  if (x.is_cuda() && fused_kernels_allowed()) return at::rms_norm(x, {x.size(-1)}, gain, eps);
#endif
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * gain;
}

torch::Tensor matmul_operand(const torch::Tensor& x) {
  const std::optional<torch::Dtype> dtype = matmul_dtype();
  return dtype && x.scalar_type() != torch::kFloat64 ? x.to(*dtype) : x;
}

torch::Tensor project(const torch::Tensor& x, const torch::Tensor& w, std::optional<torch::Dtype> out) {
  const torch::Dtype result = out.value_or(x.scalar_type());
  const std::optional<torch::Dtype> dtype = matmul_dtype();
  if (!dtype || result == torch::kFloat64) return torch::matmul(x, w);
  return torch::matmul(x.to(*dtype), w.to(*dtype)).to(result);
}

torch::Tensor swiglu(const torch::Tensor& x, const MlpParams& mlp) {
  const torch::Tensor operand = matmul_operand(x);  // cast once for both input projections
  return project(torch::silu(project(operand, mlp.w1, x.scalar_type())) * project(operand, mlp.w3, x.scalar_type()),
                 mlp.w2);
}

RopeTable rope_table(const torch::Tensor& positions, int64_t head_dim, double theta, torch::Dtype dtype) {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(positions.device());
  const torch::Tensor exponents = torch::arange(0, head_dim / 2, f64) * (-2.0 / static_cast<double>(head_dim));
  const torch::Tensor inv_freq = torch::pow(torch::full({}, theta, f64), exponents);               // [d/2]
  const torch::Tensor angles = positions.to(torch::kFloat64).unsqueeze(1) * inv_freq.unsqueeze(0);  // [T, d/2]
  return {angles.cos().to(dtype).unsqueeze(1), angles.sin().to(dtype).unsqueeze(1)};               // [T, 1, d/2]
}

torch::Tensor rope(const torch::Tensor& x, const RopeTable& table) {
  const int64_t T = x.size(0), H = x.size(1), d = x.size(2);
  const torch::Tensor pairs = x.reshape({T, H, d / 2, 2});
  const torch::Tensor even = pairs.select(-1, 0), odd = pairs.select(-1, 1);
  return torch::stack({even * table.cos - odd * table.sin, even * table.sin + odd * table.cos}, -1).reshape({T, H, d});
}

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& positions, double theta) {
  return rope(x, rope_table(positions, x.size(2), theta, x.scalar_type()));
}

torch::Tensor attention_mask(const torch::Tensor& query_positions, const torch::Tensor& key_positions,
                             int64_t window) {
  const torch::Tensor distance = query_positions.unsqueeze(1) - key_positions.unsqueeze(0);  // [Tq, Tk]
  torch::Tensor visible = distance >= 0;
  if (window > 0) visible = visible & (distance < window);
  return visible;
}

torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& mask) {
  const int64_t Tq = q.size(0), H = q.size(1), d = q.size(2);
  const std::optional<torch::Dtype> dtype = q.scalar_type() == torch::kFloat64 ? std::nullopt : matmul_dtype();
  const auto operand = [&](const torch::Tensor& t) { return dtype ? t.to(*dtype) : t; };
  // [H, Tq, Tk] scores, one batched GEMM over heads.
  const torch::Tensor scores = torch::matmul(operand(q).transpose(0, 1), operand(k).permute({1, 2, 0})) *
                               (1.0 / std::sqrt(static_cast<double>(d)));
  const torch::Tensor probs = torch::softmax(at_least_fp32(scores).masked_fill(mask.logical_not(), -INFINITY), -1);
  return torch::matmul(operand(probs.to(v.scalar_type())), operand(v).transpose(0, 1))
      .transpose(0, 1)
      .reshape({Tq, H * d})
      .to(q.scalar_type());
}

bool fused_attention_available(const torch::Tensor& like) {
  return TORCH_VERSION_MAJOR >= 2 && like.is_cuda() && like.scalar_type() != torch::kFloat64 &&
         fused_kernels_allowed();
}

torch::Tensor attend_span(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& query_positions, const torch::Tensor& key_positions, int64_t window) {
#if TORCH_VERSION_MAJOR >= 2
  if (fused_attention_available(q)) {
    const int64_t Tq = q.size(0), Tk = k.size(0), H = q.size(1), d = q.size(2);
    // From the sizes alone: keys are the cache (tokens just before the span) then the span.
    const bool all_visible = Tq == 1 && (window == 0 || Tk <= window);
    const bool causal_square = Tk == Tq && (window == 0 || Tq <= window);
    const torch::Dtype dtype = matmul_dtype().value_or(q.scalar_type());
    const auto merged = [&](const torch::Tensor& out) { return out.reshape({Tq, H * d}).to(q.scalar_type()); };
    const bool flash = (dtype == torch::kBFloat16 || dtype == torch::kHalf) && d % 8 == 0 && d <= 256;
    const auto heads = [&](const torch::Tensor& t) { return t.to(dtype).transpose(0, 1).unsqueeze(0); };  // [1, H, T, d]
    // A causal square (chunks, whole sequences: few shapes) goes to scaled_dot_product_attention,
    // which picks cuDNN's Hopper kernel. Not a single query: cuDNN plans a kernel per shape on
    // the host, and a decoded token's cache has a new length every time.
    if ((causal_square && Tq > 1) || (!flash && (all_visible || causal_square))) {
      return merged(at::scaled_dot_product_attention(heads(q), heads(k), heads(v), /*attn_mask=*/std::nullopt,
                                                     /*dropout_p=*/0.0, /*is_causal=*/!all_visible)
                        .squeeze(0)
                        .transpose(0, 1));
    }
    if (flash) {
      // The flash kernel's causal mask is aligned to the last key, as the layout above is,
      // and its window skips whole tiles outside the band: no mask, no wasted tiles.
      const auto batch = [&](const torch::Tensor& t) { return t.to(dtype).unsqueeze(0); };  // [1, T, H, d]
      const std::optional<int64_t> left = window > 0 ? std::optional<int64_t>(window - 1) : std::nullopt;
      const std::optional<int64_t> right = window > 0 ? std::optional<int64_t>(0) : std::nullopt;
      const auto outputs = at::_flash_attention_forward(batch(q), batch(k), batch(v), std::nullopt, std::nullopt, Tq, Tk,
                                                        /*dropout_p=*/0.0, /*is_causal=*/true,
                                                        /*return_debug_mask=*/false, /*scale=*/std::nullopt, left, right);
      return merged(std::get<0>(outputs).squeeze(0));
    }
    return merged(at::scaled_dot_product_attention(heads(q), heads(k), heads(v),
                                                   attention_mask(query_positions, key_positions, window))
                      .squeeze(0)
                      .transpose(0, 1));
  }
#endif
  return attend(q, k, v, attention_mask(query_positions, key_positions, window));
}

torch::Tensor token_nll(const torch::Tensor& logits, const torch::Tensor& targets) {
#if TTT_WITH_CUDA_KERNELS
  // One read of the logits in their dtype, no [T, V] intermediates (the composable form
  // below casts bf16 logits to fp32 first, then writes fp32 log-probabilities).
  const torch::Dtype type = logits.scalar_type();
  if (logits.is_cuda() && fused_kernels_allowed() && logits.dim() == 2 &&
      (type == torch::kBFloat16 || type == torch::kHalf || type == torch::kFloat32)) {
    return FusedTokenNll::apply(logits.contiguous(), targets.to(torch::kInt64).contiguous());
  }
#endif
  const torch::Dtype dtype = logits.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const torch::Tensor log_probs = torch::log_softmax(logits, -1, dtype);
  return -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1);
}

torch::Tensor masked_mean_loss(const torch::Tensor& nll, const torch::Tensor& targets, int64_t bos_id) {
  const torch::Tensor valid = (targets != bos_id).to(nll.scalar_type());
  return (nll * valid).sum() / valid.sum().clamp_min(1e-10);
}

}  // namespace ttt
