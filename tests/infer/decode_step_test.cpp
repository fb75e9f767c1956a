// The fixed-shape decode step (infer/decode_step.h) against the session's span path: the same
// tokens fed to a session that reads single tokens as spans and to one that reads them by
// the step give the same logits, token by token, across the ring's wrap-around, inner steps,
// fa's growing ring, spans between single tokens, save/restore, fork and reset. On a GPU
// (skipped elsewhere; scripts/gpu.sh runs them) the step replays CUDA graphs.
#include <gtest/gtest.h>

#include <torch/cuda.h>

#include <cstdlib>
#include <limits>
#include <thread>

#include "infer/decode_step.h"
#include "infer/session.h"
#include "model/compute.h"
#include "model/layers.h"
#include "model/transformer.h"
#include "test_util.h"
#include "ttt/graph_replay.h"

namespace ttt {
namespace {

using test::random_params;
using test::random_tokens;
using test::tiny_config;

// Largest difference relative to the reference's largest logit (at least 1).
double logit_error(const torch::Tensor& value, const torch::Tensor& reference) {
  const torch::Tensor a = value.detach().to(torch::kCPU, torch::kFloat64);
  const torch::Tensor b = reference.detach().to(torch::kCPU, torch::kFloat64);
  return (a - b).abs().max().item<double>() / std::max(1.0, b.abs().max().item<double>());
}

// Feeds tokens[at, at + length) to both sessions and checks that they agree.
void feed_both(Session& spans, Session& step, const torch::Tensor& tokens, int64_t at, int64_t length,
               double tolerance) {
  const torch::Tensor piece = tokens.narrow(0, at, length);
  const torch::Tensor expected = spans.feed(piece).clone();
  const torch::Tensor got = step.feed(piece);
  EXPECT_LT(logit_error(got, expected), tolerance) << "piece of " << length << " ending at position " << at + length;
  EXPECT_EQ(step.position(), spans.position());
  EXPECT_EQ(step.inner_steps(), spans.inner_steps());
}

// Pieces that mix spans with runs of single tokens longer than the tiny config's window (6)
// and mini-batch (3): the ring wraps, inner steps fall between single tokens, spans follow
// single tokens and single tokens spans.
const std::vector<int64_t> kPieces = {4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 5, 1, 1};

int64_t singles_in(const std::vector<int64_t>& pieces, int64_t n) {
  int64_t singles = 0;
  for (int64_t at = 0, k = 0; at < n; at += std::min(pieces[k % pieces.size()], n - at), ++k) {
    singles += std::min(pieces[k % pieces.size()], n - at) == 1 ? 1 : 0;
  }
  return singles;
}

struct Precision {
  torch::Dtype dtype;
  double tolerance;
};
void PrintTo(const Precision& precision, std::ostream* out) {
  *out << c10::toString(precision.dtype) << " within " << precision.tolerance;
}

class DecodeStepVariant : public ::testing::TestWithParam<std::tuple<Variant, Precision>> {};

// ttt-e2e's inner steps after chunks read token by token start from the rows the step
// computed (its spans recompute them): fp32 rounding that differs, compounded by the tiny
// config's inner steps (learning rate 1 on weights of scale 0.3), reaches ~1e-3 by the 23rd
// inner step, and moves with any change of operation order. The fp64 case holds the paths
// equal to 1e-11.
double tolerance_for(Variant variant, const Precision& precision) {
  return variant == Variant::kTttE2E && precision.dtype == torch::kFloat32 ? 5e-3 : precision.tolerance;
}

TEST_P(DecodeStepVariant, SingleTokensGiveTheSpansNumbers) {
  const auto [variant, precision] = GetParam();
  const ModelConfig config = tiny_config(variant);
  const Params params = random_params(config, 5, 0.3, precision.dtype);
  const int64_t n = 70;
  const torch::Tensor tokens = random_tokens(n, config.vocab_size, 7, {0, 23});
  Session spans(config, params, DecodePath::kSpans), step(config, params, DecodePath::kStaticStep);
  EXPECT_EQ(spans.decode_step(), nullptr);
  EXPECT_EQ(Session(config, params).decode_step(), nullptr);  // on the CPU, spans by default
  ASSERT_NE(step.decode_step(), nullptr);
  int64_t growths = 0;
  for (int64_t at = 0, k = 0; at < n; ++k) {
    const int64_t length = std::min(kPieces[k % kPieces.size()], n - at);
    const int64_t before = step.decode_step()->capacity();
    feed_both(spans, step, tokens, at, length, tolerance_for(variant, precision));
    at += length;
    // The ring grows only when the tokens no longer fit (each size is a CUDA graph of its
    // own), and then with room for a quarter more.
    const int64_t after = step.decode_step()->capacity();
    if (before > 0 && after != before) {
      ++growths;
      EXPECT_LT(before, at) << "grew at position " << at << " with room left";
      EXPECT_GE(after, at + at / 4);
    }
  }
  if (config.attention_window() == 0) EXPECT_GT(growths, 0);
  // No buffers made but those: a graph captured on the ring reads it in place.
  EXPECT_EQ(step.decode_step()->allocations(), growths + 1);
  EXPECT_EQ(step.decode_step()->steps(), singles_in(kPieces, n));
  EXPECT_EQ(step.decode_step()->captures(), 0);  // no graphs on the CPU
  if (config.is_ttt()) EXPECT_EQ(step.inner_steps(), (n - 1) / config.mini_batch);
  // fa's ring grew with the context from its first 16 rows; a window's is the window.
  const int64_t capacity = step.decode_step()->capacity();
  if (config.attention_window() > 0) {
    EXPECT_EQ(capacity, config.window);
  } else {
    EXPECT_GE(capacity, n);
    EXPECT_LE(capacity, 2 * n);
  }
}

// ttt-e2e: a chunk read token by token takes its inner step from the rows the step kept, and
// the ring stays the cache (no reload); a chunk that began with a span is recomputed.
TEST_P(DecodeStepVariant, ChunksReadByTheStepTrainFromItsRows) {
  const auto [variant, precision] = GetParam();
  if (variant != Variant::kTttE2E) GTEST_SKIP() << "inner steps are ttt-e2e's";
  const ModelConfig config = tiny_config(variant);
  const Params params = random_params(config, 6, 0.3, precision.dtype);
  const int64_t n = 32;
  const torch::Tensor tokens = random_tokens(n, config.vocab_size, 8, {0});
  Session spans(config, params, DecodePath::kSpans), step(config, params, DecodePath::kStaticStep);
  feed_both(spans, step, tokens, 0, 2, tolerance_for(variant, precision));
  for (int64_t at = 2; at < n; ++at) feed_both(spans, step, tokens, at, 1, tolerance_for(variant, precision));
  EXPECT_EQ(step.inner_steps(), (n - 1) / config.mini_batch);
  // Loaded after the prompt and after the first chunk's inner step (recomputed: it began
  // with the span), never again.
  EXPECT_EQ(step.decode_step()->loads(), 2);
}

// The state a session saves, forks or starts over from is the same whether its last tokens
// went through the decode step or not, and a restored or forked session decodes on as the
// span path does.
TEST_P(DecodeStepVariant, SavedForkedAndResetSessionsDecodeLikeSpans) {
  const auto [variant, precision] = GetParam();
  const double tolerance = tolerance_for(variant, precision);
  const ModelConfig config = tiny_config(variant);
  const Params params = random_params(config, 5, 0.3, precision.dtype);
  const torch::Tensor document = random_tokens(20, config.vocab_size, 3, {0});
  const torch::Tensor question = random_tokens(12, config.vocab_size, 4);
  Session spans(config, params, DecodePath::kSpans), step(config, params, DecodePath::kStaticStep);
  feed_both(spans, step, document, 0, 5, tolerance);
  for (int64_t at = 5; at < 20; ++at) feed_both(spans, step, document, at, 1, tolerance);

  // Saved while the ring alone holds the newest rows, restored into either path.
  test::ScratchDir dir;
  step.save(dir.path("step.safetensors"));
  spans.save(dir.path("spans.safetensors"));
  for (const DecodePath path : {DecodePath::kSpans, DecodePath::kStaticStep}) {
    Session reference(config, params, DecodePath::kSpans), restored(config, params, path);
    reference.restore(dir.path("spans.safetensors"));
    restored.feed(random_tokens(8, config.vocab_size, 9));  // restore replaces any state
    restored.restore(dir.path("step.safetensors"));
    for (int64_t at = 0; at < 12; ++at) feed_both(reference, restored, question, at, 1, tolerance);
  }

  // Forked while the ring holds the newest rows: the fork and its origin decode on alone.
  const std::unique_ptr<Session> spans_fork = spans.fork(), step_fork = step.fork();
  ASSERT_NE(step_fork->decode_step(), nullptr);
  for (int64_t at = 0; at < 12; ++at) feed_both(*spans_fork, *step_fork, question, at, 1, tolerance);
  for (int64_t at = 0; at < 6; ++at) feed_both(spans, step, document, at, 1, tolerance);

  // Started over: the ring's old rows are not seen again.
  spans.reset();
  step.reset();
  for (int64_t at = 0; at < 12; ++at) feed_both(spans, step, question, at, 1, tolerance);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, DecodeStepVariant,
    ::testing::Combine(::testing::Values(Variant::kFullAttention, Variant::kSlidingWindow, Variant::kTttE2E),
                       ::testing::Values(Precision{torch::kFloat64, 1e-11}, Precision{torch::kFloat32, 1e-4})),
    [](const auto& info) {
      const Variant variant = std::get<0>(info.param);
      return std::string(variant == Variant::kTttE2E          ? "ttt_e2e"
                         : variant == Variant::kSlidingWindow ? "swa"
                                                              : "fa") +
             (std::get<1>(info.param).dtype == torch::kFloat64 ? "_f64" : "_f32");
    });

class DecodeStepOnCuda : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  }
  const torch::Device cuda_{torch::kCUDA, 0};
};

