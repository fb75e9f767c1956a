// A golden test, in the manner of llm.c's test against a reference dump: the whole model and
// procedure of SPEC.md written out again, naively, in fp64 with plain torch ops, and the
// engine compared against it. The reference shares nothing with the engine but the Params
// struct (which field holds which tensor) and ModelConfig: no layer, attention, cache or
// inner-loop function of src/ is called for it. It is also meant to be read: each step
// cites the SPEC section it follows.
//
// What it checks that the engine's own tests cannot (they compare the engine with itself or
// with finite differences through the same code): the order inside a block (pre-norm,
// post-norm, QK-norm then RoPE on adjacent pairs, the prime MLP before the regular one),
// the head (tied or not), the window, the chunked losses and the inner loop with its
// clip, streaming inference, and the meta-gradient, second order included. The
// sensitivity tests at the end show that plausible mistakes in the reference do break the
// comparison, so the agreement means something.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "infer/session.h"
#include "model/params.h"
#include "test_util.h"
#include "ttt/inner_loop.h"
#include "ttt/sequence_gradient.h"

namespace ttt {
namespace {

using torch::Tensor;
using torch::indexing::None;
using torch::indexing::Slice;

// Deliberate mistakes the reference can make on request (SpecReferenceSensitivity below).
enum class Mistake {
  kNone,
  kPrimeAfterMlp,            // the prime MLP after the regular MLP instead of before it
  kRopeBeforeQkNorm,         // RoPE first, then QK-norm
  kRopeOnHalves,             // RoPE pairing x[j] with x[j + d/2] instead of adjacent pairs
  kNoPostNorm,               // residual branches without their post-norms
  kTiedHeadWhenUntied,       // E^T as the head of an untied model
  kWindowOffByOne,           // query t sees key s while t - s <= k
  kCacheWithCurrentWeights,  // earlier chunks' keys and values recomputed with the current fast weights
  kFirstOrder,               // the meta-gradient without the inner gradients' own derivatives
};

// ---------------------------------------------------------------------------------------
// The reference, from SPEC.md alone.
namespace reference {

// Fast weights: the prime MLP of every suffix block, in block order (SPEC section 5's W).
using Fast = std::vector<MlpParams>;

// SPEC 3: RMSNorm(x; g) = x / sqrt(mean(x^2) + eps) * g over the last axis.
Tensor rms_norm(const Tensor& x, const Tensor& gain, double eps) {
  return x / torch::sqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * gain;
}

// SPEC 3: SwiGLU(x; W1, W2, W3) = (silu(x @ W1) * (x @ W3)) @ W2.
Tensor mlp_branch(const Tensor& x, const MlpParams& w) {
  return torch::matmul(torch::silu(torch::matmul(x, w.w1)) * torch::matmul(x, w.w3), w.w2);
}

// SPEC 3, attention step 3: RoPE on x [T, H, d] at absolute positions 0..T-1, rotating the
// adjacent pairs (x[2j], x[2j+1]) by the angle t * theta^(-2j/d), j = 0..d/2-1.
Tensor rope(const Tensor& x, double theta, Mistake mistake) {
  const int64_t T = x.size(0), d = x.size(2);
  const Tensor t = torch::arange(T, torch::kFloat64).unsqueeze(1);          // [T, 1]
  const Tensor j = torch::arange(d / 2, torch::kFloat64);                   // [d/2]
  const Tensor angle = (t * torch::pow(theta, -2.0 * j / d)).unsqueeze(1);  // [T, 1, d/2], every head
  const Tensor cos = torch::cos(angle), sin = torch::sin(angle);
  if (mistake == Mistake::kRopeOnHalves) {  // the "rotate half" layout: pairs (x[j], x[j + d/2])
    const Tensor x0 = x.index({"...", Slice(0, d / 2)}), x1 = x.index({"...", Slice(d / 2, None)});
    return torch::cat({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1);
  }
  const Tensor x0 = x.index({"...", Slice(0, None, 2)}), x1 = x.index({"...", Slice(1, None, 2)});
  const Tensor y0 = x0 * cos - x1 * sin;  // x'[2j]
  const Tensor y1 = x0 * sin + x1 * cos;  // x'[2j+1]
  return torch::stack({y0, y1}, -1).flatten(-2);
}

// SPEC 3, Attention_i(a) for the tokens at positions 0..T-1, a: [T, D].
Tensor attention(const ModelConfig& c, const AttentionParams& p, const Tensor& a, Mistake mistake) {
  const int64_t T = a.size(0), H = c.n_heads, d = c.d_model / c.n_heads;
  // 1. projections, split into H heads of width d.
  Tensor q = torch::matmul(a, p.wq).view({T, H, d});
  Tensor k = torch::matmul(a, p.wk).view({T, H, d});
  const Tensor v = torch::matmul(a, p.wv).view({T, H, d});
  // 2. QK-norm per head, gains [d] shared by the heads; 3. RoPE, after it.
  const bool rope_first = mistake == Mistake::kRopeBeforeQkNorm;
  if (rope_first) q = rope(q, c.rope_theta, mistake), k = rope(k, c.rope_theta, mistake);
  if (c.qk_norm) q = rms_norm(q, p.q_norm, c.rms_eps), k = rms_norm(k, p.k_norm, c.rms_eps);
  if (!rope_first) q = rope(q, c.rope_theta, mistake), k = rope(k, c.rope_theta, mistake);
  // 4. scores / sqrt(d); query t sees key s iff s <= t, and t - s < k for swa and ttt-e2e.
  const Tensor scores = torch::einsum("thd,shd->hts", {q, k}) / std::sqrt(static_cast<double>(d));
  const Tensor t = torch::arange(T).unsqueeze(1), s = torch::arange(T).unsqueeze(0);
  Tensor visible = s <= t;
  if (c.variant != Variant::kFullAttention) {
    visible = visible & (mistake == Mistake::kWindowOffByOne ? t - s <= c.window : t - s < c.window);
  }
  const Tensor probs =
      torch::softmax(scores.masked_fill(visible.logical_not(), -std::numeric_limits<double>::infinity()), -1);
  // Weighted sum of v, heads merged, then Wo.
  return torch::matmul(torch::einsum("hts,shd->thd", {probs, v}).reshape({T, c.d_model}), p.wo);
}

// SPEC 3: the logits [T, V] for the input tokens at positions 0..T-1.
//
// The prime MLP of suffix block number `s` (0 for the first suffix block) applies to row t
// the fast weights of t's chunk: fast[t / b][s]. That is SPEC 5's KV cache without a cache:
// when chunk c runs, every earlier token's keys and values must be those computed when its
// own chunk ran, with that chunk's weights. Those depend on the token's hidden state in the
// suffix, which depends on the weights only through the prime MLPs of that same token's row
// and of the earlier rows it attends to (which by induction are those of their own chunks).
// So running all rows 0..T-1 again, each row with its own chunk's weights, reproduces the
// cache exactly, window or not (the window is the mask's job), and the current chunk's rows
// are what the chunk computes. It costs a quadratic recomputation, which is the point:
// nothing is carried between chunks but the fast weights.
Tensor forward(const ModelConfig& c, const Params& params, const Tensor& inputs, const std::vector<Fast>& fast,
               Mistake mistake) {
  const double eps = c.rms_eps;
  const int64_t T = inputs.size(0), b = c.mini_batch;
  // Every residual branch is normalised after its sublayer too (SPEC 3's note).
  const auto post_norm = [&](const Tensor& y, const Tensor& gain) {
    return mistake == Mistake::kNoPostNorm ? y : rms_norm(y, gain, eps);
  };
  const auto prime_mlp = [&](const Tensor& p, int64_t s) {  // row t with fast[t / b][s]
    std::vector<Tensor> rows;
    for (int64_t start = 0; start < T; start += b) {
      rows.push_back(mlp_branch(p.narrow(0, start, std::min(b, T - start)), fast.at(start / b).at(s)));
    }
    return torch::cat(rows);
  };

  Tensor h = params.embed.index_select(0, inputs);  // h = E[tokens]
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const BlockParams& block = params.blocks[i];
    const Tensor a = rms_norm(h, block.attn_norm, eps);
    h = h + post_norm(attention(c, block.attn, a, mistake), block.attn_post_norm);

    const bool suffix = c.variant == Variant::kTttE2E && i >= c.n_layers - c.suffix_len;
    const auto prime_branch = [&] {
      const Tensor p = rms_norm(h, block.prime_norm, eps);
      h = h + post_norm(prime_mlp(p, i - (c.n_layers - c.suffix_len)), block.prime_post_norm);
    };
    if (suffix && mistake != Mistake::kPrimeAfterMlp) prime_branch();  // the prime MLP first,
    const Tensor m = rms_norm(h, block.mlp_norm, eps);                 // then the regular one
    h = h + post_norm(mlp_branch(m, block.mlp), block.mlp_post_norm);
    if (suffix && mistake == Mistake::kPrimeAfterMlp) prime_branch();
  }
  const bool tied = c.tie_embeddings || mistake == Mistake::kTiedHeadWhenUntied;
  return torch::matmul(rms_norm(h, params.final_norm, eps), tied ? params.embed.t() : params.lm_head);
}

// SPEC 4: a span's loss is sum(nll * valid) / max(sum(valid), 1e-10).
Tensor masked_mean(const Tensor& nll, const Tensor& valid) {
  return (nll * valid).sum() / torch::clamp_min(valid.sum(), 1e-10);
}

// SPEC 5: W_next = W - inner_lr * ilr_mult * s * g, g = d loss / d W, s = min(1, clip / ||g||)
// over all inner tensors together. With `second_order`, g keeps its graph (SPEC 6: the outer
// gradient flows through d g / d theta). The clip factor is appended to `scales`.
Fast inner_step(const ModelConfig& c, const Fast& w, const Tensor& loss, double step_size, bool second_order,
                std::vector<double>& scales) {
  std::vector<Tensor> flat;
  for (const MlpParams& m : w) flat.insert(flat.end(), {m.w1, m.w2, m.w3});
  const std::vector<Tensor> g =
      torch::autograd::grad({loss}, flat, {}, /*retain_graph=*/true, /*create_graph=*/second_order);
  Tensor squares = torch::zeros({}, torch::kFloat64);
  for (const Tensor& x : g) squares = squares + x.pow(2).sum();
  const Tensor norm = torch::sqrt(squares);
  // A chunk whose targets are all bos has loss 0 and g = 0: its step is 0 whatever s is, so
  // s is taken as 1 there rather than differentiating sqrt at 0.
  Tensor s = torch::ones({}, torch::kFloat64);
  if (c.inner_clip > 0 && norm.item<double>() > 0) s = torch::clamp_max(c.inner_clip / norm, 1.0);
  scales.push_back(s.item<double>());
  Fast next;
  for (size_t k = 0; k < w.size(); ++k) {
    next.push_back({w[k].w1 - step_size * s * g[3 * k], w[k].w2 - step_size * s * g[3 * k + 1],
                    w[k].w3 - step_size * s * g[3 * k + 2]});
  }
  return next;
}

struct Result {
  Tensor loss;                      // SPEC 8: mean of chunk losses (swa, ttt-e2e); masked mean over all targets (fa)
  Tensor nll;                       // [n - 1] per target
  Tensor logits;                    // [n - 1, V]: row t predicts token t + 1, as the procedure computed it
  std::vector<double> clip_scales;  // s of every inner step taken
};

// SPEC 4, 5 and 8 over `tokens` [n]: inputs x[0..n-2], targets y[t] = x[t+1], in chunks of b
// positions; a trailing partial chunk counts as a chunk. When the parameters require grad,
// the loss is kept differentiable w.r.t. all of them, through every inner step (SPEC 6).
Result run(const ModelConfig& c, const Params& params, const Tensor& tokens, double ilr_mult = 1.0,
           Mistake mistake = Mistake::kNone) {
  const int64_t n = tokens.size(0) - 1, b = c.mini_batch, n_chunks = (n + b - 1) / b;
  const Tensor inputs = tokens.narrow(0, 0, n), targets = tokens.narrow(0, 1, n);
  const Tensor valid = (targets != c.bos_id).to(torch::kFloat64);  // bos targets carry no loss
  const bool outer = params.embed.requires_grad();
  const bool ttt = c.variant == Variant::kTttE2E;

  // Without an outer gradient, each W is a fresh leaf: the inner gradient needs no more.
  const auto leaves_unless_outer = [&](Fast w) {
    if (outer) return w;
    for (MlpParams& m : w)
      m = {m.w1.detach().requires_grad_(), m.w2.detach().requires_grad_(), m.w3.detach().requires_grad_()};
    return w;
  };

  // W[c]: the fast weights chunk c (counted from 0) runs with; W[0] = the model's prime MLPs.
  std::vector<Fast> W(1);
  for (int64_t i = c.n_layers - c.suffix_len; ttt && i < c.n_layers; ++i) W[0].push_back(params.blocks[i].prime);
  W[0] = leaves_unless_outer(W[0]);
  // Without fast weights the chunks need not run one by one: nothing changes between them.
  const Tensor whole = ttt ? Tensor() : forward(c, params, inputs, W, mistake);

  Result r;
  std::vector<Tensor> logits, nlls, chunk_losses;
  for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
    const int64_t start = chunk * b, length = std::min(b, n - start), end = start + length;
    Tensor chunk_logits;
    if (ttt) {
      // All tokens so far, each earlier chunk with its own weights (see forward()), the
      // current chunk with W[chunk].
      std::vector<Fast> rows_weights(W);
      if (mistake == Mistake::kCacheWithCurrentWeights) rows_weights.assign(chunk + 1, W[chunk]);
      chunk_logits = forward(c, params, inputs.narrow(0, 0, end), rows_weights, mistake).narrow(0, start, length);
    } else {
      chunk_logits = whole.narrow(0, start, length);
    }
    // SPEC 4: next-token cross-entropy (in fp64 here).
    const Tensor nll =
        -torch::log_softmax(chunk_logits, -1).gather(1, targets.narrow(0, start, length).unsqueeze(1)).squeeze(1);
    chunk_losses.push_back(masked_mean(nll, valid.narrow(0, start, length)));  // l_c, BEFORE the update
    logits.push_back(chunk_logits);
    nlls.push_back(nll);
    // SPEC 5: one SGD step on l_c; the last chunk's would never be used. g_c is taken w.r.t.
    // the tensors W[chunk]; the earlier rows (SPEC's KV-cache entries) were computed from
    // W[0..chunk-1], other tensors, so they are constants of g_c as SPEC 5 says, while the
    // outer gradient still flows through them (SPEC 6).
    if (ttt && chunk + 1 < n_chunks) {
      const bool second_order = outer && mistake != Mistake::kFirstOrder;
      W.push_back(leaves_unless_outer(
          inner_step(c, W[chunk], chunk_losses.back(), c.inner_lr * ilr_mult, second_order, r.clip_scales)));
    }
  }
  r.logits = torch::cat(logits);
  r.nll = torch::cat(nlls);
  r.loss = c.variant == Variant::kFullAttention ? masked_mean(r.nll, valid) : torch::stack(chunk_losses).mean();
  return r;
}

}  // namespace reference
// ---------------------------------------------------------------------------------------

// The tolerance of every comparison with the engine: relative to the reference's largest
// magnitude. Both compute in fp64; what separates them is rounding in a different order.
constexpr double kTolerance = 1e-10;
// What a deliberate mistake must at least change (relative), to count as detected.
constexpr double kDetectable = 1e-4;

// max |actual - expected| / max |expected|.
double relative_difference(const Tensor& actual, const Tensor& expected) {
  const double scale = expected.abs().max().item<double>();
  return (actual.detach() - expected.detach()).abs().max().item<double>() / std::max(scale, 1e-300);
}

// One configuration: the tiny model of test_util.h (D 8, 2 heads of width 4, 4 blocks, window
// 6 across chunks of b = 3, the last 2 blocks with prime MLPs) with these changes.
struct Case {
  std::string name;
  Variant variant;
  int64_t n_tokens;
  std::vector<int64_t> bos_at;  // token indices holding bos (the targets at index - 1 are masked)
  bool tied = true;
  bool qk_norm = true;
  int64_t window = 0;        // 0: the tiny model's
  int64_t suffix_len = 0;    // 0: the tiny model's
  double inner_clip = -1.0;  // < 0: the tiny model's (1.0)
  double inner_lr = -1.0;    // < 0: the tiny model's (1.0)
  double ilr_mult = 1.0;
  // A wider model: head width 6 (three RoPE frequencies), 3 blocks, b 4, window 7, one suffix
  // block, a RoPE base small enough that every frequency turns measurably.
  bool wide = false;
  enum Clip { kAny, kActive, kInactive } clip = kAny;  // what the inner clip must do at every step
};

std::ostream& operator<<(std::ostream& out, const Case& k) { return out << k.name; }

ModelConfig config_of(const Case& k) {
  ModelConfig c = test::tiny_config(k.variant);
  if (k.wide) {
    c.vocab_size = 29;
    c.d_model = 12;
    c.n_heads = 2;
    c.d_ff = 20;
    c.n_layers = 3;
    c.rope_theta = 100.0;
    c.mini_batch = 4;
    if (c.variant != Variant::kFullAttention) c.window = 7;
    if (c.is_ttt()) c.suffix_len = 1;
  }
  c.tie_embeddings = k.tied;
  c.qk_norm = k.qk_norm;
  if (k.window > 0) c.window = k.window;
  if (k.suffix_len > 0) c.suffix_len = k.suffix_len;
  if (k.inner_clip >= 0) c.inner_clip = k.inner_clip;
  if (k.inner_lr >= 0) c.inner_lr = k.inner_lr;
  c.validate();
  return c;
}

class SpecReference : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    const Case& k = GetParam();
    config = config_of(k);
    params = test::random_params(config, 401, 0.4);
    tokens = test::random_tokens(k.n_tokens, config.vocab_size, 402, k.bos_at, config.bos_id);
  }
  ModelConfig config;
  Params params;
  Tensor tokens;
};

