#include "train/adamw.h"

#include <cmath>

#include <torch/torch.h>

#include "common/error.h"

namespace ttt {

AdamW::AdamW(std::map<std::string, torch::Tensor> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  for (const auto& [name, p] : params_) {
    m_.emplace(name, torch::zeros_like(p, torch::MemoryFormat::Contiguous).detach());
    v_.emplace(name, torch::zeros_like(p, torch::MemoryFormat::Contiguous).detach());
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double correction1 = 1 - std::pow(b1, static_cast<double>(steps_));
  const double correction2 = 1 - std::pow(b2, static_cast<double>(steps_));
  for (auto& [name, p] : params_) {
    torch::Tensor& m = m_.at(name);
    torch::Tensor& v = v_.at(name);
    const torch::Tensor g = p.grad().defined() ? p.grad() : torch::zeros_like(p);
    m.mul_(b1).add_(g, 1 - b1);
    v.mul_(b2).addcmul_(g, g, 1 - b2);
    const torch::Tensor update = (m / correction1) / ((v / correction2).sqrt() + options_.eps);
    p.sub_(lr * (update + options_.weight_decay * p));
  }
}

std::map<std::string, torch::Tensor> AdamW::state() const {
  std::map<std::string, torch::Tensor> state;
  for (const auto& [name, m] : m_) state.emplace("m." + name, m);
  for (const auto& [name, v] : v_) state.emplace("v." + name, v);
  return state;
}

void AdamW::load_state(const std::map<std::string, torch::Tensor>& state, int64_t steps) {
  torch::NoGradGuard no_grad;
  const auto restore = [&](std::map<std::string, torch::Tensor>& moments, const std::string& prefix) {
    for (auto& [name, moment] : moments) {
      const auto it = state.find(prefix + name);
      require(it != state.end(), "optimiser state: '" + prefix + name + "' is missing");
      require(it->second.sizes() == moment.sizes(), "optimiser state: '" + prefix + name + "' has the wrong shape");
      moment.copy_(it->second);
    }
  };
  restore(m_, "m.");
  restore(v_, "v.");
  require(state.size() == m_.size() + v_.size(), "optimiser state: holds moments of unknown parameters");
  steps_ = steps;
}

}  // namespace ttt
