// Every layer against an independent scalar formula, written out element by element.
#include <gtest/gtest.h>

#include <cmath>
#include <exception>
#include <thread>

#include "model/compute.h"
#include "model/layers.h"
#include "test_util.h"

namespace ttt {
namespace {

torch::Tensor randn(std::vector<int64_t> shape) { return torch::randn(shape, torch::kFloat64); }

TEST(Layers, RmsNormMatchesFormula) {
  torch::manual_seed(1);
  const torch::Tensor x = randn({5, 7}), gain = randn({7});
  const double eps = 1e-3;
  const torch::Tensor y = rms_norm(x, gain, eps);
  auto xa = x.accessor<double, 2>();
  auto ga = gain.accessor<double, 1>();
  auto ya = y.accessor<double, 2>();
  for (int r = 0; r < 5; ++r) {
    double mean_square = 0;
    for (int j = 0; j < 7; ++j) mean_square += xa[r][j] * xa[r][j] / 7;
    for (int j = 0; j < 7; ++j) EXPECT_NEAR(ya[r][j], xa[r][j] / std::sqrt(mean_square + eps) * ga[j], 1e-12);
  }
}

// rms_norm's backward and that backward's own are written out (the exact meta-gradient
// differentiates norms twice), the third order recomputes: all against autograd through the
// formula's plain ops, with and without the gain's gradient.
TEST(Layers, RmsNormIsDifferentiableToTheThirdOrderLikeItsFormula) {
  torch::manual_seed(3);
  const double eps = 1e-3;
  const torch::Tensor x = randn({2, 3, 7}), gain = randn({7});
  for (const bool gain_grad : {true, false}) {
    SCOPED_TRACE(gain_grad ? "with the gain's gradient" : "without");
    const auto orders = [&](bool formula, int n) {
      const torch::Tensor xs = x.clone().requires_grad_(), gs = gain.clone().requires_grad_(gain_grad);
      std::vector<torch::Tensor> leaves = {xs};
      if (gain_grad) leaves.push_back(gs);
      return test::derivatives(
          [&] {
            const torch::Tensor y =
                formula ? xs * torch::rsqrt(xs.pow(2).mean(-1, true) + eps) * gs : rms_norm(xs, gs, eps);
            if (!formula) EXPECT_NE(y.grad_fn()->name().find("RmsNormFunction"), std::string::npos);
            return y;
          },
          leaves, n, 5);
    };
    const auto reference = orders(true, 3);
    for (size_t i = 0; i < reference.size(); ++i) EXPECT_GT(reference[i].abs().max().item<double>(), 1e-3) << i;
    // To the second order, the last one without recording (the saved r), then to the third.
    for (const int n : {2, 3}) {
      const auto ours = orders(false, n);
      ASSERT_LE(ours.size(), reference.size());
      for (size_t i = 0; i < ours.size(); ++i) {
        EXPECT_TRUE(torch::allclose(ours[i], reference[i], 1e-10, 1e-12)) << n << " " << i;
      }
    }
  }
}

TEST(Layers, SwigluMatchesFormula) {
  torch::manual_seed(2);
  const int D = 4, F = 6;
  const torch::Tensor x = randn({3, D});
  const MlpParams mlp{randn({D, F}), randn({F, D}), randn({D, F})};
  const torch::Tensor y = swiglu(x, mlp);
  auto xa = x.accessor<double, 2>();
  auto w1 = mlp.w1.accessor<double, 2>(), w2 = mlp.w2.accessor<double, 2>(), w3 = mlp.w3.accessor<double, 2>();
  for (int t = 0; t < 3; ++t) {
    std::vector<double> inner(F);
    for (int f = 0; f < F; ++f) {
      double a = 0, b = 0;
      for (int i = 0; i < D; ++i) a += xa[t][i] * w1[i][f], b += xa[t][i] * w3[i][f];
      inner[f] = a / (1 + std::exp(-a)) * b;  // silu(a) * b
    }
    for (int o = 0; o < D; ++o) {
      double expected = 0;
      for (int f = 0; f < F; ++f) expected += inner[f] * w2[f][o];
      EXPECT_NEAR(y[t][o].item<double>(), expected, 1e-12);
    }
  }
}

TEST(Layers, RopeRotatesAdjacentPairsByAbsolutePosition) {
  torch::manual_seed(3);
  const int T = 4, H = 2, d = 6;
  const double theta = 100.0;
  const torch::Tensor x = randn({T, H, d});
  const torch::Tensor positions = torch::tensor(std::vector<int64_t>{0, 5, 17, 1000});
  const torch::Tensor y = rope(x, positions, theta);
  auto xa = x.accessor<double, 3>();
  auto ya = y.accessor<double, 3>();
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      for (int j = 0; j < d / 2; ++j) {
        const double angle = positions[t].item<int64_t>() * std::pow(theta, -2.0 * j / d);
        const double a = xa[t][h][2 * j], b = xa[t][h][2 * j + 1];
        EXPECT_NEAR(ya[t][h][2 * j], a * std::cos(angle) - b * std::sin(angle), 1e-12);
        EXPECT_NEAR(ya[t][h][2 * j + 1], a * std::sin(angle) + b * std::cos(angle), 1e-12);
      }
    }
  }
}

