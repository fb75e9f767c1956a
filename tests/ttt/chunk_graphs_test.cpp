// CUDA graphs of the chunk step (ttt/chunk_graphs.h) against run_sequence's
// eager chunks. Skips on machines without a GPU; scripts/gpu.sh runs it on one.
#include <gtest/gtest.h>

#include <torch/cuda.h>

#include <cstdlib>
#include <memory>

#include "eval/evaluate.h"
#include "model/compute.h"
#include "test_util.h"
#include "ttt/chunk_graphs.h"
#include "ttt/inner_loop.h"

namespace ttt {
namespace {

TEST(ChunkGraphs, NotOfferedWhereTheyCannotRun) {
  const ModelConfig c = test::tiny_config(Variant::kTttE2E);
  EXPECT_FALSE(ChunkGraphs::supported(c, test::random_params(c, 1, 0.3, torch::kFloat32)));  // on the CPU
  test::expect_error([&] { ChunkGraphs graphs(c, test::random_params(c, 1, 0.3, torch::kFloat32)); },
                     {"CUDA graphs need"});
  if (!torch::cuda::is_available()) return;
  const ModelConfig swa = test::tiny_config(Variant::kSlidingWindow);
  EXPECT_FALSE(ChunkGraphs::supported(swa, convert_params(swa, test::random_params(swa, 1, 0.3), torch::kFloat32, false,
                                                          torch::Device(torch::kCUDA, 0))));
}

// Graphs against the eager chunks over three sequences of 7 full chunks and a partial one
// (which runs eagerly on the graphs' buffers). Returns the graphs for the caller's counts.
std::unique_ptr<ChunkGraphs> expect_replays_match_eager(const ModelConfig& c, const Params& params) {
  ModelConfig frozen = c;
  frozen.inner_lr = 0;
  auto graphs = std::make_unique<ChunkGraphs>(c, params);
  for (int sequence = 0; sequence < 3; ++sequence) {
    const torch::Tensor tokens =
        test::random_tokens(16 * 7 + 6, c.vocab_size, 100 + sequence, {0, 50}).to(params.embed.device());
    const SequenceResult eager = run_sequence(c, params, tokens);
    SequenceOptions with_graphs;
    with_graphs.graphs = graphs.get();
    const SequenceResult graphed = run_sequence(c, params, tokens, with_graphs);
    EXPECT_EQ(graphed.inner_steps, eager.inner_steps);
    EXPECT_LT((graphed.nll - eager.nll).abs().max().item<double>(), 1e-3) << "sequence " << sequence;
    EXPECT_NEAR(graphed.loss.item<double>(), eager.loss.item<double>(), 1e-4);
    // The test can tell: without the inner steps the predictions differ by far
    // more.
    const SequenceResult still = run_sequence(frozen, params, tokens);
    EXPECT_GT((still.nll - eager.nll).abs().max().item<double>(), 0.05);
  }
  return graphs;
}

ModelConfig graphed_config(int64_t suffix_len) {
  ModelConfig c = test::tiny_config(Variant::kTttE2E);
  c.vocab_size = 61;
  c.d_model = 32;
  c.n_heads = 2;  // head_dim 16: the flash kernel's sliding window serves the chunks
  c.d_ff = 48;
  c.window = 40;  // window - 1 = 39 is no multiple of the chunk: cache lengths
                  // 0, 16, 32, 39, 39, ...
  c.mini_batch = 16;
  c.suffix_len = suffix_len;
  c.validate();
  return c;
}

TEST(ChunkGraphs, ReplaysGiveTheEagerNumbersOverManySequences) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  const ModelConfig c = graphed_config(2);
  const MatmulDtypeGuard precision(torch::kBFloat16);
  const Params params =
      params_for_inference(c, test::random_params(c, 7, 0.3, torch::kFloat32), {cuda, torch::kBFloat16});
  ASSERT_TRUE(ChunkGraphs::supported(c, params));
  setenv("TTT_CUDA_GRAPHS", "0", 1);  // the switch for comparisons
  EXPECT_FALSE(ChunkGraphs::supported(c, params));
  unsetenv("TTT_CUDA_GRAPHS");

  const std::unique_ptr<ChunkGraphs> graphs = expect_replays_match_eager(c, params);
  // The first sequence runs each cache length eagerly once and captures 39 at
  // its second chunk; the second captures the others. Then every step is a
  // replay.
  EXPECT_EQ(graphs->captures(), 4);
  EXPECT_EQ(graphs->replays(), 3 + 7 + 7);

  // evaluate() reuses the graphs it is given, or makes its own.
  const torch::Tensor tokens = test::random_tokens(16 * 5 + 1, c.vocab_size, 200).to(cuda);
  const EvalResult own = evaluate(c, params, tokens);
  const EvalResult shared = evaluate(c, params, tokens, {}, graphs.get());
  EXPECT_EQ(graphs->replays(), 3 + 7 + 7 + 4);
  EXPECT_NEAR(own.loss, shared.loss, 1e-4);
  EXPECT_NEAR(own.loss, run_sequence(c, params, tokens).loss.item<double>(), 1e-4);
}

// One suffix block, its attention run ahead: the chunks extend no cache, so every chunk is
// one shape (the first run eagerly, the second captured).
TEST(ChunkGraphs, OneSuffixBlockPastItsAttentionIsOneShape) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const ModelConfig c = graphed_config(1);
  const MatmulDtypeGuard precision(torch::kBFloat16);
  const Params params = params_for_inference(c, test::random_params(c, 7, 0.3, torch::kFloat32),
                                             {torch::Device(torch::kCUDA, 0), torch::kBFloat16});
  const std::unique_ptr<ChunkGraphs> graphs = expect_replays_match_eager(c, params);
  EXPECT_EQ(graphs->captures(), 1);
  EXPECT_EQ(graphs->replays(), 6 + 7 + 7);
}

}  // namespace
}  // namespace ttt
