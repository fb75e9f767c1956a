#include "model/layers.h"

#include <torch/autograd.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "common/error.h"
#include "model/compute.h"
#include "model/window_attention.h"
#include "ttt_build_features.h"  // TTT_WITH_CUDA_KERNELS: our own kernels were built

#if TTT_WITH_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/attention_probs.h"
#include "kernels/decode_attention.h"
#include "kernels/norm_rope.h"
#include "kernels/rms_norm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "kernels/token_nll.h"
#include "model/kernel_launch.h"
#endif

namespace ttt {
namespace {

// RMSNorm, y = x r gain with r = rsqrt(mean(x^2) + eps), as autograd functions whose backward
// and backward's backward are written out: the exact meta-gradient differentiates norms twice,
// and autograd's generic double backward of the composed ops takes several times the
// operations. Our kernels on CUDA (kernels/rms_norm.h), plain ops elsewhere and from the
// third order on (MLX's rule: fused, and composable where it must be). Arithmetic in at
// least fp32; results in their inputs' dtypes.

// The quantities the written-out formulas share, in r's dtype (fp32 or fp64).
struct RmsNormTerms {
  torch::Tensor x, gain, dy, r, c, a, s;  // c = r^3 / D, a = gain * dy, s = <a, x> per row
  RmsNormTerms(const torch::Tensor& x_in, const torch::Tensor& gain_in, const torch::Tensor& dy_in,
               const torch::Tensor& rstd)
      : r(rstd) {
    const torch::Dtype wide = rstd.scalar_type();
    x = x_in.to(wide);
    gain = gain_in.to(wide);
    dy = dy_in.to(wide);
    c = r.pow(3) / static_cast<double>(x.size(-1));
    a = gain * dy;
    s = (a * x).sum(-1, /*keepdim=*/true);
  }
  torch::Tensor over_rows(const torch::Tensor& t) const { return t.reshape({-1, x.size(-1)}).sum(0); }
};

#if TTT_WITH_CUDA_KERNELS
// The dtypes our kernels read and write: fp32 and bf16.
bool kernel_dtype(torch::Dtype d) { return d == torch::kFloat32 || d == torch::kBFloat16; }

// Where our kernels take the norm: fp32 or bf16 x and y (or dy) on CUDA, an fp32 gain.
bool rms_norm_kernels_serve(const torch::Tensor& x, const torch::Tensor& gain, torch::Dtype y_dtype) {
  return x.is_cuda() && kernel_dtype(x.scalar_type()) && kernel_dtype(y_dtype) &&
         gain.scalar_type() == torch::kFloat32 && gain.is_contiguous();
}
#endif

// RMSNorm's backward as a function of its own: dx = r a - c s x and, where with_gain, the
// gain's gradient sum_rows dy x r. rstd is r of the forward pass, a value: its dependence on x
// is in the formulas of the backward below.
class RmsNormGradient : public torch::autograd::Function<RmsNormGradient> {
 public:
  // The second output without with_gain (libtorch 1.13 refuses an undefined one).
  static torch::Tensor no_gain_gradient(const torch::Tensor& gain) { return gain.new_empty({0}); }

  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                                                const torch::Tensor& gain, const torch::Tensor& grad_y,
                                                const torch::Tensor& rstd, double eps, bool with_gain) {
    ctx->save_for_backward({x, gain, grad_y, rstd});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["with_gain"] = with_gain;
    ctx->set_materialize_grads(false);  // an undefined adjoint is a zero one: no zeros made
#if TTT_WITH_CUDA_KERNELS
    if (rms_norm_kernels_serve(x, gain, grad_y.scalar_type())) {
      const c10::cuda::CUDAGuard device(x.device());
      const int64_t dim = x.size(-1), rows = x.numel() / std::max<int64_t>(dim, 1);
      const torch::Tensor x_c = x.contiguous(), grad_y_c = grad_y.contiguous();
      torch::Tensor dx = torch::empty_like(x_c), partials;
      if (with_gain) partials = torch::empty({kernels::rms_norm_chunks(rows), dim}, rstd.options());
      check("rms_norm",
            kernels::rms_norm_backward(x_c.data_ptr(), storage_of(x), gain.data_ptr<float>(), rstd.data_ptr<float>(),
                                       grad_y_c.data_ptr(), storage_of(grad_y), rows, dim, dx.data_ptr(),
                                       with_gain ? partials.data_ptr<float>() : nullptr, stream()));
      return {dx, with_gain ? partials.sum(0) : no_gain_gradient(gain)};
    }
#endif
    const RmsNormTerms t(x, gain, grad_y, rstd);
    return {(t.r * t.a - t.c * t.s * t.x).to(x.scalar_type()),
            with_gain ? t.over_rows(t.dy * t.x * t.r).to(gain.scalar_type()) : no_gain_gradient(gain)};
  }

