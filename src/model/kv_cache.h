// The attention memory of SPEC section 3: per block, the keys (after QK-norm and RoPE),
// values and absolute positions of the tokens a later query may still see. One interface,
// three regimes, chosen when the cache is made:
//   window   new tensors every span, the last window - 1 rows kept (every row for full
//            attention): what autograd differentiates through (meta-learning) and what
//            every windowed model uses;
//   growing  full attention without autograd (evaluation, generation): rows appended in
//            place into buffers with room, amortised O(1) per decoded token instead of a
//            copy of the whole cache;
//   none     nothing kept: one pass over a whole sequence that needs no cache after it
//            (fa's evaluation on a fused kernel; 3B keys at 128K would take half the GPU).
#pragma once
#include <cstdint>
#include <memory>
#include <variant>
#include <vector>

#include <torch/types.h>

#include "config/model_config.h"

namespace ttt {

// Rows of one block's attention memory, oldest first.
struct KvEntries {
  torch::Tensor keys;       // [S, H, d], in the matmul dtype
  torch::Tensor values;     // [S, H, d]
  torch::Tensor positions;  // [S] int64, consecutive
  int64_t rows() const { return keys.defined() ? keys.size(0) : 0; }
  // The last `count` rows (all of them if there are fewer).
  KvEntries last(int64_t count) const;
  KvEntries cloned() const;
  KvEntries detached() const;
};

class KvCache {
 public:
  static KvCache window(const ModelConfig& config);
  static KvCache growing(const ModelConfig& config);
  static KvCache none(const ModelConfig& config);
  // Without autograd: growing for full attention, window otherwise.
  static KvCache for_inference(const ModelConfig& config);
  // The rows a window cache keeps: window - 1, what the next query can still see (-1: all,
  // full attention).
  static int64_t rows_kept(const ModelConfig& config);

  int64_t n_layers() const { return static_cast<int64_t>(blocks_.size()); }

  // Attention's one call: the rows block `block`'s span attends over (the cached rows, then
  // the span's own); the cache keeps what later spans need.
  KvEntries extend(int64_t block, const KvEntries& span);

  // The rows cached for block `block` (empty tensors before the first token).
  const KvEntries& entries(int64_t block) const;
  // Sets block `block`'s rows (a cache rebuilt or restored); they must fit the regime.
  void assign(int64_t block, KvEntries entries);

  // Cuts every entry's autograd history (keeps the values).
  void detach();
  // Every tensor block `block` holds (its rows; a growing cache's buffers too): what work on
  // another CUDA stream that extends the block reads or frees (SideStream::run).
  std::vector<torch::Tensor> tensors(int64_t block) const;
  // Bytes held by the rows (not by a growing cache's spare room).
  int64_t bytes() const;

 private:
  struct Window {
    int64_t keep;   // rows kept after a span; -1: all
    int64_t chunk;  // mini_batch
    KvEntries entries;
  };
  // A copy of a growing cache shares its buffers; `rows` counts the rows written, so a copy
  // that is behind (another branch of the same history) gets buffers of its own before it writes.
  struct Growing {
    KvEntries entries, buffers;
    std::shared_ptr<int64_t> rows;
  };
  struct None {
    KvEntries entries;  // always empty
    bool used = false;  // a second span would attend without the first
  };
  using Block = std::variant<Window, Growing, None>;

  explicit KvCache(std::vector<Block> blocks) : blocks_(std::move(blocks)) {}
  static KvEntries extend_window(Window& cache, const KvEntries& span);
  static KvEntries extend_growing(Growing& cache, const KvEntries& span);

  std::vector<Block> blocks_;
};

}  // namespace ttt