// SPEC 8's loss and per-token NLLs of `ttt eval`'s procedure (run_sequence).
TEST_P(SpecReference, LossAndNllMatch) {
  const Case& k = GetParam();
  SequenceOptions options;
  options.ilr_mult = k.ilr_mult;
  const SequenceResult engine = run_sequence(config, params, tokens, options);
  const reference::Result expected = reference::run(config, params, tokens, k.ilr_mult);

  const double loss_error = relative_difference(engine.loss, expected.loss);
  const double nll_error = relative_difference(engine.nll, expected.nll);
  std::printf("  [%s] loss %.12f, max relative difference: loss %.2e, nll %.2e\n", k.name.c_str(),
              expected.loss.item<double>(), loss_error, nll_error);
  EXPECT_LE(loss_error, kTolerance);
  ASSERT_EQ(engine.nll.sizes(), expected.nll.sizes());
  EXPECT_LE(nll_error, kTolerance);
  EXPECT_EQ(engine.inner_steps, static_cast<int64_t>(expected.clip_scales.size()));

  // The case exercises what it says it does.
  const auto clipped =
      std::count_if(expected.clip_scales.begin(), expected.clip_scales.end(), [](double s) { return s < 1.0; });
  if (k.clip == Case::kActive) EXPECT_EQ(clipped, static_cast<int64_t>(expected.clip_scales.size()));
  if (k.clip == Case::kInactive) EXPECT_EQ(clipped, 0);
}

