#include "infer/decode_step.h"

#include <algorithm>
#include <limits>
#include <vector>

#include <torch/types.h>

#include "common/error.h"
#include "model/compute.h"
#include "model/layers.h"
#include "model/transformer.h"
#include "ttt/graph_replay.h"

namespace ttt {
namespace {

// The position of a slot that holds no token: after every query's, so that none sees it.
constexpr int64_t kEmptySlot = std::numeric_limits<int64_t>::max();
// fa's ring: room for a quarter more tokens than it must hold, in rows of 16, at least 16.
// Each growth copies the rows and captures a graph; every step reads the whole ring, so room
// is paid for by every token (doubling would read twice the keys, and 3B's ring at 128K
// would not fit beside the cache it is loaded from).
constexpr int64_t kFullRoomDivisor = 4, kFullRowMultiple = 16;

}  // namespace

struct DecodeStep::State {
  ModelConfig config;
  Params params;
  std::optional<torch::Dtype> matmul_dtype;
  torch::Dtype residual_dtype;  // of the residual stream: the gains'
  torch::Dtype kv_dtype;        // of cached keys and values: the matmuls'
  bool with_graphs = false;     // CUDA graphs replay the step
  int64_t position = 0;         // the next token's
  int64_t steps = 0;
  int64_t allocations = 0;
  int64_t loads = 0;
  // Inputs, state and output, where every graph finds them.
  torch::Tensor token, token_position;     // [1] int64
  std::vector<KvEntries> rings;            // per block: keys and values [capacity, H, d]; positions unused
  torch::Tensor slot_positions;            // [capacity] int64, shared by the blocks (they hold the same tokens)
  FastWeights weights;                     // ttt-e2e: the step's copy of the session's fast weights
  std::vector<torch::Tensor> copied_from;  // the session's tensors that `weights` holds, kept alive
  torch::Tensor suffix_inputs;             // ttt-e2e: [mini_batch, D]
  torch::Tensor logits;                    // [V]
  GraphReplay graphs;                      // one per capacity; destroyed before the buffers

