// The inner loop of SPEC section 5 against a step-by-step re-derivation.
#include <gtest/gtest.h>

#include <torch/autograd.h>

#include <algorithm>
#include <cmath>

#include "model/compute.h"
#include "model/layers.h"
#include "model/transformer.h"
#include "test_util.h"
#include "ttt/inner_loop.h"
#include "ttt_build_features.h"

#if TTT_WITH_CUDA_KERNELS
#include "kernels/inner_step.h"
#include "model/kernel_launch.h"
#endif

namespace ttt {
namespace {

using test::random_params;
using test::random_tokens;
using test::tiny_config;

// Chunk-by-chunk TTT written out directly: for each chunk, the logits with the current
// weights and the cache of earlier chunks, then W -= lr * s * grad with s computed here.
std::vector<torch::Tensor> reference_chunk_nlls(const ModelConfig& c, const Params& p, const torch::Tensor& tokens,
                                                std::vector<double>* grad_norms = nullptr) {
  const int64_t n = tokens.size(0) - 1;
  KvCache cache = KvCache::window(c);
  FastWeights w = initial_fast_weights(c, p);
  std::vector<torch::Tensor> nlls;
  for (int64_t start = 0; start < n; start += c.mini_batch) {
    const int64_t len = std::min(c.mini_batch, n - start);
    std::vector<torch::Tensor> flat;
    for (auto& m : w) {
      m = {m.w1.detach().requires_grad_(), m.w2.detach().requires_grad_(), m.w3.detach().requires_grad_()};
      flat.insert(flat.end(), {m.w1, m.w2, m.w3});
    }
    const torch::Tensor logits =
        forward_span(c, p, tokens.narrow(0, start, len), torch::arange(start, start + len), cache, &w);
    const torch::Tensor targets = tokens.narrow(0, start + 1, len);
    const torch::Tensor nll = token_nll(logits, targets);
    nlls.push_back(nll.detach());
    cache.detach();
    const auto grads = torch::autograd::grad({masked_mean_loss(nll, targets, c.bos_id)}, flat);
    double norm = 0;
    for (const auto& g : grads) norm += g.pow(2).sum().item<double>();
    norm = std::sqrt(norm);
    if (grad_norms) grad_norms->push_back(norm);
    const double s = c.inner_clip > 0 ? std::min(1.0, c.inner_clip / norm) : 1.0;
    for (size_t i = 0; i < w.size(); ++i) {
      w[i] = {(w[i].w1 - c.inner_lr * s * grads[3 * i]).detach(), (w[i].w2 - c.inner_lr * s * grads[3 * i + 1]).detach(),
              (w[i].w3 - c.inner_lr * s * grads[3 * i + 2]).detach()};
    }
  }
  return nlls;
}

TEST(InnerLoop, MatchesStepByStepDerivation) {
  for (double clip : {0.0, 1e3, 0.05}) {  // off, inactive, active
    ModelConfig c = tiny_config(Variant::kTttE2E);
    c.inner_clip = clip;
    const Params p = random_params(c, 51, 0.3);
    const torch::Tensor tokens = random_tokens(15, c.vocab_size, 52, {6});
    std::vector<double> norms;
    const auto expected = reference_chunk_nlls(c, p, tokens, &norms);
    const SequenceResult run = run_sequence(c, p, tokens);
    EXPECT_TRUE(torch::allclose(run.nll, torch::cat(expected), 1e-10, 1e-12)) << "clip " << clip;
    EXPECT_EQ(run.inner_steps, 4);  // 14 targets: chunks of 3,3,3,3,2; no step after the last
    // The clip settings really were off/inactive/active.
    for (size_t i = 0; i + 1 < norms.size(); ++i) {
      if (clip == 1e3) EXPECT_LT(norms[i], clip);
      if (clip == 0.05) EXPECT_GT(norms[i], clip);
    }
  }
}

TEST(InnerLoop, ChunkLossIsRecordedBeforeItsUpdateAndLearningChangesLaterChunks) {
  const ModelConfig c = tiny_config(Variant::kTttE2E);
  ModelConfig frozen = c;
  frozen.inner_lr = 0;
  const Params p = random_params(c, 61, 0.3);
  const torch::Tensor tokens = random_tokens(13, c.vocab_size, 62);
  const torch::Tensor learning = run_sequence(c, p, tokens).nll;
  const torch::Tensor fixed = run_sequence(frozen, p, tokens).nll;
  // The first chunk is predicted by W_0 in both; every later one by trained weights.
  EXPECT_TRUE(torch::equal(learning.narrow(0, 0, c.mini_batch), fixed.narrow(0, 0, c.mini_batch)));
  EXPECT_GT((learning.narrow(0, c.mini_batch, 9) - fixed.narrow(0, c.mini_batch, 9)).abs().max().item<double>(), 1e-4);
}

TEST(InnerLoop, ZeroInnerLearningRateIsTheNetworkWithoutUpdates) {
  ModelConfig c = tiny_config(Variant::kTttE2E);
  c.inner_lr = 0;
  const Params p = random_params(c, 71, 0.3);
  const torch::Tensor tokens = random_tokens(16, c.vocab_size, 72, {4});
  const SequenceResult run = run_sequence(c, p, tokens);
  // The same network in one pass over the sequence, prime MLPs fixed at W_0.
  KvCache cache = KvCache::window(c);
  const FastWeights w0 = initial_fast_weights(c, p);
  const torch::Tensor logits = forward_span(c, p, tokens.narrow(0, 0, 15), torch::arange(15), cache, &w0);
  const torch::Tensor nll = token_nll(logits, tokens.narrow(0, 1, 15));
  EXPECT_TRUE(torch::allclose(run.nll, nll, 1e-12, 1e-12));
  EXPECT_EQ(run.inner_steps, 4);
}

TEST(InnerLoop, SequenceLossIsTheMeanOfChunkLosses) {
  for (Variant v : {Variant::kSlidingWindow, Variant::kTttE2E, Variant::kFullAttention}) {
    const ModelConfig c = tiny_config(v);
    const Params p = random_params(c, 81, 0.3);
    const torch::Tensor tokens = random_tokens(12, c.vocab_size, 82, {2, 3, 4});  // chunk 1: two of three masked
    const SequenceResult run = run_sequence(c, p, tokens);
    const torch::Tensor targets = tokens.narrow(0, 1, 11);
    double expected = 0;
    if (v == Variant::kFullAttention) {
      expected = masked_mean_loss(run.nll, targets, c.bos_id).item<double>();
    } else {
      for (int64_t start = 0; start < 11; start += 3) {
        const int64_t len = std::min<int64_t>(3, 11 - start);
        expected += masked_mean_loss(run.nll.narrow(0, start, len), targets.narrow(0, start, len), c.bos_id)
                        .item<double>() / 4;
      }
    }
    EXPECT_NEAR(run.loss.item<double>(), expected, 1e-12) << variant_name(v);
  }
}

TEST(InnerLoop, ChunkWithoutValidTargetsTakesAZeroStep) {
  const ModelConfig c = tiny_config(Variant::kTttE2E);
  const Params p = random_params(c, 91, 0.3);
  const torch::Tensor tokens = random_tokens(10, c.vocab_size, 92, {1, 2, 3});  // every target of chunk 1 is bos
  const FastWeights w0 = initial_fast_weights(c, p);
  KvCache cache = KvCache::window(c);
  FastWeights leaves;
  for (const auto& m : w0) leaves.push_back({m.w1.clone().requires_grad_(), m.w2.clone().requires_grad_(),
                                             m.w3.clone().requires_grad_()});
  const torch::Tensor logits = forward_span(c, p, tokens.narrow(0, 0, 3), torch::arange(3), cache, &leaves);
  const torch::Tensor loss = masked_mean_loss(token_nll(logits, tokens.narrow(0, 1, 3)), tokens.narrow(0, 1, 3), 1);
  const FastWeights w1 = inner_step(c, leaves, loss, inner_step_size(c, 1.0, loss), OuterGradient::kExact);
  EXPECT_EQ(loss.item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(w1[0].w1, w0[0].w1));
  // The second order through the clip stays finite: the norm of a zero gradient is guarded.
  const auto second = torch::autograd::grad({w1[0].w1.sum() + w1[1].w2.sum()}, {leaves[0].w1, leaves[1].w2});
  for (const auto& g : second) EXPECT_TRUE(torch::isfinite(g).all().item<bool>());
}

// Fast weights of odd shapes (also sizes that are no multiple of 4: the kernel's single-value
// path), a loss whose gradient w.r.t. each leaf is a known tensor (c_i, in the leaf's dtype).
struct StepCase {
  FastWeights weights, leaves;
  torch::Tensor loss;
  std::vector<torch::Tensor> grads;  // the exact gradients, in the weights' dtype
};
StepCase step_case(const torch::TensorOptions& options, double grad_scale, uint64_t seed) {
  torch::manual_seed(seed);
  StepCase x;
  const std::vector<std::vector<int64_t>> shapes = {{8, 16}, {16, 8}, {8, 16}, {5, 7}, {7, 5}, {5, 7}};
  for (size_t i = 0; i < shapes.size(); i += 3) {
    x.weights.push_back(
        {torch::randn(shapes[i], options), torch::randn(shapes[i + 1], options), torch::randn(shapes[i + 2], options)});
  }
  x.leaves = fast_weight_leaves(x.weights);
  x.loss = torch::zeros({}, options);
  for (const torch::Tensor& leaf : flatten(x.leaves)) {
    const torch::Tensor c = (torch::randn(leaf.sizes(), options) * grad_scale).to(leaf.scalar_type());
    x.loss = x.loss + (leaf * c).sum().to(options.dtype());
    x.grads.push_back(c.to(options.dtype()));
  }
  return x;
}

// W - step * min(1, clip / ||g||) * g written out in fp64.
std::vector<torch::Tensor> expected_step(const ModelConfig& c, const StepCase& x, double step) {
  double squares = 0;
  for (const auto& g : x.grads) squares += g.to(torch::kFloat64).pow(2).sum().item<double>();
  const double norm = squares > 0 ? std::sqrt(squares) : 1.0;
  const double s = c.inner_clip > 0 ? std::min(1.0, c.inner_clip / norm) : 1.0;
  std::vector<torch::Tensor> out;
  const std::vector<torch::Tensor> flat = flatten(x.weights);
  for (size_t i = 0; i < flat.size(); ++i)
    out.push_back(flat[i].to(torch::kFloat64).cpu() - step * s * x.grads[i].to(torch::kFloat64).cpu());
  return out;
}

void expect_step(const ModelConfig& c, const torch::TensorOptions& options, std::optional<torch::Dtype> matmul,
                 double tolerance) {
  const MatmulDtypeGuard guard(matmul);
  for (double grad_scale : {1.0, 0.0}) {  // the second: a zero gradient, its norm taken at 1
    const StepCase x = step_case(options, grad_scale, 7);
    for (const auto& leaf : flatten(x.leaves))
      EXPECT_EQ(leaf.scalar_type(), matmul.value_or(options.dtype().toScalarType()));
    const torch::Tensor step = inner_step_size(c, 1.0, x.loss);
    const std::vector<torch::Tensor> got = flatten(inner_step_from_leaves(c, x.weights, x.leaves, x.loss, step));
    const std::vector<torch::Tensor> want = expected_step(c, x, c.inner_lr);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].scalar_type(), options.dtype().toScalarType());
      EXPECT_FALSE(got[i].requires_grad());
      EXPECT_TRUE(torch::allclose(got[i].cpu().to(torch::kFloat64), want[i], tolerance, tolerance))
          << "clip " << c.inner_clip << " tensor " << i << " grad scale " << grad_scale;
    }
  }
}