TEST(Layers, RopeScoresDependOnlyOnRelativePosition) {
  torch::manual_seed(4);
  const torch::Tensor q = randn({1, 1, 8}), k = randn({1, 1, 8});
  const auto score = [&](int64_t tq, int64_t tk) {
    return (rope(q, torch::tensor({tq}), 500000.0) * rope(k, torch::tensor({tk}), 500000.0)).sum().item<double>();
  };
  EXPECT_NEAR(score(7, 3), score(1007, 1003), 1e-9);
  EXPECT_GT(std::abs(score(7, 3) - score(7, 5)), 1e-6);  // and it does depend on it
}

TEST(Layers, AttentionMaskIsCausalAndWindowed) {
  const torch::Tensor q_pos = torch::arange(10, 14), k_pos = torch::arange(4, 14);
  for (int64_t window : {0, 3, 6}) {
    const torch::Tensor mask = attention_mask(q_pos, k_pos, window);
    ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{4, 10}));
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 10; ++j) {
        const int64_t t = 10 + i, s = 4 + j;
        const bool expected = s <= t && (window == 0 || t - s < window);
        EXPECT_EQ(mask[i][j].item<bool>(), expected) << "window " << window << " t " << t << " s " << s;
      }
    }
  }
}

TEST(Layers, AttendMatchesNaiveSoftmaxAttention) {
  torch::manual_seed(5);
  const int Tq = 3, Tk = 5, H = 2, d = 4;
  const torch::Tensor q = randn({Tq, H, d}), k = randn({Tk, H, d}), v = randn({Tk, H, d});
  const torch::Tensor mask = attention_mask(torch::arange(2, 5), torch::arange(0, 5), 3);
  const torch::Tensor out = attend(q, k, v, mask);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{Tq, H * d}));
  for (int t = 0; t < Tq; ++t) {
    for (int h = 0; h < H; ++h) {
      std::vector<double> weights(Tk, 0.0);
      double total = 0;
      for (int s = 0; s < Tk; ++s) {
        if (!mask[t][s].item<bool>()) continue;
        weights[s] = std::exp((q[t][h] * k[s][h]).sum().item<double>() / std::sqrt(d));
        total += weights[s];
      }
      for (int j = 0; j < d; ++j) {
        double expected = 0;
        for (int s = 0; s < Tk; ++s) expected += weights[s] / total * v[s][h][j].item<double>();
        EXPECT_NEAR(out[t][h * d + j].item<double>(), expected, 1e-12);
      }
    }
  }
}

