#include "model/layers.h"

#include <cmath>

namespace ttt {
namespace {

// The dtype for numerically sensitive reductions: the input's, but never below fp32.
torch::Tensor at_least_fp32(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32);
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& gain, double eps) {
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * gain;
}

torch::Tensor swiglu(const torch::Tensor& x, const MlpParams& mlp) {
  return torch::matmul(torch::silu(torch::matmul(x, mlp.w1)) * torch::matmul(x, mlp.w3), mlp.w2);
}

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& positions, double theta) {
  const int64_t T = x.size(0), H = x.size(1), d = x.size(2);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(x.device());
  const torch::Tensor exponents = torch::arange(0, d / 2, f64) * (-2.0 / static_cast<double>(d));
  const torch::Tensor inv_freq = torch::pow(torch::full({}, theta, f64), exponents);               // [d/2]
  const torch::Tensor angles = positions.to(torch::kFloat64).unsqueeze(1) * inv_freq.unsqueeze(0);  // [T, d/2]
  const torch::Tensor cos = angles.cos().to(x.scalar_type()).unsqueeze(1);                         // [T, 1, d/2]
  const torch::Tensor sin = angles.sin().to(x.scalar_type()).unsqueeze(1);
  const torch::Tensor pairs = x.reshape({T, H, d / 2, 2});
  const torch::Tensor even = pairs.select(-1, 0), odd = pairs.select(-1, 1);
  return torch::stack({even * cos - odd * sin, even * sin + odd * cos}, -1).reshape({T, H, d});
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
  // [H, Tq, Tk] scores, one batched GEMM over heads.
  const torch::Tensor scores =
      torch::matmul(q.transpose(0, 1), k.permute({1, 2, 0})) * (1.0 / std::sqrt(static_cast<double>(d)));
  const torch::Tensor probs =
      torch::softmax(at_least_fp32(scores).masked_fill(mask.logical_not(), -INFINITY), -1).to(v.scalar_type());
  return torch::matmul(probs, v.transpose(0, 1)).transpose(0, 1).reshape({Tq, H * d});
}

torch::Tensor token_nll(const torch::Tensor& logits, const torch::Tensor& targets) {
  const torch::Tensor log_probs = torch::log_softmax(at_least_fp32(logits), -1);
  return -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1);
}

torch::Tensor masked_mean_loss(const torch::Tensor& nll, const torch::Tensor& targets, int64_t bos_id) {
  const torch::Tensor valid = (targets != bos_id).to(nll.scalar_type());
  return (nll * valid).sum() / valid.sum().clamp_min(1e-10);
}

}  // namespace ttt
