// AdamW against the update written out by hand, entry by entry, and its state round trip.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <torch/types.h>
#include <torch/version.h>

#include "model/compute.h"
#include "test_util.h"
#include "train/adamw.h"

namespace ttt {
namespace {

TEST(AdamW, MatchesTheUpdateWrittenOut) {
  const AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  torch::Tensor p = torch::tensor({0.5, -1.0, 2.0}, torch::kFloat64).requires_grad_();
  AdamW adam({{"p", p}}, o);
  std::vector<double> value = {0.5, -1.0, 2.0}, m(3, 0), v(3, 0);
  const std::vector<std::vector<double>> grads = {{0.1, -0.2, 0.0}, {0.3, 0.1, -0.5}, {-0.2, 0.0, 1e-3}};
  const std::vector<double> lrs = {1e-2, 5e-3, 2e-3};
  for (size_t t = 0; t < grads.size(); ++t) {
    p.mutable_grad() = torch::tensor(grads[t], torch::kFloat64);
    adam.step(lrs[t]);
    for (int i = 0; i < 3; ++i) {
      const double g = grads[t][i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      const double m_hat = m[i] / (1 - std::pow(o.beta1, t + 1)), v_hat = v[i] / (1 - std::pow(o.beta2, t + 1));
      value[i] -= lrs[t] * (m_hat / (std::sqrt(v_hat) + o.eps) + o.weight_decay * value[i]);
      EXPECT_NEAR(p[i].item<double>(), value[i], 1e-15) << "step " << t << " entry " << i;
    }
  }
  EXPECT_EQ(adam.steps_taken(), 3);
}

TEST(AdamW, RestoredStateContinuesIdentically) {
  const AdamWOptions o;
  torch::Tensor a = torch::randn({4, 3}, torch::kFloat64).requires_grad_();
  torch::Tensor b = a.detach().clone().requires_grad_();
  AdamW first({{"w", a}}, o);
  a.mutable_grad() = torch::randn({4, 3}, torch::kFloat64);
  first.step(1e-2);

  AdamW second({{"w", b}}, o);
  {
    torch::NoGradGuard no_grad;
    b.copy_(a);
  }
  second.load_state(first.state(), first.steps_taken());
  const torch::Tensor g = torch::randn({4, 3}, torch::kFloat64);
  a.mutable_grad() = g.clone();
  b.mutable_grad() = g.clone();
  first.step(3e-3);
  second.step(3e-3);
  EXPECT_TRUE(torch::equal(a, b));

  auto state = first.state();
  state.erase("v.w");
  test::expect_error([&] { second.load_state(state, 1); }, {"'v.w'", "missing"});
  state = first.state();
  state["m.w"] = torch::zeros({2}, torch::kFloat64);
  test::expect_error([&] { second.load_state(state, 1); }, {"'m.w'", "shape"});
}

// On the CPU the moments are in host memory already: the option changes nothing.
TEST(AdamW, MomentsOnHostOnlyForParametersOnAGpu) {
  AdamWOptions o;
  o.moments_on_host = true;
  torch::Tensor p = torch::randn({3}, torch::kFloat64).requires_grad_();
  AdamW adam({{"p", p}}, o);
  EXPECT_FALSE(adam.moments_on_host());
  p.mutable_grad() = torch::ones({3}, torch::kFloat64);
  adam.step(1e-2);
  EXPECT_TRUE(adam.state().at("m.p").equal(torch::full({3}, 1 - o.beta1, torch::kFloat64)));  // (1 - b1) g
}

// Moments waiting in host memory between updates give the same bits as moments on the GPU,
// fused update or plain, all parameters in one group or each in its own, and a state that
// restores either way.
TEST(AdamWOnCuda, MomentsOnHostGiveTheSameUpdate) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  const torch::Tensor w = torch::randn({64, 48}, options), b = torch::randn({48}, options);
  for (const auto& [fused, group_bytes, pinned] :
       std::vector<std::tuple<bool, int64_t, bool>>{{true, AdamWOptions().host_moment_group_bytes, false},
                                                    {false, AdamWOptions().host_moment_group_bytes, false},
                                                    {true, 1, false},
                                                    {false, 1, false},
                                                    {true, AdamWOptions().host_moment_group_bytes, true},
                                                    {true, 1, true},
                                                    {false, 1, true}}) {
    SCOPED_TRACE("fused " + std::to_string(fused) + ", groups of " + std::to_string(group_bytes) + " bytes, pinned " +
                 std::to_string(pinned));
    std::map<std::string, torch::Tensor> on_device{{"w", w.clone()}, {"b", b.clone()}},
        on_host{{"w", w.clone()}, {"b", b.clone()}};
    AdamWOptions o;
    o.fused = fused;
    o.host_moment_group_bytes = group_bytes;
    AdamW device_moments(on_device, o);
    o.moments_on_host = true;
    o.pin_host_moments = pinned;
    AdamW host_moments(on_host, o);
    ASSERT_TRUE(host_moments.moments_on_host());
    ASSERT_EQ(host_moments.host_moments_pinned(), pinned);
    ASSERT_FALSE(device_moments.moments_on_host());
    for (const double lr : {1e-2, 3e-3}) {
      for (const std::string name : {"w", "b"}) {
        const torch::Tensor g = torch::randn_like(on_device[name]);
        on_device[name].mutable_grad() = g.clone();
        on_host[name].mutable_grad() = g.clone();
      }
      device_moments.step(lr);
      host_moments.step(lr);
      for (const std::string name : {"w", "b"}) EXPECT_TRUE(torch::equal(on_device[name], on_host[name])) << name;
    }
    for (const auto& [key, moment] : host_moments.state()) {
      EXPECT_TRUE(moment.device().is_cpu()) << key;
      EXPECT_EQ(moment.is_pinned(), pinned) << key;
      EXPECT_TRUE(torch::equal(moment, device_moments.state().at(key).cpu())) << key;
    }
    std::map<std::string, torch::Tensor> restored{{"w", on_host["w"].detach().clone()},
                                                  {"b", on_host["b"].detach().clone()}};
    AdamW resumed(restored, o);
    resumed.load_state(device_moments.state(), device_moments.steps_taken());  // from GPU moments to host ones
    for (const std::string name : {"w", "b"}) {
      const torch::Tensor g = torch::randn_like(on_host[name]);
      on_host[name].mutable_grad() = g.clone();
      restored[name].mutable_grad() = g.clone();
    }
    host_moments.step(1e-3);
    resumed.step(1e-3);
    for (const std::string name : {"w", "b"}) EXPECT_TRUE(torch::equal(on_host[name], restored[name])) << name;
    o.moments_on_host = false;  // and from host moments to GPU ones
    AdamW on_gpu_again(restored, o);
    on_gpu_again.load_state(host_moments.state(), host_moments.steps_taken());
    for (const auto& [key, moment] : on_gpu_again.state()) {
      EXPECT_TRUE(moment.is_cuda()) << key;
      EXPECT_TRUE(torch::equal(moment.cpu(), host_moments.state().at(key))) << key;
    }
  }
}

// The GPU holds one group's moments at a time (two, pinned: one comes while one goes back): the
// update of four 16 MiB parameters in groups of one needs two moments' room beyond the
// parameters and gradients (four pinned), in one group all eight.
TEST(AdamWOnCuda, HostMomentsComeAGroupAtATime) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device device(torch::kCUDA);
  const int64_t bytes = int64_t{16} << 20;
  const auto extra_memory = [&](int64_t group_bytes, bool pinned) {
    std::map<std::string, torch::Tensor> params;
    for (const std::string name : {"a", "b", "c", "d"}) {
      params[name] = torch::randn({bytes / 4}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
      params[name].mutable_grad() = torch::randn_like(params[name]);
    }
    AdamWOptions o;
    o.moments_on_host = true;
    o.host_moment_group_bytes = group_bytes;
    o.pin_host_moments = pinned;
    AdamW adam(params, o);
    torch::cuda::synchronize();
    reset_device_memory_peaks(device);
    const int64_t before = device_memory(device)->peak_allocated;
    adam.step(1e-3);
    torch::cuda::synchronize();
    return device_memory(device)->peak_allocated - before;
  };
  EXPECT_LE(extra_memory(1, false), 2 * bytes);
  EXPECT_LE(extra_memory(1, true), 4 * bytes);
  EXPECT_GE(extra_memory(AdamWOptions().host_moment_group_bytes, false), 8 * bytes);
  EXPECT_GE(extra_memory(AdamWOptions().host_moment_group_bytes, true), 8 * bytes);
}

TEST(AdamWOnCuda, FusedUpdateMatchesThePlainOne) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  const torch::Tensor w = torch::randn({64, 48}, options), b = torch::randn({48}, options);
  std::map<std::string, torch::Tensor> fused_params{{"w", w.clone()}, {"b", b.clone()}},
      plain_params{{"w", w.clone()}, {"b", b.clone()}};
  AdamWOptions o;
  AdamW fused(fused_params, o);
  o.fused = false;
  AdamW plain(plain_params, o);
  ASSERT_EQ(fused.fused(), TORCH_VERSION_MAJOR >= 2);
  ASSERT_FALSE(plain.fused());
  const std::vector<double> lrs = {1e-2, 3e-3, 1e-3};
  for (size_t t = 0; t < lrs.size(); ++t) {
    for (const std::string name : {"w", "b"}) {
      // "b" has no gradient at the second step: it counts as zero, its moments still decay.
      const torch::Tensor g = t == 1 && name == "b" ? torch::Tensor() : torch::randn_like(fused_params[name]);
      fused_params[name].mutable_grad() = g.defined() ? g.clone() : g;
      plain_params[name].mutable_grad() = g;
    }
    fused.step(lrs[t]);
    plain.step(lrs[t]);
    for (const std::string name : {"w", "b"}) {
      EXPECT_TRUE(torch::allclose(fused_params[name], plain_params[name], 1e-6, 1e-7)) << name << " at step " << t;
      EXPECT_FALSE(torch::equal(fused_params[name], name == "w" ? w : b)) << name << " did not move";
    }
  }
  for (const auto& [key, moment] : plain.state()) {
    EXPECT_TRUE(torch::allclose(fused.state().at(key), moment, 1e-6, 1e-6)) << key;  // m: a few ulps of g (it cancels)
  }
}

}  // namespace
}  // namespace ttt