// attend_by_query_blocks against attend under attention_mask, in fp64: the output and its
// derivatives with respect to q, k and v to the second order (the first is written out, the
// second autograd's through it), over attend_span's layout (`cached` keys before a span of
// Tq queries), full and windowed, with blocks that do not divide the span.
TEST(Layers, AttendByQueryBlocksMatchesAttendAndItsDerivatives) {
  struct Case {
    int64_t cached, Tq, window, block;
  };
  const int64_t H = 3, d = 4;
  for (const Case c : {Case{0, 7, 0, 3}, Case{5, 7, 0, 3}, Case{5, 7, 4, 3}, Case{9, 6, 12, 4}, Case{2, 10, 3, 64},
                       Case{6, 1, 0, 2}, Case{6, 5, 2, 1}}) {
    SCOPED_TRACE(testing::Message() << "cached " << c.cached << " Tq " << c.Tq << " window " << c.window << " block "
                                    << c.block);
    torch::manual_seed(7);
    const int64_t Tk = c.cached + c.Tq;
    const torch::Tensor q = randn({c.Tq, H, d}), k = randn({Tk, H, d}), v = randn({Tk, H, d});
    const torch::Tensor key_positions = torch::arange(40, 40 + Tk),
                        query_positions = key_positions.narrow(0, c.cached, c.Tq);
    const auto orders = [&](bool blocked) {
      const torch::Tensor qs = q.clone().requires_grad_(), ks = k.clone().requires_grad_(),
                          vs = v.clone().requires_grad_();
      return test::derivatives(
          [&] {
            if (!blocked) return attend(qs, ks, vs, attention_mask(query_positions, key_positions, c.window));
            const torch::Tensor out =
                attend_by_query_blocks(qs, ks, vs, query_positions, key_positions, c.window, c.block);
            EXPECT_NE(out.grad_fn()->name().find("BlockedAttention"), std::string::npos);
            return out;
          },
          {qs, ks, vs}, 2, 9);
    };
    const std::vector<torch::Tensor> reference = orders(false), blocked = orders(true);
    ASSERT_EQ(blocked.size(), reference.size());
    for (size_t i = 0; i < reference.size(); ++i) {
      ASSERT_EQ(blocked[i].sizes(), reference[i].sizes()) << i;
      if (i < 4) EXPECT_GT(reference[i].abs().max().item<double>(), 1e-3) << i;  // the value and first order
      EXPECT_TRUE(torch::allclose(blocked[i], reference[i], 0, 1e-12)) << i;
    }
  }
}

// attend_span takes the blocked form on the CPU where it is differentiated once, and the
// banded one, whose double backward is written out, where it must be differentiable twice.
TEST(Layers, AttendSpanOnTheCpuIsBlockedOnlyAtTheFirstOrder) {
  const torch::Tensor q = randn({4, 2, 4}).requires_grad_(), k = randn({6, 2, 4}), v = randn({6, 2, 4});
  const torch::Tensor key_positions = torch::arange(0, 6), query_positions = torch::arange(2, 6);
  const auto node = [&](Order order) {
    return attend_span(q, k, v, query_positions, key_positions, 0, order).grad_fn()->name();
  };
  EXPECT_NE(node(Order::kFirst).find("BlockedAttention"), std::string::npos);
  EXPECT_NE(node(Order::kSecond).find("BandedAttention"), std::string::npos);
}

// attend_span's layout for the banded attention's tests: `cached` keys before a span of Tq
// queries (positions from 40 on), H = 3 heads of width 4, fp64.
struct BandedCase {
  int64_t cached, Tq, window;
};

