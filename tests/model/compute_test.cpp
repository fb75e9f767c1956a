// Devices and precision (model/compute.h): the flags, the matmul dtype, bf16 matmuls within
// bf16 tolerance of the fp64 reference, and, where a CUDA GPU is visible, the GPU engine
// (evaluation, the meta-gradient, sessions) against the CPU fp64 reference; the kernels one
// by one are tests/kernels/ops_test.cpp's. The CUDA tests skip on machines without a GPU;
// scripts/gpu.sh runs them on one.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <type_traits>

#include "common/error.h"
#include "eval/evaluate.h"
#include "infer/session.h"
#include "model/compute.h"
#include "model/kv_cache.h"
#include "model/transformer.h"
#include "test_files.h"
#include "ttt/graph_replay.h"
#include "test_util.h"

namespace ttt {
namespace {

using test::random_params;
using test::random_tokens;

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

// CopyStream's copies read what the current stream computed before them and land before
// what it computes after join() (settle(): those before the previous settle); on the CPU
// and, where one is visible, between a GPU and pinned host memory: out and back, 4 rounds
// of a 64 MiB tensor made by a chain of kernels just before each copy.
TEST(Compute, CopyStreamCopiesLandInStreamOrder) {
  std::vector<torch::Device> devices{torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA, 0);
  for (const torch::Device& device : devices) {
    SCOPED_TRACE(device.str());
    const int64_t n = device.is_cuda() ? int64_t{1} << 24 : int64_t{1} << 20;  // 64 MiB on a GPU
    const torch::Tensor x = torch::arange(n, torch::dtype(torch::kFloat32).device(device));
    CopyStream copies;
    std::vector<torch::Tensor> parked, sources;
    for (int round = 0; round < 4; ++round) {
      torch::Tensor a = x;
      for (int i = 0; i < 20; ++i) a = a * 0.5 + (round + 1);  // a chain the copy must follow
      parked.push_back(host_buffer(a.numel() * 4, a));
      copies.copy(torch::from_blob(parked.back().data_ptr(), a.sizes()), a);
      sources.push_back(a);
      copies.settle();
    }
    copies.join();
    std::vector<torch::Tensor> back;
    for (const torch::Tensor& p : parked) {
      back.push_back(torch::empty(x.sizes(), x.options()));
      copies.copy(back.back(), torch::from_blob(p.data_ptr(), x.sizes()));
    }
    copies.join();
    for (size_t r = 0; r < back.size(); ++r) {
      EXPECT_TRUE(torch::equal((back[r] + 0).cpu(), sources[r].cpu())) << "round " << r;
    }
  }
}

// PageableCopies: pageable host memory to the GPU and back in pieces through slots used in
// turn, each copy after what the current stream computed before it, the pieces of several
// tensors in flight at once (7 KB slots, 3 of them, tensors of 10,007 floats); the result
// exact on the host once finish() returns. Plain copies on the CPU.
TEST(Compute, PageableCopiesGoThroughTheSlotsInOrder) {
  std::vector<torch::Device> devices{torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA, 0);
  for (const torch::Device& device : devices) {
    SCOPED_TRACE(device.str());
    PageableCopies copies(7000, 3);
    std::vector<torch::Tensor> hosts, on_device, expected;
    for (int round = 0; round < 3; ++round) {
      hosts.push_back(torch::rand({10007}) + round);
      on_device.push_back(torch::empty({10007}, torch::dtype(torch::kFloat32).device(device)));
      copies.to_device(on_device.back(), hosts.back());
    }
    std::vector<torch::Tensor> back;
    for (int round = 0; round < 3; ++round) {
      torch::Tensor a = on_device[round];
      for (int i = 0; i < 20; ++i) a = a * 0.5 + 1;  // a chain the copy back must follow
      expected.push_back(a);
      back.push_back(torch::full({10007}, -1.0f));
      copies.to_host(back.back(), a);
    }
    copies.finish();
    for (int round = 0; round < 3; ++round) {
      EXPECT_TRUE(torch::equal(back[round], expected[round].cpu())) << "round " << round;
      EXPECT_TRUE(torch::equal(on_device[round].cpu(), hosts[round])) << "round " << round;
    }
  }
}

// Copies queued, settled and joined inside a CUDA graph, after an eager run whose settles
// left an event behind (the graph must not wait on it), and after a run that failed midway
// (restart() drops what it held): the replays land the right numbers.
TEST(Compute, CopyStreamUnderCudaGraphsAfterEagerRuns) {
  static_assert(!std::is_move_constructible_v<CopyStream>, "copies in flight belong to one CopyStream");
  if (!torch::cuda::is_available() || !cuda_graphs_enabled()) GTEST_SKIP() << "needs a CUDA GPU and graphs";
  const torch::Device gpu(torch::kCUDA, 0);
  const torch::Tensor x = torch::arange(1 << 20, torch::dtype(torch::kFloat32).device(gpu));
  const torch::Tensor scale = torch::ones({}, x.options());
  const torch::Tensor parked = host_buffer(x.numel() * 4, x);
  const torch::Tensor host = torch::from_blob(parked.data_ptr(), x.sizes());
  CopyStream copies;
  copies.copy(host, x * 3);
  copies.settle();
  copies.settle();  // an event recorded with nothing held
  copies.join();
  copies.copy(host, x * 4);
  copies.settle();  // held, as a failed call would leave it
  copies.restart();
  GraphReplay graphs;
  for (int run = 0; run < 4; ++run) {
    scale.fill_(run + 1);
    graphs.run(0, [&] {
      copies.restart();
      copies.copy(host, x * scale);
      copies.settle();
      copies.settle();
      copies.join();
    });
    torch::cuda::synchronize();
    EXPECT_TRUE(torch::equal(host, (x * (run + 1)).cpu())) << "run " << run;
  }
  EXPECT_EQ(graphs.captures(), 1);
  EXPECT_EQ(graphs.replays(), 3);  // the capture's run replays too
}

TEST(Compute, InferenceParamsCastMatricesButNotFastWeightsOrGains) {
  const ModelConfig c = test::kernel_sized_config(Variant::kTttE2E);
  const Params params = params_for_inference(c, random_params(c, 1, 0.1, torch::kFloat32),
                                             ComputeOptions{torch::kCPU, torch::kBFloat16});
  EXPECT_EQ(params.embed.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(params.blocks[0].attn.wq.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(params.blocks.back().mlp.w2.scalar_type(), torch::kBFloat16);
  for (const torch::Tensor& w : flatten(initial_fast_weights(c, params))) EXPECT_EQ(w.scalar_type(), torch::kFloat32);
  EXPECT_EQ(params.final_norm.scalar_type(), torch::kFloat32);
  EXPECT_EQ(inference_matmul_dtype(params), torch::kBFloat16);
}

// params_for_inference puts the projections of one input side by side; a single row then
// takes them in one matmul (transformer.cpp, swiglu) with the numbers of separate ones.
TEST(Compute, InferenceParamsProjectOneRowJointly) {
  const ModelConfig c = test::kernel_sized_config(Variant::kTttE2E);
  const Params separate = random_params(c, 1, 0.1, torch::kFloat32);
  const Params params = params_for_inference(c, separate, ComputeOptions{torch::kCPU, std::nullopt});
  const AttentionParams& a = params.blocks[0].attn;
  const torch::Tensor qkv = joint_columns({a.wq, a.wk, a.wv});
  ASSERT_TRUE(qkv.defined());
  EXPECT_TRUE(torch::equal(
      qkv, torch::cat({separate.blocks[0].attn.wq, separate.blocks[0].attn.wk, separate.blocks[0].attn.wv}, 1)));
  EXPECT_TRUE(torch::equal(a.wk, separate.blocks[0].attn.wk));
  ASSERT_TRUE(joint_columns({params.blocks[1].mlp.w1, params.blocks[1].mlp.w3}).defined());
  // Not side by side: separate tensors, another order, a gap.
  EXPECT_FALSE(joint_columns({separate.blocks[0].attn.wq, separate.blocks[0].attn.wk}).defined());
  EXPECT_FALSE(joint_columns({a.wk, a.wq, a.wv}).defined());
  EXPECT_FALSE(joint_columns({a.wq, a.wv}).defined());
  EXPECT_FALSE(joint_columns({a.wq, a.wk}).defined());  // two of three: the row stride is three blocks
  // A token's logits alone and in a span, joint and separate, agree.
  const torch::Tensor tokens = random_tokens(9, c.vocab_size, 4, {0});
  for (const Params* p : {&separate, &params}) {
    KvCache one_by_one = KvCache::for_inference(c), whole = KvCache::for_inference(c);
    const FastWeights weights = initial_fast_weights(c, *p);
    torch::Tensor last;
    for (int64_t t = 0; t < 9; ++t) {
      last = forward_span(c, *p, tokens.narrow(0, t, 1), span_positions(t, 1, torch::kCPU), one_by_one, &weights);
    }
    const torch::Tensor span = forward_span(c, separate, tokens, span_positions(0, 9, torch::kCPU), whole, &weights);
    EXPECT_LT((last[0] - span[8]).abs().max().item<double>(), 1e-4);
  }
}

// The precision rules themselves, checked on the CPU: bf16 matmuls change the numbers (they
// did happen) by no more than bf16 rounding does.
TEST(Compute, Bf16MatmulsStayWithinBf16OfTheReference) {
  for (Variant variant : kVariants) {
    SCOPED_TRACE(variant_name(variant));
    const ModelConfig c = test::kernel_sized_config(variant);
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
  const ModelConfig c = test::kernel_sized_config(GetParam());
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

// Past 8192 tokens: fa and swa evaluated take the head and the NLL by groups of chunks
// (run_sequence), here two of 512 chunks and a partial third, BOS masking each chunk's loss.
TEST_P(OnCuda, EvaluationOfManyChunksMatchesTheCpuReference) {
  const ModelConfig c = test::kernel_sized_config(GetParam());
  const Params params = random_params(c, 8, 0.1);
  const torch::Tensor tokens = random_tokens(2 * 8192 + 700, c.vocab_size, 9, {0, 77, 8191, 8300, 16500});
  const EvalResult reference = evaluate(c, params, tokens);
  const EvalResult fp32 = evaluate_on(c, params, tokens, {cuda_, std::nullopt});
  ASSERT_EQ(fp32.nll.size(), reference.nll.size());
  EXPECT_NEAR(fp32.loss, reference.loss, 1e-4 * reference.loss);
  EXPECT_LT(max_abs_difference(fp32.nll, reference.nll), 1e-3);
}

TEST_P(OnCuda, GradientMatchesTheCpuReference) {
  const ModelConfig c = test::kernel_sized_config(GetParam());
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
  const ModelConfig c = test::kernel_sized_config(GetParam());
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
  const ModelConfig c = test::kernel_sized_config(GetParam());
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

}  // namespace
}  // namespace ttt
