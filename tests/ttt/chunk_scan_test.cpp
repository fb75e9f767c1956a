// The one chunk scan (ttt/chunk_scan.h): its chunk plan, and the same numbers and final state
// whichever way the hidden states entering the inner-loop blocks are made. The blocks run
// ahead in spans on the CPU here too, so that path is checked without a GPU.
#include <gtest/gtest.h>

#include <torch/cuda.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>

#include "model/compute.h"
#include "model/transformer.h"
#include "test_util.h"
#include "ttt/chunk_graphs.h"
#include "ttt/chunk_scan.h"
#include "ttt/inner_loop.h"

namespace ttt {
namespace {

using test::random_params;
using test::random_tokens;
using test::tiny_config;

TEST(ChunkScan, PlansFullChunksAndUpdatesAfterAllButTheLast) {
  const ModelConfig c = tiny_config(Variant::kTttE2E);  // mini_batch 3
  const std::vector<ChunkSpan> chunks = plan_chunks(c, 10, 100, /*update_last=*/false);
  ASSERT_EQ(chunks.size(), 4u);
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(chunks[i].index, i);
    EXPECT_EQ(chunks[i].start, 3 * i);
    EXPECT_EQ(chunks[i].position, 100 + 3 * i);
    EXPECT_EQ(chunks[i].length, i < 3 ? 3 : 1);
    EXPECT_EQ(chunks[i].update, i < 3) << "chunk " << i;
  }
  // A session reads on: its last full chunk trains too, a partial one never does.
  EXPECT_TRUE(plan_chunks(c, 9, 0, true).back().update);
  EXPECT_FALSE(plan_chunks(c, 9, 0, false).back().update);
  EXPECT_FALSE(plan_chunks(c, 10, 0, true).back().update);
  for (const ChunkSpan& chunk : plan_chunks(tiny_config(Variant::kSlidingWindow), 9, 0, true)) {
    EXPECT_FALSE(chunk.update);
  }
}

struct ScanResult {
  std::vector<torch::Tensor> losses, nlls;
  ScanState state;
};

ScanResult scan(const ModelConfig& c, const Params& p, const torch::Tensor& tokens, ChunkInputs& inputs) {
  const int64_t n = tokens.size(0) - 1;
  ScanResult result{{}, {}, {detach_fast_weights(initial_fast_weights(c, p), false), KvCache::window(c)}};
  scan_chunks(c, p, inputs, tokens.narrow(0, 1, n), plan_chunks(c, n, 0, false), result.state,
              {OuterGradient::kNone, inner_step_size(c, 1.0, p.final_norm)},
              [&](const ChunkSpan&, const ChunkStep& step) {
                result.losses.push_back(step.loss.detach());
                result.nlls.push_back(step.nll.detach());
              });
  return result;
}

void expect_same(const ScanResult& a, const ScanResult& b, const ModelConfig& c) {
  ASSERT_EQ(a.losses.size(), b.losses.size());
  for (size_t i = 0; i < a.losses.size(); ++i) {
    EXPECT_TRUE(torch::allclose(a.losses[i], b.losses[i], 1e-12, 1e-12)) << "chunk " << i;
    EXPECT_TRUE(torch::allclose(a.nlls[i], b.nlls[i], 1e-12, 1e-12)) << "chunk " << i;
  }
  const std::vector<torch::Tensor> wa = flatten(a.state.weights), wb = flatten(b.state.weights);
  for (size_t i = 0; i < wa.size(); ++i) EXPECT_TRUE(torch::allclose(wa[i], wb[i], 1e-12, 1e-12)) << "weight " << i;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const KvEntries &ea = a.state.cache.entries(l), &eb = b.state.cache.entries(l);
    ASSERT_EQ(ea.rows(), eb.rows()) << "block " << l;
    if (ea.rows() == 0) continue;
    EXPECT_TRUE(torch::allclose(ea.keys, eb.keys, 1e-12, 1e-12)) << "block " << l;
    EXPECT_TRUE(torch::equal(ea.positions, eb.positions)) << "block " << l;
  }
}

class ChunkInputsAgree : public ::testing::TestWithParam<Variant> {};