struct BandedInputs {
  torch::Tensor q, k, v, query_positions, key_positions;
  explicit BandedInputs(const BandedCase& c) {
    torch::manual_seed(11);
    const int64_t Tk = c.cached + c.Tq;
    q = randn({c.Tq, 3, 4});
    k = randn({Tk, 3, 4});
    v = randn({Tk, 3, 4});
    key_positions = torch::arange(40, 40 + Tk);
    query_positions = key_positions.narrow(0, c.cached, c.Tq);
  }
  // attend_span at the second order (the banded form), or the reference: attend under the mask.
  torch::Tensor attention(const BandedCase& c, const torch::Tensor& qs, const torch::Tensor& ks,
                          const torch::Tensor& vs, bool banded) const {
    if (!banded) return attend(qs, ks, vs, attention_mask(query_positions, key_positions, c.window));
    const torch::Tensor out = attend_span(qs, ks, vs, query_positions, key_positions, c.window, Order::kSecond);
    EXPECT_NE(out.grad_fn()->name().find("BandedAttention"), std::string::npos);
    return out;
  }
};

std::string describe(const BandedCase& c) {
  return "cached " + std::to_string(c.cached) + " Tq " + std::to_string(c.Tq) + " window " + std::to_string(c.window);
}

// Causal without a cache, windows with a partial cache, full windows' caches (window - 1 keys,
// or more: padded to a multiple of 8 with keys outside every band), and single queries.
const std::vector<BandedCase> kBandedCases = {{0, 7, 0}, {5, 7, 0}, {4, 5, 6}, {5, 4, 6},
                                              {9, 3, 4}, {6, 1, 0}, {5, 1, 6}};

// SwiGLU's gate as autograd functions (its backward and that backward's own written out)
// against autograd through silu(a) * b, in fp64 to the third order (the third through the
// written-out backward's plain ops), and with one of the backward's adjoints undefined (a
// second derivative of da or of db alone).
TEST(Layers, SwigluGateMatchesTheComposableFormToTheThirdOrder) {
  torch::manual_seed(5);
  const torch::Tensor a0 = 2 * randn({7, 5}), b0 = randn({7, 5});
  const auto orders = [&](bool gate, int n) {
    const torch::Tensor a = a0.clone().requires_grad_(), b = b0.clone().requires_grad_();
    return test::derivatives([&] { return gate ? swiglu_gate(a, b) : torch::silu(a) * b; }, {a, b}, n, 21);
  };
  const std::vector<torch::Tensor> reference = orders(false, 3);
  for (size_t i = 0; i < reference.size(); ++i) EXPECT_GT(reference[i].abs().max().item<double>(), 1e-3) << i;
  const std::vector<torch::Tensor> ours = orders(true, 3);
  ASSERT_EQ(ours.size(), reference.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    ASSERT_EQ(ours[i].sizes(), reference[i].sizes()) << i;
    EXPECT_TRUE(torch::allclose(ours[i], reference[i], 0, 1e-12)) << i;
  }
  for (const int which : {0, 1}) {
    const auto second = [&](bool gate) {
      torch::manual_seed(13);
      const torch::Tensor a = a0.clone().requires_grad_(), b = b0.clone().requires_grad_();
      const torch::Tensor y = gate ? swiglu_gate(a, b) : torch::silu(a) * b;
      const torch::Tensor probe = randn(y.sizes().vec()).requires_grad_();
      const std::vector<torch::Tensor> first =
          torch::autograd::grad({(y * probe).sum()}, {a, b}, {}, /*retain_graph=*/true, /*create_graph=*/true);
      const torch::Tensor objective = (first[which] * randn(first[which].sizes().vec())).sum();
      return test::gradients_or_zeros(objective, {a, b, probe});
    };
    const std::vector<torch::Tensor> reference_second = second(false), ours_second = second(true);
    for (size_t i = 0; i < reference_second.size(); ++i) {
      EXPECT_TRUE(torch::allclose(ours_second[i], reference_second[i], 0, 1e-12)) << which << " " << i;
    }
  }
  // fp32 and bf16 values: the fp32 arithmetic's, rounded once to the inputs' dtype.
  for (const torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16}) {
    const torch::Tensor a = a0.to(dtype), b = b0.to(dtype);
    const torch::Tensor want = (torch::silu(a.to(torch::kFloat32)) * b.to(torch::kFloat32)).to(dtype);
    EXPECT_TRUE(torch::equal(swiglu_gate(a, b), want)) << dtype;
  }
}