TEST(InnerLoop, StepFromLeavesInTheMatmulDtype) {
  for (double clip : {0.0, 1e6, 0.5}) {  // off, inactive, active
    ModelConfig c = tiny_config(Variant::kTttE2E);
    c.inner_clip = clip;
    c.inner_lr = 0.3;
    expect_step(c, torch::TensorOptions().dtype(torch::kFloat64), std::nullopt, 1e-12);
    // bf16 leaves on fp32 weights: the gradients' bf16 values are exact, the step in fp32.
    expect_step(c, torch::TensorOptions().dtype(torch::kFloat32), torch::kBFloat16, 1e-5);
  }
}

// The step differentiated, its meta-gradient through g, the clip and the step size, against
// autograd's on the plain formula composed here: W' = W - step * min(1, clip / ||g||) * g.
// The loss makes g depend on W (tanh), the outer function's adjoint on W' (a square), so a
// gradient of the gradient reaches the backward's own formulas (a third order).
struct StepGradients {
  std::vector<torch::Tensor> first, second;  // d(outer)/d(W, step), then d(<first, e>)/dW
};
// (`third_order` false: the first gradients alone, taken without a graph.)
using Shapes = std::vector<std::vector<int64_t>>;
const Shapes kOddShapes = {{8, 16}, {16, 8}, {8, 16}, {5, 7}, {7, 5}, {5, 7}};
StepGradients step_gradients(const ModelConfig& c, const torch::TensorOptions& options, bool plain,
                             const Shapes& shapes = kOddShapes, bool third_order = true, bool step_learned = true) {
  torch::manual_seed(13);
  FastWeights weights;
  std::vector<torch::Tensor> flat, targets, adjoints, probes;
  for (size_t i = 0; i < shapes.size(); i += 3) {
    const auto leaf = [&](size_t j) { return torch::randn(shapes[j], options).requires_grad_(); };
    weights.push_back({leaf(i), leaf(i + 1), leaf(i + 2)});
  }
  flat = flatten(weights);
  for (const torch::Tensor& w : flat) {
    targets.push_back(torch::randn(w.sizes(), options));
    adjoints.push_back(torch::randn(w.sizes(), options));
    probes.push_back(torch::randn(w.sizes(), options));
  }
  const torch::Tensor step = torch::full({}, 0.3, options).requires_grad_(step_learned);
  torch::Tensor loss = torch::zeros({}, options);
  for (size_t i = 0; i < flat.size(); ++i) loss = loss + (torch::tanh(flat[i]) * targets[i]).sum();
  std::vector<torch::Tensor> updated;
  if (plain) {
    const std::vector<torch::Tensor> g = torch::autograd::grad({loss}, flat, {}, true, true);
    torch::Tensor squares = torch::zeros({}, options);
    for (const torch::Tensor& t : g) squares = squares + t.pow(2).sum();
    const torch::Tensor scale = c.inner_clip > 0 ? c.inner_clip / torch::clamp_min(torch::sqrt(squares), c.inner_clip)
                                                 : torch::ones({}, options);
    for (size_t i = 0; i < flat.size(); ++i) updated.push_back(flat[i] - step * scale * g[i]);
  } else {
    updated = flatten(inner_step(c, weights, loss, step, OuterGradient::kExact));
  }
  torch::Tensor outer = torch::zeros({}, options);
  for (size_t i = 0; i < flat.size(); ++i) outer = outer + (updated[i] * adjoints[i] + 0.1 * updated[i].pow(2)).sum();
  std::vector<torch::Tensor> wrt = flat;
  if (step_learned) wrt.push_back(step);
  StepGradients out;
  out.first = torch::autograd::grad({outer}, wrt, {}, true, third_order);
  if (!third_order) return out;
  torch::Tensor probe = step_learned ? out.first.back() : torch::zeros({}, options);
  for (size_t i = 0; i < flat.size(); ++i) probe = probe + (out.first[i] * probes[i]).sum();
  out.second = torch::autograd::grad({probe}, flat);
  return out;
}

