#include "model/window_attention.h"

#include <torch/autograd.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>
#include <vector>

#include "common/error.h"

namespace ttt {
namespace {

// One rectangle's attention, by head: q [H, Tq, d], k and v [H, Tk, d] (contiguous); causal:
// query i sees keys 0..i. Its output [H, Tq, d] in q's dtype and logsumexp [H, Tq] (fp32, or
// fp64 for fp64 inputs) of the scaled scores.
struct Part {
  torch::Tensor q, k, v;
  bool causal = false;
  bool reversed = false;  // queries and keys in reverse order
};

double scale_of(const torch::Tensor& q) { return 1.0 / std::sqrt(static_cast<double>(q.size(2))); }

bool cudnn_serves(const torch::Tensor& q) {
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

// Along the rows of [H, T, d] or [H, T].
torch::Tensor reversed(const torch::Tensor& t) { return t.flip({1}).contiguous(); }

// The three parts of q, k and v by head ([H, T, d], contiguous).
std::vector<Part> parts_of(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t window) {
  const int64_t Tq = q.size(1), cache = window - 1;
  std::vector<Part> parts;
  parts.push_back({reversed(q), reversed(k.narrow(1, 0, Tq)), reversed(v.narrow(1, 0, Tq)), true, true});
  if (cache > Tq) {
    parts.push_back({q, k.narrow(1, Tq, cache - Tq).contiguous(), v.narrow(1, Tq, cache - Tq).contiguous(), false});
  }
  parts.push_back({q, k.narrow(1, cache, Tq).contiguous(), v.narrow(1, cache, Tq).contiguous(), true});
  return parts;
}

class WindowAttentionByParts : public torch::autograd::Function<WindowAttentionByParts> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, int64_t window) {
    const auto heads = [](const torch::Tensor& t) { return t.transpose(0, 1).contiguous(); };
    const torch::Tensor qh = heads(q), kh = heads(k), vh = heads(v);
    std::vector<torch::Tensor> outs, lses;
    for (const Part& p : parts_of(qh, kh, vh, window)) {
      auto [out, lse] = part_forward(p);
      outs.push_back(p.reversed ? reversed(out) : out);
      lses.push_back(p.reversed ? reversed(lse) : lse);
    }
    // lse = log sum_k exp(lse_k); out = sum_k exp(lse_k - lse) out_k, in the wide dtype.
    const torch::Tensor lse = torch::logsumexp(torch::stack(lses), 0);
    torch::Tensor merged = torch::zeros(outs[0].sizes(), lse.options());
    for (size_t i = 0; i < outs.size(); ++i) merged.add_(outs[i].to(lse.scalar_type()) * (lses[i] - lse).exp().unsqueeze(-1));
    const torch::Tensor out = merged.to(q.scalar_type());
    ctx->save_for_backward({qh, kh, vh, out, lse});
    ctx->saved_data["window"] = window;
    return out.transpose(0, 1);  // [Tq, H, d]
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &qh = saved[0], &kh = saved[1], &vh = saved[2], &out = saved[3], &lse = saved[4];
    const torch::Tensor grad = grads[0].transpose(0, 1).to(qh.scalar_type()).contiguous();  // [H, Tq, d]
    torch::Tensor grad_q = torch::zeros(qh.sizes(), lse.options());
    std::vector<torch::Tensor> grad_k, grad_v;
    for (const Part& p : parts_of(qh, kh, vh, ctx->saved_data["window"].toInt())) {
      const auto flipped = [&](const torch::Tensor& t) { return p.reversed ? reversed(t).contiguous() : t; };
      const std::vector<torch::Tensor> g = part_backward(p, flipped(grad), flipped(out), flipped(lse));
      grad_q.add_(flipped(g[0]));
      grad_k.push_back(flipped(g[1]));
      grad_v.push_back(flipped(g[2]));
    }
    const auto rows = [&](const std::vector<torch::Tensor>& parts) {
      return torch::cat(parts, 1).transpose(0, 1).to(qh.scalar_type());  // [Tk, H, d]
    };
    return {grad_q.transpose(0, 1).to(qh.scalar_type()), rows(grad_k), rows(grad_v), torch::Tensor()};
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

}  // namespace ttt