  // With u and w the adjoints of dx and of the gain's gradient, U = <u, a>, X = <u, x> and
  // W = <w dy, x>:
  //   d/d dy = gain (r u - c X x) + r w x,  d/d gain = sum over rows of dy (r u - c X x),
  //   d/dx = x (3 r^5 s X / D^2 - c U - c W) - c (X a + s u) + r w dy.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &gain = saved[1], &grad_y = saved[2], &rstd = saved[3];
    const torch::Tensor u = grads[0].defined() ? grads[0].to(x.scalar_type()).contiguous() : torch::Tensor();
    const torch::Tensor w = grads[1].defined() && ctx->saved_data["with_gain"].toBool()
                                ? grads[1].to(gain.scalar_type()).contiguous()
                                : torch::Tensor();
    torch::autograd::variable_list result(6);
    if (!u.defined() && !w.defined()) return result;
    const bool want_x = ctx->needs_input_grad(0), want_gain = ctx->needs_input_grad(1) && u.defined(),
               want_dy = ctx->needs_input_grad(2);
#if TTT_WITH_CUDA_KERNELS
    // Not while autograd records (a third order): the kernels' results have no backward.
    if (!torch::GradMode::is_enabled() && rms_norm_kernels_serve(x, gain, grad_y.scalar_type())) {
      const c10::cuda::CUDAGuard device(x.device());
      const int64_t dim = x.size(-1), rows = x.numel() / std::max<int64_t>(dim, 1);
      const torch::Tensor x_c = x.contiguous(), grad_y_c = grad_y.contiguous();
      torch::Tensor partials, x_coefficient;
      if (want_x) result[0] = torch::empty_like(x_c);
      if (want_dy) result[2] = torch::empty_like(grad_y_c);
      if (want_gain) {
        partials = torch::empty({kernels::rms_norm_chunks(rows), dim}, rstd.options());
        x_coefficient = torch::empty({rows}, rstd.options());
      }
      check("rms_norm",
            kernels::rms_norm_double_backward(
                x_c.data_ptr(), storage_of(x), gain.data_ptr<float>(), rstd.data_ptr<float>(), grad_y_c.data_ptr(),
                storage_of(grad_y), data_or_null(u), static_cast<const float*>(data_or_null(w)), rows, dim,
                data_or_null(result[0]), data_or_null(result[2]), static_cast<float*>(data_or_null(partials)),
                static_cast<float*>(data_or_null(x_coefficient)), stream()));
      if (want_gain) result[1] = partials.sum(0);
      return result;
    }
#endif
    // Plain ops; while autograd records, r recomputed from x, so that these differentiate again.
    const torch::Tensor r = torch::GradMode::is_enabled()
                                ? torch::rsqrt(x.to(rstd.scalar_type()).pow(2).mean(-1, /*keepdim=*/true) +
                                               ctx->saved_data["eps"].toDouble())
                                : rstd;
    const RmsNormTerms t(x, gain, grad_y, r);
    const torch::Tensor uu = u.defined() ? u.to(t.x.scalar_type()) : torch::zeros_like(t.x);
    const torch::Tensor ww = w.defined() ? w.to(t.x.scalar_type()) : torch::zeros_like(t.gain);
    const torch::Tensor U = (uu * t.a).sum(-1, /*keepdim=*/true), X = (uu * t.x).sum(-1, /*keepdim=*/true);
    const torch::Tensor W = (ww * t.dy * t.x).sum(-1, /*keepdim=*/true);
    const torch::Tensor shared = t.r * uu - t.c * X * t.x;
    const double D = static_cast<double>(x.size(-1));
    if (want_x) {
      result[0] = (t.x * (3.0 / (D * D) * t.r.pow(5) * t.s * X - t.c * U - t.c * W) - t.c * (X * t.a + t.s * uu) +
                   t.r * ww * t.dy)
                      .to(x.scalar_type());
    }
    if (want_gain) result[1] = t.over_rows(t.dy * shared).to(gain.scalar_type());
    if (want_dy) result[2] = (t.gain * shared + t.r * ww * t.x).to(grad_y.scalar_type());
    return result;
  }
};

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& gain,
                               double eps, int64_t out_dtype) {
    const auto y_dtype = static_cast<torch::Dtype>(out_dtype);
    torch::Tensor y, rstd;
#if TTT_WITH_CUDA_KERNELS
    if (rms_norm_kernels_serve(x, gain, y_dtype)) {
      const c10::cuda::CUDAGuard device(x.device());
      const int64_t dim = x.size(-1), rows = x.numel() / std::max<int64_t>(dim, 1);
      std::vector<int64_t> rstd_sizes = x.sizes().vec();
      rstd_sizes.back() = 1;
      y = torch::empty(x.sizes(), x.options().dtype(y_dtype));
      rstd = torch::empty(rstd_sizes, x.options().dtype(torch::kFloat32));
      check("rms_norm",
            kernels::rms_norm_forward(x.contiguous().data_ptr(), storage_of(x), gain.data_ptr<float>(), rows, dim, eps,
                                      y.data_ptr(), storage_of(y_dtype), rstd.data_ptr<float>(), stream()));
    }
#endif
    if (!y.defined()) {
      const torch::Tensor wide = x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32);
      rstd = torch::rsqrt(wide.pow(2).mean(-1, /*keepdim=*/true) + eps);
      y = (wide * rstd * gain).to(y_dtype);
    }
    ctx->save_for_backward({x, gain});
    ctx->saved_data["rstd"] = rstd;  // an intermediate (never the output): kept as data
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::autograd::variable_list dx_dgain =
        RmsNormGradient::apply(saved[0], saved[1], grads[0], ctx->saved_data["rstd"].toTensor(),
                               ctx->saved_data["eps"].toDouble(), ctx->needs_input_grad(1));
    return {dx_dgain[0], ctx->needs_input_grad(1) ? dx_dgain[1] : torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// The layouts attention's products take: [T, H, d] as [H, T, d] in `dtype` (a view where no
// cast is needed: GEMMs take the strides, and transposes as flags), and back.
torch::Tensor by_head(const torch::Tensor& t, torch::Dtype dtype) { return t.to(dtype).transpose(0, 1); }
torch::Tensor merged_heads(const torch::Tensor& heads) {  // [H, Tq, d] -> [Tq, H * d]
  return heads.transpose(0, 1).reshape({heads.size(1), heads.size(0) * heads.size(2)});
}

double attention_scale(const torch::Tensor& q) { return 1.0 / std::sqrt(static_cast<double>(q.size(2))); }

// The forward's matmul dtype (MatmulDtypeGuard: thread-local) kept for the backward: autograd
// runs a CUDA graph's backward on its own device thread, where the guard does not reach.
void save_matmul_dtype(torch::autograd::AutogradContext* ctx) {
  ctx->saved_data["matmul_dtype"] = matmul_dtype() ? static_cast<int64_t>(*matmul_dtype()) : int64_t{-1};
}
MatmulDtypeGuard forwards_matmul_dtype(torch::autograd::AutogradContext* ctx) {
  const int64_t saved = ctx->saved_data["matmul_dtype"].toInt();
  return MatmulDtypeGuard(saved < 0 ? std::nullopt : std::optional<torch::Dtype>(static_cast<torch::Dtype>(saved)));
}

// q as the scores take it: scaled first (it is smaller than the scores), in the matmul dtype
// (matmul_dtype_for), by head.
torch::Tensor scaled_queries(const torch::Tensor& q) { return by_head(q * attention_scale(q), matmul_dtype_for(q)); }

// The two products every attention form takes, in the matmul dtype: [H, Tq, Tk] scores of q
// against k, and the heads mixed from the probabilities and v, merged to [Tq, H * d].
torch::Tensor attention_scores(const torch::Tensor& q, const torch::Tensor& k) {
  return torch::matmul(scaled_queries(q), by_head(k, matmul_dtype_for(q)).transpose(1, 2));
}
torch::Tensor attention_mix(const torch::Tensor& probs, const torch::Tensor& v, const torch::Tensor& q) {
  const torch::Dtype dtype = matmul_dtype_for(q);
  return merged_heads(torch::matmul(probs.to(dtype), by_head(v, dtype)));
}

// The dtype of attention's softmax: fp64 for the reference, fp32 otherwise.
torch::Dtype softmax_dtype_for(const torch::Tensor& q) {
  return q.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// attend for attend_span's layout a block of queries at a time, over only the keys the block
// sees (consecutive positions: query i is key Tk - Tq + i). Each block's scores and
// probabilities live while that block is computed, in the forward pass and again, recomputed,
// in the backward pass, which is written out and first order: attend keeps [H, Tq, Tk]
// probabilities for autograd, a quadratic memory in the sequence for full attention's prefix
// spans.
class BlockedAttention : public torch::autograd::Function<BlockedAttention> {
 public:
  // Queries [first, first + rows) and the keys [start, start + count) they may see.
  struct Block {
    int64_t first, rows, start, count;
    torch::Tensor q, k, v, probs;  // the block's slices, and its probabilities [H, rows, count]
  };

  // Calls `visit` on every block of `block_queries` queries, its probabilities computed.
  static void for_each_block(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& query_positions, const torch::Tensor& key_positions, int64_t window,
                             int64_t block_queries, const std::function<void(const Block&)>& visit) {
    const int64_t Tq = q.size(0), cached = k.size(0) - Tq;
    for (int64_t first = 0; first < Tq; first += block_queries) {
      Block b;
      b.first = first;
      b.rows = std::min(block_queries, Tq - first);
      const int64_t end = cached + first + b.rows;  // one past the block's last query's own key
      b.start = window > 0 ? std::max<int64_t>(0, cached + first - window + 1) : 0;
      b.count = end - b.start;
      b.q = q.narrow(0, first, b.rows);
      b.k = k.narrow(0, b.start, b.count);
      b.v = v.narrow(0, b.start, b.count);
      // Every row sees the keys from the band's far edge for the last row to the first row's
      // own key: the mask is built for the columns outside those alone.
      const int64_t own = cached + first;  // the first query's own key
      const int64_t seen_by_all = (window > 0 ? std::max(b.start, own + b.rows - window) : b.start) - b.start;
      const int64_t seen_by_all_end = std::max(seen_by_all, own + 1 - b.start);
      torch::Tensor scores = attention_scores(b.q, b.k).to(softmax_dtype_for(q));  // [H, rows, count]
      const auto mask_columns = [&](int64_t from, int64_t to) {
        if (to <= from) return;
        const torch::Tensor hidden = attention_mask(query_positions.narrow(0, first, b.rows),
                                                    key_positions.narrow(0, b.start + from, to - from), window)
                                         .logical_not();
        scores.narrow(2, from, to - from).masked_fill_(hidden, -INFINITY);
      };
      mask_columns(0, seen_by_all);
      mask_columns(seen_by_all_end, b.count);
      b.probs = torch::softmax(scores, -1);
      visit(b);
    }
  }

  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& query_positions,
                               const torch::Tensor& key_positions, int64_t window, int64_t block_queries) {
    std::vector<torch::Tensor> outputs;
    for_each_block(q, k, v, query_positions, key_positions, window, block_queries,
                   [&](const Block& b) { outputs.push_back(attention_mix(b.probs, b.v, b.q)); });
    ctx->save_for_backward({q, k, v});
    ctx->saved_data["query_positions"] = query_positions;
    ctx->saved_data["key_positions"] = key_positions;
    ctx->saved_data["window"] = window;
    ctx->saved_data["block_queries"] = block_queries;
    save_matmul_dtype(ctx);
    return outputs.size() == 1 ? outputs[0] : torch::cat(outputs);
  }

  // With P a block's probabilities and dO its output's adjoint per head: dV = P^T dO,
  // dS = P (dP - rowsum(dP P)) for dP = dO V^T, dq = dS K / sqrt(d), dK = dS^T q / sqrt(d);
  // in the softmax's dtype, keys' and values' adjoints summed over the blocks that see them.
  // Plain ops, none in place on what autograd saves: where a caller differentiates again
  // anyway (forward_span's default order under an exact inner step), autograd records them.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const MatmulDtypeGuard precision = forwards_matmul_dtype(ctx);
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &q = saved[0], &k = saved[1], &v = saved[2];
    const int64_t H = q.size(1), d = q.size(2);
    const double scale = attention_scale(q);
    const auto wide = q.options().dtype(softmax_dtype_for(q));
    const auto heads = [&](const torch::Tensor& t) { return by_head(t, softmax_dtype_for(q)); };  // [H, T, d]
    torch::Tensor grad_q = torch::empty(q.sizes(), wide), grad_k = torch::zeros(k.sizes(), wide),
                  grad_v = torch::zeros(v.sizes(), wide);
    const torch::Tensor grad_out = grads[0];
    for_each_block(
        q, k, v, ctx->saved_data["query_positions"].toTensor(), ctx->saved_data["key_positions"].toTensor(),
        ctx->saved_data["window"].toInt(), ctx->saved_data["block_queries"].toInt(), [&](const Block& b) {
          const torch::Tensor grad_o = heads(grad_out.narrow(0, b.first, b.rows).reshape({b.rows, H, d}));
          grad_v.narrow(0, b.start, b.count).add_(torch::matmul(b.probs.transpose(1, 2), grad_o).transpose(0, 1));
          const torch::Tensor grad_p = torch::matmul(grad_o, heads(b.v).transpose(1, 2));
          const torch::Tensor grad_s = (grad_p - (grad_p * b.probs).sum(-1, /*keepdim=*/true)) * b.probs;
          grad_q.narrow(0, b.first, b.rows).copy_((torch::matmul(grad_s, heads(b.k)) * scale).transpose(0, 1));
          grad_k.narrow(0, b.start, b.count)
              .add_((torch::matmul(grad_s.transpose(1, 2), heads(b.q)) * scale).transpose(0, 1));
        });
    return {grad_q.to(q.scalar_type()),
            grad_k.to(k.scalar_type()),
            grad_v.to(v.scalar_type()),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor()};
  }
};