TEST(InnerLoop, StepBackwardIsAutogradsOnThePlainForm) {
  // A constant step size without a clip: the backward keeps no g (dg = -step A).
  for (const bool step_learned : {true, false}) {
    for (double clip : {0.0, 1e6, 0.5}) {  // off, inactive, active
      SCOPED_TRACE(step_learned ? "step size learned" : "step size constant");
      ModelConfig c = tiny_config(Variant::kTttE2E);
      c.inner_clip = clip;
      const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
      const StepGradients got = step_gradients(c, f64, false, kOddShapes, true, step_learned),
                          want = step_gradients(c, f64, true, kOddShapes, true, step_learned);
      for (size_t i = 0; i < want.first.size(); ++i) {
        EXPECT_TRUE(torch::allclose(got.first[i], want.first[i], 1e-12, 1e-12)) << "clip " << clip << " first " << i;
      }
      for (size_t i = 0; i < want.second.size(); ++i) {
        EXPECT_TRUE(torch::allclose(got.second[i], want.second[i], 1e-12, 1e-12)) << "clip " << clip << " second " << i;
      }
      // The clip binds at 0.5 (the meta-gradient then has the clip's own term).
      if (clip == 0.5 && step_learned) {
        ModelConfig off = c;
        off.inner_clip = 0;
        EXPECT_FALSE(torch::allclose(got.first.back(), step_gradients(off, f64, false).first.back()));
      }
    }
  }
}