// Graph replays against the span path, token by token, in fp32 and bf16: a prompt, then
// single tokens past the window (32: the ring wraps), across inner steps (every 16) and
// fa's ring growing from 32 to 128 rows (32, 48, 64, 96, 128), with a span between them; the
// same step without graphs (TTT_CUDA_GRAPHS=0) too.
TEST_P(DecodeStepOnCuda, GraphReplaysGiveTheSpansNumbers) {
  const ModelConfig c = test::kernel_sized_config(GetParam());
  const Params params = random_params(c, 8, 0.1);
  const int64_t n = 125;
  const torch::Tensor tokens = random_tokens(n, c.vocab_size, 9, {0, 70});
  for (const std::optional<torch::Dtype> dtype : {std::optional<torch::Dtype>(), std::optional(torch::kBFloat16)}) {
    SCOPED_TRACE(dtype ? "bf16" : "fp32");
    const double tolerance = dtype ? 5e-2 : 1e-3;
    const MatmulDtypeGuard precision(dtype);
    const Params on_cuda = params_for_inference(c, convert_params(c, params, torch::kFloat32), {cuda_, dtype});
    Session spans(c, on_cuda, DecodePath::kSpans), graphed(c, on_cuda);  // the step by default where graphs serve
    setenv("TTT_CUDA_GRAPHS", "0", 1);
    Session eager(c, on_cuda, DecodePath::kStaticStep);
    EXPECT_EQ(Session(c, on_cuda).decode_step(), nullptr);  // graphs off: spans by default
    unsetenv("TTT_CUDA_GRAPHS");
    Session eager_spans(c, on_cuda, DecodePath::kSpans);
    ASSERT_EQ(graphed.decode_step() != nullptr, cuda_graphs_enabled());
    if (!graphed.decode_step()) GTEST_SKIP() << "TTT_CUDA_GRAPHS=0";
    ASSERT_NE(eager.decode_step(), nullptr);
    int64_t singles = 0;
    for (int64_t at = 0; at < n;) {
      const int64_t length = at == 0 ? 20 : at == 80 ? 5 : 1;
      feed_both(spans, graphed, tokens, at, length, tolerance);
      feed_both(eager_spans, eager, tokens, at, length, tolerance);
      singles += length == 1 ? 1 : 0;
      at += length;
    }
    const DecodeStep& step = *graphed.decode_step();
    EXPECT_EQ(step.steps(), singles);
    EXPECT_EQ(eager.decode_step()->captures(), 0);
    EXPECT_EQ(step.capacity(), c.attention_window() > 0 ? c.window : 128);
    // A fork decodes on with graphs of its own.
    const std::unique_ptr<Session> fork = graphed.fork(), reference = spans.fork();
    for (int64_t at = 0; at < 4; ++at) feed_both(*reference, *fork, tokens, at, 1, tolerance);
    // One graph per ring capacity, each run eagerly once before its capture and replayed
    // from the capture on.
    EXPECT_EQ(step.captures(), c.attention_window() > 0 ? 1 : 5);
    EXPECT_EQ(step.replays(), step.steps() - step.captures());
    EXPECT_EQ(fork->decode_step()->captures(), 1);
    EXPECT_EQ(fork->decode_step()->replays(), 3);
  }
}