#if TTT_WITH_CUDA_KERNELS
// kernels/token_nll.h as autograd functions. The backward is a function of its own
// (FusedTokenNllGradient), differentiable once more: the exact meta-gradient differentiates
// the inner gradient's graph, which holds it, again (MLX's rule: fused, and composable with
// autograd where it must be).
// grad_nll * (softmax(logits) - onehot(targets)), and its own backward.
class FusedTokenNllGradient : public torch::autograd::Function<FusedTokenNllGradient> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& targets, const torch::Tensor& lse, const torch::Tensor& grad_nll) {
    const c10::cuda::CUDAGuard device(logits.device());
    torch::Tensor grad = torch::empty_like(logits);
    check("token_nll", kernels::token_nll_backward(logits.data_ptr(), storage_of(logits), targets.data_ptr<int64_t>(),
                                                   lse.data_ptr<float>(), grad_nll.data_ptr<float>(), logits.size(0),
                                                   logits.size(1), grad.data_ptr(), stream()));
    ctx->save_for_backward({logits, targets, lse, grad_nll});
    return grad;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &logits = saved[0], &targets = saved[1], &lse = saved[2], &grad_nll = saved[3];
    const c10::cuda::CUDAGuard device(logits.device());
    const torch::Tensor adjoint = grads[0].to(logits.scalar_type()).contiguous();
    torch::Tensor grad_logits = torch::empty_like(logits);
    torch::Tensor grad_scale = torch::empty_like(grad_nll);
    check("token_nll", kernels::token_nll_double_backward(
                           logits.data_ptr(), storage_of(logits), targets.data_ptr<int64_t>(), lse.data_ptr<float>(),
                           grad_nll.data_ptr<float>(), adjoint.data_ptr(), /*outer_grad_nll=*/nullptr, logits.size(0),
                           logits.size(1), grad_logits.data_ptr(), /*first_order_grad=*/nullptr,
                           grad_scale.data_ptr<float>(), stream()));
    return {grad_logits, torch::Tensor(), torch::Tensor(), grad_scale};
  }
};

class FusedTokenNll : public torch::autograd::Function<FusedTokenNll> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& targets) {
    const c10::cuda::CUDAGuard device(logits.device());
    const torch::Tensor nll = torch::empty({logits.size(0)}, logits.options().dtype(torch::kFloat32));
    const torch::Tensor lse = torch::empty_like(nll);
    check("token_nll",
          kernels::token_nll_forward(logits.data_ptr(), storage_of(logits), targets.data_ptr<int64_t>(), logits.size(0),
                                     logits.size(1), nll.data_ptr<float>(), lse.data_ptr<float>(), stream()));
    ctx->save_for_backward({logits, targets, lse});
    return nll;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor grad_nll = grads[0].to(torch::kFloat32).contiguous();
    return {FusedTokenNllGradient::apply(saved[0], saved[1], saved[2], grad_nll), torch::Tensor()};
  }
};

// head_loss's fused form (layers.h): the logits' GEMM, their NLL, the inner loss's logits
// gradient (weights * (softmax - onehot)) and its product with the head, as one function whose
// backward takes the adjoints of nll (the outer loss's) and of hidden_grad (the exact
// meta-gradient's) together. With u = a head (a: hidden_grad's adjoint), the logits' gradient
// is outer * (p - onehot) + weights * p * (u - <p, u>), one kernel pass rounded once, and the
// head's gradient is normed^T of it plus a^T times the inner logits gradient (written by that
// pass, not kept from the forward: [T, V] less a chunk's graph holds, 256 MB at 1K rows of a
// 128K vocabulary). GEMMs as autograd's chain of the composable form takes them, six a chunk.
struct FusedHead {
  torch::Tensor nll, hidden_grad, logits, lse;
};
FusedHead fused_head_forward(const torch::Tensor& normed, const torch::Tensor& head, const torch::Tensor& targets,
                             const torch::Tensor& weights) {
  const c10::cuda::CUDAGuard device(normed.device());
  FusedHead out;
  out.logits = torch::mm(normed, head);
  const int64_t rows = out.logits.size(0), vocab = out.logits.size(1);
  out.nll = torch::empty({rows}, normed.options().dtype(torch::kFloat32));
  out.lse = torch::empty_like(out.nll);
  check("head_loss",
        kernels::token_nll_forward(out.logits.data_ptr(), storage_of(out.logits), targets.data_ptr<int64_t>(), rows,
                                   vocab, out.nll.data_ptr<float>(), out.lse.data_ptr<float>(), stream()));
  torch::Tensor inner = torch::empty_like(out.logits);
  check("head_loss", kernels::token_nll_backward(out.logits.data_ptr(), storage_of(out.logits),
                                                 targets.data_ptr<int64_t>(), out.lse.data_ptr<float>(),
                                                 weights.data_ptr<float>(), rows, vocab, inner.data_ptr(), stream()));
  out.hidden_grad = torch::mm(inner, head.t());
  return out;
}

class FusedHeadLoss : public torch::autograd::Function<FusedHeadLoss> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& normed,
                                                const torch::Tensor& head, const torch::Tensor& targets,
                                                const torch::Tensor& weights) {
    const FusedHead out = fused_head_forward(normed, head, targets, weights);
    // The logits and their logsumexp saved too (intermediates): released after the backward.
    ctx->save_for_backward({normed, head, targets, weights, out.logits, out.lse});
    ctx->set_materialize_grads(false);  // an undefined adjoint is a zero one
    return {out.nll, out.hidden_grad};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list result(4);
    const torch::Tensor &grad_nll = grads[0], &a = grads[1];
    const bool want_normed = ctx->needs_input_grad(0), want_head = ctx->needs_input_grad(1);
    if ((!grad_nll.defined() && !a.defined()) || (!want_normed && !want_head)) return result;
    require(!torch::GradMode::is_enabled(), "internal: head_loss's fused backward is not differentiable again");
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &normed = saved[0], &head = saved[1], &targets = saved[2], &weights = saved[3],
                        &logits = saved[4], &lse = saved[5];
    const c10::cuda::CUDAGuard device(normed.device());
    const int64_t rows = logits.size(0), vocab = logits.size(1);
    const torch::Tensor outer = grad_nll.defined() ? grad_nll.to(torch::kFloat32).contiguous() : torch::Tensor();
    const torch::Tensor adjoint = a.defined() ? a.to(logits.scalar_type()).contiguous() : torch::Tensor();
    torch::Tensor grad_logits = torch::empty_like(logits), inner;
    if (adjoint.defined()) {
      const torch::Tensor u = torch::mm(adjoint, head).contiguous();
      if (want_head) inner = torch::empty_like(logits);
      check("head_loss", kernels::token_nll_double_backward(
                             logits.data_ptr(), storage_of(logits), targets.data_ptr<int64_t>(), lse.data_ptr<float>(),
                             weights.data_ptr<float>(), u.data_ptr(),
                             outer.defined() ? outer.data_ptr<float>() : nullptr, rows, vocab, grad_logits.data_ptr(),
                             inner.defined() ? inner.data_ptr() : nullptr, /*grad_scale=*/nullptr, stream()));
    } else {
      check("head_loss", kernels::token_nll_backward(logits.data_ptr(), storage_of(logits), targets.data_ptr<int64_t>(),
                                                     lse.data_ptr<float>(), outer.data_ptr<float>(), rows, vocab,
                                                     grad_logits.data_ptr(), stream()));
    }
    if (want_normed) result[0] = torch::mm(grad_logits, head.t());
    if (want_head) {
      // In the head's own layout (a tied embedding's transpose is column-major), as autograd's
      // matmul backward gives it: the sinks then add a contiguous gradient.
      if (head.stride(0) == 1 && head.stride(1) != 1) {
        torch::Tensor transposed = torch::mm(grad_logits.t(), normed);
        if (adjoint.defined()) transposed.addmm_(inner.t(), adjoint);
        result[1] = transposed.t();
      } else {
        torch::Tensor grad_head = torch::mm(normed.t(), grad_logits);
        if (adjoint.defined()) grad_head.addmm_(adjoint.t(), inner);
        result[1] = grad_head;
      }
    }
    return result;
  }
};

// kernels/rope.h as an autograd function: a rotation, whose backward is the inverse rotation
// (this function again), so it is differentiable any number of times.
class FusedRope : public torch::autograd::Function<FusedRope> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin, bool inverse) {
    const c10::cuda::CUDAGuard device(x.device());
    torch::Tensor y = torch::empty_like(x);
    check("rope", kernels::rope_forward(x.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), x.size(0),
                                        x.size(1), x.size(2), inverse, y.data_ptr<float>(), stream()));
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["inverse"] = inverse;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const bool inverse = ctx->saved_data["inverse"].toBool();
    return {FusedRope::apply(grads[0].contiguous(), saved[0], saved[1], !inverse), torch::Tensor(), torch::Tensor(),
            torch::Tensor()};
  }
};

#endif

