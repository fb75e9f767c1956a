// The decoder over whole sequences and over chunks with a KV cache.
#include <gtest/gtest.h>

#include "model/transformer.h"
#include "test_util.h"

namespace ttt {
namespace {

using test::random_params;
using test::random_tokens;
using test::tiny_config;

torch::Tensor whole_sequence_logits(const ModelConfig& c, const Params& p, const torch::Tensor& tokens,
                                    const FastWeights* prime = nullptr) {
  KvCache cache = KvCache::window(c);
  return forward_span(c, p, tokens, torch::arange(tokens.size(0)), cache, prime);
}

torch::Tensor chunked_logits(const ModelConfig& c, const Params& p, const torch::Tensor& tokens,
                             const std::vector<int64_t>& chunk_sizes, const FastWeights* prime = nullptr) {
  KvCache cache = KvCache::window(c);
  std::vector<torch::Tensor> parts;
  int64_t start = 0;
  for (int64_t size : chunk_sizes) {
    parts.push_back(forward_span(c, p, tokens.narrow(0, start, size), torch::arange(start, start + size), cache,
                                 prime));
    start += size;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const int64_t bound = c.attention_window() > 0 ? c.attention_window() - 1 : start;
      EXPECT_EQ(cache.entries(l).rows(), std::min(start, bound)) << "cache after " << start << " tokens";
    }
  }
  EXPECT_EQ(start, tokens.size(0));
  return torch::cat(parts);
}

class ChunkedEqualsWhole : public ::testing::TestWithParam<Variant> {};

TEST_P(ChunkedEqualsWhole, ForEveryChunking) {
  const ModelConfig c = tiny_config(GetParam());
  const Params p = random_params(c, 11, 0.3);
  const FastWeights prime = initial_fast_weights(c, p);
  const torch::Tensor tokens = random_tokens(17, c.vocab_size, 12);
  const torch::Tensor whole = whole_sequence_logits(c, p, tokens, &prime);
  for (const auto& sizes : std::vector<std::vector<int64_t>>{{3, 3, 3, 3, 3, 2}, {1, 5, 2, 7, 1, 1}, {16, 1}}) {
    EXPECT_TRUE(torch::allclose(chunked_logits(c, p, tokens, sizes, &prime), whole, 1e-10, 1e-10));
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, ChunkedEqualsWhole,
                         ::testing::Values(Variant::kFullAttention, Variant::kSlidingWindow, Variant::kTttE2E));

TEST(Transformer, WindowLimitsWhatAttentionSees) {
  const ModelConfig fa = tiny_config(Variant::kFullAttention);
  ModelConfig swa = tiny_config(Variant::kSlidingWindow);
  const Params p = random_params(fa, 21, 0.3);  // fa and swa share every tensor
  const torch::Tensor tokens = random_tokens(12, fa.vocab_size, 22);
  const torch::Tensor full = whole_sequence_logits(fa, p, tokens);
  const torch::Tensor windowed = whole_sequence_logits(swa, p, tokens);
  // Positions before the window fills see the same keys; later ones do not.
  EXPECT_TRUE(torch::allclose(windowed.narrow(0, 0, swa.window), full.narrow(0, 0, swa.window), 1e-12, 1e-12));
  EXPECT_FALSE(torch::allclose(windowed.narrow(0, swa.window, 1), full.narrow(0, swa.window, 1), 1e-6, 1e-6));
  // A window as long as the sequence is full attention.
  swa.window = 12;
  EXPECT_TRUE(torch::allclose(whole_sequence_logits(swa, p, tokens), full, 1e-12, 1e-12));
}

TEST(Transformer, EarlierTokensAreUnaffectedByLaterOnes) {
  const ModelConfig c = tiny_config(Variant::kSlidingWindow);
  const Params p = random_params(c, 31, 0.3);
  torch::Tensor tokens = random_tokens(10, c.vocab_size, 32);
  const torch::Tensor before = whole_sequence_logits(c, p, tokens);
  tokens[7] = (tokens[7].item<int64_t>() + 1) % c.vocab_size;
  const torch::Tensor after = whole_sequence_logits(c, p, tokens);
  EXPECT_TRUE(torch::equal(before.narrow(0, 0, 7), after.narrow(0, 0, 7)));
  EXPECT_FALSE(torch::allclose(before.narrow(0, 7, 1), after.narrow(0, 7, 1)));
}

// A window cache after a long span keeps its last window - 1 rows in memory of their own,
// not as a view that pins the whole span's keys and values; a growing cache appends in place.
TEST(Transformer, CachesHoldWhatTheirRegimeKeeps) {
  const ModelConfig swa = tiny_config(Variant::kSlidingWindow);
  const Params p = random_params(swa, 33, 0.3);
  const torch::Tensor tokens = random_tokens(17, swa.vocab_size, 34);
  KvCache window = KvCache::window(swa);
  torch::NoGradGuard no_grad;
  forward_span(swa, p, tokens, torch::arange(17), window);
  for (int64_t l = 0; l < swa.n_layers; ++l) {
    const KvEntries& e = window.entries(l);
    ASSERT_EQ(e.rows(), swa.window - 1);
    EXPECT_EQ(e.keys.storage().nbytes(), e.keys.numel() * e.keys.element_size()) << "block " << l;
    EXPECT_TRUE(torch::equal(e.positions, torch::arange(17 - (swa.window - 1), 17)));
    // What another stream's work on the block must keep alive: its three row tensors.
    const std::vector<torch::Tensor> held = window.tensors(l);
    ASSERT_EQ(held.size(), 3u);
    EXPECT_TRUE(held[0].is_same(e.keys) && held[1].is_same(e.values) && held[2].is_same(e.positions));
  }
  EXPECT_TRUE(KvCache::window(swa).tensors(0).empty()) << "nothing before the first token";
  const ModelConfig fa = tiny_config(Variant::kFullAttention);
  KvCache growing = KvCache::for_inference(fa);
  forward_span(fa, p, tokens.narrow(0, 0, 5), torch::arange(5), growing);
  const void* storage = growing.entries(0).keys.data_ptr();
  forward_span(fa, p, tokens.narrow(0, 5, 1), torch::arange(5, 6), growing);
  EXPECT_EQ(growing.entries(0).rows(), 6);
  EXPECT_EQ(growing.entries(0).keys.data_ptr(), storage) << "a token appended in place";
  // The rows are views of buffers with room: both are held.
  const std::vector<torch::Tensor> held = growing.tensors(0);
  ASSERT_EQ(held.size(), 6u);
  EXPECT_EQ(held[3].data_ptr(), storage);
  EXPECT_GT(held[3].size(0), 6);
  KvCache none = KvCache::none(fa);
  forward_span(fa, p, tokens, torch::arange(17), none);
  EXPECT_EQ(none.entries(0).rows(), 0);
  // A second span would not see the first: refused, not computed wrongly.
  test::expect_error([&] { forward_span(fa, p, tokens.narrow(0, 0, 2), torch::arange(17, 19), none); },
                     {"keeps nothing read a second span"});
}

// Chunk by chunk a window cache keeps a view (inside CUDA graphs a copy would cost a kernel
// per block and chunk), even where the window is one chunk and most rows fall out of it.
TEST(Transformer, WindowCachesKeepViewsChunkByChunk) {
  ModelConfig c = tiny_config(Variant::kSlidingWindow);
  c.window = c.mini_batch;
  const Params p = random_params(c, 35, 0.3);
  const torch::Tensor tokens = random_tokens(9, c.vocab_size, 36);
  KvCache cache = KvCache::window(c);
  torch::NoGradGuard no_grad;
  for (int64_t start = 0; start < 9; start += c.mini_batch) {
    forward_span(c, p, tokens.narrow(0, start, c.mini_batch), torch::arange(start, start + c.mini_batch), cache);
    const KvEntries& e = cache.entries(0);
    ASSERT_EQ(e.rows(), c.window - 1);
    EXPECT_GT(e.keys.storage().nbytes(), e.keys.numel() * e.keys.element_size()) << "a view of the span's keys";
  }
}

TEST(Transformer, UntiedHeadUsesLmHead) {
  ModelConfig c = tiny_config(Variant::kSlidingWindow);
  c.tie_embeddings = false;
  c.qk_norm = false;
  const Params p = random_params(c, 41, 0.3);
  ASSERT_TRUE(p.lm_head.defined());
  ASSERT_FALSE(p.blocks[0].attn.q_norm.defined());
  const torch::Tensor h = torch::randn({2, c.d_model}, torch::kFloat64);
  const torch::Tensor expected = torch::matmul(h * torch::rsqrt(h.pow(2).mean(-1, true) + c.rms_eps) * p.final_norm,
                                               p.lm_head);
  EXPECT_TRUE(torch::allclose(lm_logits(c, p, h), expected, 1e-12, 1e-12));
}

}  // namespace
}  // namespace ttt
