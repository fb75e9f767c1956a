// Devices and precision (model/compute.h): the flags, the matmul dtype, bf16 matmuls within
// bf16 tolerance of the fp64 reference, and, where a CUDA GPU is visible, the GPU engine
// (fused attention, evaluation, the meta-gradient, sessions) against the CPU fp64 reference.
// The CUDA tests skip on machines without a GPU; scripts/gpu.sh runs them on one.
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include "common/error.h"
#include "eval/evaluate.h"
#include "infer/session.h"
#include "model/compute.h"
#include "model/layers.h"
#include "test_files.h"
#include "test_util.h"
#include "ttt_build_features.h"

namespace ttt {
namespace {

using test::random_params;
using test::random_tokens;

// Large enough for the GPU kernels' shapes (head dim 16), small enough for the CPU fp64
// reference: 4 blocks, window 32 over chunks of 16.
ModelConfig small_config(Variant variant) {
  ModelConfig c = test::tiny_config(variant);
  c.vocab_size = 97;
  c.d_model = 64;
  c.n_heads = 4;
  c.d_ff = 96;
  c.window = variant == Variant::kFullAttention ? 0 : 32;
  c.mini_batch = 16;
  c.validate();
  return c;
}

double relative_error(const torch::Tensor& value, const torch::Tensor& reference) {
  const torch::Tensor a = value.detach().to(torch::kCPU, torch::kFloat64);
  const torch::Tensor b = reference.detach().to(torch::kCPU, torch::kFloat64);
  return (a - b).norm().item<double>() / std::max(b.norm().item<double>(), 1e-30);
}

double max_abs_difference(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

// Evaluation in the given precision on the device, through params_for_inference.
EvalResult evaluate_on(const ModelConfig& c, const Params& params64, const torch::Tensor& tokens,
                       const ComputeOptions& compute) {
  const MatmulDtypeGuard precision(compute.matmul_dtype);
  const Params params = params_for_inference(c, convert_params(c, params64, torch::kFloat32), compute);
  return evaluate(c, params, tokens.to(compute.device));
}

const Variant kVariants[] = {Variant::kTttE2E, Variant::kSlidingWindow, Variant::kFullAttention};

TEST(Compute, ParsesDevicesAndPrecisions) {
  EXPECT_EQ(parse_device("cpu"), torch::Device(torch::kCPU));
  test::expect_error([] { parse_device("tpu"); }, {"unknown device 'tpu'"});
  test::expect_error([] { parse_device("cuda:x"); }, {"bad device 'cuda:x'"});
  if (!torch::cuda::is_available()) test::expect_error([] { parse_device("cuda"); }, {"no CUDA GPU"});
  EXPECT_FALSE(parse_matmul_dtype("auto", torch::kCPU).has_value());
  EXPECT_EQ(parse_matmul_dtype("auto", torch::Device(torch::kCUDA, 0)), torch::kBFloat16);
  EXPECT_EQ(parse_matmul_dtype("bf16", torch::kCPU), torch::kBFloat16);
  EXPECT_EQ(parse_matmul_dtype("bf16", torch::Device(torch::kCUDA, 0)), torch::kBFloat16);
  EXPECT_FALSE(parse_matmul_dtype("f32", torch::Device(torch::kCUDA, 0)).has_value());
  EXPECT_FALSE(parse_matmul_dtype("f64", torch::kCPU).has_value());
  EXPECT_EQ(parse_param_dtype("auto"), torch::kFloat32);
  EXPECT_EQ(parse_param_dtype("bf16"), torch::kFloat32);
  EXPECT_EQ(parse_param_dtype("f64"), torch::kFloat64);
  test::expect_error([] { parse_matmul_dtype("f16", torch::kCPU); }, {"unknown precision 'f16'"});
  test::expect_error([] { parse_param_dtype("fp32"); }, {"unknown precision 'fp32'"});
}

TEST(Compute, MatmulDtypeGuardsNestAndRestore) {
  EXPECT_FALSE(matmul_dtype().has_value());
  {
    const MatmulDtypeGuard outer(torch::kBFloat16);
    EXPECT_EQ(matmul_dtype(), torch::kBFloat16);
    {
      const MatmulDtypeGuard inner(std::nullopt);
      EXPECT_FALSE(matmul_dtype().has_value());
    }
    EXPECT_EQ(matmul_dtype(), torch::kBFloat16);
  }
  EXPECT_FALSE(matmul_dtype().has_value());
}

TEST(Compute, InferenceParamsCastMatricesButNotFastWeightsOrGains) {
  const ModelConfig c = small_config(Variant::kTttE2E);
  const Params params = params_for_inference(c, random_params(c, 1, 0.1, torch::kFloat32),
                                             ComputeOptions{torch::kCPU, torch::kBFloat16});
  EXPECT_EQ(params.embed.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(params.blocks[0].attn.wq.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(params.blocks.back().mlp.w2.scalar_type(), torch::kBFloat16);
  for (const torch::Tensor& w : flatten(initial_fast_weights(c, params))) EXPECT_EQ(w.scalar_type(), torch::kFloat32);
  EXPECT_EQ(params.final_norm.scalar_type(), torch::kFloat32);
  EXPECT_EQ(inference_matmul_dtype(params), torch::kBFloat16);
}

// The precision rules themselves, checked on the CPU: bf16 matmuls change the numbers (they
// did happen) by no more than bf16 rounding does.
TEST(Compute, Bf16MatmulsStayWithinBf16OfTheReference) {
  for (Variant variant : kVariants) {
    SCOPED_TRACE(variant_name(variant));
    const ModelConfig c = small_config(variant);
    const Params params = random_params(c, 2, 0.1);
    const torch::Tensor tokens = random_tokens(70, c.vocab_size, 3, {0, 40});
    const EvalResult reference = evaluate(c, params, tokens);
    const EvalResult fp32 = evaluate_on(c, params, tokens, {torch::kCPU, std::nullopt});
    const EvalResult bf16 = evaluate_on(c, params, tokens, {torch::kCPU, torch::kBFloat16});
    EXPECT_NEAR(fp32.loss, reference.loss, 1e-5 * reference.loss);
    EXPECT_NEAR(bf16.loss, reference.loss, 2e-2 * reference.loss);
    EXPECT_GT(std::abs(bf16.loss - fp32.loss), 1e-7);
    // CPU bf16 GEMMs round differently by processor (0.106 seen on an AMD EPYC without
    // AVX512-BF16): a bound on bf16 noise, not on one machine's rounding.
    EXPECT_LT(max_abs_difference(bf16.nll, reference.nll), 0.15);
    EXPECT_EQ(bf16.inner_steps, reference.inner_steps);
  }
}

class OnCuda : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  }
  const torch::Device cuda_{torch::kCUDA, 0};
};

TEST_P(OnCuda, EvaluationMatchesTheCpuReference) {
  const ModelConfig c = small_config(GetParam());
  const Params params = random_params(c, 4, 0.1);
  const torch::Tensor tokens = random_tokens(150, c.vocab_size, 5, {0, 77});
  const EvalResult reference = evaluate(c, params, tokens);
  const EvalResult fp32 = evaluate_on(c, params, tokens, {cuda_, std::nullopt});
  const EvalResult bf16 = evaluate_on(c, params, tokens, {cuda_, torch::kBFloat16});
  EXPECT_NEAR(fp32.loss, reference.loss, 1e-4 * reference.loss);
  EXPECT_LT(max_abs_difference(fp32.nll, reference.nll), 1e-3);
  EXPECT_NEAR(bf16.loss, reference.loss, 2e-2 * reference.loss);
  EXPECT_LT(max_abs_difference(bf16.nll, reference.nll), 0.1);
  EXPECT_EQ(bf16.inner_steps, reference.inner_steps);
}

TEST_P(OnCuda, GradientMatchesTheCpuReference) {
  const ModelConfig c = small_config(GetParam());
  const Params params = random_params(c, 6, 0.1);
  const torch::Tensor tokens = random_tokens(60, c.vocab_size, 7, {0, 33});
  const GradResult reference = gradient(c, params, tokens);
  const Params on_cuda = convert_params(c, params, torch::kFloat32, false, cuda_);
  for (const std::optional<torch::Dtype> dtype : {std::optional<torch::Dtype>(), std::optional(torch::kBFloat16)}) {
    SCOPED_TRACE(dtype ? "bf16" : "fp32");
    const MatmulDtypeGuard precision(dtype);
    const GradResult result = gradient(c, on_cuda, tokens.to(cuda_));
    const double tolerance = dtype ? 3e-2 : 1e-4;
    EXPECT_NEAR(result.loss, reference.loss, tolerance * reference.loss);
    std::vector<torch::Tensor> ours, theirs;
    for (const auto& [name, g] : reference.grads) {
      ASSERT_TRUE(result.grads.count(name)) << name;
      EXPECT_EQ(result.grads.at(name).scalar_type(), torch::kFloat32) << name;
      ours.push_back(result.grads.at(name).flatten());
      theirs.push_back(g.flatten());
    }
    EXPECT_LT(relative_error(torch::cat(ours), torch::cat(theirs)), tolerance * 3);
  }
}

TEST_P(OnCuda, SessionMatchesTheCpuSessionHoweverFed) {
  const ModelConfig c = small_config(GetParam());
  const Params params = random_params(c, 8, 0.1);
  const torch::Tensor tokens = random_tokens(75, c.vocab_size, 9, {0});
  Session reference(c, params);
  reference.feed(tokens);
  const MatmulDtypeGuard precision(torch::kBFloat16);
  const Params on_cuda =
      params_for_inference(c, convert_params(c, params, torch::kFloat32), {cuda_, torch::kBFloat16});
  Session whole(c, on_cuda), pieces(c, on_cuda);
  whole.feed(tokens);
  for (int64_t i = 0; i < tokens.size(0); i += 7) pieces.feed(tokens.narrow(0, i, std::min<int64_t>(7, tokens.size(0) - i)));
  EXPECT_EQ(whole.last_logits().device(), cuda_);
  EXPECT_EQ(whole.inner_steps(), reference.inner_steps());
  EXPECT_EQ(pieces.inner_steps(), reference.inner_steps());
  EXPECT_LT(relative_error(whole.last_logits(), reference.last_logits()), 3e-2);
  EXPECT_LT(relative_error(pieces.last_logits(), reference.last_logits()), 3e-2);
}

// A document read on the GPU can be queried on the CPU and back: the saved state moves
// between devices and precisions, and the weights' fingerprint still matches.
TEST_P(OnCuda, SessionsMoveBetweenDevices) {
  const ModelConfig c = small_config(GetParam());
  const Params params = convert_params(c, random_params(c, 10, 0.1), torch::kFloat32);
  const torch::Tensor tokens = random_tokens(60, c.vocab_size, 11, {0});
  const test::ScratchDir dir;
  const Params on_cuda = params_for_inference(c, params, {cuda_, torch::kBFloat16});
  Session gpu(c, on_cuda), cpu(c, params), reference(c, params);
  gpu.feed(tokens.narrow(0, 0, 37));
  gpu.save(dir.path("gpu.safetensors"));
  cpu.restore(dir.path("gpu.safetensors"));
  reference.feed(tokens.narrow(0, 0, 37));
  EXPECT_EQ(cpu.position(), 37);
  cpu.feed(tokens.narrow(0, 37, 23));
  reference.feed(tokens.narrow(0, 37, 23));
  EXPECT_EQ(cpu.inner_steps(), reference.inner_steps());
  EXPECT_LT(relative_error(cpu.last_logits(), reference.last_logits()), 3e-2);
  cpu.save(dir.path("cpu.safetensors"));
  gpu.restore(dir.path("cpu.safetensors"));
  EXPECT_LT(relative_error(gpu.feed(tokens.narrow(0, 50, 5)), cpu.feed(tokens.narrow(0, 50, 5))), 3e-2);
}

INSTANTIATE_TEST_SUITE_P(Variants, OnCuda, ::testing::ValuesIn(kVariants),
                         [](const auto& info) { return std::string(info.param == Variant::kTttE2E ? "ttt_e2e"
                                                                   : info.param == Variant::kSlidingWindow ? "swa"
                                                                                                           : "fa"); });

// Every shape the engine hands the fused kernels: a causal square, a single query, the
// band of a window, a span after a cache; against the composable attention in fp64.
TEST(OnCudaAttention, FusedKernelsMatchTheComposableReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  struct Shape {
    int64_t cached, span, window;
  };
  for (const Shape s : {Shape{0, 64, 0}, Shape{0, 64, 16}, Shape{40, 1, 0}, Shape{15, 1, 16}, Shape{31, 16, 32},
                        Shape{10, 16, 32}, Shape{15, 40, 16}, Shape{100, 24, 0}}) {
    SCOPED_TRACE(std::to_string(s.cached) + " cached, span " + std::to_string(s.span) + ", window " +
                 std::to_string(s.window));
    torch::manual_seed(11);
    const int64_t Tk = s.cached + s.span, H = 4, d = 16;
    const torch::Tensor q = torch::randn({s.span, H, d}, torch::kFloat64);
    const torch::Tensor k = torch::randn({Tk, H, d}, torch::kFloat64), v = torch::randn({Tk, H, d}, torch::kFloat64);
    const torch::Tensor key_positions = torch::arange(0, Tk, torch::kInt64);
    const torch::Tensor query_positions = key_positions.narrow(0, s.cached, s.span);
    const torch::Tensor reference = attend(q, k, v, attention_mask(query_positions, key_positions, s.window));
    const auto on = [&](const torch::Tensor& t) { return t.to(cuda, t.is_floating_point() ? torch::kFloat32 : t.scalar_type()); };
    // The gradients too: the inner step differentiates through the fused kernels.
    const torch::Tensor probe = torch::randn({s.span, H * d}, torch::kFloat64);
    const std::vector<torch::Tensor> leaves = {q.detach().requires_grad_(), k.detach().requires_grad_(),
                                               v.detach().requires_grad_()};
    const std::vector<torch::Tensor> reference_grads = torch::autograd::grad(
        {(attend(leaves[0], leaves[1], leaves[2], attention_mask(query_positions, key_positions, s.window)) * probe)
             .sum()},
        leaves);
    ASSERT_TRUE(fused_attention_available(on(q)));
    for (const std::optional<torch::Dtype> dtype : {std::optional<torch::Dtype>(), std::optional(torch::kBFloat16)}) {
      const MatmulDtypeGuard precision(dtype);
      const double tolerance = dtype ? 1e-2 : 1e-5;
      std::vector<torch::Tensor> inputs;
      for (const torch::Tensor& t : leaves) inputs.push_back(on(t.detach()).requires_grad_());
      const torch::Tensor fused = attend_span(inputs[0], inputs[1], inputs[2], on(query_positions), on(key_positions), s.window);
      EXPECT_EQ(fused.scalar_type(), dtype.value_or(torch::kFloat32));
      EXPECT_LT(relative_error(fused, reference), tolerance) << (dtype ? "bf16" : "fp32");
      const std::vector<torch::Tensor> grads = torch::autograd::grad({(fused * on(probe)).sum()}, inputs);
      for (size_t i = 0; i < grads.size(); ++i) {
        EXPECT_LT(relative_error(grads[i], reference_grads[i]), 2 * tolerance) << (dtype ? "bf16" : "fp32") << " grad " << i;
      }
    }
  }
}

// The per-token NLL on the GPU (one fused kernel where built) against the composable form
// in fp64: values and the gradient the inner step takes through it, for bf16, fp16 and fp32
// logits, vocabularies with and without whole 16-byte rows.
TEST(OnCudaLoss, TokenNllMatchesTheComposableReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  for (const int64_t vocab : {4096, 1001}) {
    torch::manual_seed(vocab);
    const int64_t T = 37;
    const torch::Tensor logits = torch::randn({T, vocab}, torch::kFloat64) * 4;
    const torch::Tensor targets = torch::randint(0, vocab, {T}, torch::kInt64);
    const torch::Tensor probe = torch::rand({T}, torch::kFloat64);
    for (const torch::Dtype dtype : {torch::kBFloat16, torch::kHalf, torch::kFloat32}) {
      SCOPED_TRACE("vocab " + std::to_string(vocab) + ", " + std::string(c10::toString(dtype)));
      // The reference sees the logits as rounded to the dtype.
      const torch::Tensor rounded = logits.to(dtype).to(torch::kFloat64).requires_grad_();
      const torch::Tensor reference = token_nll(rounded, targets);
      const torch::Tensor reference_grad = torch::autograd::grad({(reference * probe).sum()}, {rounded})[0];
      const torch::Tensor input = logits.to(cuda, dtype).requires_grad_();
      const torch::Tensor nll = token_nll(input, targets.to(cuda));
      EXPECT_EQ(nll.scalar_type(), torch::kFloat32);
      EXPECT_LT(relative_error(nll, reference), 1e-5);
      const torch::Tensor grad = torch::autograd::grad({(nll * probe.to(cuda)).sum()}, {input})[0];
      EXPECT_EQ(grad.scalar_type(), dtype);
      EXPECT_LT(relative_error(grad, reference_grad), dtype == torch::kFloat32 ? 1e-5 : 1e-2);
#if TTT_WITH_CUDA_KERNELS
      EXPECT_NE(nll.grad_fn()->name().find("FusedTokenNll"), std::string::npos) << nll.grad_fn()->name();
#endif
    }
  }
}

// RMSNorm on the GPU (our kernels where built: forward, backward, the backward's backward;
// plain ops from the third order on) against the CPU's fp64 to the third order, reading and
// writing fp32 or bf16, with and without the gain's gradient.
TEST(OnCudaRmsNorm, MatchesTheCpuToTheThirdOrderInEveryDtypePair) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  for (const int64_t dim : {64, 768, 100}) {
    torch::manual_seed(dim);
    const torch::Tensor x = torch::randn({37, dim}, torch::kFloat64) * 3;
    const torch::Tensor gain = 1 + 0.1 * torch::randn({dim}, torch::kFloat64);
    for (const auto& [in, out] :
         std::vector<std::pair<torch::Dtype, torch::Dtype>>{{torch::kFloat32, torch::kFloat32},
                                                            {torch::kFloat32, torch::kBFloat16},
                                                            {torch::kBFloat16, torch::kFloat32}}) {
      for (const bool gain_grad : {true, false}) {
        SCOPED_TRACE("dim " + std::to_string(dim) + ", " + c10::toString(in) + " to " + c10::toString(out) +
                     (gain_grad ? ", with the gain's gradient" : ""));
        const auto orders = [&](int n, const torch::Device& device, torch::Dtype x_dtype, torch::Dtype gain_dtype,
                                std::optional<torch::Dtype> y_dtype) {
          const torch::Tensor xs = x.to(in).to(device, x_dtype).requires_grad_();
          const torch::Tensor gs = gain.to(device, gain_dtype).requires_grad_(gain_grad);
          std::vector<torch::Tensor> leaves = {xs};
          if (gain_grad) leaves.push_back(gs);
          return test::derivatives(
              [&] {
                const torch::Tensor y = rms_norm(xs, gs, 1e-6, y_dtype);
                EXPECT_EQ(y.scalar_type(), y_dtype.value_or(x_dtype));
                return y;
              },
              leaves, n, static_cast<uint64_t>(dim));
        };
        const auto reference = orders(3, torch::kCPU, torch::kFloat64, torch::kFloat64, std::nullopt);
        const bool narrow = in == torch::kBFloat16 || out == torch::kBFloat16;
        // To the second order, the last one without recording: the kernels' double backward.
        for (const int n : {2, 3}) {
          const auto ours = orders(n, cuda, in, torch::kFloat32, out);
          ASSERT_LE(ours.size(), reference.size());
          for (size_t i = 0; i < ours.size(); ++i) {
            EXPECT_LT(relative_error(ours[i], reference[i]), narrow ? 2e-2 : (i == 0 ? 1e-5 : 1e-4)) << n << " " << i;
          }
        }
      }
    }
  }
}

// SwiGLU on the GPU (its gate one kernel where built) against fp64: values and gradients of
// the input and every weight, in fp32 and under bf16 matmuls.
TEST(OnCudaSwiglu, MatchesTheComposableForm) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  torch::manual_seed(29);
  const std::vector<torch::Tensor> inputs = {
      torch::randn({37, 32}, torch::kFloat64), torch::randn({32, 48}, torch::kFloat64) * 0.3,
      torch::randn({48, 32}, torch::kFloat64) * 0.3, torch::randn({32, 48}, torch::kFloat64) * 0.3};
  const torch::Tensor probe = torch::randn({37, 32}, torch::kFloat64);
  const auto run = [&](const torch::Device& device, torch::Dtype dtype) {
    std::vector<torch::Tensor> leaves;
    for (const torch::Tensor& t : inputs) leaves.push_back(t.to(device, dtype).requires_grad_());
    const torch::Tensor y = swiglu(leaves[0], {leaves[1], leaves[2], leaves[3]});
    std::vector<torch::Tensor> results = {y};
    for (const torch::Tensor& g : torch::autograd::grad({(y * probe.to(device, dtype)).sum()}, leaves))
      results.push_back(g);
    return results;
  };
  const auto reference = run(torch::kCPU, torch::kFloat64);
  for (const std::optional<torch::Dtype> matmul : {std::optional<torch::Dtype>(), std::optional(torch::kBFloat16)}) {
    SCOPED_TRACE(matmul ? "bf16" : "fp32");
    const MatmulDtypeGuard precision(matmul);
    const auto fused = run(cuda, torch::kFloat32);
    EXPECT_EQ(fused[0].scalar_type(), torch::kFloat32);
    for (size_t i = 0; i < reference.size(); ++i)
      EXPECT_LT(relative_error(fused[i], reference[i]), matmul ? 2e-2 : 1e-5) << i;
  }
}

// RoPE on the GPU (one kernel where built) against the composable form in fp64: values,
// the gradient, and the gradient of the gradient (a rotation is linear: the backward is
// the inverse rotation, differentiable again).
TEST(OnCudaRope, MatchesTheComposableFormToEveryOrder) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  torch::manual_seed(17);
  const int64_t T = 33, H = 3, d = 16;
  const torch::Tensor positions = torch::arange(1000, 1000 + T, torch::kInt64);
  const torch::Tensor x = torch::randn({T, H, d}, torch::kFloat64);
  const torch::Tensor r = torch::randn({T, H, d}, torch::kFloat64);
  const torch::Tensor s = torch::randn({T, H, d}, torch::kFloat64);
  const auto orders = [&](const torch::Tensor& input, const torch::Tensor& probe, const torch::Tensor& second_probe) {
    const RopeTable table = rope_table(positions.to(input.device()), d, 500000, input.scalar_type());
    const torch::Tensor xs = input.clone().requires_grad_(), rs = probe.clone().requires_grad_();
    const torch::Tensor y = rope(xs, table);
    const torch::Tensor gx = torch::autograd::grad({(y * rs).sum()}, {xs}, {}, true, true)[0];
    const torch::Tensor gr = torch::autograd::grad({(gx * second_probe).sum()}, {rs})[0];
    return std::vector<torch::Tensor>{y, gx, gr};
  };
  const auto reference = orders(x, r, s);
  const auto fused = orders(x.to(cuda, torch::kFloat32), r.to(cuda, torch::kFloat32), s.to(cuda, torch::kFloat32));
  for (size_t i = 0; i < reference.size(); ++i) EXPECT_LT(relative_error(fused[i], reference[i]), 1e-6) << i;
  EXPECT_LT(relative_error(fused[2], rope(s, rope_table(positions, d, 500000, torch::kFloat64))), 1e-6);
#if TTT_WITH_CUDA_KERNELS
  const torch::Tensor probe = x.to(cuda, torch::kFloat32).requires_grad_();
  const torch::Tensor y = rope(probe, rope_table(positions.to(cuda), d, 500000, torch::kFloat32));
  EXPECT_NE(y.grad_fn()->name().find("FusedRope"), std::string::npos) << y.grad_fn()->name();
#endif
}