// attend for attend_span's layout (the cached keys, then the span's) as autograd functions
// whose backward and that backward's own backward are written out: the exact meta-gradient
// differentiates the fast-weight blocks' attention twice, and autograd's generic formulas for
// the composed products take ~40 passes over [H, Tq, Tk] tensors, several of them strided.
// Here every [H, Tq, Tk] tensor is contiguous, the products are GEMMs (transposes as their
// flags), and the row-wise work between them is our kernels (kernels/attention_probs.h) on
// CUDA in fp32 or bf16; plain ops with the same formulas elsewhere and while autograd records
// (a third order). The band comes from the layout: query i sees key j iff
// 0 <= i + (Tk - Tq) - j < window (window 0: causal). Per head, with P the probabilities, dO
// the output's adjoint and s = 1/sqrt(d):
//   backward: dP = dO V^T, D = rowsum(P dP), dS = P (dP - D), dQ = s dS K, dK = s dS^T Q,
//             dV = P^T dO;
//   its backward, given the adjoints a_Q, a_K, a_V of dQ, dK, dV (undefined: zero):
//     G = s (a_Q K^T + Q a_K^T) (the adjoint of dS), A = dO a_V^T (of P through dV),
//     E = rowsum(P G), dP' = P (G - E), G_P = A + G (dP - D) - E dP, F = rowsum(P G_P),
//     S' = P (G_P - F), and then
//     g_q = s (S' K + dS a_K), g_k = s (S'^T Q + dS^T a_Q), g_v = dP'^T dO, g_dO = dP' V + P a_V.

#if TTT_WITH_CUDA_KERNELS
// Where our kernels take the row-wise work: fp32 or bf16 on CUDA, and not while autograd
// records (their results have no backward).
bool attention_kernels_serve(const torch::Tensor& t) {
  return t.is_cuda() && kernel_dtype(t.scalar_type()) && !torch::GradMode::is_enabled();
}
#endif

// The probabilities under the band [H, Tq, Tk]: `narrow` in the scores' dtype (what the
// products read), and `wide`, themselves in the softmax's dtype, where plain ops made them;
// where our kernels made them (wide undefined) the kernels take every row-wise step from
// `narrow` (the scores are not kept: with bf16 products the backward reads the probabilities
// rounded to bf16, as the products do).
struct BandedProbs {
  torch::Tensor narrow, wide;
  int64_t window = 0;
};

// P in the softmax's dtype for plain ops. Kernel-made probabilities never reach them: the
// kernels take every row-wise step of the probabilities they made (same device and dtype, and
// while autograd records the backward remakes them with plain ops).
const torch::Tensor& wide_probs(const BandedProbs& p) {
  require(p.wide.defined(), "internal: probabilities our kernels made, on the plain ops' path");
  return p.wide;
}

BandedProbs banded_probs(const torch::Tensor& scores, int64_t window) {  // scores [H, Tq, Tk], contiguous
  const int64_t Tq = scores.size(1), Tk = scores.size(2);
#if TTT_WITH_CUDA_KERNELS
  if (attention_kernels_serve(scores)) {
    const c10::cuda::CUDAGuard device(scores.device());
    const torch::Tensor rows = scores.contiguous();  // a GEMM's output already: no copy
    const torch::Tensor probs = torch::empty_like(rows);
    check("attention_probs", kernels::attention_probs_forward(rows.data_ptr(), storage_of(rows), rows.size(0), Tq, Tk,
                                                              window, /*lse=*/nullptr, probs.data_ptr(), stream()));
    return {probs, torch::Tensor(), window};
  }
#endif
  const torch::Tensor keys = torch::arange(Tk, scores.options().dtype(torch::kInt64));
  const torch::Tensor mask = attention_mask(keys.narrow(0, Tk - Tq, Tq), keys, window);
  const torch::Tensor wide = torch::softmax(scores + attention_bias(mask, scores), -1);
  return {wide.to(scores.scalar_type()), wide, window};
}

// The probabilities' backward given their adjoint dP [H, Tq, Tk] (in the matmul dtype):
// D = rowsum(P dP) [H, Tq, 1] in the softmax's dtype, dS = P (dP - D) in dP's.
struct ProbsBackward {
  torch::Tensor grad_probs, dots, grad_scores;
};

#if TTT_WITH_CUDA_KERNELS
// Whether the kernels take the row-wise work of `p` with `t` (the other operand).
bool probs_kernels_serve(const BandedProbs& p, const torch::Tensor& t) {
  return attention_kernels_serve(t) && !p.wide.defined() && p.narrow.scalar_type() == t.scalar_type();
}
#endif

ProbsBackward probs_backward(const BandedProbs& p, const torch::Tensor& grad_probs) {
#if TTT_WITH_CUDA_KERNELS
  if (probs_kernels_serve(p, grad_probs)) {
    const c10::cuda::CUDAGuard device(grad_probs.device());
    const int64_t H = grad_probs.size(0), Tq = grad_probs.size(1), keys = grad_probs.size(2);
    const ProbsBackward b{grad_probs.contiguous(),
                          torch::empty({H, Tq, 1}, grad_probs.options().dtype(torch::kFloat32)),
                          torch::empty_like(grad_probs, at::MemoryFormat::Contiguous)};
    check("attention_probs", kernels::attention_probs_backward(
                                 p.narrow.data_ptr(), b.grad_probs.data_ptr(), storage_of(grad_probs), H * Tq, keys,
                                 b.grad_scores.data_ptr(), b.dots.data_ptr<float>(), stream()));
    return b;
  }
#endif
  const torch::Tensor& wide = wide_probs(p);
  const torch::Tensor dots = (wide * grad_probs).sum(-1, /*keepdim=*/true);
  return {grad_probs, dots, (wide * (grad_probs - dots)).to(grad_probs.scalar_type())};
}

// The row-wise part of the double backward (see above): dP' and S' in dP's dtype from the
// adjoints G of dS and A of P, either undefined (zero; not both); dP' is undefined with G.
std::pair<torch::Tensor, torch::Tensor> probs_double_backward(const BandedProbs& p, const ProbsBackward& b,
                                                              const torch::Tensor& grad_of_grad_scores,
                                                              const torch::Tensor& grad_of_probs) {
  const torch::Tensor &G = grad_of_grad_scores, &A = grad_of_probs;
  const torch::Dtype dtype = b.grad_probs.scalar_type();
#if TTT_WITH_CUDA_KERNELS
  if (probs_kernels_serve(p, b.grad_probs)) {
    const c10::cuda::CUDAGuard device(b.grad_probs.device());
    const int64_t H = b.grad_probs.size(0), Tq = b.grad_probs.size(1), keys = b.grad_probs.size(2);
    const torch::Tensor of_grad_probs = G.defined() ? torch::empty_like(b.grad_probs) : torch::Tensor();
    const torch::Tensor of_scores = torch::empty_like(b.grad_probs);
    const auto rows_of = [](const torch::Tensor& t) { return t.defined() ? t.contiguous() : t; };  // GEMMs': no copy
    const torch::Tensor G_rows = rows_of(G), A_rows = rows_of(A);
    check("attention_probs", kernels::attention_probs_double_backward(
                                 p.narrow.data_ptr(), b.grad_probs.data_ptr(), b.dots.data_ptr<float>(),
                                 data_or_null(G_rows), data_or_null(A_rows), storage_of(dtype), H * Tq, keys,
                                 data_or_null(of_grad_probs), of_scores.data_ptr(), stream()));
    return {of_grad_probs, of_scores};
  }
#endif
  const torch::Tensor& wide = wide_probs(p);
  torch::Tensor of_grad_probs, of_probs = A;  // dP', G_P
  if (G.defined()) {
    const torch::Tensor E = (wide * G).sum(-1, /*keepdim=*/true);
    of_grad_probs = (wide * (G - E)).to(dtype);
    const torch::Tensor through_grad_scores = G * (b.grad_probs - b.dots) - E * b.grad_probs;
    of_probs = A.defined() ? A + through_grad_scores : through_grad_scores;
  }
  const torch::Tensor F = (wide * of_probs).sum(-1, /*keepdim=*/true);
  return {of_grad_probs, (wide * (of_probs - F)).to(dtype)};
}

// BandedProbs kept in an autograd context as data (never an output); undefined ones too.
void save_probs(torch::autograd::AutogradContext* ctx, const BandedProbs& p) {
  ctx->saved_data["probs"] = p.narrow;
  ctx->saved_data["probs_wide"] = p.wide;
  ctx->saved_data["window"] = p.window;
}
BandedProbs saved_probs(torch::autograd::AutogradContext* ctx) {
  const auto tensor = [&](const char* name) { return ctx->saved_data[name].toTensor(); };
  return {tensor("probs"), tensor("probs_wide"), ctx->saved_data["window"].toInt()};
}

// The adjoint of the merged output [Tq, H * d] by head, in the matmul dtype; and gradients of
// q and k (or v) from theirs by head in the matmul dtype, back through the casts (and q's
// scaling) in their own dtypes.
torch::Tensor output_by_head(const torch::Tensor& grad_out, const torch::Tensor& q) {
  return by_head(grad_out.reshape(q.sizes()), matmul_dtype_for(q));
}
torch::Tensor query_gradient(const torch::Tensor& heads, const torch::Tensor& q) {
  return heads.transpose(0, 1).to(q.scalar_type()) * attention_scale(q);
}
torch::Tensor key_gradient(const torch::Tensor& heads, const torch::Tensor& k) {
  return heads.transpose(0, 1).to(k.scalar_type());
}