// The banded attention (attend_span at Order::kSecond on the CPU: its backward and that
// backward's backward written out) against autograd through attend under attention_mask, in
// fp64: the value and its derivatives with respect to q, k, v (and the probes) to the second
// order, then to the third, where the double backward recomputes its terms with plain ops.
TEST(Layers, BandedAttentionMatchesAttendToTheThirdOrder) {
  for (const BandedCase& c : kBandedCases) {
    SCOPED_TRACE(describe(c));
    const BandedInputs in(c);
    const auto orders = [&](bool banded, int n) {
      const torch::Tensor qs = in.q.clone().requires_grad_(), ks = in.k.clone().requires_grad_(),
                          vs = in.v.clone().requires_grad_();
      return test::derivatives([&] { return in.attention(c, qs, ks, vs, banded); }, {qs, ks, vs}, n, 9);
    };
    const std::vector<torch::Tensor> reference = orders(false, 3);
    for (size_t i = 0; i < reference.size(); ++i) EXPECT_GT(reference[i].abs().max().item<double>(), 1e-3) << i;
    for (const int n : {2, 3}) {
      const std::vector<torch::Tensor> banded = orders(true, n);
      ASSERT_LE(banded.size(), reference.size());
      for (size_t i = 0; i < banded.size(); ++i) {
        ASSERT_EQ(banded[i].sizes(), reference[i].sizes()) << n << " " << i;
        EXPECT_TRUE(torch::allclose(banded[i], reference[i], 0, 1e-12)) << n << " " << i;
      }
    }
  }
}

// The double backward with some adjoints undefined (zero): the second derivatives of a
// single first-order gradient, <dQ, p>, <dK, p> or <dV, p>, and of two, against attend's.
TEST(Layers, BandedAttentionsDoubleBackwardTakesUndefinedAdjoints) {
  for (const BandedCase& c : {BandedCase{4, 5, 6}, BandedCase{0, 6, 0}}) {
    SCOPED_TRACE(describe(c));
    const BandedInputs in(c);
    for (const std::vector<int>& which : std::vector<std::vector<int>>{{0}, {1}, {2}, {0, 2}, {1, 2}}) {
      SCOPED_TRACE(testing::Message() << "gradients " << which.front() << " to " << which.back());
      const auto second = [&](bool banded) {
        torch::manual_seed(13);
        const torch::Tensor qs = in.q.clone().requires_grad_(), ks = in.k.clone().requires_grad_(),
                            vs = in.v.clone().requires_grad_();
        const torch::Tensor out = in.attention(c, qs, ks, vs, banded);
        const torch::Tensor probe = torch::randn(out.sizes(), torch::kFloat64).requires_grad_();
        const std::vector<torch::Tensor> first = torch::autograd::grad({(out * probe).sum()}, {qs, ks, vs}, {},
                                                                       /*retain_graph=*/true, /*create_graph=*/true);
        if (banded) EXPECT_NE(first[0].grad_fn()->name().find("BandedAttentionGrad"), std::string::npos);
        torch::Tensor objective = torch::zeros({}, torch::kFloat64);
        for (const int i : which)
          objective = objective + (first[i] * torch::randn(first[i].sizes(), torch::kFloat64)).sum();
        return test::gradients_or_zeros(objective, {qs, ks, vs, probe});
      };
      const std::vector<torch::Tensor> reference = second(false), banded = second(true);
      for (size_t i = 0; i < reference.size(); ++i) {
        EXPECT_TRUE(torch::allclose(banded[i], reference[i], 0, 1e-12)) << i;
      }
      // Nothing compared is zero but what must be: dV does not depend on v.
      for (size_t i = 0; i < reference.size(); ++i) {
        const bool zero = which == std::vector<int>{2} && i == 2;
        EXPECT_EQ(reference[i].abs().max().item<double>() == 0, zero) << i;
      }
    }
  }
}