// Streaming inference: the logits at the last token of each feed are the reference's at that
// position, however the prompt is cut.
TEST_P(SpecReference, SessionLogitsMatch) {
  const Case& k = GetParam();
  const reference::Result expected = reference::run(config, params, tokens);  // ilr_mult 1, as sessions train
  const int64_t n = tokens.size(0) - 1;  // the prompt: every input position of the reference
  double worst = 0;
  for (const std::vector<int64_t>& pieces : std::vector<std::vector<int64_t>>{{5, 2, 7}, {1}, {n}}) {
    Session session(config, params);
    for (int64_t at = 0, p = 0; at < n; ++p) {
      const int64_t length = std::min(pieces[p % pieces.size()], n - at);
      const Tensor logits = session.feed(tokens.narrow(0, at, length));
      at += length;
      const double error = relative_difference(logits, expected.logits[at - 1]);
      worst = std::max(worst, error);
      EXPECT_LE(error, kTolerance) << "after " << at << " tokens fed in pieces of " << pieces[0] << "...";
    }
  }
  std::printf("  [%s] session logits: max relative difference %.2e\n", k.name.c_str(), worst);
}

// SPEC 6: the gradient of the sequence loss w.r.t. every parameter, through every inner step
// (second order) and the KV cache, against autograd through the reference.
TEST_P(SpecReference, GradientMatches) {
  const Case& k = GetParam();
  const Params expected_leaves = convert_params(config, params, torch::kFloat64, /*requires_grad=*/true);
  const reference::Result expected = reference::run(config, expected_leaves, tokens, k.ilr_mult);
  expected.loss.backward();

  const Params engine_leaves = convert_params(config, params, torch::kFloat64, /*requires_grad=*/true);
  GradientOptions options;
  options.ilr_mult = k.ilr_mult;
  const Tensor loss = accumulate_sequence_gradient(config, engine_leaves, tokens, options);
  EXPECT_LE(relative_difference(loss, expected.loss), kTolerance);

  const auto engine = named_params(config, engine_leaves);
  double worst = 0;
  std::string worst_name;
  for (const auto& [name, leaf] : named_params(config, expected_leaves)) {
    ASSERT_TRUE(leaf.grad().defined()) << name << ": the reference does not use it";
    EXPECT_GT(leaf.grad().abs().max().item<double>(), 0) << name << ": a zero gradient proves nothing";
    const Tensor actual = engine.at(name).grad();
    ASSERT_TRUE(actual.defined()) << name << ": no gradient from the engine";
    const double error = relative_difference(actual, leaf.grad());
    EXPECT_LE(error, kTolerance) << name;
    if (error >= worst) worst = error, worst_name = name;
  }
  std::printf("  [%s] gradient: max relative difference %.2e (%s)\n", k.name.c_str(), worst, worst_name.c_str());
}