  int64_t capacity() const { return slot_positions.defined() ? slot_positions.size(0) : 0; }
  // The ring's rows: the window, or for fa room for `tokens` and more.
  int64_t capacity_for(int64_t tokens) const;
  // Buffers of at least capacity_for(tokens) rows; on growing, the rows held move along.
  void reserve(int64_t tokens);
  // The ring's slots of `positions` ([n] int64 on the device).
  torch::Tensor slots_of(const torch::Tensor& positions) const { return positions.remainder(capacity()); }
  void copy_weights(const FastWeights& from);
  // The step on the buffers.
  void run();
};

int64_t DecodeStep::State::capacity_for(int64_t tokens) const {
  const int64_t window = config.attention_window();
  if (window > 0) return window;
  const int64_t room = tokens + tokens / kFullRoomDivisor;
  return std::max<int64_t>(1, (room + kFullRowMultiple - 1) / kFullRowMultiple) * kFullRowMultiple;
}

void DecodeStep::State::reserve(int64_t tokens) {
  const int64_t old_rows = capacity(), new_rows = capacity_for(tokens);
  // A window's ring never changes and fa's grows only when full: graphs read the buffers in
  // place, so new ones under a capacity already captured would leave its graph on freed memory.
  if (old_rows >= std::min(tokens, new_rows)) return;
  ++allocations;
  const torch::TensorOptions options = params.final_norm.options();
  // Zeros, not garbage: masked slots are multiplied by a zero probability, which NaN bits would survive.
  const auto grown = [&](const torch::Tensor& old) {
    torch::Tensor ring = torch::zeros({new_rows, config.n_heads, config.head_dim()}, options.dtype(kv_dtype));
    if (old_rows > 0) ring.narrow(0, 0, old_rows).copy_(old);  // fa: slot = position in either ring
    return ring;
  };
  rings.resize(config.n_layers);
  for (KvEntries& ring : rings) {  // block by block: one block's old rows beside the new ones at a time
    ring.keys = grown(ring.keys);
    ring.values = grown(ring.values);
  }
  torch::Tensor positions = torch::full({new_rows}, kEmptySlot, options.dtype(torch::kInt64));
  if (old_rows > 0) positions.narrow(0, 0, old_rows).copy_(slot_positions);
  slot_positions = positions;
  if (!token.defined()) {
    token = torch::zeros({1}, options.dtype(torch::kInt64));
    token_position = torch::zeros({1}, options.dtype(torch::kInt64));
    logits = torch::empty({config.vocab_size}, options);
    if (config.is_ttt()) suffix_inputs = torch::zeros({config.mini_batch, config.d_model}, options);
    // In the matmul dtype, where the step's matmuls would cast them at every token: cast once
    // per inner step instead, with the same rounding.
    const auto like = [&](const torch::Tensor& w) { return torch::empty(w.sizes(), w.options().dtype(kv_dtype)); };
    for (const MlpParams& w : initial_fast_weights(config, params)) {
      MlpParams copy{like(w.w1), like(w.w2), like(w.w3)};
      place_side_by_side({&copy.w1, &copy.w3});  // one matmul for both (swiglu)
      weights.push_back(std::move(copy));
    }
  }
}

void DecodeStep::State::copy_weights(const FastWeights& from) {
  const std::vector<torch::Tensor> given = flatten(from), ours = flatten(weights);
  require(given.size() == ours.size(), "internal: fast weights of another model in the decode step");
  const bool same = copied_from.size() == given.size() &&
                    std::equal(given.begin(), given.end(), copied_from.begin(),
                               [](const torch::Tensor& a, const torch::Tensor& b) { return a.is_same(b); });
  if (same) return;  // the session's weights have not changed since (it replaces them, never writes them)
  for (size_t i = 0; i < ours.size(); ++i) ours[i].copy_(given[i]);
  copied_from = given;
}

void DecodeStep::State::run() {
  const torch::Tensor slot = slots_of(token_position);
  slot_positions.index_copy_(0, slot, token_position);
  const torch::Tensor h = embed_tokens(params, token);
  const int64_t window = config.attention_window();
  // Where the fused kernels do not serve, one mask for every block: the slots whose tokens the query sees.
  torch::Tensor bias;
  const BlockAttention ring = [&](int64_t block, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  Order) {
    const KvEntries& memory = rings[block];
    memory.keys.index_copy_(0, slot, k);
    memory.values.index_copy_(0, slot, v);
    if (decode_attention_serves(q, memory.keys)) {
      return decode_attention(q, memory.keys, memory.values, slot_positions, token_position, window);
    }
    if (!bias.defined()) bias = attention_bias(attention_mask(token_position, slot_positions, window), h);
    return attend_with_bias(q, memory.keys, memory.values, bias);
  };
  const RopeTable rotation = rope_table(token_position, config.head_dim(), config.rope_theta, h.scalar_type());
  torch::Tensor out;
  if (config.is_ttt()) {
    const int64_t first_suffix = config.first_suffix_block();
    const torch::Tensor entering = run_blocks(config, params, h, rotation, ring, 0, first_suffix, nullptr);
    suffix_inputs.index_copy_(0, token_position.remainder(config.mini_batch), entering);
    out = run_blocks(config, params, entering, rotation, ring, first_suffix, config.n_layers, &weights);
  } else {
    out = run_blocks(config, params, h, rotation, ring, 0, config.n_layers, nullptr);
  }
  logits.copy_(lm_logits(config, params, out)[0]);
}

bool DecodeStep::serves_by_default(const Params& params) {
  return cuda_graphs_enabled() && params.final_norm.is_cuda();
}

DecodeStep::DecodeStep(const ModelConfig& config, const Params& params, std::optional<torch::Dtype> matmul_dtype)
    : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.config = config;
  s.params = params;
  s.matmul_dtype = matmul_dtype;
  s.residual_dtype = params.final_norm.scalar_type();
  s.kv_dtype = s.residual_dtype == torch::kFloat64 ? torch::kFloat64 : matmul_dtype.value_or(s.residual_dtype);
  s.with_graphs = serves_by_default(params);  // the same condition: where graphs serve
}