// sum + a b (batched products), or sum where b is undefined.
torch::Tensor plus_product(const torch::Tensor& sum, const torch::Tensor& a, const torch::Tensor& b) {
  return b.defined() ? torch::baddbmm(sum, a, b) : sum;
}

// The columns of keys `from` on of an [H, Tq, Tk] term (a view).
torch::Tensor key_columns(const torch::Tensor& t, int64_t from) {
  return from == 0 ? t : t.narrow(2, from, t.size(2) - from);
}

// The keys and values the banded attention attends over, [pad zeros | cache | span's own]
// ([pad + S + Tk, H, d]), as data made once outside the graph (the scan's cache joined them
// already); the graph's inputs are the parts. `pad` leading zero keys make the count a
// multiple of 8 (see attend_banded).
struct JoinedKeys {
  torch::Tensor keys, values;
  int64_t pad = 0;
};

// n zero rows shaped like t's.
torch::Tensor zero_rows(int64_t n, const torch::Tensor& t) {
  std::vector<int64_t> sizes = t.sizes().vec();
  sizes[0] = n;
  return torch::zeros(sizes, t.options());
}

// The parts joined again while autograd records (a third order reaches both parts).
torch::Tensor recorded_rows(int64_t pad, const torch::Tensor& cached, const torch::Tensor& span) {
  return torch::cat({zero_rows(pad, span), cached, span});
}

// attend's backward as a function of q, the keys and values in two parts (the cache's, then
// the span's own, as BandedAttention takes them) and the output's adjoint dO, given the
// forward's probabilities (values: their dependence on q and k is in the formulas of the
// backward). Returns dQ, and dK, dV of the joined rows from `key_from` on (those whose
// gradient is asked for: an inner gradient asks none of the cache's), in the inputs' dtypes.
class BandedAttentionGrad : public torch::autograd::Function<BandedAttentionGrad> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q,
                                                const torch::Tensor& cached_k, const torch::Tensor& cached_v,
                                                const torch::Tensor& k, const torch::Tensor& v,
                                                const torch::Tensor& grad_out, const BandedProbs& p,
                                                const JoinedKeys& joined, int64_t key_from) {
    const torch::Dtype dtype = matmul_dtype_for(q);
    const torch::Tensor grad_o = output_by_head(grad_out, q);
    const ProbsBackward b = probs_backward(p, torch::matmul(grad_o, by_head(joined.values, dtype).transpose(1, 2)));
    ctx->save_for_backward({q, cached_k, cached_v, k, v, grad_out});
    // Intermediates and inputs outside the graph, never an output: kept as data.
    save_probs(ctx, p);
    ctx->saved_data["grad_probs"] = b.grad_probs;
    ctx->saved_data["dots"] = b.dots;
    ctx->saved_data["grad_scores"] = b.grad_scores;
    ctx->saved_data["keys"] = joined.keys;
    ctx->saved_data["values"] = joined.values;
    ctx->saved_data["pad"] = joined.pad;
    ctx->saved_data["key_from"] = key_from;
    save_matmul_dtype(ctx);
    ctx->set_materialize_grads(false);  // an undefined adjoint is a zero one: no zeros made
    const auto asked = [&](const torch::Tensor& t) { return key_columns(t, key_from); };
    return {query_gradient(torch::matmul(b.grad_scores, by_head(joined.keys, dtype)), q),
            key_gradient(torch::matmul(asked(b.grad_scores).transpose(1, 2), scaled_queries(q)), k),
            key_gradient(torch::matmul(asked(p.narrow).transpose(1, 2), grad_o), v)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list result(9);
    if (!grads[0].defined() && !grads[1].defined() && !grads[2].defined()) return result;
    const MatmulDtypeGuard precision = forwards_matmul_dtype(ctx);
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &q = saved[0], &cached_k = saved[1], &cached_v = saved[2], &k = saved[3], &v = saved[4],
                        &grad_out = saved[5];
    const int64_t pad = ctx->saved_data["pad"].toInt(), cached = cached_k.size(0),
                  key_from = ctx->saved_data["key_from"].toInt();
    const bool recording = torch::GradMode::is_enabled();
    const torch::Tensor keys = recording ? recorded_rows(pad, cached_k, k) : ctx->saved_data["keys"].toTensor();
    const torch::Tensor values = recording ? recorded_rows(pad, cached_v, v) : ctx->saved_data["values"].toTensor();
    const torch::Dtype dtype = matmul_dtype_for(q);
    const auto asked = [&](const torch::Tensor& t) { return key_columns(t, key_from); };
    const torch::Tensor qs = scaled_queries(q), kh = by_head(keys, dtype), vh = by_head(values, dtype);
    const torch::Tensor grad_o = output_by_head(grad_out, q);
    // The forward's terms; while autograd records (a third order) recomputed from q, k, v and
    // dO, so that the formulas below differentiate again.
    BandedProbs p = saved_probs(ctx);
    ProbsBackward b{ctx->saved_data["grad_probs"].toTensor(), ctx->saved_data["dots"].toTensor(),
                    ctx->saved_data["grad_scores"].toTensor()};
    if (recording) {
      p = banded_probs(attention_scores(q, keys), p.window);
      b = probs_backward(p, torch::matmul(grad_o, vh.transpose(1, 2)));
    }
    // The adjoints by head in the matmul dtype (dQ's through its scaling), and G = [s a_Q | Q]
    // [K | a_K]^T as one product over the concatenated inner dimension.
    const auto adjoint = [&](const torch::Tensor& t, double scale) {
      return t.defined() ? by_head(t * scale, dtype) : torch::Tensor();
    };
    const torch::Tensor a_q = adjoint(grads[0], attention_scale(q)), a_k = adjoint(grads[1], 1.0),
                        a_v = adjoint(grads[2], 1.0);
    // The adjoints of dK and dV over every key (zero before key_from), where a product needs
    // them so: [H, key_from, d] zeros, small beside the [H, Tq, Tk] products they enter.
    const auto all_keys = [&](const torch::Tensor& rows) {
      if (!rows.defined() || key_from == 0) return rows;
      std::vector<int64_t> shape = rows.sizes().vec();
      shape[1] = key_from;
      return torch::cat({torch::zeros(shape, rows.options()), rows}, 1);
    };
    std::vector<torch::Tensor> left, right;
    if (a_q.defined()) {
      left.push_back(a_q);
      right.push_back(kh);
    }
    if (a_k.defined()) {
      left.push_back(qs);
      right.push_back(all_keys(a_k));
    }
    const auto concatenated = [](const std::vector<torch::Tensor>& parts) {
      return parts.size() == 1 ? parts[0] : torch::cat(parts, -1);
    };
    const torch::Tensor grad_of_grad_scores =
        left.empty() ? torch::Tensor() : torch::matmul(concatenated(left), concatenated(right).transpose(1, 2));
    const torch::Tensor grad_of_probs =
        a_v.defined() ? torch::matmul(grad_o, all_keys(a_v).transpose(1, 2)) : torch::Tensor();
    const auto [grad_of_grad_probs, grad_of_scores] = probs_double_backward(p, b, grad_of_grad_scores, grad_of_probs);
    if (ctx->needs_input_grad(0)) {
      result[0] = query_gradient(plus_product(torch::matmul(grad_of_scores, kh), asked(b.grad_scores), a_k), q);
    }
    // The joined rows' gradients, handed to the parts they came from (the pad's dropped).
    const auto to_parts = [&](const torch::Tensor& joined_grad, size_t first) {
      result[first] = joined_grad.narrow(0, pad, cached);
      result[first + 2] = joined_grad.narrow(0, pad + cached, k.size(0));
    };
    if (ctx->needs_input_grad(1) || ctx->needs_input_grad(3)) {
      const torch::Tensor of_keys =
          plus_product(torch::matmul(grad_of_scores.transpose(1, 2), qs), b.grad_scores.transpose(1, 2), a_q);
      to_parts(key_gradient(of_keys, k), 1);
    }
    if ((ctx->needs_input_grad(2) || ctx->needs_input_grad(4)) && grad_of_grad_probs.defined()) {
      to_parts(key_gradient(torch::matmul(grad_of_grad_probs.transpose(1, 2), grad_o), v), 2);
    }
    if (ctx->needs_input_grad(5)) {
      const torch::Tensor of_grad_o = grad_of_grad_probs.defined()
                                          ? plus_product(torch::matmul(grad_of_grad_probs, vh), asked(p.narrow), a_v)
                                          : torch::matmul(asked(p.narrow), a_v);  // a_v is defined then
      result[5] = merged_heads(of_grad_o).to(grad_out.scalar_type());
    }
    return result;
  }
};

