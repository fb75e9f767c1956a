#include "train/adamw.h"

#include <cmath>
#include <vector>

#include <torch/cuda.h>
#include <torch/types.h>
#include <torch/version.h>

#include "common/error.h"
#include "model/compute.h"

namespace ttt {
namespace {

// A parameter without a gradient steps as if its gradient were zero (weight decay still applies).
torch::Tensor gradient_or_zeros(const torch::Tensor& p) { return p.grad().defined() ? p.grad() : torch::zeros_like(p); }

}  // namespace

AdamW::AdamW(std::map<std::string, torch::Tensor> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  moments_on_host_ = options_.moments_on_host && !params_.empty();
  for (const auto& [name, p] : params_) moments_on_host_ = moments_on_host_ && p.is_cuda();
  for (const auto& [name, p] : params_) {
    const auto zeros = [&] {
      if (!moments_on_host_) return torch::zeros_like(p, torch::MemoryFormat::Contiguous).detach();
      if (!host_moments_pinned()) return torch::zeros(p.sizes(), p.options().device(torch::kCPU)).detach();
      return host_buffer(p.numel() * p.element_size(), p).view(p.scalar_type()).view(p.sizes()).zero_();
    };
    m_.emplace(name, zeros());
    v_.emplace(name, zeros());
  }
  if (moments_on_host_ && !host_moments_pinned()) pageable_ = std::make_unique<PageableCopies>();
  bool fused = options_.fused && TORCH_VERSION_MAJOR >= 2 && !params_.empty();
  for (const auto& [name, p] : params_) {
    // The fused update wants p, g, m and v of one layout: the moments and gradients are contiguous.
    fused = fused && p.is_cuda() && p.device() == params_.begin()->second.device() && p.is_contiguous();
  }
  if (fused) {
    step_counts_ = torch::zeros({static_cast<int64_t>(params_.size())},
                                torch::TensorOptions().dtype(torch::kFloat32).device(params_.begin()->second.device()));
    int64_t i = 0;
    for (const auto& [name, p] : params_) step_count_views_.emplace(name, step_counts_[i++]);
  }
}

AdamW::~AdamW() = default;

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  if (!moments_on_host_) {
    ++steps_;
    return update(lr, m_, v_);
  }
  // The moments come to the parameters' device a group at a time and go back; every group's
  // update takes this step's count. Pinned, the copies are queued: a group comes on the
  // current stream while the one before goes back on a stream of its own (a copy engine
  // each way), which keeps the group it returns until the next group's update is queued.
  // Pageable, they go through a few pinned buffers on the current stream (PageableCopies).
  ++steps_;
  const bool pinned = host_moments_pinned();
  CopyStream going_back;
  Moments m, v;
  int64_t group_bytes = 0;
  const auto to_device = [&](const torch::Tensor& host, const torch::Tensor& p) {
    const torch::Tensor moment = torch::empty(host.sizes(), host.options().device(p.device()));
    if (pinned) {
      copy_queued(moment, host);
    } else {
      pageable_->to_device(moment, host);
    }
    return moment;
  };
  const auto update_group = [&] {
    update(lr, m, v);
    for (Moments* group : {&m, &v}) {
      Moments& host = group == &m ? m_ : v_;
      for (const auto& [name, moment] : *group) {
        if (pinned) {
          going_back.copy(host.at(name), moment);
        } else {
          pageable_->to_host(host.at(name), moment);
        }
      }
      group->clear();
    }
    going_back.settle();
    group_bytes = 0;
  };
  for (const auto& [name, p] : params_) {
    m.emplace(name, to_device(m_.at(name), p));
    v.emplace(name, to_device(v_.at(name), p));
    group_bytes += p.numel() * p.element_size();
    if (group_bytes >= options_.host_moment_group_bytes) update_group();
  }
  if (!m.empty()) update_group();
  // The host's moments are whole when step() returns (a checkpoint may read them next).
  if (pinned) {
    going_back.join();
    torch::cuda::synchronize(params_.begin()->second.device().index());
  } else {
    pageable_->finish();
  }
}

void AdamW::update(double lr, Moments& m_of, Moments& v_of) {
  if (step_counts_.defined()) return fused_update(lr, m_of, v_of);
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double correction1 = 1 - std::pow(b1, static_cast<double>(steps_));
  const double correction2 = 1 - std::pow(b2, static_cast<double>(steps_));
  for (auto& [name, m] : m_of) {
    torch::Tensor& p = params_.at(name);
    torch::Tensor& v = v_of.at(name);
    const torch::Tensor g = gradient_or_zeros(p);
    m.mul_(b1).add_(g, 1 - b1);
    v.mul_(b2).addcmul_(g, g, 1 - b2);
    const torch::Tensor direction = (m / correction1) / ((v / correction2).sqrt() + options_.eps);
    p.sub_(lr * (direction + options_.weight_decay * p));
  }
}

void AdamW::fused_update(double lr, Moments& m_of, Moments& v_of) {
#if TORCH_VERSION_MAJOR >= 2
  std::vector<torch::Tensor> params, grads, m, v, step_counts;
  step_counts_.fill_(static_cast<double>(steps_));
  for (auto& [name, moment] : m_of) {
    const torch::Tensor& p = params_.at(name);
    params.push_back(p);
    grads.push_back(gradient_or_zeros(p));
    m.push_back(moment);
    v.push_back(v_of.at(name));
    step_counts.push_back(step_count_views_.at(name));
  }
  at::_fused_adamw_(params, grads, m, v, /*max_exp_avg_sqs=*/{}, step_counts, lr, options_.beta1, options_.beta2,
                    options_.weight_decay, options_.eps, /*amsgrad=*/false, /*maximize=*/false);
#else
  (void)lr;
  (void)m_of;
  (void)v_of;
  throw Error("internal: the fused AdamW needs PyTorch 2");
#endif
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
