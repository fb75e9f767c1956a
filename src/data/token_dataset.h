// Token files as training data: memory-mapped, checked against the vocabulary once, and
// cut into sequences drawn deterministically from a seed.
#pragma once
#include <cstdint>
#include <string>

#include <torch/types.h>

namespace ttt {

class TokenDataset {
 public:
  // Maps `path` (raw little-endian uint32 ids). Errors (ttt::Error naming the file): missing,
  // empty, size not a multiple of 4, fewer than `min_tokens` tokens, an id >= vocab_size.
  TokenDataset(const std::string& path, int64_t vocab_size, int64_t min_tokens);
  TokenDataset(const TokenDataset&) = delete;
  TokenDataset& operator=(const TokenDataset&) = delete;
  ~TokenDataset();

  int64_t size() const { return size_; }
  // Tokens [offset, offset + length) as an int64 tensor.
  torch::Tensor slice(int64_t offset, int64_t length) const;

 private:
  const uint32_t* tokens_ = nullptr;
  int64_t size_ = 0;
  size_t mapped_bytes_ = 0;
};

// Token files written by `ttt data prepare` have a prepare.json beside them naming the
// tokenizer, its vocabulary size and its bos id. Where it lists `path`'s file, throws a
// ttt::Error unless that tokenizer fits the model: vocabulary no larger than `vocab_size`
// (a larger one could emit ids the model cannot embed, even if this file happens not to)
// and the same `bos_id` (else documents would not be separated as the model expects).
// Files without a manifest are checked by their contents alone.
void check_tokenizer_fits_model(const std::string& path, int64_t vocab_size, int64_t bos_id);

// Where sequence `index` of optimiser step `step` starts: uniform in [0, max_offset], a pure
// function of (seed, step, index), so a resumed run draws exactly the batches it would have.
int64_t sequence_offset(uint64_t seed, int64_t step, int64_t index, int64_t max_offset);

}  // namespace ttt