// The composable attention on the GPU (what the exact meta-gradient differentiates twice:
// attend_span at Order::kSecond; its probabilities are fused kernels where built)
// against fp64: values, first and second order, keys in and out of the window.
TEST(OnCudaAttention, ComposableFormIsExactToTheSecondOrder) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  torch::manual_seed(23);
  for (const int64_t window : {16, 0}) {
    const int64_t cached = 21, Tq = 13, Tk = cached + Tq, H = 2, d = 8;
    const torch::Tensor key_positions = torch::arange(100, 100 + Tk, torch::kInt64);
    const torch::Tensor query_positions = key_positions.narrow(0, cached, Tq);
    const std::vector<torch::Tensor> inputs = {torch::randn({Tq, H, d}, torch::kFloat64),
                                               torch::randn({Tk, H, d}, torch::kFloat64),
                                               torch::randn({Tk, H, d}, torch::kFloat64)};
    const torch::Tensor r = torch::randn({Tq, H * d}, torch::kFloat64), s = torch::randn({Tq, H, d}, torch::kFloat64);
    // The output, the inner gradient (w.r.t. q) and the gradient of <that, s> w.r.t. q, k, v.
    const auto orders = [&](const torch::Device& device, torch::Dtype dtype) {
      std::vector<torch::Tensor> leaves;
      for (const torch::Tensor& t : inputs) leaves.push_back(t.to(device, dtype).requires_grad_());
      const torch::Tensor out =
          device.is_cpu()
              ? attend(leaves[0], leaves[1], leaves[2], attention_mask(query_positions, key_positions, window))
              : attend_span(leaves[0], leaves[1], leaves[2], query_positions.to(device), key_positions.to(device),
                            window, Order::kSecond);
      const torch::Tensor gq =
          torch::autograd::grad({(out * r.to(device, out.scalar_type())).sum()}, {leaves[0]}, {}, true, true)[0];
      std::vector<torch::Tensor> results = {out, gq};
      for (const torch::Tensor& g : torch::autograd::grad({(gq * s.to(device, dtype)).sum()}, leaves)) {
        results.push_back(g);
      }
      return results;
    };
    const auto reference = orders(torch::kCPU, torch::kFloat64);
    for (const std::optional<torch::Dtype> matmul : {std::optional<torch::Dtype>(), std::optional(torch::kBFloat16)}) {
      SCOPED_TRACE(std::string(matmul ? "bf16" : "fp32") + ", window " + std::to_string(window));
      const MatmulDtypeGuard precision(matmul);
      const auto fused = orders(cuda, torch::kFloat32);
      for (size_t i = 0; i < reference.size(); ++i) {
        EXPECT_GT(reference[i].abs().max().item<double>(), 1e-3) << i;
        EXPECT_LT(relative_error(fused[i], reference[i]), matmul ? 3e-2 : 1e-5) << i;
      }
    }
  }
}

