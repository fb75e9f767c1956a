// Streaming inference (SPEC section 5, "Generation"): tokens are fed in any number at a
// time and the model keeps its state between feeds: fast weights and a KV cache of the last
// window - 1 tokens per block (fa keeps everything, as it must). For ttt-e2e, every full
// mini-batch of inputs triggers one inner step once the token after it (its last target)
// is known; a trailing partial mini-batch is attended but not trained on. The numbers are
// those of `ttt eval`'s procedure however the tokens are split into feeds.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "config/model_config.h"
#include "model/params.h"
#include "model/kv_cache.h"
#include "ttt/chunk_scan.h"

namespace ttt {

class ChunkGraphs;
class DecodeStep;

// How a feed of a single token (decoding) is read: as a span like any other, or by the
// fixed-shape decode step (infer/decode_step.h), replayed as a CUDA graph where graphs serve.
// Both give the same numbers up to rounding. kAuto: the step where CUDA graphs serve (a GPU,
// TTT_CUDA_GRAPHS not 0), spans elsewhere.
enum class DecodePath { kAuto, kSpans, kStaticStep };

class Session {
 public:
  // Shares the parameters' storage (tensors are handles), copies nothing large. The session
  // computes on the parameters' device, with matmuls in the dtype params_for_inference gave
  // them, if any (model/compute.h).
  Session(const ModelConfig& config, const Params& params, DecodePath decode = DecodePath::kAuto);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Consumes `tokens` ([n] int64 ids, n >= 1, each inside the vocabulary) and returns the
  // logits [V] (on the session's device) at the last of them: the model's prediction of the next token. Throws
  // ttt::Error for bad ids or an empty feed.
  torch::Tensor feed(const torch::Tensor& tokens);
  torch::Tensor feed(const std::vector<int64_t>& tokens);

  // Back to the start: initial fast weights, empty cache.
  void reset();

  // A session in this one's state with a life of its own: what it reads changes it alone.
  // Its tensors are copies, so that it may compute on another thread beside this one (a
  // server answers many questions about one document at once).
  std::unique_ptr<Session> fork() const;

  // The whole state in one safetensors file (atomic), so that a document read once can be
  // queried many times: its adapted fast weights are its memory. `restore` reads it into a
  // session of the same model (config and weights checked) and continues exactly.
  void save(const std::string& path) const;
  void restore(const std::string& path);

  int64_t position() const { return position_; }  // tokens consumed so far
  int64_t inner_steps() const { return inner_steps_; }
  const torch::Tensor& last_logits() const { return last_logits_; }  // undefined before the first feed
  // The decode step that single-token feeds go through; null where they are read as spans.
  const DecodeStep* decode_step() const { return decode_.get(); }
  // Bytes held by the session's state (fast weights, caches, pending chunk): constant in
  // the number of tokens read for swa and ttt-e2e.
  int64_t state_bytes() const;

 private:
  // The pending chunk is full and `next` is its last target: one inner step on it, from the
  // cache as it was when the chunk began (as `ttt eval` computes it). Where the decode step
  // read every token of the chunk, from the rows it kept at the first block with fast weights
  // (its ring keeps every block's rows); otherwise the chunk is recomputed from its tokens.
  void train_on_pending(int64_t next);
  // `chunks` whole chunks of tokens[offset...] from absolute `position` on, each with its
  // last target in `tokens`, by the chunk scan as `ttt eval` runs it: on a GPU, the blocks
  // before the fast weights run ahead over many chunks at once and the chunk steps replay
  // CUDA graphs. `state` moves past them; the caller advances position_.
  void run_whole_chunks(const torch::Tensor& tokens, int64_t offset, int64_t chunks, int64_t position,
                        ScanState& state);
  // The chunk scan over `inputs` from absolute `position` on, inner step after the last chunk
  // too; on a GPU chunk steps replay CUDA graphs. `state` moves past the chunks.
  void scan(ChunkInputs& inputs, const torch::Tensor& targets, int64_t position, ScanState& state);
  // A span that ends at or before the pending chunk's end: attended, the last logits kept.
  void read_span(const torch::Tensor& span, const int64_t* ids);
  // One token by the decode step, as read_span would read it.
  void read_token(int64_t id);
  // The cache with every row read: state_.cache, brought up to date from the decode step's
  // ring where that is newer (sync_cache), or a copy of the ring's rows (current_cache).
  void sync_cache();
  KvCache current_cache() const;

  const ModelConfig config_;
  const Params params_;
  const torch::Device device_;
  const std::optional<torch::Dtype> matmul_dtype_;
  ScanState state_;              // fast weights and the cache after every token read (see cache_current_)
  KvCache chunk_start_cache_;    // ttt-e2e: the cache before the pending chunk's first token
  std::vector<int64_t> pending_;  // ttt-e2e: inputs of the current chunk, not yet trained on
  int64_t stepped_ = 0;           // ttt-e2e: how many of them the decode step read
  int64_t position_ = 0;
  int64_t inner_steps_ = 0;
  torch::Tensor last_logits_;
  std::unique_ptr<ChunkGraphs> graphs_;  // made at the first whole chunks where supported
  std::unique_ptr<DecodeStep> decode_;   // where single tokens go through the decode step
  // Where the rows of the tokens read are: state_.cache holds them all (else it is empty and
  // the decode step's ring has them), the ring holds them all (else it is behind).
  bool cache_current_ = true, ring_current_ = false;
};

}  // namespace ttt
