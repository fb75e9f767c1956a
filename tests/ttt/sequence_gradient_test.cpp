// Per-chunk recomputation (remat) against differentiating the whole inner loop at once
// (run_sequence with an outer graph through every chunk): the same loss and gradients.
#include "ttt/sequence_gradient.h"

#include <gtest/gtest.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/cuda.h>

#include "common/host_memory.h"
#include "model/compute.h"
#include "test_util.h"
#include "ttt/inner_loop.h"
#include "ttt_build_features.h"

#if TTT_WITH_CUDA_KERNELS
#include "kernels/accumulate.h"
#include "model/kernel_launch.h"
#endif

namespace ttt {
namespace {

using test::random_params;
using test::random_tokens;
using test::tiny_config;

struct Case {
  std::string name;
  Variant variant;
  int64_t n_tokens;
  int64_t window;       // 0: the tiny config's
  int64_t suffix_len;   // ttt-e2e only; 0: the tiny config's
  double inner_clip;    // ttt-e2e only
  bool tie_embeddings;
  bool first_order;
  int64_t keep_weights_every = 0;  // 0: automatic
  int64_t prefix_span_chunks = 0;  // 0: automatic
  bool park_on_host = false;       // on the CPU, copies into the parking's own buffers
  int64_t tail_chunks = 0;         // 0: automatic (one chunk on the CPU)
};

std::ostream& operator<<(std::ostream& out, const Case& c) { return out << c.name; }

class SequenceGradient : public ::testing::TestWithParam<Case> {};

std::map<std::string, torch::Tensor> grads_of(const ModelConfig& c, const Params& leaves) {
  std::map<std::string, torch::Tensor> grads;
  for (const auto& [name, tensor] : named_params(c, leaves)) {
    grads.emplace(name, tensor.grad().defined() ? tensor.grad().clone() : torch::zeros_like(tensor));
  }
  return grads;
}

TEST_P(SequenceGradient, EqualsDifferentiatingTheWholeLoop) {
  const Case& k = GetParam();
  ModelConfig c = tiny_config(k.variant);
  c.tie_embeddings = k.tie_embeddings;
  if (k.window > 0) c.window = k.window;
  if (c.is_ttt()) {
    if (k.suffix_len > 0) c.suffix_len = k.suffix_len;
    c.inner_clip = k.inner_clip;
  }
  c.validate();
  const Params params = random_params(c, 201, 0.4);
  // Two bos targets in a row where the sequence is long enough: a chunk may lose its loss.
  const torch::Tensor tokens =
      random_tokens(k.n_tokens, c.vocab_size, 202, k.n_tokens > 6 ? std::vector<int64_t>{5, 6} : std::vector<int64_t>{});
  const double ilr_mult = 0.7;

  const Params reference = convert_params(c, params, torch::kFloat64, true);
  SequenceOptions whole;
  whole.ilr_mult = ilr_mult;
  whole.outer_gradient = k.first_order ? OuterGradient::kFirstOrder : OuterGradient::kExact;
  const torch::Tensor reference_loss = run_sequence(c, reference, tokens, whole).loss;
  reference_loss.backward();

  const Params remat = convert_params(c, params, torch::kFloat64, true);
  GradientOptions options;
  options.ilr_mult = ilr_mult;
  options.first_order = k.first_order;
  options.keep_weights_every = k.keep_weights_every;
  options.prefix_span_tokens = k.prefix_span_chunks * c.mini_batch;
  options.park_on_host = k.park_on_host;
  options.tail_chunks = k.tail_chunks;
  int64_t reports = 0;
  options.on_chunk = [&](int64_t done, int64_t total) {
    EXPECT_EQ(done, ++reports) << "progress in order, one pass at a time";
    EXPECT_EQ(total, 2 * ((k.n_tokens - 1 + c.mini_batch - 1) / c.mini_batch));
  };
  const torch::Tensor loss = accumulate_sequence_gradient(c, remat, tokens, options);

  const int64_t n_chunks = (k.n_tokens - 1 + c.mini_batch - 1) / c.mini_batch;
  EXPECT_EQ(reports, 2 * n_chunks);
  EXPECT_NEAR(loss.item<double>(), reference_loss.item<double>(), 1e-13);
  const auto expected = grads_of(c, reference), actual = grads_of(c, remat);
  for (const auto& [name, grad] : expected) {
    const double scale = grad.abs().max().item<double>();
    EXPECT_GT(scale, 0) << name << ": the reference gradient is zero, the comparison is void";
    const double error = (actual.at(name) - grad).abs().max().item<double>();
    EXPECT_LE(error, 1e-12 * std::max(1.0, scale)) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Variants, SequenceGradient,
    ::testing::Values(
        // name, variant, tokens, window, suffix, clip, tied, first order
        Case{"ttt_clip_active", Variant::kTttE2E, 17, 0, 0, 0.05, true, false},
        Case{"ttt_clip_off", Variant::kTttE2E, 17, 0, 0, 0.0, true, false},
        Case{"ttt_untied", Variant::kTttE2E, 16, 0, 0, 1.0, false, false},
        Case{"ttt_window_equals_chunk", Variant::kTttE2E, 17, 3, 0, 1.0, true, false},
        Case{"ttt_window_spans_chunks", Variant::kTttE2E, 17, 8, 0, 1.0, true, false},
        Case{"ttt_every_block_a_suffix", Variant::kTttE2E, 13, 0, 4, 1.0, true, false},
        Case{"ttt_one_chunk", Variant::kTttE2E, 3, 0, 0, 1.0, true, false},
        Case{"ttt_first_order", Variant::kTttE2E, 17, 0, 0, 1.0, true, true},
        // The forward pass keeps some chunks' fast weights, the reverse scan recomputes the rest.
        Case{"ttt_weights_kept_every_2", Variant::kTttE2E, 29, 0, 0, 1.0, true, false, 2},
        Case{"ttt_weights_kept_every_3", Variant::kTttE2E, 29, 8, 0, 0.05, true, false, 3},
        // The prefix recomputed by spans of several chunks, the last one partial.
        Case{"ttt_prefix_spans_of_2_chunks", Variant::kTttE2E, 29, 8, 0, 1.0, true, false, 0, 2},
        Case{"swa_prefix_spans_of_3_chunks", Variant::kSlidingWindow, 29, 5, 0, 0.0, true, false, 0, 3},
        Case{"fa_prefix_spans_of_2_chunks", Variant::kFullAttention, 29, 0, 0, 0.0, true, false, 0, 2},
        // What the backward pass reads again parked, and fetched back once per span and chunk.
        Case{"ttt_parked", Variant::kTttE2E, 29, 8, 0, 1.0, true, false, 3, 2, true},
        // Recomputed weights parked in reused slots: two a recomputation, two recomputations.
        Case{"ttt_parked_weights_every_4", Variant::kTttE2E, 29, 8, 0, 1.0, true, false, 4, 2, true},
        Case{"swa_parked", Variant::kSlidingWindow, 29, 5, 0, 0.0, true, false, 0, 3, true},
        Case{"fa_parked", Variant::kFullAttention, 29, 0, 0, 0.0, true, false, 0, 2, true},
        // The last chunks run once, as one graph, in the reverse scan (the forward pass stops
        // before them): some of them, with kept weights every 2 and parked rows before them;
        // every chunk (no forward pass at all).
        Case{"ttt_tail_of_3_chunks", Variant::kTttE2E, 29, 8, 0, 0.05, true, false, 2, 2, true, 3},
        Case{"ttt_tail_of_every_chunk", Variant::kTttE2E, 17, 0, 0, 1.0, true, false, 0, 0, false, 8},  // of 6
        Case{"ttt_tail_first_order", Variant::kTttE2E, 17, 0, 0, 1.0, true, true, 0, 0, false, 2},
        Case{"swa_tail_of_2_chunks", Variant::kSlidingWindow, 29, 5, 0, 0.0, true, false, 0, 3, false, 2},
        Case{"fa_tail_of_2_chunks", Variant::kFullAttention, 29, 0, 0, 0.0, true, false, 0, 2, false, 2},
        Case{"swa", Variant::kSlidingWindow, 17, 0, 0, 0.0, true, false},
        Case{"fa", Variant::kFullAttention, 17, 0, 0, 0.0, false, false}),
    [](const auto& info) { return info.param.name; });

// The paper's model shapes (SPEC section 2) with its 128K vocabulary.
ModelConfig paper_config(Variant variant, int64_t d_model, int64_t n_layers, int64_t d_ff) {
  ModelConfig c = tiny_config(variant);
  c.vocab_size = 128256;
  c.d_model = d_model;
  c.n_layers = n_layers;
  c.n_heads = d_model / 64;
  c.d_ff = d_ff;
  c.window = variant == Variant::kFullAttention ? 0 : 8192;
  c.mini_batch = 1024;
  c.suffix_len = variant == Variant::kTttE2E ? n_layers / 4 : 0;
  c.validate();
  return c;
}

// The prefix's default spans: one chunk without the fused kernels; 4K tokens with them, and a
// sequence of at most two such spans as one where that span's rough graph count (2 bytes x
// (8 d_model + 3 d_ff) a token and prefix block) is at most 3 GiB.
TEST(PrefixSpans, DefaultSpansByLengthAndModel) {
  const auto paper = paper_config;
  const ModelConfig ttt_125m = paper(Variant::kTttE2E, 768, 12, 1664),
                    fa_125m = paper(Variant::kFullAttention, 768, 12, 2048),
                    ttt_760m = paper(Variant::kTttE2E, 1536, 24, 3328);
  EXPECT_EQ(default_prefix_span_tokens(ttt_125m, 8192, /*fused=*/false), 1024);
  EXPECT_EQ(default_prefix_span_tokens(ttt_125m, 8192, true), 8192);  // 9 blocks: 1.6 GB
  EXPECT_EQ(default_prefix_span_tokens(fa_125m, 8192, true), 8192);   // 12 blocks: 2.4 GB
  EXPECT_EQ(default_prefix_span_tokens(ttt_760m, 8192, true), 4096);  // 18 blocks: 6.6 GB
  EXPECT_EQ(default_prefix_span_tokens(ttt_125m, 3000, true), 3072);  // whole chunks
  EXPECT_EQ(default_prefix_span_tokens(ttt_125m, 8193, true), 4096);  // more than two spans
  EXPECT_EQ(default_prefix_span_tokens(ttt_125m, 131072, true), 4096);
  // On a device to share, a span's graph (2.5 times the count) within a fifth of its memory:
  // 3B's 4K tokens (18.4 GB) fit an H200's fifth, not an 80 GB H100's (17.0 GB), where 3K
  // (13.8 GB) does; 760M keeps 4K (8.2 GB) on both; no span is less than a chunk.
  const ModelConfig ttt_3b = paper(Variant::kTttE2E, 2560, 32, 5632);
  const int64_t h100 = int64_t{85029158912}, h200 = int64_t{150754820096};
  EXPECT_EQ(default_prefix_span_tokens(ttt_3b, 131072, true), 4096);  // no device named
  EXPECT_EQ(default_prefix_span_tokens(ttt_3b, 131072, true, h200), 4096);
  EXPECT_EQ(default_prefix_span_tokens(ttt_3b, 131072, true, h100), 3072);
  EXPECT_EQ(default_prefix_span_tokens(ttt_3b, 16384, true, h100), 3072);
  EXPECT_EQ(default_prefix_span_tokens(ttt_760m, 131072, true, h100), 4096);
  EXPECT_EQ(default_prefix_span_tokens(ttt_125m, 8192, true, h100), 8192);  // one span still
  EXPECT_EQ(default_prefix_span_tokens(ttt_3b, 131072, true, int64_t{8} << 30), 1024);
  EXPECT_EQ(default_prefix_span_tokens(ttt_3b, 131072, /*fused=*/false, h100), 1024);
}

// What grows with the sequence is parked beyond 16 chunks on a GPU, or where every chunk's fast
// weights would take more than a sixth of it; never on the CPU.
TEST(ParkOnHost, BeyondSixteenChunksOrWhereTheFastWeightsCrowdTheDevice) {
  const int64_t h100 = int64_t{85029158912}, h200 = int64_t{150754820096};
  const int64_t weights_3b = int64_t{1384120320}, weights_760m = int64_t{368050176};  // a chunk's, fp32
  EXPECT_FALSE(default_park_on_host(8, weights_3b, h100));   // 11.1 GB of a sixth's 14.2: 8K keeps them
  EXPECT_TRUE(default_park_on_host(16, weights_3b, h100));   // 22.1 GB: 16K parks (it ran out of memory)
  EXPECT_FALSE(default_park_on_host(16, weights_3b, h200));  // a sixth of an H200: 25.1 GB
  EXPECT_FALSE(default_park_on_host(16, weights_760m, h100));
  EXPECT_TRUE(default_park_on_host(17, weights_760m, h100));
  EXPECT_TRUE(default_park_on_host(17, 0, h200));  // fa and swa: their rows
  EXPECT_FALSE(default_park_on_host(128, weights_3b, std::nullopt));
}

// The tail (the last chunks run once, as one graph): the last 6 of 125M ttt-e2e's 8 chunks at
// 8K on an H200 (the rough count: 7.5 GiB, 8.5 with a seventh), a short sequence whole, one
// where the chunks that fit are fewer than half (longer contexts, larger models, smaller
// devices), on the CPU and for fa.
TEST(TailChunks, LastChunksWhereTheirGraphsFitHalfTheSequence) {
  const ModelConfig ttt_125m = paper_config(Variant::kTttE2E, 768, 12, 1664),
                    ttt_760m = paper_config(Variant::kTttE2E, 1536, 24, 3328),
                    fa_125m = paper_config(Variant::kFullAttention, 768, 12, 2048);
  const int64_t h200 = int64_t{141} << 30, small = int64_t{12} << 30;
  EXPECT_EQ(default_tail_chunks(ttt_125m, 8192, h200), 6);
  EXPECT_EQ(default_tail_chunks(ttt_125m, 4000, h200), 4);
  EXPECT_EQ(default_tail_chunks(ttt_125m, 8193, h200), 7);  // a 1-token chunk and the 6 before it
  EXPECT_EQ(default_tail_chunks(ttt_125m, 32768, h200), 1);
  EXPECT_EQ(default_tail_chunks(ttt_760m, 8192, h200), 1);
  EXPECT_EQ(default_tail_chunks(ttt_125m, 8192, small), 1);  // 3 GiB: 2 chunks
  EXPECT_EQ(default_tail_chunks(ttt_125m, 8192, std::nullopt), 1);
  EXPECT_EQ(default_tail_chunks(fa_125m, 8192, h200), 1);
}

// The fast weights kept: all up to 16 chunks (parked, where they fit); parked, as many as 60%
// of the host holds beside the parked rows, with the k - 2 slots a recomputation parks the
// others in (760M at 128K: 128 chunks of 453 MB and 19 GB of rows on a host of 128 GiB keep
// all, on one of 64 GiB one in 3); where no k fits, or not parked, one in ceil(sqrt(chunks)),
// and the recomputed weights stay on the device.
TEST(GradientOptions, KeepsAsManyFastWeightsAsTheHostHolds) {
  const int64_t gib = int64_t{1} << 30, weights = 453'000'000, rows = 19'300'000'000;
  EXPECT_EQ(default_keep_weights_every(16, weights, std::nullopt, 128 * gib), 1);
  EXPECT_EQ(default_keep_weights_every(128, weights, rows, 128 * gib), 1);
  EXPECT_EQ(default_keep_weights_every(128, weights, rows, 64 * gib), 3);  // 48 fit: 43 kept, 1 slot
  EXPECT_TRUE(recomputed_weights_fit(128, 3, weights, rows, 64 * gib));
  // 28 fit: one in 5 would keep 26 and park 3 more (29); one in 6 keeps 22 beside 4 slots.
  EXPECT_EQ(default_keep_weights_every(128, weights, rows, 50 * gib), 6);
  EXPECT_TRUE(recomputed_weights_fit(128, 6, weights, rows, 50 * gib));
  EXPECT_FALSE(recomputed_weights_fit(128, 5, weights, rows, 50 * gib));
  EXPECT_EQ(default_keep_weights_every(128, weights, std::nullopt, 128 * gib), 12);
  EXPECT_EQ(default_keep_weights_every(128, weights, rows, 32 * gib), 12);  // the rows alone fill it
  // 14 fit, but no k's kept sets and slots do (at best 21): sqrt, the recomputed on the device.
  EXPECT_EQ(default_keep_weights_every(128, weights, rows, 40 * gib), 12);
  EXPECT_FALSE(recomputed_weights_fit(128, 12, weights, rows, 40 * gib));
  EXPECT_EQ(default_keep_weights_every(128, weights, rows, 35 * gib), 12);  // 7 fit
  EXPECT_EQ(default_keep_weights_every(17, weights, int64_t{0}, gib), 5);   // 1 fits: sqrt
  // 16 chunks parked (3B at 16K on an 80 GB GPU: 1.38 GB a chunk, 5.4 GB of rows): all on a
  // host of 128 GiB; on one of 24 GiB (7 sets fit) one in 3 (6 kept, 1 slot); on one of 16 GiB
  // (3 fit) one in 4, the most (sqrt), the recomputed on the device.
  const int64_t weights_3b = 1'384'120'320, rows_3b = 5'368'709'120;
  EXPECT_EQ(default_keep_weights_every(16, weights_3b, rows_3b, 128 * gib), 1);
  EXPECT_EQ(default_keep_weights_every(16, weights_3b, rows_3b, 16 * gib), 4);
  EXPECT_FALSE(recomputed_weights_fit(16, 4, weights_3b, rows_3b, 16 * gib));
  EXPECT_EQ(default_keep_weights_every(16, weights_3b, rows_3b, 24 * gib), 3);
}

// The engine's choices resolved: on the CPU no parking, every chunk's weights kept up to 16
// chunks (then one in sqrt(chunks)), one chunk a prefix span, a tail of 1; an option asked
// passes through (the tail at most the chunks), and the same options asked resolve alike.
TEST(GradientOptions, ResolvedAsTheEngineChoosesOrAsAsked) {
  const ModelConfig c = tiny_config(Variant::kTttE2E);
  const Params params = init_params(c, 3);
  const int64_t b = c.mini_batch, inputs = 3 * b + 1;  // 4 chunks
  const ResolvedGradientOptions chosen = resolve_gradient_options(c, params, inputs, {});
  EXPECT_FALSE(chosen.park_on_host);
  EXPECT_FALSE(chosen.park_recomputed);
  EXPECT_EQ(chosen.keep_weights_every, 1);
  EXPECT_EQ(chosen.prefix_span_tokens, b);
  EXPECT_EQ(chosen.tail_chunks, 1);
  GradientOptions asked;
  asked.park_on_host = chosen.park_on_host;
  asked.keep_weights_every = chosen.keep_weights_every;
  asked.prefix_span_tokens = chosen.prefix_span_tokens;
  asked.tail_chunks = chosen.tail_chunks;
  const ResolvedGradientOptions same = resolve_gradient_options(c, params, inputs, asked);
  EXPECT_EQ(same.park_on_host, chosen.park_on_host);
  EXPECT_EQ(same.keep_weights_every, chosen.keep_weights_every);
  EXPECT_EQ(same.prefix_span_tokens, chosen.prefix_span_tokens);
  EXPECT_EQ(same.tail_chunks, chosen.tail_chunks);

  asked = {};
  asked.park_on_host = true;
  asked.keep_weights_every = 2;
  asked.prefix_span_tokens = 2 * b;
  asked.tail_chunks = 9;
  const ResolvedGradientOptions given = resolve_gradient_options(c, params, inputs, asked);
  EXPECT_TRUE(given.park_on_host);
  EXPECT_EQ(given.keep_weights_every, 2);
  EXPECT_EQ(given.prefix_span_tokens, 2 * b);
  EXPECT_EQ(given.tail_chunks, 4);
  EXPECT_FALSE(given.park_recomputed);  // one in 2: nothing recomputed waits
  asked.keep_weights_every = 3;         // one recomputed set a time waits parked (tiny: it fits)
  EXPECT_TRUE(resolve_gradient_options(c, params, inputs, asked).park_recomputed);
  asked.park_on_host = false;
  EXPECT_FALSE(resolve_gradient_options(c, params, inputs, asked).park_recomputed);
  EXPECT_EQ(resolve_gradient_options(c, params, 20 * b + 1, {}).keep_weights_every, 5);  // 21 chunks

  // Parked, every chunk's weights are kept where the host's budget holds them; processes that
  // share the host share it, so with very many each keeps fewer.
  asked = {};
  asked.park_on_host = true;
  EXPECT_EQ(resolve_gradient_options(c, params, inputs, asked).keep_weights_every, 1);
  asked.processes_on_host = host_memory_limit();  // about a byte each
  EXPECT_GT(resolve_gradient_options(c, params, inputs, asked).keep_weights_every, 1);
}

// Gradients of several sequences add up, each scaled: what a batch with accumulation needs.
TEST(SequenceGradientAccumulation, AddsScaledGradients) {
  const ModelConfig c = tiny_config(Variant::kTttE2E);
  const Params params = random_params(c, 211, 0.4);
  const torch::Tensor a = random_tokens(10, c.vocab_size, 212), b = random_tokens(10, c.vocab_size, 213);

  const Params both = convert_params(c, params, torch::kFloat64, true);
  GradientOptions half;
  half.loss_scale = 0.5;
  accumulate_sequence_gradient(c, both, a, half);
  accumulate_sequence_gradient(c, both, b, half);

  const Params single_a = convert_params(c, params, torch::kFloat64, true);
  const Params single_b = convert_params(c, params, torch::kFloat64, true);
  accumulate_sequence_gradient(c, single_a, a);
  accumulate_sequence_gradient(c, single_b, b);
  const auto ga = grads_of(c, single_a), gb = grads_of(c, single_b), sum = grads_of(c, both);
  for (const auto& [name, g] : sum) {
    EXPECT_TRUE(torch::allclose(g, 0.5 * (ga.at(name) + gb.at(name)), 1e-12, 1e-14)) << name;
  }
}

TEST(GradientGraphs, NotOfferedWhereTheyCannotRun) {
  const ModelConfig c = tiny_config(Variant::kTttE2E);
  const Params params = random_params(c, 1, 0.3, torch::kFloat32);
  EXPECT_FALSE(GradientGraphs::supported(c, params));  // on the CPU
  test::expect_error([&] { GradientGraphs graphs(c, params); }, {"CUDA graphs of the gradient need"});
  if (!torch::cuda::is_available()) return;
  const ModelConfig fa = tiny_config(Variant::kFullAttention);
  EXPECT_FALSE(GradientGraphs::supported(
      fa, convert_params(fa, random_params(fa, 1, 0.3), torch::kFloat32, false, torch::Device(torch::kCUDA, 0))));
}

// Nothing of a sequence's graphs outlives its gradient: a graph kept alive would pin its
// memory, and on a GPU the nodes it keeps (recorded on the stream of the eager run) break
// the capture of the next sequence's CUDA graph. On the GPU in fp32 and bf16 (the fused
// kernels' autograd functions), else on the CPU.
TEST(SequenceGradient, LeavesNoGraphBehind) {
  const bool cuda = torch::cuda::is_available();
  const torch::Device device = cuda ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  for (const Variant variant : {Variant::kTttE2E, Variant::kSlidingWindow, Variant::kFullAttention}) {
    const ModelConfig c = cuda ? test::kernel_sized_config(variant) : tiny_config(variant);
    for (const std::optional<torch::Dtype> precision :
         {std::optional<torch::Dtype>(), std::optional(torch::kBFloat16)}) {
      if (precision && !cuda) continue;
      const MatmulDtypeGuard matmuls(precision);
      for (const bool first_order : {false, true}) {
        const Params params = convert_params(c, random_params(c, 5, 0.3), torch::kFloat32, true, device);
        GradientOptions options;
        options.first_order = first_order;
        const int64_t n = 4 * c.mini_batch + 2;
        accumulate_sequence_gradient(c, params, random_tokens(n, c.vocab_size, 6).to(device), options);
        for (const auto& [name, p] : named_params(c, params)) {
          EXPECT_TRUE(p.grad().defined()) << name;
          EXPECT_FALSE(p.grad().requires_grad()) << name;
          EXPECT_EQ(torch::autograd::impl::try_get_grad_accumulator(p), nullptr)
              << variant_name(variant) << (precision ? " bf16" : " fp32") << (first_order ? " first order" : "")
              << ": a graph still holds " << name;
        }
      }
    }
  }
}

// On the GPU, the whole gradient through our kernels (norms, attention, the NLL, the inner
// step and its backward, the sinks' adds) against the CPU's plain ops in fp64, the clip
// binding: fp32 within 1e-3 of each gradient's largest entry; with bf16 matmuls within 5e-2
// in norm (a gross error, such as a chunk's gradient not added, is of order 1).
TEST(SequenceGradient, OnCudaMatchesTheCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  for (const Variant variant : {Variant::kTttE2E, Variant::kSlidingWindow}) {
    ModelConfig c = test::kernel_sized_config(variant);
    if (c.is_ttt()) c.inner_clip = 0.05;
    const Params params = random_params(c, 11, 0.3);
    const torch::Tensor tokens = random_tokens(4 * c.mini_batch + 3, c.vocab_size, 12, {7});
    const Params reference = convert_params(c, params, torch::kFloat64, true);
    accumulate_sequence_gradient(c, reference, tokens, {});
    for (const std::optional<torch::Dtype> precision :
         {std::optional<torch::Dtype>(), std::optional(torch::kBFloat16)}) {
      for (const int64_t tail : {0, 1}) {  // the default (here the whole sequence), one chunk
        const MatmulDtypeGuard matmuls(precision);
        const Params gpu = convert_params(c, params, torch::kFloat32, true, cuda);
        GradientOptions options;
        options.tail_chunks = tail;
        accumulate_sequence_gradient(c, gpu, tokens.to(cuda), options);
        const auto expected = grads_of(c, reference), actual = grads_of(c, gpu);
        for (const auto& [name, want] : expected) {
          const torch::Tensor got = actual.at(name).cpu().to(torch::kFloat64);
          const std::string where = std::string(variant_name(variant)) + (precision ? " bf16 " : " fp32 ") + "tail " +
                                    std::to_string(tail) + " " + name;
          if (precision) {
            EXPECT_LE((got - want).norm().item<double>(), 5e-2 * want.norm().item<double>()) << where;
          } else {
            EXPECT_LE((got - want).abs().max().item<double>(), 1e-3 * want.abs().max().item<double>()) << where;
          }
        }
      }
    }
  }
}

#if TTT_WITH_CUDA_KERNELS
// The sinks' kernel called directly: fp32, bf16 and fp16 gradients in one launch, 16-byte
// packs and sizes or offsets that take one value a thread, a tensor larger than the grid.
TEST(SequenceGradientOnCuda, AccumulateIntoFp32AddsEveryTensor) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const auto cuda = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  torch::manual_seed(21);
  const std::vector<std::pair<int64_t, torch::Dtype>> cases = {
      {int64_t{3} << 20, torch::kBFloat16}, {4097, torch::kFloat32}, {768, torch::kHalf}, {5, torch::kBFloat16}};
  std::vector<torch::Tensor> sinks, grads, before;
  std::vector<kernels::AccumulateTensor> described;
  for (const auto& [n, dtype] : cases) {
    sinks.push_back(torch::randn({n}, cuda));
    before.push_back(sinks.back().clone());
    grads.push_back(torch::randn({n + 1}, cuda).to(dtype).narrow(0, n == 5 ? 1 : 0, n));  // an odd offset
    described.push_back({sinks.back().data_ptr<float>(), grads.back().data_ptr(), storage_of(dtype), n});
  }
  check("accumulate_into_fp32",
        kernels::accumulate_into_fp32(described.data(), static_cast<int>(described.size()), stream()));
  for (size_t i = 0; i < sinks.size(); ++i) {
    EXPECT_TRUE(torch::equal(sinks[i], before[i] + grads[i].to(torch::kFloat32))) << i;
  }
}
#endif

// Graph replays against the eager computation on the GPU, over sequences with different
// inner-LR multipliers (no new capture for them) and loss scales, the second order included;
// matmuls in bf16 and in fp32.
TEST(GradientGraphs, ReplaysGiveTheEagerGradients) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  const std::optional<torch::Dtype> bf16(torch::kBFloat16), f32;
  struct Row {
    Variant variant;
    std::optional<torch::Dtype> precision;
    bool parked;             // the graphs' copies in and out of pinned host memory
    int64_t span_chunks;     // the prefix by spans of so many chunks (0: one span here)
    int64_t weights_every;   // fast weights kept every so many chunks (0: all here)
    int64_t tail;            // chunks that skip the forward pass (0: the default, here all)
    int64_t full_chunks = 5;  // of 16 tokens, and a partial one after them
  };
  // The eager gradient runs without any of these: they do not change the gradient, but in
  // bf16 other spans round differently (2e-2 of the largest entry), so spans only in fp32.
  // The tail, unlike those, is given to both sides: rows that park or keep weights every 2
  // need a forward pass (a tail of one chunk) to exercise them. Parked with weights every 3
  // over 9 chunks, two recomputations park a set each in the slot they share.
  for (const auto& [variant, precision, parked, span_chunks, weights_every, tail, full_chunks] :
       {Row{Variant::kTttE2E, bf16, false, 0, 0, 0}, Row{Variant::kTttE2E, f32, false, 0, 0, 1},
        Row{Variant::kSlidingWindow, bf16, false, 0, 0, 0}, Row{Variant::kTttE2E, f32, true, 0, 0, 1},
        Row{Variant::kTttE2E, f32, false, 2, 0, 1}, Row{Variant::kTttE2E, f32, false, 0, 2, 1},
        Row{Variant::kSlidingWindow, bf16, true, 0, 0, 0}, Row{Variant::kSlidingWindow, f32, true, 2, 0, 0},
        Row{Variant::kTttE2E, f32, true, 2, 2, 1}, Row{Variant::kTttE2E, f32, true, 0, 2, 3},
        Row{Variant::kTttE2E, f32, true, 2, 3, 1, 8}}) {
    SCOPED_TRACE(std::string(variant == Variant::kTttE2E ? "ttt-e2e" : "swa") + (precision ? " bf16" : " f32") +
                 (parked ? " parked" : "") + " spans " + std::to_string(span_chunks) + " weights every " +
                 std::to_string(weights_every) + " tail " + std::to_string(tail) + " full chunks " +
                 std::to_string(full_chunks));
    const ModelConfig c = test::kernel_sized_config(variant);
    const MatmulDtypeGuard matmuls(precision);
    const Params graphed = convert_params(c, random_params(c, 7, 0.3), torch::kFloat32, true, cuda);
    const Params eager = convert_params(c, graphed, torch::kFloat32, true);
    ASSERT_TRUE(GradientGraphs::supported(c, graphed));
    GradientGraphs graphs(c, graphed);
    EXPECT_TRUE(graphs.serves(graphed));
    EXPECT_FALSE(graphs.serves(eager));
    // A .grad that is not the graphs' own buffer is carried into it.
    for (const Params* side : {&graphed, &eager})
      side->final_norm.mutable_grad() = torch::full_like(side->final_norm, 0.5);
    for (int sequence = 0; sequence < 4; ++sequence) {
      // Full chunks and a partial one; caches of 0, 16 and 31 rows (a full window).
      const torch::Tensor tokens = random_tokens(16 * full_chunks + 7, c.vocab_size, 300 + sequence, {0, 30}).to(cuda);
      GradientOptions options;
      options.ilr_mult = 0.4 + 0.2 * sequence;
      options.loss_scale = sequence % 2 == 0 ? 1.0 : 0.25;
      options.tail_chunks = tail;
      const double eager_loss = accumulate_sequence_gradient(c, eager, tokens, options).item<double>();
      options.graphs = &graphs;
      options.park_on_host = parked;
      options.prefix_span_tokens = span_chunks * c.mini_batch;
      options.keep_weights_every = weights_every;
      const double graphed_loss = accumulate_sequence_gradient(c, graphed, tokens, options).item<double>();
      EXPECT_NEAR(graphed_loss, eager_loss, 1e-5 * std::abs(eager_loss)) << "sequence " << sequence;
      // Gradients of all sequences accumulate in .grad on both sides.
      const auto expected = grads_of(c, eager), got = grads_of(c, graphed);
      for (const auto& [name, g] : expected) {
        const double scale = g.abs().max().item<double>();
        EXPECT_GT(scale, 0) << name;
        EXPECT_LT((got.at(name) - g).abs().max().item<double>(), 1e-4 * scale) << name << ", sequence " << sequence;
      }
    }
    // The first sequence ran eagerly, the second was captured; every one after it replayed.
    EXPECT_EQ(graphs.captures(), 1);
    EXPECT_EQ(graphs.replays(), 3);
  }
}

// Options that shape the computation (here the tail) get graphs of their own for the same
// length: a later call with other options neither replays the first capture nor loses it.
TEST(GradientGraphs, OptionsThatShapeTheGraphGetTheirOwn) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  const ModelConfig c = test::kernel_sized_config(Variant::kTttE2E);
  const MatmulDtypeGuard matmuls(std::nullopt);
  const Params graphed = convert_params(c, random_params(c, 7, 0.3), torch::kFloat32, true, cuda);
  const Params eager = convert_params(c, graphed, torch::kFloat32, true);
  GradientGraphs graphs(c, graphed);
  const torch::Tensor tokens = random_tokens(16 * 5 + 7, c.vocab_size, 301, {0, 30}).to(cuda);
  // Tails 1 (eager), 1 (captured, then replayed), 3 (eager), 3 (captured, replayed), 1 (replayed).
  for (const int64_t tail : {1, 1, 3, 3, 1}) {
    SCOPED_TRACE("tail " + std::to_string(tail));
    for (const Params* side : {&graphed, &eager}) {
      for (const auto& [name, p] : named_params(c, *side)) p.mutable_grad() = torch::Tensor();
    }
    GradientOptions options;
    options.tail_chunks = tail;
    const double eager_loss = accumulate_sequence_gradient(c, eager, tokens, options).item<double>();
    options.graphs = &graphs;
    const double graphed_loss = accumulate_sequence_gradient(c, graphed, tokens, options).item<double>();
    EXPECT_NEAR(graphed_loss, eager_loss, 1e-5 * std::abs(eager_loss));
    const auto expected = grads_of(c, eager), got = grads_of(c, graphed);
    for (const auto& [name, g] : expected) {
      EXPECT_LT((got.at(name) - g).abs().max().item<double>(), 1e-4 * g.abs().max().item<double>()) << name;
    }
  }
  EXPECT_EQ(graphs.captures(), 2);
  EXPECT_EQ(graphs.replays(), 3);
}

}  // namespace
}  // namespace ttt