TEST(InnerLoopOnCuda, FusedStepIsTheStep) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  for (double clip : {0.0, 1e6, 0.5}) {
    ModelConfig c = tiny_config(Variant::kTttE2E);
    c.inner_clip = clip;
    c.inner_lr = 0.3;
    const auto cuda = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
    for (auto matmul : {std::optional<torch::Dtype>(torch::kBFloat16), std::optional<torch::Dtype>(torch::kHalf),
                        std::optional<torch::Dtype>()}) {
      expect_step(c, cuda, matmul, 1e-5);
    }
  }
  // Large tensors (many blocks a tensor, 16-byte packs), against the plain ops on the GPU.
  ModelConfig c = tiny_config(Variant::kTttE2E);
  c.inner_clip = 1.0;
  const auto cuda = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  torch::manual_seed(3);
  const FastWeights weights{
      {torch::randn({768, 2048}, cuda), torch::randn({2048, 768}, cuda), torch::randn({768, 2048}, cuda)}};
  const MatmulDtypeGuard guard(torch::kBFloat16);
  const FastWeights leaves = fast_weight_leaves(weights);
  std::vector<torch::Tensor> grads;
  for (const auto& leaf : flatten(leaves)) grads.push_back(torch::randn(leaf.sizes(), cuda).to(torch::kBFloat16));
  const auto loss = [&] {  // its gradients are `grads`
    torch::Tensor sum = torch::zeros({}, cuda);
    for (size_t i = 0; i < grads.size(); ++i) sum = sum + (flatten(leaves)[i] * grads[i]).sum().to(torch::kFloat32);
    return sum;
  };
  const torch::Tensor step = inner_step_size(c, 1.0, weights[0].w1);
  const std::vector<torch::Tensor> got = flatten(inner_step_from_leaves(c, weights, leaves, loss(), step));
  torch::Tensor squares = torch::zeros({}, cuda);
  for (const auto& g : grads) squares = squares + g.to(torch::kFloat32).pow(2).sum();
  const torch::Tensor factor = step * (c.inner_clip / torch::clamp_min(torch::sqrt(squares), c.inner_clip));
  const std::vector<torch::Tensor> flat = flatten(weights);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_TRUE(torch::allclose(got[i], flat[i] - factor * grads[i].to(torch::kFloat32), 1e-6, 1e-6)) << i;
  }
  // Run to run the same bits: the partials are summed in one order.
  const std::vector<torch::Tensor> again = flatten(inner_step_from_leaves(c, weights, leaves, loss(), step));
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(torch::equal(got[i], again[i])) << i;
}