INSTANTIATE_TEST_SUITE_P(
    SpecReference, SpecReference,
    ::testing::Values(
        // 17 tokens: 16 targets, five full chunks of 3 and a trailing partial one; bos targets
        // at 4 and 5 (tokens 5 and 6). Whether the clip (1.0) acts is left to the numbers.
        Case{.name = "ttt", .variant = Variant::kTttE2E, .n_tokens = 17, .bos_at = {5, 6}},
        Case{.name = "ttt_clip_active",
             .variant = Variant::kTttE2E,
             .n_tokens = 17,
             .bos_at = {5, 6},
             .inner_clip = 0.05,
             .clip = Case::kActive},
        Case{.name = "ttt_clip_off", .variant = Variant::kTttE2E, .n_tokens = 17, .bos_at = {5, 6}, .inner_clip = 0},
        Case{.name = "ttt_clip_large",
             .variant = Variant::kTttE2E,
             .n_tokens = 17,
             .bos_at = {5, 6},
             .inner_clip = 1e6,
             .clip = Case::kInactive},
        Case{.name = "ttt_untied", .variant = Variant::kTttE2E, .n_tokens = 17, .bos_at = {5, 6}, .tied = false},
        Case{.name = "ttt_no_qk_norm", .variant = Variant::kTttE2E, .n_tokens = 17, .bos_at = {5, 6}, .qk_norm = false},
        Case{.name = "ttt_untied_no_qk_norm",
             .variant = Variant::kTttE2E,
             .n_tokens = 17,
             .tied = false,
             .qk_norm = false},
        Case{.name = "ttt_window_equals_chunk",
             .variant = Variant::kTttE2E,
             .n_tokens = 17,
             .bos_at = {5, 6},
             .window = 3},
        Case{.name = "ttt_window_spans_chunks",
             .variant = Variant::kTttE2E,
             .n_tokens = 17,
             .bos_at = {5, 6},
             .window = 8},
        // 16 tokens: 15 targets, five full chunks.
        Case{.name = "ttt_whole_chunks", .variant = Variant::kTttE2E, .n_tokens = 16, .bos_at = {5, 6}},
        // One partial chunk: no inner step at all.
        Case{.name = "ttt_one_partial_chunk", .variant = Variant::kTttE2E, .n_tokens = 3},
        // Targets 3, 4, 5 are bos: the second chunk has no loss (and a zero inner gradient).
        Case{.name = "ttt_bos_fills_a_chunk", .variant = Variant::kTttE2E, .n_tokens = 17, .bos_at = {4, 5, 6}},
        // bos as the first input and the first target; the last chunk's only target is bos.
        Case{.name = "ttt_bos_first_and_last", .variant = Variant::kTttE2E, .n_tokens = 17, .bos_at = {0, 1, 16}},
        Case{.name = "ttt_every_block_a_suffix",
             .variant = Variant::kTttE2E,
             .n_tokens = 14,
             .bos_at = {5},
             .suffix_len = 4},
        Case{.name = "ttt_inner_lr_and_mult",
             .variant = Variant::kTttE2E,
             .n_tokens = 17,
             .bos_at = {5, 6},
             .inner_lr = 0.3,
             .ilr_mult = 0.7},
        Case{.name = "ttt_wide", .variant = Variant::kTttE2E, .n_tokens = 31, .bos_at = {9, 20}, .wide = true},
        Case{.name = "ttt_wide_untied_clip_active",
             .variant = Variant::kTttE2E,
             .n_tokens = 31,
             .bos_at = {9},
             .tied = false,
             .inner_clip = 0.1,
             .wide = true,
             .clip = Case::kActive},
        Case{.name = "swa", .variant = Variant::kSlidingWindow, .n_tokens = 17, .bos_at = {5, 6}},
        Case{.name = "swa_untied_no_qk_norm",
             .variant = Variant::kSlidingWindow,
             .n_tokens = 17,
             .bos_at = {5, 6},
             .tied = false,
             .qk_norm = false},
        Case{.name = "swa_window_equals_chunk",
             .variant = Variant::kSlidingWindow,
             .n_tokens = 17,
             .bos_at = {4, 5, 6},
             .window = 3},
        Case{.name = "swa_wide", .variant = Variant::kSlidingWindow, .n_tokens = 31, .bos_at = {9}, .wide = true},
        Case{.name = "fa", .variant = Variant::kFullAttention, .n_tokens = 17, .bos_at = {5, 6}},
        Case{.name = "fa_untied",
             .variant = Variant::kFullAttention,
             .n_tokens = 17,
             .bos_at = {4, 5, 6},
             .tied = false},
        Case{.name = "fa_no_qk_norm", .variant = Variant::kFullAttention, .n_tokens = 16, .qk_norm = false},
        // fa may carry a window but never uses it (SPEC 3: only swa and ttt-e2e have one).
        Case{.name = "fa_carries_a_window",
             .variant = Variant::kFullAttention,
             .n_tokens = 17,
             .bos_at = {5, 6},
             .window = 4},
        Case{.name = "fa_wide", .variant = Variant::kFullAttention, .n_tokens = 31, .bos_at = {9}, .wide = true}),
    [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------
// Sensitivity: the comparison above can fail. A ttt-e2e model with an untied head, QK-norm,
// a window across chunks and the inner clip active, whose prime MLPs are drawn at another
// scale than the regular ones; the reference with each deliberate mistake disagrees with the
// engine by far more than the tolerance, while the reference without one agrees.
class DistinctMlpsModel : public ::testing::Test {
 protected:
  void SetUp() override {
    config = test::tiny_config(Variant::kTttE2E);
    config.tie_embeddings = false;
    config.inner_clip = 0.3;
    config.validate();
    params = test::random_params(config, 501, 0.4);
    for (int64_t i = config.n_layers - config.suffix_len; i < config.n_layers; ++i) {
      MlpParams& prime = params.blocks[i].prime;
      prime = {prime.w1 * 3.0, prime.w2 * 0.5, prime.w3 * 3.0};
    }
    tokens = test::random_tokens(17, config.vocab_size, 502, {5, 6}, config.bos_id);
  }
  ModelConfig config;
  Params params;
  Tensor tokens;
};

using SpecReferenceSensitivity = DistinctMlpsModel;

TEST_F(SpecReferenceSensitivity, EachMistakeBreaksTheForwardComparison) {
  const SequenceResult engine = run_sequence(config, params, tokens);
  const reference::Result right = reference::run(config, params, tokens);
  ASSERT_LE(relative_difference(engine.nll, right.nll), kTolerance);
  ASSERT_LE(relative_difference(engine.loss, right.loss), kTolerance);
  const auto clipped =
      std::count_if(right.clip_scales.begin(), right.clip_scales.end(), [](double s) { return s < 1.0; });
  EXPECT_GT(clipped, 0) << "the clip should act on these tokens";

  const std::vector<std::pair<Mistake, std::string>> mistakes = {
      {Mistake::kPrimeAfterMlp, "prime MLP after the regular MLP"},
      {Mistake::kRopeBeforeQkNorm, "RoPE before QK-norm"},
      {Mistake::kRopeOnHalves, "RoPE on halves instead of adjacent pairs"},
      {Mistake::kNoPostNorm, "post-norms dropped"},
      {Mistake::kTiedHeadWhenUntied, "untied head used as tied"},
      {Mistake::kWindowOffByOne, "window off by one"},
      {Mistake::kCacheWithCurrentWeights, "earlier chunks' cache with the current weights"},
  };
  for (const auto& [mistake, what] : mistakes) {
    const reference::Result wrong = reference::run(config, params, tokens, 1.0, mistake);
    const double nll_error = relative_difference(engine.nll, wrong.nll);
    const double loss_error = relative_difference(engine.loss, wrong.loss);
    std::printf("  %-48s nll %.2e, loss %.2e\n", what.c_str(), nll_error, loss_error);
    EXPECT_GT(nll_error, kDetectable) << what;
    EXPECT_GT(nll_error, 1e6 * kTolerance) << what;
  }
}

TEST_F(SpecReferenceSensitivity, FirstOrderBreaksTheGradientComparison) {
  const Params engine_leaves = convert_params(config, params, torch::kFloat64, true);
  accumulate_sequence_gradient(config, engine_leaves, tokens);
  const auto engine = named_params(config, engine_leaves);
  for (const Mistake mistake : {Mistake::kNone, Mistake::kFirstOrder}) {
    const Params leaves = convert_params(config, params, torch::kFloat64, true);
    reference::run(config, leaves, tokens, 1.0, mistake).loss.backward();
    double worst = 0;
    for (const auto& [name, leaf] : named_params(config, leaves)) {
      worst = std::max(worst, relative_difference(engine.at(name).grad(), leaf.grad()));
    }
    std::printf("  gradient, %-38s max relative difference %.2e\n",
                mistake == Mistake::kNone ? "exact reference:" : "first-order reference:", worst);
    if (mistake == Mistake::kNone) EXPECT_LE(worst, kTolerance);
    if (mistake == Mistake::kFirstOrder) EXPECT_GT(worst, kDetectable);
  }
}

// The reference's gradient is the derivative of its loss: autograd through it, the second
// order and the clip included, against a central difference along a random direction in
// all parameters at once. (So the engine's agreement with it is not a shared misreading of
// what to hold constant.)
using SpecReferenceSelfCheck = DistinctMlpsModel;

TEST_F(SpecReferenceSelfCheck, GradientIsTheLossDerivative) {
  const Params leaves = convert_params(config, params, torch::kFloat64, /*requires_grad=*/true);
  reference::run(config, leaves, tokens).loss.backward();
  torch::manual_seed(503);
  std::map<std::string, Tensor> direction;
  double directional = 0;
  for (const auto& [name, leaf] : named_params(config, leaves)) {
    direction[name] = torch::randn_like(leaf.detach());
    directional += (leaf.grad() * direction[name]).sum().item<double>();
  }
  const auto loss_at = [&](double step) {
    Params moved = convert_params(config, params, torch::kFloat64);
    visit_params(config, moved, [&](const std::string& name, const std::vector<int64_t>&, ParamKind, Tensor& slot) {
      slot = slot + step * direction.at(name);
    });
    return reference::run(config, moved, tokens).loss.item<double>();
  };
  // Central differences err by O(step^2) (3e-5 relative at 1e-4 here); Richardson's
  // combination of two steps cancels that term.
  const auto central = [&](double step) { return (loss_at(step) - loss_at(-step)) / (2 * step); };
  const double step = 1e-4, extrapolated = (4 * central(step / 2) - central(step)) / 3;
  std::printf("  directional derivative: autograd %.12f, finite differences %.12f, relative difference %.2e\n",
              directional, extrapolated, std::abs(extrapolated / directional - 1));
  EXPECT_NEAR(extrapolated, directional, 1e-8 * std::abs(directional));
}

}  // namespace
}  // namespace ttt