// Each chunk embedded and every block run chunk by chunk, the blocks before the fast weights
// (for ttt-e2e also with the first suffix block's attention, as evaluation runs them) run
// ahead in spans of two chunks and of the whole sequence, and those blocks' output given
// whole: the same losses, NLLs, fast weights and cache.
TEST_P(ChunkInputsAgree, HoweverTheHiddenStatesAreMade) {
  const ModelConfig c = tiny_config(GetParam());
  const Params p = random_params(c, 5, 0.3);
  const torch::Tensor tokens = random_tokens(20, c.vocab_size, 6, {7});
  const torch::Tensor inputs = tokens.narrow(0, 0, 19);
  const int64_t first = c.is_ttt() ? c.first_suffix_block() : c.n_layers;

  ChunkInputs embedded = ChunkInputs::embedded(p, inputs);
  const ScanResult reference = scan(c, p, tokens, embedded);
  EXPECT_EQ(reference.losses.size(), 7u);
  EXPECT_GT(reference.state.cache.entries(c.n_layers - 1).rows(), 0);
  std::vector<BlockPoint> entries = {first};
  if (c.is_ttt()) entries.push_back(BlockPoint(first, /*past_attention=*/true));
  for (const BlockPoint& entry : entries) {
    SCOPED_TRACE(std::string("entry ") + (entry.past_attention ? "past the attention of " : "") + "block " +
                 std::to_string(entry.block));
    for (const int64_t span : {2 * c.mini_batch, int64_t{0}}) {
      SCOPED_TRACE("span " + std::to_string(span));
      ChunkInputs ahead = ChunkInputs::run_ahead(c, p, inputs, entry, /*with_graph=*/false, span);
      expect_same(scan(c, p, tokens, ahead), reference, c);
    }
    KvCache prefix = KvCache::window(c);
    const torch::Tensor whole = hidden_states(c, p, inputs, 0, prefix, entry);
    // A caller that never queues the next span ahead (of() queues it when the chunks get there).
    {
      ChunkInputs ahead = ChunkInputs::run_ahead(c, p, inputs, entry, /*with_graph=*/false, 2 * c.mini_batch);
      KvCache cache = KvCache::window(c);
      for (const ChunkSpan& chunk : plan_chunks(c, inputs.size(0), 0, false)) {
        EXPECT_TRUE(torch::allclose(ahead.of(chunk, cache), whole.narrow(0, chunk.start, chunk.length), 1e-12, 1e-12))
            << "chunk " << chunk.index;
      }
      for (int64_t l = 0; l < entry.next_attention(); ++l) {
        ASSERT_EQ(cache.entries(l).rows(), prefix.entries(l).rows()) << "block " << l;
        EXPECT_TRUE(torch::allclose(cache.entries(l).keys, prefix.entries(l).keys, 1e-12, 1e-12)) << "block " << l;
        EXPECT_TRUE(torch::allclose(cache.entries(l).values, prefix.entries(l).values, 1e-12, 1e-12)) << "block " << l;
      }
    }
    ChunkInputs given = ChunkInputs::given(whole, entry);
    ScanResult from_given = scan(c, p, tokens, given);
    // The given rows bring no cache of the blocks that made them: those blocks' rows come
    // from the pass that did.
    const int64_t made = entry.next_attention();
    for (int64_t l = 0; l < made; ++l) from_given.state.cache.assign(l, prefix.entries(l));
    expect_same(from_given, reference, c);
  }
}

// TTT_RUN_AHEAD_STREAM set to `value` while it lives (unset if null), restored after.
class RunAheadStreamSetting {
 public:
  explicit RunAheadStreamSetting(const char* value) {
    if (const char* was = std::getenv(kName)) previous_ = was;
    value ? setenv(kName, value, 1) : unsetenv(kName);
  }
  ~RunAheadStreamSetting() { previous_ ? setenv(kName, previous_->c_str(), 1) : unsetenv(kName); }

 private:
  static constexpr const char* kName = "TTT_RUN_AHEAD_STREAM";
  std::optional<std::string> previous_;
};

// The switch takes what it documents and refuses anything else, naming itself.
TEST(ChunkInputs, RunAheadStreamSwitchRefusesAnUnknownValue) {
  const ModelConfig c = tiny_config(Variant::kTttE2E);
  const Params p = random_params(c, 5, 0.3);
  const torch::Tensor inputs = random_tokens(9, c.vocab_size, 6);
  const BlockPoint entry(c.first_suffix_block());
  for (const char* accepted : {"0", ""}) {
    const RunAheadStreamSetting setting(accepted);
    EXPECT_NO_THROW(ChunkInputs::run_ahead(c, p, inputs, entry, /*with_graph=*/false)) << accepted;
  }
  const RunAheadStreamSetting setting("1");
  test::expect_error([&] { ChunkInputs::run_ahead(c, p, inputs, entry, /*with_graph=*/false); },
                     {"TTT_RUN_AHEAD_STREAM is \"1\"", "use 0, or leave it unset"});
}