// The same on the GPU without a third order: the backward in kernels, on the shapes of a 125M
// model's fast weights, against autograd's on the plain form in fp32.
TEST(InnerLoopOnCuda, StepBackwardKernelsAreThePlainForm) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const auto cuda = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  const Shapes shapes = {{768, 2048}, {2048, 768}, {768, 2048}, {5, 7}, {7, 5}, {5, 7}};
  for (double clip : {0.0, 1e9, 0.5}) {
    ModelConfig c = tiny_config(Variant::kTttE2E);
    c.inner_clip = clip;
    const StepGradients got = step_gradients(c, cuda, false, shapes, false);
    const StepGradients want = step_gradients(c, cuda, true, shapes, false);
    for (size_t i = 0; i < want.first.size(); ++i) {
      const double scale = want.first[i].abs().max().item<double>();
      EXPECT_TRUE(torch::allclose(got.first[i], want.first[i], 1e-5, 1e-5 * scale)) << "clip " << clip << " " << i;
    }
  }
}

#if TTT_WITH_CUDA_KERNELS
// The kernels called directly (the test above passes on the plain fallback too): block b's
// sum of squares lands in partials[b], the update takes the clipped norm's factor, and without
// a clip no squares are summed at all.
TEST(InnerLoopOnCuda, ClippedSgdKernelsSumTheSquaresAndStep) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const auto cuda = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  torch::manual_seed(5);
  for (int64_t n : {int64_t{3 * 4096}, int64_t{4097}}) {  // 16-byte packs; one value a thread
    for (double clip : {0.0, 2.0, 1e9}) {
      const std::vector<torch::Tensor> weights{torch::randn({n}, cuda), torch::randn({n - 2048}, cuda)};
      std::vector<torch::Tensor> grads, out;
      std::vector<kernels::SgdTensor> described;
      for (const auto& w : weights) {
        grads.push_back(torch::randn_like(w).to(torch::kBFloat16));
        out.push_back(torch::empty_like(w));
        described.push_back({w.data_ptr<float>(), grads.back().data_ptr(), out.back().data_ptr<float>(), w.numel()});
      }
      const torch::Tensor step = torch::full({}, 0.3, cuda);
      const torch::Tensor partials = torch::full({kernels::clipped_sgd_partials()}, NAN, cuda);
      check("clipped_sgd_step",
            kernels::clipped_sgd_step(described.data(), static_cast<int>(described.size()), kernels::Storage::kBFloat16,
                                      step.data_ptr<float>(), static_cast<float>(clip), partials.data_ptr<float>(),
                                      stream()));
      double squares = 0;
      for (const auto& g : grads) squares += g.to(torch::kFloat64).pow(2).sum().item<double>();
      if (clip > 0) {
        EXPECT_NEAR(partials.to(torch::kFloat64).sum().item<double>(), squares, 1e-5 * squares) << n << " " << clip;
      } else {
        EXPECT_TRUE(partials.isnan().all().item<bool>()) << n;
      }
      const double factor = 0.3 * (clip > 0 ? std::min(1.0, clip / std::sqrt(squares)) : 1.0);
      for (size_t i = 0; i < weights.size(); ++i) {
        const torch::Tensor want = weights[i] - static_cast<float>(factor) * grads[i].to(torch::kFloat32);
        EXPECT_TRUE(torch::allclose(out[i], want, 1e-6, 1e-6)) << n << " " << clip << " " << i;
      }
    }
  }
}