// Sessions decoding on threads of their own, as `ttt serve --slots N` runs them: each one's
// first graph is captured while the other computes (eagerly or by replays), and every token's
// logits are those of a span session fed alone.
TEST_P(DecodeStepOnCuda, SessionsOnThreadsDecodeAsAlone) {
  const ModelConfig c = test::kernel_sized_config(GetParam());
  const Params on_cuda =
      params_for_inference(c, convert_params(c, random_params(c, 8, 0.1), torch::kFloat32), {cuda_, std::nullopt});
  if (!cuda_graphs_enabled()) GTEST_SKIP() << "TTT_CUDA_GRAPHS=0";
  // A prompt of three chunks and some (the blocks before the fast weights run ahead of its
  // chunks, the second span on the thread's side stream), then single tokens: every feed's
  // logits stacked.
  const int64_t n = 100, prompt = 3 * c.mini_batch + 2, threads = 3;
  const auto decode = [&](Session& session, const torch::Tensor& tokens) {
    std::vector<torch::Tensor> logits = {session.feed(tokens.narrow(0, 0, prompt)).clone()};
    for (int64_t at = prompt; at < n; ++at) logits.push_back(session.feed(tokens.narrow(0, at, 1)).clone());
    return torch::stack(logits);
  };
  std::vector<torch::Tensor> tokens, expected;
  for (int64_t t = 0; t < threads; ++t) {
    tokens.push_back(random_tokens(n, c.vocab_size, 20 + t, {0, 40}));
    Session alone(c, on_cuda, DecodePath::kSpans);
    expected.push_back(decode(alone, tokens[t]));
  }
  std::vector<torch::Tensor> got(threads);
  std::vector<int64_t> captures(threads);
  std::vector<std::thread> workers;
  for (int64_t t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      try {
        Session session(c, on_cuda);
        // To the host by this thread's stream: a device-wide synchronization here would break
        // another thread's capture (cudaErrorStreamCaptureUnsupported), as it would in the engine.
        got[t] = decode(session, tokens[t]).to(torch::kCPU);
        captures[t] = session.decode_step() ? session.decode_step()->captures() : 0;
      } catch (const std::exception& e) {
        ADD_FAILURE() << "session " << t << ": " << e.what();
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  for (int64_t t = 0; t < threads; ++t) {
    EXPECT_GE(captures[t], 1) << "session " << t;
    ASSERT_TRUE(got[t].defined()) << "session " << t;
    EXPECT_LT(logit_error(got[t], expected[t]), 1e-3) << "session " << t;
  }
}

// The step's fused attention (model/layers.h decode_attention) against `attend` under
// attention_mask in fp64, over rings with empty slots, wrapped windows, keys outside a window,
// ranges of keys with no seen key, heads of 8 to 256 dimensions and more keys than one block
// per range takes (several per thread).
TEST(DecodeAttentionOnCuda, MatchesAttendUnderTheMask) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::NoGradGuard no_grad;
  constexpr int64_t kEmpty = std::numeric_limits<int64_t>::max();
  struct Ring {
    int64_t capacity, heads, dim, window, token, filled;  // slots [0, filled) hold tokens; a window wraps
  };
  const std::vector<Ring> rings = {{1, 1, 8, 0, 0, 1},
                                   {37, 3, 16, 0, 29, 30},
                                   {64, 2, 64, 64, 200, 64},
                                   {300, 4, 80, 100, 299, 300},
                                   {50, 2, 256, 0, 49, 50},
                                   {20000, 2, 128, 0, 19999, 20000},
                                   {200000, 1, 64, 0, 149999, 150000}};
  const torch::Device cuda(torch::kCUDA, 0);
  for (const std::optional<torch::Dtype> dtype : {std::optional<torch::Dtype>(), std::optional(torch::kBFloat16)}) {
    const MatmulDtypeGuard precision(dtype);
    const torch::Dtype storage = dtype.value_or(torch::kFloat32);
    for (const Ring& r : rings) {
      SCOPED_TRACE(std::to_string(r.capacity) + " slots, " + std::to_string(r.heads) + "x" + std::to_string(r.dim) +
                   (dtype ? " bf16" : " fp32"));
      torch::manual_seed(r.capacity + r.dim);
      // A window's ring holds position p in slot p % capacity; otherwise slot j holds position j.
      std::vector<int64_t> positions(r.capacity, kEmpty);
      for (int64_t p = r.token - r.filled + 1; p <= r.token; ++p) positions[p % r.capacity] = p;
      const torch::Tensor slot_positions = torch::tensor(positions, torch::kInt64);
      const torch::Tensor token_position = torch::full({1}, r.token, torch::kInt64);
      const torch::Tensor q = torch::randn({1, r.heads, r.dim});
      const torch::Tensor keys = torch::randn({r.capacity, r.heads, r.dim}).to(storage);
      const torch::Tensor values = torch::randn({r.capacity, r.heads, r.dim}).to(storage);
      const torch::Tensor q_cuda = q.to(cuda);
      const torch::Tensor keys_cuda = keys.to(cuda), values_cuda = values.to(cuda);
      ASSERT_TRUE(decode_attention_serves(q_cuda, keys_cuda));
      const torch::Tensor got =
          decode_attention(q_cuda, keys_cuda, values_cuda, slot_positions.to(cuda), token_position.to(cuda), r.window);
      EXPECT_EQ(got.scalar_type(), storage);
      ASSERT_EQ(got.sizes(), torch::IntArrayRef({1, r.heads * r.dim}));
      const auto f64 = [](const torch::Tensor& t) { return t.to(torch::kFloat64); };
      const torch::Tensor expected =
          attend(f64(q), f64(keys), f64(values), attention_mask(token_position, slot_positions, r.window));
      const torch::Tensor error = (got.to(torch::kCPU, torch::kFloat64) - expected).norm() / expected.norm();
      // bf16: q * scale rounded to bf16 as the matmul paths do; the rest in fp32.
      EXPECT_LT(error.item<double>(), dtype ? 1e-2 : 1e-5);
    }
  }
  // Not where autograd records, nor on the CPU: the composable ops serve there.
  const torch::Tensor q = torch::randn({1, 2, 16}, cuda), keys = torch::randn({4, 2, 16}, cuda);
  EXPECT_FALSE(decode_attention_serves(q.cpu(), keys.cpu()));
  const torch::AutoGradMode recording(true);
  EXPECT_FALSE(decode_attention_serves(q, keys));
}

// The fused preparation of q and k (one kernel where autograd does not record) against the
// composed norms, rotations and casts (autograd recording): with and without gains, a decoded
// token and a span, bf16 and fp32 inputs and outputs.
TEST(NormedRotatedQkOnCuda, MatchesTheComposedOps) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  struct Shape {
    int64_t tokens, heads, dim;
  };
  // Head widths the packed kernel takes (64, 128, 16: 8, 16, 2 lanes a row, q's and k's rows
  // sharing warps) and those it leaves to a warp a row (80, 6).
  for (const Shape& shape :
       {Shape{1, 12, 64}, Shape{5, 3, 80}, Shape{2, 2, 128}, Shape{3, 1, 6}, Shape{7, 3, 64}, Shape{33, 5, 16}}) {
    for (const bool with_gains : {true, false}) {
      for (const torch::Dtype in : {torch::kBFloat16, torch::kFloat32}) {
        SCOPED_TRACE(std::to_string(shape.tokens) + "x" + std::to_string(shape.heads) + "x" +
                     std::to_string(shape.dim) + (with_gains ? " normed " : " ") + c10::toString(in));
        torch::manual_seed(shape.dim + shape.tokens);
        const auto options = torch::TensorOptions().device(cuda);
        const torch::Tensor q = torch::randn({shape.tokens, shape.heads, shape.dim}, options).to(in);
        const torch::Tensor k = torch::randn({shape.tokens, shape.heads, shape.dim}, options).to(in);
        const torch::Tensor q_gain = with_gains ? torch::rand({shape.dim}, options) + 0.5 : torch::Tensor();
        const torch::Tensor k_gain = with_gains ? torch::rand({shape.dim}, options) + 0.5 : torch::Tensor();
        const RopeTable table =
            rope_table(span_positions(40, shape.tokens, cuda), shape.dim, 500000.0, torch::kFloat32);
        std::pair<torch::Tensor, torch::Tensor> fused, composed;
        {
          const torch::NoGradGuard inference;
          fused = normed_rotated_qk(q, k, q_gain, k_gain, 1e-6, table, torch::kFloat32, torch::kBFloat16);
        }
        {
          const torch::AutoGradMode recording(true);
          composed = normed_rotated_qk(q, k, q_gain, k_gain, 1e-6, table, torch::kFloat32, torch::kBFloat16);
        }
        EXPECT_EQ(fused.first.scalar_type(), torch::kFloat32);
        EXPECT_EQ(fused.second.scalar_type(), torch::kBFloat16);
        // The same arithmetic in the same order: equal up to the norm's summation order.
        EXPECT_LT((fused.first - composed.first).abs().max().item<double>(), 1e-5);
        EXPECT_LT((fused.second.to(torch::kFloat32) - composed.second.to(torch::kFloat32)).abs().max().item<double>(),
                  2e-2);
        EXPECT_GT(composed.first.abs().max().item<double>(), 0.5);
      }
    }
  }
}