// The banded attention with the cache's keys and values as inputs of their own (attend_span's
// `parts`, as the scan passes them) against attend over their concatenation, in fp64: the
// value and its derivatives with respect to q, both parts of k and v (and the probes) to the
// third order, and an inner loop's second order: a first gradient that asks nothing of the
// cache (taken with respect to q and the span's keys and values, as the fast weights' is),
// differentiated again with respect to everything, the cache included.
TEST(Layers, BandedAttentionTakesTheCacheApart) {
  for (const BandedCase& c : kBandedCases) {
    if (c.cached == 0) continue;
    SCOPED_TRACE(describe(c));
    const BandedInputs in(c);
    struct Leaves {
      torch::Tensor q, cached_k, cached_v, k, v;
      std::vector<torch::Tensor> all() const { return {q, cached_k, cached_v, k, v}; }
    };
    const auto leaves = [&] {
      const auto leaf = [](const torch::Tensor& t) { return t.clone().requires_grad_(); };
      return Leaves{leaf(in.q), leaf(in.k.narrow(0, 0, c.cached)), leaf(in.v.narrow(0, 0, c.cached)),
                    leaf(in.k.narrow(0, c.cached, c.Tq)), leaf(in.v.narrow(0, c.cached, c.Tq))};
    };
    const auto attention = [&](const Leaves& l, bool apart) {
      const torch::Tensor k = torch::cat({l.cached_k, l.k}), v = torch::cat({l.cached_v, l.v});
      if (!apart) return attend(l.q, k, v, attention_mask(in.query_positions, in.key_positions, c.window));
      const SpanKeys parts{l.cached_k, l.cached_v, l.k, l.v};
      const torch::Tensor out =
          attend_span(l.q, k, v, in.query_positions, in.key_positions, c.window, Order::kSecond, &parts);
      EXPECT_NE(out.grad_fn()->name().find("BandedAttention"), std::string::npos);
      return out;
    };
    const auto orders = [&](bool apart) {
      const Leaves l = leaves();
      return test::derivatives([&] { return attention(l, apart); }, l.all(), 3, 9);
    };
    const std::vector<torch::Tensor> reference = orders(false), apart = orders(true);
    ASSERT_EQ(apart.size(), reference.size());
    for (size_t i = 0; i < reference.size(); ++i) {
      ASSERT_EQ(apart[i].sizes(), reference[i].sizes()) << i;
      EXPECT_TRUE(torch::allclose(apart[i], reference[i], 0, 1e-12)) << i;
    }
    const auto inner_loops = [&](bool apart) {
      torch::manual_seed(13);
      const Leaves l = leaves();
      const torch::Tensor out = attention(l, apart);
      const torch::Tensor probe = torch::randn(out.sizes(), torch::kFloat64).requires_grad_();
      const std::vector<torch::Tensor> first = torch::autograd::grad({(out * probe).sum()}, {l.q, l.k, l.v}, {},
                                                                     /*retain_graph=*/true, /*create_graph=*/true);
      if (apart) {  // the span's dK came from a product over its own keys only: the cache's were not computed
        EXPECT_TRUE(first[1].is_view());
        if (first[1].is_view()) EXPECT_EQ(first[1]._base().size(1), c.Tq);
      }
      torch::Tensor objective = torch::zeros({}, torch::kFloat64);
      for (const torch::Tensor& g : first) objective = objective + (g * torch::randn(g.sizes(), torch::kFloat64)).sum();
      std::vector<torch::Tensor> wrt = l.all();
      wrt.push_back(probe);
      std::vector<torch::Tensor> result = first;
      for (const torch::Tensor& g : test::gradients_or_zeros(objective, wrt)) result.push_back(g);
      return result;
    };
    const std::vector<torch::Tensor> inner_reference = inner_loops(false), inner_apart = inner_loops(true);
    ASSERT_EQ(inner_apart.size(), inner_reference.size());
    for (size_t i = 0; i < inner_reference.size(); ++i) {
      EXPECT_GT(inner_reference[i].abs().max().item<double>(), 1e-3) << i;  // the cache's too
      EXPECT_TRUE(torch::allclose(inner_apart[i], inner_reference[i], 0, 1e-12)) << i;
    }
  }
}