// The attention itself over keys and values given in two parts, those before the span's (the
// cache) and the span's own, as separate inputs: its backward is BandedAttentionGrad's forward,
// which computes the cache rows' dK and dV only where they are asked for (an inner gradient,
// taken with respect to fast weights the cache does not depend on, asks none: 8 of 9 keys
// at a full window with chunks of 1024).
class BandedAttention : public torch::autograd::Function<BandedAttention> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q,
                               const torch::Tensor& cached_k, const torch::Tensor& cached_v, const torch::Tensor& k,
                               const torch::Tensor& v, const JoinedKeys& joined, int64_t window) {
    const BandedProbs p = banded_probs(attention_scores(q, joined.keys), window);
    ctx->save_for_backward({q, cached_k, cached_v, k, v});
    save_probs(ctx, p);  // intermediates (never the output): kept as data
    ctx->saved_data["keys"] = joined.keys;
    ctx->saved_data["values"] = joined.values;
    ctx->saved_data["pad"] = joined.pad;
    save_matmul_dtype(ctx);
    ctx->set_materialize_grads(false);
    return attention_mix(p.narrow, joined.values, q);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list result(7);
    if (!grads[0].defined()) return result;
    const MatmulDtypeGuard precision = forwards_matmul_dtype(ctx);
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &cached_k = saved[1], &k = saved[3];
    const JoinedKeys joined{ctx->saved_data["keys"].toTensor(), ctx->saved_data["values"].toTensor(),
                            ctx->saved_data["pad"].toInt()};
    const int64_t cached = cached_k.size(0);
    const bool cache_asked = ctx->needs_input_grad(1) || ctx->needs_input_grad(2);
    const int64_t key_from = cache_asked ? 0 : joined.pad + cached;
    const torch::autograd::variable_list grad = BandedAttentionGrad::apply(
        saved[0], cached_k, saved[2], k, saved[4], grads[0], saved_probs(ctx), joined, key_from);
    result[0] = grad[0];
    for (const size_t i : {1, 2}) {  // dK, dV of the joined rows from key_from on
      if (cache_asked) result[i] = grad[i].narrow(0, joined.pad, cached);
      result[i + 2] = grad[i].narrow(0, joined.pad + cached - key_from, k.size(0));
    }
    return result;
  }
};

// attend for attend_span's layout, with the band computed from it instead of a mask. Same
// numbers as attend. k and v are every key and value the queries attend over (the cache's
// rows, then the span's); `parts`, where given, the two tensors they were joined from, which
// become BandedAttention's separate inputs (without, the cache is taken as empty and k and v
// as the span's own).
torch::Tensor attend_banded(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t window,
                            const SpanKeys* parts) {
  const bool split = parts != nullptr && parts->keys.defined() && parts->cached_keys.defined() &&
                     parts->cached_keys.size(0) + parts->keys.size(0) == k.size(0);
  // cuBLAS takes its slow unaligned kernels (2-3x, a fifth of a 32K training step) unless the
  // keys' count, the scores' row stride, is a multiple of 8; a full window's cache has
  // window - 1 keys. Leading zero keys pad it: behind a full window they lie outside every
  // query's band (the band ends window - 1 keys before a query's own), so nothing changes.
  const int64_t pad_to_8 = (8 - k.size(0) % 8) % 8;
  const int64_t pad = window > 0 && k.size(0) - q.size(0) >= window - 1 ? pad_to_8 : 0;
  const auto joined_data = [pad](const torch::Tensor& t) {
    return pad == 0 ? t.detach() : torch::cat({zero_rows(pad, t), t.detach()});
  };
  const JoinedKeys joined{joined_data(k), joined_data(v), pad};
  if (!split) return BandedAttention::apply(q, zero_rows(0, k), zero_rows(0, v), k, v, joined, window);
  return BandedAttention::apply(q, parts->cached_keys, parts->cached_values, parts->keys, parts->values, joined,
                                window);
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& gain, double eps, std::optional<torch::Dtype> out) {
  return RmsNormFunction::apply(x, gain, eps, static_cast<int64_t>(out.value_or(x.scalar_type())));
}

torch::Tensor add_rms_norm(const torch::Tensor& h, const torch::Tensor& x, const torch::Tensor& gain, double eps) {
#if TTT_WITH_CUDA_KERNELS
  if (!torch::GradMode::is_enabled() && h.scalar_type() == torch::kFloat32 && h.sizes() == x.sizes() &&
      rms_norm_kernels_serve(x, gain, torch::kFloat32)) {
    const c10::cuda::CUDAGuard device(x.device());
    const int64_t dim = x.size(-1), rows = x.numel() / std::max<int64_t>(dim, 1);
    const torch::Tensor residual = h.contiguous();
    torch::Tensor y = torch::empty_like(residual);
    check("rms_norm",
          kernels::rms_norm_add_forward(residual.data_ptr<float>(), x.contiguous().data_ptr(), storage_of(x),
                                        gain.data_ptr<float>(), rows, dim, eps, y.data_ptr<float>(), stream()));
    return y;
  }
#endif
  return h + rms_norm(x, gain, eps, h.scalar_type());
}

torch::Dtype matmul_dtype_for(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : matmul_dtype().value_or(x.scalar_type());
}

torch::Tensor matmul_operand(const torch::Tensor& x) { return x.to(matmul_dtype_for(x)); }

torch::Tensor project(const torch::Tensor& x, const torch::Tensor& w, std::optional<torch::Dtype> out) {
  const torch::Dtype result = out.value_or(x.scalar_type());
  const std::optional<torch::Dtype> dtype = matmul_dtype();
  if (!dtype || result == torch::kFloat64) return torch::matmul(x, w);
  return torch::matmul(x.to(*dtype), w.to(*dtype)).to(result);
}

namespace {
// SwiGLU's gate silu(a) * b (kernels/swiglu.h) as autograd functions: the value in a's dtype
// from fp32 arithmetic (fp64 for fp64), and a backward that is an autograd function too, with
// its own backward written out, so the gate differentiates any number of times. Our kernels
// on CUDA in fp32 or bf16 while autograd does not record (a third order); plain ops with the
// same formulas elsewhere. With s = sigmoid(a), f = silu, f' = s (1 + a (1 - s)):
//   backward: da = dy b f'(a), db = dy f(a);
//   its backward, given adjoints u of da and v of db: with f'' = s (1 - s) (2 + a (1 - 2 s)),
//     g_a = u dy b f''(a) + v dy f'(a), g_b = u dy f'(a), g_dy = u b f'(a) + v f(a).
#if TTT_WITH_CUDA_KERNELS
bool gate_kernels_serve(const torch::Tensor& a) {
  return a.is_cuda() && kernel_dtype(a.scalar_type()) && !torch::GradMode::is_enabled();
}
#endif

torch::Tensor widened(const torch::Tensor& t) { return t.to(softmax_dtype_for(t)); }
// f'(x) = s (1 + x (1 - s)) for s = sigmoid(x), as the plain paths below write it.
torch::Tensor silu_slope(const torch::Tensor& x, const torch::Tensor& s) { return s * (1 + x * (1 - s)); }

class SwigluGateGradient : public torch::autograd::Function<SwigluGateGradient> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a,
                                                const torch::Tensor& b, const torch::Tensor& dy) {
    require(dy.scalar_type() == a.scalar_type(), "internal: the gate's adjoint in its inputs' dtype");
    ctx->save_for_backward({a, b, dy});
    ctx->set_materialize_grads(false);  // an undefined adjoint is a zero one
#if TTT_WITH_CUDA_KERNELS
    if (gate_kernels_serve(a)) {
      const c10::cuda::CUDAGuard device(a.device());
      torch::Tensor da = torch::empty_like(a), db = torch::empty_like(b);
      check("swiglu", kernels::swiglu_gate_backward(a.data_ptr(), b.data_ptr(), dy.data_ptr(), storage_of(a), a.numel(),
                                                    da.data_ptr(), db.data_ptr(), stream()));
      return {da, db};
    }
#endif
    const torch::Tensor x = widened(a), w = widened(b), g = widened(dy), sig = torch::sigmoid(x);
    return {(g * w * silu_slope(x, sig)).to(a.scalar_type()), (g * (x * sig)).to(b.scalar_type())};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::Tensor &u = grads[0], &v = grads[1];
    if (!u.defined() && !v.defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &a = saved[0], &b = saved[1], &dy = saved[2];
#if TTT_WITH_CUDA_KERNELS
    if (gate_kernels_serve(a)) {
      const c10::cuda::CUDAGuard device(a.device());
      const auto operand = [&](const torch::Tensor& t) { return t.defined() ? t.to(a.scalar_type()).contiguous() : t; };
      const torch::Tensor u_rows = operand(u), v_rows = operand(v);
      torch::Tensor ga = torch::empty_like(a), gb = torch::empty_like(b), gdy = torch::empty_like(dy);
      check("swiglu", kernels::swiglu_gate_double_backward(
                          a.data_ptr(), b.data_ptr(), dy.data_ptr(), data_or_null(u_rows), data_or_null(v_rows),
                          storage_of(a), a.numel(), ga.data_ptr(), gb.data_ptr(), gdy.data_ptr(), stream()));
      return {ga, u.defined() ? gb : torch::Tensor(), gdy};  // b's is u's alone, as below
    }
#endif
    // Plain ops, differentiable while autograd records (a third order).
    const torch::Tensor x = widened(a), w = widened(b), g = widened(dy), sig = torch::sigmoid(x);
    const torch::Tensor f1 = silu_slope(x, sig);
    torch::Tensor ga, gb, gdy;
    if (u.defined()) {
      const torch::Tensor uw = widened(u);
      ga = uw * g * w * (sig * (1 - sig) * (2 + x * (1 - 2 * sig)));
      gb = uw * g * f1;
      gdy = uw * w * f1;
    }
    if (v.defined()) {
      const torch::Tensor vw = widened(v);
      ga = ga.defined() ? ga + vw * g * f1 : vw * g * f1;
      gdy = gdy.defined() ? gdy + vw * (x * sig) : vw * (x * sig);
    }
    const auto in = [](const torch::Tensor& t, const torch::Tensor& like) {
      return t.defined() ? t.to(like.scalar_type()) : t;
    };
    return {in(ga, a), in(gb, b), in(gdy, dy)};
  }
};

