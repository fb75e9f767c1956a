// Streaming sessions against `ttt eval`'s procedure: however the tokens are split into
// feeds, the predictions are those of run_sequence; the state stays constant in size.
#include <gtest/gtest.h>

#include <torch/types.h>

#include "infer/session.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "ttt/inner_loop.h"

namespace ttt {
namespace {

using test::random_params;
using test::random_tokens;
using test::tiny_config;

// Feeds `tokens` in pieces of the given sizes (cycled) and checks, after every piece, that
// the logits at its last token give the NLL `ttt eval` gives its target. Returns the final logits.
torch::Tensor feed_and_check(const ModelConfig& config, const Params& params, const torch::Tensor& tokens,
                             const std::vector<int64_t>& pieces, const torch::Tensor& reference_nll) {
  Session session(config, params);
  const int64_t n = tokens.size(0);
  int64_t checked = 0;
  for (int64_t at = 0, k = 0; at < n; ++k) {
    const int64_t length = std::min(pieces[k % pieces.size()], n - at);
    const torch::Tensor logits = session.feed(tokens.narrow(0, at, length));
    at += length;
    EXPECT_EQ(session.position(), at);
    const int64_t p = at - 1;
    if (p + 1 < n) {
      const double nll = -torch::log_softmax(logits, 0)[tokens[p + 1].item<int64_t>()].item<double>();
      EXPECT_NEAR(nll, reference_nll[p].item<double>(), 1e-10) << "position " << p;
      ++checked;
    }
  }
  if (pieces[0] < n) EXPECT_GT(checked, 0);
  // Chunks whose last target has been seen are trained on: one step per full chunk that
  // has a token after it.
  if (config.is_ttt()) EXPECT_EQ(session.inner_steps(), (n - 1) / config.mini_batch);
  return session.last_logits().clone();
}

class SessionVariant : public ::testing::TestWithParam<Variant> {};

TEST_P(SessionVariant, AnySplitOfTheTokensGivesTheEvalProcedure) {
  const ModelConfig config = tiny_config(GetParam());
  const Params params = random_params(config, 5, 0.3);
  const torch::Tensor tokens = random_tokens(29, config.vocab_size, 7, {0, 11});
  const SequenceResult reference = run_sequence(config, params, tokens);
  ASSERT_GT(reference.inner_steps + (config.is_ttt() ? 0 : 1), 0);
  const torch::Tensor one_by_one = feed_and_check(config, params, tokens, {1}, reference.nll);
  for (const std::vector<int64_t>& pieces : std::vector<std::vector<int64_t>>{{2, 5, 1}, {3}, {4, 7}, {29}}) {
    const torch::Tensor last = feed_and_check(config, params, tokens, pieces, reference.nll);
    EXPECT_TRUE(torch::allclose(last, one_by_one, 1e-10, 1e-12)) << pieces.size();
  }
}

TEST_P(SessionVariant, ResetStartsOver) {
  const ModelConfig config = tiny_config(GetParam());
  const Params params = random_params(config, 5, 0.3);
  const torch::Tensor tokens = random_tokens(17, config.vocab_size, 3);
  Session session(config, params);
  const torch::Tensor first = session.feed(tokens).clone();
  session.feed(random_tokens(9, config.vocab_size, 4));
  session.reset();
  EXPECT_EQ(session.position(), 0);
  EXPECT_EQ(session.inner_steps(), 0);
  EXPECT_TRUE(torch::equal(session.feed(tokens), first));
}

TEST_P(SessionVariant, ASavedSessionContinuesIdentically) {
  const ModelConfig config = tiny_config(GetParam());
  const Params params = random_params(config, 5, 0.3);
  const torch::Tensor document = random_tokens(14, config.vocab_size, 3);  // ends mid-chunk
  const torch::Tensor question = random_tokens(9, config.vocab_size, 4);
  Session reader(config, params);
  reader.feed(document);
  test::ScratchDir dir;
  reader.save(dir.path("session.safetensors"));
  const torch::Tensor expected = reader.feed(question).clone();
  for (int round = 0; round < 2; ++round) {  // restore twice: the file is read, not consumed
    Session restored(config, params);
    restored.feed(random_tokens(5, config.vocab_size, 9));  // restore replaces any state
    restored.restore(dir.path("session.safetensors"));
    EXPECT_EQ(restored.position(), document.size(0));
    EXPECT_TRUE(torch::equal(restored.feed(question), expected));
    EXPECT_EQ(restored.inner_steps(), reader.inner_steps());
  }
  // Another model, or not a session at all: clear errors, the session unchanged.
  Session other(config, random_params(config, 6, 0.3));
  test::expect_error([&] { other.restore(dir.path("session.safetensors")); }, {"another model"});
  io::write_safetensors(dir.path("model.safetensors"), named_params(config, params));
  test::expect_error([&] { other.restore(dir.path("model.safetensors")); }, {"not a saved session"});
  EXPECT_EQ(other.position(), 0);
}

// A fork continues as its origin would, and what it reads leaves the origin as it was (fa's
// growing cache shares buffers between copies, so both orders of use are checked).
TEST_P(SessionVariant, AForkContinuesAloneAndLeavesItsOriginUnchanged) {
  const ModelConfig config = tiny_config(GetParam());
  const Params params = random_params(config, 5, 0.3);
  const torch::Tensor document = random_tokens(14, config.vocab_size, 3);  // ends mid-chunk
  const torch::Tensor question = random_tokens(9, config.vocab_size, 4);
  const torch::Tensor other = random_tokens(7, config.vocab_size, 8);
  Session reference(config, params);
  reference.feed(document);
  const torch::Tensor expected = reference.feed(question).clone();

  Session origin(config, params);
  origin.feed(document);
  const std::unique_ptr<Session> fork = origin.fork();
  EXPECT_EQ(fork->position(), origin.position());
  EXPECT_EQ(fork->inner_steps(), origin.inner_steps());
  EXPECT_TRUE(torch::equal(fork->feed(question), expected));
  const std::unique_ptr<Session> second = origin.fork();
  second->feed(other);  // a sibling reads something else first
  EXPECT_TRUE(torch::equal(origin.feed(question), expected));
  EXPECT_EQ(origin.position(), document.size(0) + question.size(0));
  EXPECT_EQ(second->position(), document.size(0) + other.size(0));
}

// A session file with any one bit flipped, in its header or in its state, is refused naming
// the file (it carries a checksum of its contents), and the session keeps its state.
TEST(Session, ADamagedSessionFileIsRefused) {
  const ModelConfig config = tiny_config(Variant::kTttE2E);
  const Params params = random_params(config, 5, 0.3);
  Session reader(config, params);
  reader.feed(random_tokens(14, config.vocab_size, 3));
  test::ScratchDir dir;
  reader.save(dir.path("session.safetensors"));
  const std::string bytes = test::read_bytes(dir.path("session.safetensors"));
  ASSERT_LT(bytes.size(), 20000u) << "a small file, so that every byte is tried";

  Session restored(config, params);
  restored.feed(random_tokens(5, config.vocab_size, 9));
  test::expect_every_bit_flip_rejected(bytes, dir.path("damaged.safetensors"), bytes.size(), 0,
                                       [&](const std::string& path) { restored.restore(path); });
  EXPECT_EQ(restored.position(), 5);
  restored.restore(dir.path("session.safetensors"));  // the undamaged file still loads
  EXPECT_EQ(restored.position(), 14);
}

INSTANTIATE_TEST_SUITE_P(Variants, SessionVariant,
                         ::testing::Values(Variant::kFullAttention, Variant::kSlidingWindow, Variant::kTttE2E));

TEST(Session, StateStaysConstantOverALongStream) {
  for (Variant variant : {Variant::kSlidingWindow, Variant::kTttE2E}) {
    ModelConfig config = tiny_config(variant);
    config.window = 48;  // fewer, larger chunks: 100K tokens in seconds
    config.mini_batch = 32;
    const Params params = random_params(config, 5, 0.3, torch::kFloat32);
    Session session(config, params);
    int64_t max_early = 0, max_late = 0;
    for (int64_t k = 0; session.position() < 100000; ++k) {
      session.feed(random_tokens(1 + (k * 37) % 200, config.vocab_size, k));
      int64_t& max = session.position() < 10000 ? max_early : max_late;
      max = std::max(max, session.state_bytes());
    }
    EXPECT_GT(max_early, 0);
    EXPECT_LE(max_late, max_early) << variant_name(variant);
  }
  // fa must keep every token.
  const ModelConfig config = tiny_config(Variant::kFullAttention);
  const Params params = random_params(config, 5, 0.3, torch::kFloat32);
  Session session(config, params);
  session.feed(random_tokens(100, config.vocab_size, 1));
  const int64_t early = session.state_bytes();
  session.feed(random_tokens(1000, config.vocab_size, 2));
  EXPECT_GT(session.state_bytes(), 5 * early);
}

TEST(Session, BadInputIsAnError) {
  const ModelConfig config = tiny_config(Variant::kTttE2E);
  const Params params = random_params(config, 5, 0.3);
  Session session(config, params);
  test::expect_error([&] { session.feed(std::vector<int64_t>{}); }, {"at least one token"});
  test::expect_error([&] { session.feed(std::vector<int64_t>{3, config.vocab_size}); },
                     {"token 13", "outside the model's vocabulary"});
  test::expect_error([&] { session.feed(std::vector<int64_t>{-1}); }, {"token -1"});
  EXPECT_EQ(session.position(), 0);  // nothing consumed by a rejected feed
}

}  // namespace
}  // namespace ttt