// On a GPU the spans run ahead on a CUDA stream of their own while the chunks step on the
// current one: the same bits as all on the current stream (TTT_RUN_AHEAD_STREAM=0), over
// spans long enough (7 blocks of width 1024 over 2048 tokens, about a millisecond) that the
// streams overlap; eagerly, and through the chunks' CUDA graphs (evaluation's spans of 16K
// tokens, then 2K), replayed while a span runs beside them; three times, since a missing wait
// between the streams would show only now and then.
TEST(ChunkInputsOnCuda, SpansBesideTheChunksGiveTheSameBits) {
  ModelConfig c = tiny_config(Variant::kTttE2E);
  c.vocab_size = 512;
  c.d_model = 1024;
  c.n_heads = 16;
  c.d_ff = 4096;
  c.n_layers = 8;
  c.suffix_len = 1;
  c.window = 1000;
  c.mini_batch = 128;
  c.validate();
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const torch::Device cuda(torch::kCUDA, 0);
  const MatmulDtypeGuard precision(torch::kBFloat16);
  const Params p = params_for_inference(c, random_params(c, 3, 0.02, torch::kFloat32), {cuda, torch::kBFloat16});
  const int64_t chunks = run_ahead_tokens(c, 0) / c.mini_batch + 16;
  const torch::Tensor tokens = random_tokens(chunks * c.mini_batch + 1, c.vocab_size, 11, {0, 700}).to(cuda);
  const torch::Tensor inputs = tokens.narrow(0, 0, chunks * c.mini_batch);
  const BlockPoint entry(c.first_suffix_block(), /*past_attention=*/true);
  const auto scanned = [&](const char* stream_setting) {
    const RunAheadStreamSetting setting(stream_setting);
    ChunkInputs ahead = ChunkInputs::run_ahead(c, p, inputs, entry, /*with_graph=*/false, 16 * c.mini_batch);
    return scan(c, p, tokens, ahead);
  };
  // Three sequences through fresh graphs: the one suffix block past its attention extends
  // no cache, so every chunk is one shape, run eagerly at the first updating chunk, captured
  // at the second (eager and replayed chunks differ in the last bits: both settings see the
  // same pattern).
  const auto evaluated = [&](const char* stream_setting) {
    const RunAheadStreamSetting setting(stream_setting);
    ChunkGraphs graphs(c, p);
    SequenceOptions options;
    options.graphs = &graphs;
    std::vector<torch::Tensor> nlls;
    for (int sequence = 0; sequence < 3; ++sequence) nlls.push_back(run_sequence(c, p, tokens, options).nll);
    EXPECT_EQ(graphs.replays(), 3 * (chunks - 1) - 1) << "all chunks but the last update, the first eagerly";
    return nlls;
  };
  const ScanResult one_stream = scanned("0");
  const std::vector<torch::Tensor> one_stream_nlls = evaluated("0");
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    expect_same(scanned(nullptr), one_stream, c);
    const std::vector<torch::Tensor> nlls = evaluated(nullptr);
    for (size_t i = 0; i < nlls.size(); ++i) EXPECT_TRUE(torch::equal(nlls[i], one_stream_nlls[i])) << "sequence " << i;
  }
}

// Blocks run in parts meet where one part stops past a block's attention and the next starts
// there: the same output and cache as in one run.
TEST(RunBlocks, SplitPastAnAttentionIsOneRun) {
  const ModelConfig c = tiny_config(Variant::kTttE2E);
  const Params p = random_params(c, 8, 0.3);
  const torch::Tensor tokens = random_tokens(7, c.vocab_size, 9, {});
  const FastWeights weights = initial_fast_weights(c, p);
  const torch::Tensor positions = torch::arange(7);
  KvCache whole = KvCache::window(c), parts = KvCache::window(c);
  const torch::Tensor h = embed_tokens(p, tokens);
  const torch::Tensor expected = run_blocks(c, p, h, positions, whole, 0, c.n_layers, &weights);
  for (int64_t b = 0; b < c.n_layers; ++b) {
    SCOPED_TRACE("block " + std::to_string(b));
    KvCache split = KvCache::window(c);
    const BlockPoint middle(b, /*past_attention=*/true);
    const torch::Tensor ahead = run_blocks(c, p, h, positions, split, 0, middle, &weights);
    // Past a block's attention, before its MLPs: that block's cache is extended, later ones not.
    EXPECT_EQ(split.entries(b).rows(), whole.entries(b).rows());
    if (b + 1 < c.n_layers) EXPECT_EQ(split.entries(b + 1).rows(), 0);
    const torch::Tensor got = run_blocks(c, p, ahead, positions, split, middle, c.n_layers, &weights);
    EXPECT_TRUE(torch::allclose(got, expected, 1e-12, 1e-12));
    for (int64_t l = 0; l < c.n_layers; ++l) {
      EXPECT_TRUE(torch::allclose(split.entries(l).keys, whole.entries(l).keys, 1e-12, 1e-12)) << "cache " << l;
    }
  }
  EXPECT_TRUE(BlockPoint(2) < BlockPoint(2, true));
  EXPECT_TRUE(BlockPoint(2, true) < BlockPoint(3));
  EXPECT_FALSE(BlockPoint(2, true) < BlockPoint(2, true));
}

INSTANTIATE_TEST_SUITE_P(Variants, ChunkInputsAgree,
                         ::testing::Values(Variant::kTttE2E, Variant::kSlidingWindow, Variant::kFullAttention),
                         [](const auto& info) {
                           std::string name = variant_name(info.param);
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace ttt