class SwigluGate : public torch::autograd::Function<SwigluGate> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a, const torch::Tensor& b) {
    ctx->save_for_backward({a, b});
#if TTT_WITH_CUDA_KERNELS
    if (gate_kernels_serve(a)) {
      const c10::cuda::CUDAGuard device(a.device());
      torch::Tensor y = torch::empty_like(a);
      check("swiglu",
            kernels::swiglu_gate_forward(a.data_ptr(), b.data_ptr(), storage_of(a), a.numel(), y.data_ptr(), stream()));
      return y;
    }
#endif
    return (torch::silu(widened(a)) * widened(b)).to(a.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &a = saved[0], &b = saved[1];
    return SwigluGateGradient::apply(a, b, grads[0].to(a.scalar_type()).contiguous());
  }
};
}  // namespace

torch::Tensor swiglu_gate(const torch::Tensor& a, const torch::Tensor& b) {
  require(a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && a.device() == b.device(),
          "internal: swiglu_gate takes two tensors of one shape, dtype and device");
  return SwigluGate::apply(a.contiguous(), b.contiguous());
}

torch::Tensor swiglu(const torch::Tensor& x, const MlpParams& mlp, std::optional<torch::Dtype> hidden,
                     std::optional<torch::Dtype> out) {
  const torch::Dtype inner = hidden.value_or(x.scalar_type());
  const torch::Tensor operand = matmul_operand(x);  // cast once for both input projections
  // A single row (a decoded token) with w1 and w3 side by side (params.h): one matmul, whose
  // halves are contiguous.
  const torch::Tensor joint = x.dim() == 2 && x.size(0) == 1 ? joint_columns({mlp.w1, mlp.w3}) : torch::Tensor();
  const auto inputs = [&](torch::Dtype dtype) -> std::pair<torch::Tensor, torch::Tensor> {
    if (!joint.defined()) return {project(operand, mlp.w1, dtype), project(operand, mlp.w3, dtype)};
    const torch::Tensor both = project(operand, joint, dtype);
    const int64_t width = mlp.w1.size(1);
    return {both.narrow(1, 0, width), both.narrow(1, width, width)};
  };
  // The gate in one kernel on the products as they are (kernels/swiglu.h), where the product
  // is fp32 and the products fp32 or bf16 on CUDA: the same numbers as the plain ops below
  // (the products widen exactly, the product rounds once to the next matmul's dtype).
#if TTT_WITH_CUDA_KERNELS
  const torch::Dtype narrow = operand.scalar_type();
  if (x.is_cuda() && inner == torch::kFloat32 && kernel_dtype(narrow)) {
    const auto [a, b] = inputs(narrow);
    return project(swiglu_gate(a, b), mlp.w2, out.value_or(inner));
  }
#endif
  const auto [a, b] = inputs(inner);
  return project(torch::silu(a) * b, mlp.w2, out.value_or(inner));
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
#if TTT_WITH_CUDA_KERNELS
  // One kernel instead of seven, with the same numbers (kernels/rope.h).
  if (x.is_cuda() && x.scalar_type() == torch::kFloat32 && table.cos.scalar_type() == torch::kFloat32) {
    const torch::Tensor input = x.contiguous();
    if (reinterpret_cast<uintptr_t>(input.data_ptr()) % 8 == 0) {
      return FusedRope::apply(input, table.cos.contiguous(), table.sin.contiguous(), false);
    }
  }
#endif
  const torch::Tensor pairs = x.reshape({T, H, d / 2, 2});
  const torch::Tensor even = pairs.select(-1, 0), odd = pairs.select(-1, 1);
  return torch::stack({even * table.cos - odd * table.sin, even * table.sin + odd * table.cos}, -1).reshape({T, H, d});
}

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& positions, double theta) {
  return rope(x, rope_table(positions, x.size(2), theta, x.scalar_type()));
}

std::pair<torch::Tensor, torch::Tensor> normed_rotated_qk(const torch::Tensor& q, const torch::Tensor& k,
                                                          const torch::Tensor& q_gain, const torch::Tensor& k_gain,
                                                          double eps, const RopeTable& table, torch::Dtype q_dtype,
                                                          torch::Dtype k_dtype) {
#if TTT_WITH_CUDA_KERNELS
  const auto gain_served = [&](const torch::Tensor& g) {
    return !g.defined() || (g.scalar_type() == torch::kFloat32 && g.is_contiguous() && g.is_cuda());
  };
  if (!torch::GradMode::is_enabled() && q.is_cuda() && q.sizes() == k.sizes() && q.size(2) % 2 == 0 &&
      kernel_dtype(q.scalar_type()) && kernel_dtype(k.scalar_type()) && kernel_dtype(q_dtype) &&
      kernel_dtype(k_dtype) && q_gain.defined() == k_gain.defined() && gain_served(q_gain) && gain_served(k_gain) &&
      table.cos.scalar_type() == torch::kFloat32) {
    const c10::cuda::CUDAGuard device(q.device());
    const torch::Tensor q_in = q.contiguous(), k_in = k.contiguous();
    const torch::Tensor cos = table.cos.contiguous(), sin = table.sin.contiguous();
    torch::Tensor q_out = torch::empty(q.sizes(), q.options().dtype(q_dtype));
    torch::Tensor k_out = torch::empty(k.sizes(), k.options().dtype(k_dtype));
    const auto gain = [](const torch::Tensor& g) { return g.defined() ? g.data_ptr<float>() : nullptr; };
    check("norm_rope", kernels::norm_rope_forward(
                           {q_in.data_ptr(), storage_of(q_in), gain(q_gain), q_out.data_ptr(), storage_of(q_out)},
                           {k_in.data_ptr(), storage_of(k_in), gain(k_gain), k_out.data_ptr(), storage_of(k_out)},
                           cos.data_ptr<float>(), sin.data_ptr<float>(), q.size(0), q.size(1), q.size(2),
                           static_cast<float>(eps), stream()));
    return {q_out, k_out};
  }
#endif
  const torch::Dtype rotated = table.cos.scalar_type();  // the residual stream's
  const auto prepared = [&](const torch::Tensor& x, const torch::Tensor& gain, torch::Dtype out) {
    const torch::Tensor normed = gain.defined() ? rms_norm(x, gain, eps, rotated) : x.to(rotated);
    return rope(normed, table).to(out);
  };
  return {prepared(q, q_gain, q_dtype), prepared(k, k_gain, k_dtype)};
}

torch::Tensor attention_mask(const torch::Tensor& query_positions, const torch::Tensor& key_positions,
                             int64_t window) {
  const torch::Tensor distance = query_positions.unsqueeze(1) - key_positions.unsqueeze(0);  // [Tq, Tk]
  torch::Tensor visible = distance >= 0;
  if (window > 0) visible = visible & (distance < window);
  return visible;
}

torch::Tensor attention_bias(const torch::Tensor& mask, const torch::Tensor& q) {
  // An additive bias (0 or -inf) in the softmax's dtype: one pass over the scores, which also
  // lifts bf16 ones to fp32, and a backward that passes the gradient through.
  return torch::zeros(mask.sizes(), q.options().dtype(softmax_dtype_for(q)))
      .masked_fill_(mask.logical_not(), -INFINITY);
}

torch::Tensor attend_with_bias(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& bias) {
  return attention_mix(torch::softmax(attention_scores(q, k) + bias, -1), v, q);
}

torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& mask) {
  return attend_with_bias(q, k, v, attention_bias(mask, q));
}

torch::Tensor attend_by_query_blocks(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const torch::Tensor& query_positions, const torch::Tensor& key_positions,
                                     int64_t window, int64_t block_queries) {
  return BlockedAttention::apply(q, k, v, query_positions, key_positions, window, block_queries);
}

bool fused_attention_available(const torch::Tensor& like) {
  return TORCH_VERSION_MAJOR >= 2 && like.is_cuda() && like.scalar_type() != torch::kFloat64;
}

namespace {
// A comparison switch: on unless the variable `name` is 0.
[[maybe_unused]] bool switched_on(const char* name) {  // unused before libtorch 2
  const char* setting = std::getenv(name);
  return setting == nullptr || std::string(setting) != "0";
}
// Spans of fewer queries stay on FA2's window: cuDNN's parts pay from about 2048 queries
// (bench/attention_by_parts.py). TTT_WINDOW_BY_PARTS=0 keeps FA2 everywhere (comparisons).
constexpr int64_t kWindowByPartsMinQueries = 2048;
[[maybe_unused]] bool window_attention_by_parts_enabled() {
  static const bool enabled = switched_on("TTT_WINDOW_BY_PARTS");
  return enabled;
}
// TTT_CUDNN_WINDOW=0 keeps spans off cuDNN's band (comparisons).
[[maybe_unused]] bool cudnn_window_enabled() {
  static const bool enabled = switched_on("TTT_CUDNN_WINDOW");
  return enabled;
}
}  // namespace