// The second order through the fused NLL (the exact meta-gradient differentiates the inner
// gradient again) against the composable form in fp64: the gradient of <d nll/d logits, r>
// with respect to the logits and to the weights of the NLLs.
TEST(OnCudaLoss, TokenNllSecondOrderMatchesTheComposableReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  for (const int64_t vocab : {4096, 1001}) {
    torch::manual_seed(vocab + 1);
    const int64_t T = 29;
    const torch::Tensor logits = torch::randn({T, vocab}, torch::kFloat64) * 3;
    const torch::Tensor targets = torch::randint(0, vocab, {T}, torch::kInt64);
    const torch::Tensor weights = torch::rand({T}, torch::kFloat64);
    const torch::Tensor probe = torch::randn({T, vocab}, torch::kFloat64);
    for (const torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16}) {
      SCOPED_TRACE("vocab " + std::to_string(vocab) + ", " + std::string(c10::toString(dtype)));
      const auto second_order = [&](const torch::Tensor& z, const torch::Tensor& y, const torch::Tensor& w,
                                    const torch::Tensor& r) {
        const torch::Tensor nll = token_nll(z, y);
        const torch::Tensor first = torch::autograd::grad({(nll * w).sum()}, {z}, {}, true, true)[0];
        return torch::autograd::grad({(first.to(r.scalar_type()) * r).sum()}, {z, w});
      };
      const torch::Tensor rounded = logits.to(dtype).to(torch::kFloat64).requires_grad_();
      const torch::Tensor w64 = weights.clone().requires_grad_();
      const auto reference = second_order(rounded, targets, w64, probe);
      const torch::Tensor input = logits.to(cuda, dtype).requires_grad_();
      const torch::Tensor w32 = weights.to(cuda, torch::kFloat32).requires_grad_();
      const auto fused = second_order(input, targets.to(cuda), w32, probe.to(cuda, dtype));
      const double tolerance = dtype == torch::kFloat32 ? 1e-5 : 2e-2;
      EXPECT_LT(relative_error(fused[0], reference[0]), tolerance);
      EXPECT_LT(relative_error(fused[1], reference[1]), tolerance);
      EXPECT_GT(reference[0].abs().max().item<double>(), 1e-3);  // the test can tell
    }
  }
}

}  // namespace
}  // namespace ttt