// The residual update in one kernel (autograd not recording) gives the composed ops' numbers
// exactly: the same norm kernel, then the same fp32 sum.
TEST(AddRmsNormOnCuda, MatchesTheComposedOps) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const auto options = torch::TensorOptions().device(torch::kCUDA, 0);
  for (const int64_t rows : {int64_t{1}, int64_t{37}, int64_t{131072}}) {
    for (const torch::Dtype x_dtype : {torch::kBFloat16, torch::kFloat32}) {
      SCOPED_TRACE(std::to_string(rows) + " rows of " + c10::toString(x_dtype));
      torch::manual_seed(rows);
      const torch::Tensor h = torch::randn({rows, 96}, options), x = torch::randn({rows, 96}, options).to(x_dtype);
      const torch::Tensor gain = torch::rand({96}, options) + 0.5;
      torch::Tensor fused, composed;
      {
        const torch::NoGradGuard inference;
        fused = add_rms_norm(h, x, gain, 1e-6);
      }
      {
        const torch::AutoGradMode recording(true);
        composed = add_rms_norm(h, x, gain, 1e-6);
      }
      EXPECT_EQ(fused.scalar_type(), torch::kFloat32);
      EXPECT_TRUE(torch::equal(fused, composed)) << (fused - composed).abs().max().item<double>();
      EXPECT_FALSE(torch::equal(fused, h));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, DecodeStepOnCuda,
                         ::testing::Values(Variant::kTttE2E, Variant::kSlidingWindow, Variant::kFullAttention),
                         [](const auto& info) {
                           return std::string(info.param == Variant::kTttE2E          ? "ttt_e2e"
                                              : info.param == Variant::kSlidingWindow ? "swa"
                                                                                      : "fa");
                         });

}  // namespace
}  // namespace ttt