torch::Tensor attend_span(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& query_positions, const torch::Tensor& key_positions, int64_t window,
                          Order order, const SpanKeys* parts) {
#if TORCH_VERSION_MAJOR >= 2
  if (order == Order::kFirst && fused_attention_available(q)) {
    const int64_t Tq = q.size(0), Tk = k.size(0), H = q.size(1), d = q.size(2);
    // From the sizes alone: keys are the cache (tokens just before the span) then the span.
    const bool all_visible = Tq == 1 && (window == 0 || Tk <= window);
    const bool causal_square = Tk == Tq && (window == 0 || Tq <= window);
    const torch::Dtype dtype = matmul_dtype().value_or(q.scalar_type());
    const auto merged = [&](const torch::Tensor& out) { return out.reshape({Tq, H * d}); };  // in `dtype`
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
    const torch::Tensor qd = q.to(dtype), kd = k.to(dtype), vd = v.to(dtype);
    // A span of whole blocks after a full window's cache (evaluation's chunks, the prefix's
    // spans): cuDNN's kernel with its own band, which skips the tiles outside it.
    if (flash && cudnn_window_enabled()) {
      if (cudnn_window_attention_refusal(qd, kd, vd, window).empty()) {
        return merged(cudnn_window_attention(qd, kd, vd, window));
      }
    }
    // A span after a full window cache (the prefix's spans): cuDNN's kernel by parts. A span
    // longer than the window by blocks of window - 1 queries, each after the keys it sees: two
    // causal squares a block (its cache is as long as it), in the fewest calls (evaluation's
    // 16K spans: 5% faster at 32K than blocks of 4096, BENCHMARKS).
    if (flash && window_attention_by_parts_enabled() && window - 1 >= kWindowByPartsMinQueries) {
      if (window_attention_by_parts_serves(Tq, Tk, window, kWindowByPartsMinQueries)) {
        return merged(window_attention_by_parts(qd, kd, vd, window));
      }
      if (Tq > window - 1) {
        const int64_t block = window - 1, cached = Tk - Tq;
        std::vector<torch::Tensor> blocks;
        for (int64_t first = 0; first < Tq; first += block) {
          const int64_t rows = std::min(block, Tq - first), end = cached + first + rows;
          const int64_t start = std::max<int64_t>(0, cached + first - (window - 1));
          blocks.push_back(attend_span(qd.narrow(0, first, rows), kd.narrow(0, start, end - start),
                                       vd.narrow(0, start, end - start), query_positions.narrow(0, first, rows),
                                       key_positions.narrow(0, start, end - start), window, order));
        }
        return torch::cat(blocks);
      }
    }
    if (flash) {
      // The flash kernel's causal mask is aligned to the last key, as the layout above is,
      // and its window skips whole tiles outside the band: no mask, no wasted tiles.
      const auto batch = [&](const torch::Tensor& t) { return t.unsqueeze(0); };  // [1, T, H, d]
      const std::optional<int64_t> left = window > 0 ? std::optional<int64_t>(window - 1) : std::nullopt;
      const std::optional<int64_t> right = window > 0 ? std::optional<int64_t>(0) : std::nullopt;
      const auto outputs =
          at::_flash_attention_forward(batch(qd), batch(kd), batch(vd), std::nullopt, std::nullopt, Tq, Tk,
                                       /*dropout_p=*/0.0, /*is_causal=*/true,
                                       /*return_debug_mask=*/false, /*scale=*/std::nullopt, left, right);
      return merged(std::get<0>(outputs).squeeze(0));
    }
    return merged(at::scaled_dot_product_attention(heads(qd), heads(kd), heads(vd),
                                                   attention_mask(query_positions, key_positions, window))
                      .squeeze(0)
                      .transpose(0, 1));
  }
#endif
  // Once differentiated on the CPU: by blocks of queries, whose memory does not grow with the
  // span's keys times its queries (full attention's prefix spans in the training gradient).
  if (order == Order::kFirst && !q.is_cuda()) {
    // Blocks whose scores take about 2^18 elements (1 MiB in fp32), whatever the keys' count,
    // of at least 32 queries (fewer cost time: 64 chunks of bench/train_memory.sh took 1.4x with 16).
    const int64_t keys = window > 0 ? std::min(k.size(0), window) : k.size(0);
    const int64_t block_queries = std::max<int64_t>(32, (int64_t{1} << 18) / std::max<int64_t>(1, q.size(1) * keys));
    return attend_by_query_blocks(q, k, v, query_positions, key_positions, window, block_queries);
  }
  // Differentiable twice, with its backward and double backward written out (on CUDA the
  // row-wise work in our kernels).
  return attend_banded(q, k, v, window, parts);
}

namespace {
// The decode attention's kernel reads rows of keys or values 16 bytes at a time.
bool packed_rows(const torch::Tensor& t) {
  return t.is_contiguous() && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}
}  // namespace

bool decode_attention_serves(const torch::Tensor& q, const torch::Tensor& keys) {
#if TTT_WITH_CUDA_KERNELS
  return !torch::GradMode::is_enabled() && q.is_cuda() && q.scalar_type() == torch::kFloat32 && q.size(0) == 1 &&
         packed_rows(keys) && kernels::decode_attention_serves(storage_of(keys), q.size(2)) &&
         kernel_dtype(matmul_dtype_for(q));
#else
  (void)q;
  (void)keys;
  return false;
#endif
}

torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& values,
                               const torch::Tensor& slot_positions, const torch::Tensor& token_position,
                               int64_t window) {
  require(decode_attention_serves(q, keys) && values.sizes() == keys.sizes() &&
              values.scalar_type() == keys.scalar_type() && packed_rows(values),
          "internal: decode_attention called where it does not serve");
#if TTT_WITH_CUDA_KERNELS
  const c10::cuda::CUDAGuard device(q.device());
  const int64_t capacity = keys.size(0), H = keys.size(1), d = keys.size(2);
  const torch::Tensor query = q.contiguous();
  const torch::Tensor scratch =
      torch::empty({kernels::decode_attention_scratch(capacity, H, d)}, q.options().dtype(torch::kFloat32));
  torch::Tensor out = torch::empty({1, H * d}, q.options().dtype(matmul_dtype_for(q)));
  check("decode_attention",
        kernels::decode_attention(query.data_ptr<float>(), keys.data_ptr(), values.data_ptr(), storage_of(keys),
                                  slot_positions.data_ptr<int64_t>(), token_position.data_ptr<int64_t>(), capacity, H,
                                  d, window, static_cast<float>(attention_scale(q)), scratch.data_ptr<float>(),
                                  out.data_ptr(), storage_of(out), stream()));
  return out;
#else
  (void)slot_positions;
  (void)token_position;
  (void)window;
  return torch::Tensor();
#endif
}

torch::Tensor token_nll(const torch::Tensor& logits, const torch::Tensor& targets) {
#if TTT_WITH_CUDA_KERNELS
  // One read of the logits in their dtype, no [T, V] intermediates (the composable form
  // below casts bf16 logits to fp32 first, then writes fp32 log-probabilities). Differentiable
  // twice: every order the engine asks for.
  const torch::Dtype type = logits.scalar_type();
  if (logits.is_cuda() && logits.dim() == 2 &&
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

torch::Tensor masked_mean_weights(const torch::Tensor& targets, int64_t bos_id, torch::Dtype dtype) {
  const torch::Tensor valid = (targets != bos_id).to(dtype);
  return valid / valid.sum().clamp_min(1e-10);
}

HeadLoss head_loss(const torch::Tensor& normed, const torch::Tensor& head, const torch::Tensor& targets,
                   const torch::Tensor& weights, std::optional<Order> order) {
#if TTT_WITH_CUDA_KERNELS
  const torch::Dtype type = normed.scalar_type();
  if (normed.is_cuda() && normed.dim() == 2 && !weights.requires_grad() &&
      (type == torch::kBFloat16 || type == torch::kHalf || type == torch::kFloat32) &&
      matmul_dtype_for(normed) == type) {
    const torch::Tensor ids = targets.to(torch::kInt64).contiguous(), w = weights.to(torch::kFloat32).contiguous();
    if (!order) {  // nothing differentiates the results: no graph, nothing kept
      const torch::NoGradGuard no_grad;
      const FusedHead out = fused_head_forward(normed.contiguous(), head.to(type), ids, w);
      return {out.nll, out.hidden_grad};
    }
    const torch::autograd::variable_list out = FusedHeadLoss::apply(normed.contiguous(), head.to(type), ids, w);
    return {out[0], out[1]};
  }
#endif
  const torch::Tensor nll = token_nll(project(normed, head), targets);
  const torch::Tensor inner = (nll * weights.to(nll.scalar_type())).sum();
  const torch::Tensor hidden_grad =
      torch::autograd::grad({inner}, {normed}, /*grad_outputs=*/{}, /*retain_graph=*/order.has_value(),
                            /*create_graph=*/order == Order::kSecond)[0];
  return {nll, hidden_grad};
}

}  // namespace ttt