// Autograd runs a CUDA graph's backward on a device thread of its own, outside the forward's
// MatmulDtypeGuard (thread-local): the attention Functions keep their forward's matmul dtype.
// Here the backward runs on a thread of the test's own, against the same on the forward's.
TEST(Layers, AttentionBackwardsKeepTheForwardsMatmulDtypeOnAnotherThread) {
  const BandedCase c{5, 7, 6};
  const BandedInputs in(c);
  for (const Order order : {Order::kFirst, Order::kSecond}) {
    SCOPED_TRACE(order == Order::kFirst ? "first order" : "second order");
    const auto derivatives = [&](bool other_thread) {
      const torch::Tensor qs = in.q.to(torch::kFloat32).requires_grad_(),
                          ks = in.k.to(torch::kFloat32).requires_grad_(),
                          vs = in.v.to(torch::kFloat32).requires_grad_();
      const MatmulDtypeGuard precision(torch::kBFloat16);
      const torch::Tensor out = attend_span(qs, ks, vs, in.query_positions, in.key_positions, c.window, order);
      std::vector<torch::Tensor> result;
      const auto backward = [&] {
        const torch::Tensor probe = torch::linspace(-1, 1, out.numel()).reshape(out.sizes());
        result = torch::autograd::grad({(out * probe).sum()}, {qs, ks, vs}, {}, /*retain_graph=*/true,
                                       /*create_graph=*/order == Order::kSecond);
        if (order == Order::kSecond) {
          const torch::Tensor objective = (result[0] * result[0]).sum() + (result[1] * result[2]).sum();
          for (const torch::Tensor& g : torch::autograd::grad({objective}, {qs, ks, vs})) result.push_back(g);
        }
      };
      if (other_thread) {
        std::exception_ptr error;
        std::thread([&] {
          try {
            backward();
          } catch (...) {
            error = std::current_exception();
          }
        }).join();
        if (error) std::rethrow_exception(error);
      } else {
        backward();
      }
      return result;
    };
    const std::vector<torch::Tensor> here = derivatives(false), there = derivatives(true);
    ASSERT_EQ(here.size(), there.size());
    for (size_t i = 0; i < here.size(); ++i) EXPECT_TRUE(torch::equal(here[i], there[i])) << i;
  }
}

TEST(Layers, TokenNllAndMaskedMeanLoss) {
  torch::manual_seed(6);
  const torch::Tensor logits = randn({4, 5});
  const torch::Tensor targets = torch::tensor(std::vector<int64_t>{3, 1, 0, 1});
  const torch::Tensor nll = token_nll(logits, targets);
  double valid_sum = 0;
  for (int t = 0; t < 4; ++t) {
    double log_sum = 0;
    for (int v = 0; v < 5; ++v) log_sum += std::exp(logits[t][v].item<double>());
    const double expected = std::log(log_sum) - logits[t][targets[t].item<int64_t>()].item<double>();
    EXPECT_NEAR(nll[t].item<double>(), expected, 1e-12);
    if (targets[t].item<int64_t>() != 1) valid_sum += expected;
  }
  // Targets equal to bos (1 here) carry no loss.
  EXPECT_NEAR(masked_mean_loss(nll, targets, 1).item<double>(), valid_sum / 2, 1e-12);
  // A span with no valid target has loss 0, not NaN.
  EXPECT_EQ(masked_mean_loss(nll, torch::ones({4}, torch::kInt64), 1).item<double>(), 0.0);
}

TEST(Layers, LossIsComputedInAtLeastFp32) {
  const torch::Tensor logits = torch::randn({2, 50}).to(torch::kBFloat16);
  EXPECT_EQ(token_nll(logits, torch::tensor(std::vector<int64_t>{0, 1})).scalar_type(), torch::kFloat32);
}

}  // namespace
}  // namespace ttt