DecodeStep::~DecodeStep() = default;

void DecodeStep::load(const KvCache& cache, int64_t position) {
  State& s = *state_;
  torch::NoGradGuard no_grad;
  s.reserve(position + 1);
  s.slot_positions.fill_(kEmptySlot);
  for (int64_t l = 0; l < s.config.n_layers; ++l) {
    const KvEntries& rows = cache.entries(l);
    require(rows.rows() == cache.entries(0).rows() && rows.rows() <= std::min(position, s.capacity()),
            "internal: a cache that the decode step cannot hold");
    if (rows.rows() == 0) continue;
    const torch::Tensor slots = s.slots_of(rows.positions);
    s.rings[l].keys.index_copy_(0, slots, rows.keys);
    s.rings[l].values.index_copy_(0, slots, rows.values);
    if (l == 0) s.slot_positions.index_copy_(0, slots, rows.positions);
  }
  s.position = position;
  ++s.loads;
}

KvCache DecodeStep::unload() const {
  const State& s = *state_;
  torch::NoGradGuard no_grad;
  KvCache cache = KvCache::for_inference(s.config);
  const int64_t keep = KvCache::rows_kept(s.config), kept = keep < 0 ? s.position : std::min(s.position, keep);
  if (kept == 0) return cache;
  const torch::Tensor positions = span_positions(s.position - kept, kept, s.slot_positions.device());
  const torch::Tensor slots = s.slots_of(positions);
  for (int64_t l = 0; l < s.config.n_layers; ++l) {
    cache.assign(l, {s.rings[l].keys.index_select(0, slots), s.rings[l].values.index_select(0, slots), positions});
  }
  return cache;
}

const torch::Tensor& DecodeStep::step(int64_t id, const FastWeights& weights) {
  State& s = *state_;
  require(matmul_dtype() == s.matmul_dtype, "internal: the decode step used under another precision than its own");
  require(s.capacity() > 0, "internal: the decode step stepped before its first load");
  torch::NoGradGuard no_grad;
  s.reserve(s.position + 1);  // fa: a larger ring, and a graph for it
  if (s.config.is_ttt()) s.copy_weights(weights);
  s.token.fill_(id);
  s.token_position.fill_(s.position);
  if (s.with_graphs) {
    s.graphs.run(s.capacity(), [&] { s.run(); });
  } else {
    s.run();
  }
  ++s.position;
  ++s.steps;
  return s.logits;
}

const torch::Tensor& DecodeStep::suffix_inputs() const { return state_->suffix_inputs; }
int64_t DecodeStep::position() const { return state_->position; }
int64_t DecodeStep::capacity() const { return state_->capacity(); }
int64_t DecodeStep::steps() const { return state_->steps; }
int64_t DecodeStep::allocations() const { return state_->allocations; }
int64_t DecodeStep::loads() const { return state_->loads; }
int64_t DecodeStep::captures() const { return state_->graphs.captures(); }
int64_t DecodeStep::replays() const { return state_->graphs.replays(); }

int64_t DecodeStep::bytes() const {
  const State& s = *state_;
  const auto bytes_of = [](const torch::Tensor& t) {
    return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0;
  };
  int64_t bytes = bytes_of(s.slot_positions) + bytes_of(s.logits);
  for (const KvEntries& ring : s.rings) bytes += bytes_of(ring.keys) + bytes_of(ring.values);
  for (const torch::Tensor& w : flatten(s.weights)) bytes += bytes_of(w);
  return bytes;
}

}  // namespace ttt