// The backward's kernels on bf16 gradients (which the engine's backward does not meet: its g
// are fp32), one adjoint null (zero), against the formulas in fp64; then d(step) alone.
TEST(InnerLoopOnCuda, ClippedSgdBackwardKernels) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const auto cuda = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  torch::manual_seed(6);
  for (int64_t n : {int64_t{3 * 4096}, int64_t{4097}}) {
    for (double clip : {0.0, 2.0, 1e9}) {
      const std::vector<torch::Tensor> grads{torch::randn({n}, cuda).to(torch::kBFloat16),
                                             torch::randn({n - 2048}, cuda).to(torch::kBFloat16)};
      const std::vector<torch::Tensor> adjoints{torch::randn({n}, cuda), torch::Tensor()};
      std::vector<torch::Tensor> out;
      std::vector<kernels::SgdAdjoint> described;
      for (size_t i = 0; i < grads.size(); ++i) {
        out.push_back(torch::empty_like(grads[i]));
        described.push_back({adjoints[i].defined() ? adjoints[i].data_ptr<float>() : nullptr, grads[i].data_ptr(),
                             out.back().data_ptr(), grads[i].numel()});
      }
      const torch::Tensor step = torch::full({}, 0.3, cuda), step_grad = torch::full({}, NAN, cuda);
      const torch::Tensor partials = torch::empty({kernels::clipped_sgd_backward_partials()}, cuda);
      check("clipped_sgd_backward",
            kernels::clipped_sgd_backward(described.data(), 2, kernels::Storage::kBFloat16, step.data_ptr<float>(),
                                          static_cast<float>(clip), partials.data_ptr<float>(),
                                          step_grad.data_ptr<float>(), stream()));
      const auto f64 = [](const torch::Tensor& t) { return t.to(torch::kFloat64).cpu(); };
      const double squares = (f64(grads[0]).pow(2).sum() + f64(grads[1]).pow(2).sum()).item<double>();
      const double dot = (f64(adjoints[0]) * f64(grads[0])).sum().item<double>();
      const double norm = std::sqrt(squares);
      const bool binds = clip > 0 && norm > clip;
      const double scale = binds ? clip / norm : 1.0, factor = 0.3 * scale;
      const double coef = binds ? factor * dot / squares : 0.0;
      EXPECT_NEAR(step_grad.item<double>(), -scale * dot, 1e-4 * std::abs(dot)) << n << " " << clip;
      const torch::Tensor want0 = coef * f64(grads[0]) - factor * f64(adjoints[0]), want1 = coef * f64(grads[1]);
      EXPECT_TRUE(torch::allclose(f64(out[0]), want0, 1e-2, 1e-2)) << n << " " << clip;  // dg rounded to bf16
      EXPECT_TRUE(torch::allclose(f64(out[1]), want1, 1e-2, 1e-2 * std::abs(coef) + 1e-30)) << n << " " << clip;

      // d(step) alone: no dg asked (null outputs), none written, the same d(step).
      const torch::Tensor untouched = out[0].clone(), step_grad_alone = torch::full({}, NAN, cuda);
      for (auto& d : described) d.grad_out = nullptr;
      check("clipped_sgd_backward",
            kernels::clipped_sgd_backward(described.data(), 2, kernels::Storage::kBFloat16, step.data_ptr<float>(),
                                          static_cast<float>(clip), partials.data_ptr<float>(),
                                          step_grad_alone.data_ptr<float>(), stream()));
      EXPECT_TRUE(torch::equal(step_grad_alone, step_grad)) << n << " " << clip;
      EXPECT_TRUE(torch::equal(out[0], untouched)) << n << " " << clip;
    }
  }
}
#endif

}  // namespace
}  // namespace ttt
