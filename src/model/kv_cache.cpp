#include "model/kv_cache.h"

#include <algorithm>

#include <torch/types.h>

#include "common/error.h"

namespace ttt {

KvEntries KvEntries::last(int64_t count) const {
  const int64_t total = rows(), kept = std::min(total, count);
  if (total == 0 || kept == total) return *this;
  return {keys.narrow(0, total - kept, kept), values.narrow(0, total - kept, kept),
          positions.narrow(0, total - kept, kept)};
}

KvEntries KvEntries::cloned() const {
  if (rows() == 0) return {};
  return {keys.clone(), values.clone(), positions.clone()};
}

KvEntries KvEntries::detached() const {
  if (!keys.defined()) return *this;
  return {keys.detach(), values.detach(), positions};
}

int64_t KvCache::rows_kept(const ModelConfig& config) {
  // A later query at position t needs keys down to t - (window - 1).
  const int64_t window = config.attention_window();
  return window > 0 ? window - 1 : -1;
}

KvCache KvCache::window(const ModelConfig& config) {
  return KvCache(std::vector<Block>(config.n_layers, Window{rows_kept(config), config.mini_batch, {}}));
}

KvCache KvCache::growing(const ModelConfig& config) {
  require(config.attention_window() == 0, "internal: a growing cache is for full attention");
  return KvCache(std::vector<Block>(config.n_layers, Growing{}));
}

KvCache KvCache::none(const ModelConfig& config) { return KvCache(std::vector<Block>(config.n_layers, None{})); }

KvCache KvCache::for_inference(const ModelConfig& config) {
  return config.attention_window() == 0 ? growing(config) : window(config);
}

KvEntries KvCache::extend_window(Window& cache, const KvEntries& span) {
  const KvEntries& old = cache.entries;
  const KvEntries all = old.rows() == 0
                            ? span
                            : KvEntries{torch::cat({old.keys, span.keys}), torch::cat({old.values, span.values}),
                                        torch::cat({old.positions, span.positions})};
  if (cache.keep < 0) {
    cache.entries = all;
    return all;
  }
  // A view of the last rows would pin the whole concatenation. After a span longer than a
  // chunk (run ahead: 16K tokens, three times the window) most of it would be dead: the kept
  // rows are copied out. Chunk by chunk (the scan, its CUDA graphs) they stay a view.
  const KvEntries kept = all.last(cache.keep);
  cache.entries = span.rows() > cache.chunk && kept.rows() * 2 < all.rows() ? kept.cloned() : kept;
  return all;
}

KvEntries KvCache::extend_growing(Growing& cache, const KvEntries& span) {
  const KvEntries& old = cache.entries;
  const int64_t used = old.rows(), T = span.rows();
  // In place only where the cache shows these buffers' rows, all of them, and there is room.
  const bool writable = cache.rows && *cache.rows == used && used + T <= cache.buffers.rows() &&
                        (used == 0 || old.keys.data_ptr() == cache.buffers.keys.data_ptr());
  if (!writable) {
    // Room for as many rows again as the cache had: amortised O(1) per token when decoding,
    // no slack for a prompt read in one span.
    const int64_t capacity = std::max<int64_t>(2 * used + T, 256);
    const auto grown = [&](const torch::Tensor& like, const torch::Tensor& rows) {
      std::vector<int64_t> shape = like.sizes().vec();
      shape[0] = capacity;
      torch::Tensor buffer = torch::empty(shape, like.options());
      if (used > 0) buffer.narrow(0, 0, used).copy_(rows);
      return buffer;
    };
    cache.buffers = {grown(span.keys, old.keys), grown(span.values, old.values), grown(span.positions, old.positions)};
    cache.rows = std::make_shared<int64_t>(used);
  }
  cache.buffers.keys.narrow(0, used, T).copy_(span.keys);
  cache.buffers.values.narrow(0, used, T).copy_(span.values);
  cache.buffers.positions.narrow(0, used, T).copy_(span.positions);
  *cache.rows = used + T;
  cache.entries = {cache.buffers.keys.narrow(0, 0, used + T), cache.buffers.values.narrow(0, 0, used + T),
                   cache.buffers.positions.narrow(0, 0, used + T)};
  return cache.entries;
}

KvEntries KvCache::extend(int64_t block, const KvEntries& span) {
  Block& cache = blocks_.at(block);
  if (auto* window = std::get_if<Window>(&cache)) return extend_window(*window, span);
  if (auto* growing = std::get_if<Growing>(&cache)) {
    require(!torch::GradMode::is_enabled() || !span.keys.requires_grad(),
            "internal: a growing cache cannot be differentiated through (use a window cache)");
    return extend_growing(*growing, span);
  }
  auto& none = std::get<None>(cache);
  require(!none.used, "internal: a cache that keeps nothing read a second span (it would not see the first)");
  none.used = true;
  return span;
}

const KvEntries& KvCache::entries(int64_t block) const {
  return std::visit([](const auto& cache) -> const KvEntries& { return cache.entries; }, blocks_.at(block));
}

void KvCache::assign(int64_t block, KvEntries entries) {
  Block& cache = blocks_.at(block);
  if (auto* window = std::get_if<Window>(&cache)) {
    require(window->keep < 0 || entries.rows() <= window->keep, "internal: more cache rows than the window keeps");
    window->entries = std::move(entries);
  } else if (auto* growing = std::get_if<Growing>(&cache)) {
    *growing = Growing{std::move(entries), {}, nullptr};  // buffers of its own at the next span
  } else {
    require(entries.rows() == 0, "internal: a cache that keeps nothing given rows");
  }
}

void KvCache::detach() {
  for (Block& cache : blocks_) {
    std::visit([](auto& c) { c.entries = c.entries.detached(); }, cache);
  }
}

std::vector<torch::Tensor> KvCache::tensors(int64_t block) const {
  const Block& cache = blocks_.at(block);
  const KvEntries& e = entries(block);
  std::vector<torch::Tensor> held = {e.keys, e.values, e.positions};
  if (const auto* growing = std::get_if<Growing>(&cache)) {
    held.insert(held.end(), {growing->buffers.keys, growing->buffers.values, growing->buffers.positions});
  }
  std::erase_if(held, [](const torch::Tensor& t) { return !t.defined(); });
  return held;
}

int64_t KvCache::bytes() const {
  const auto bytes_of = [](const torch::Tensor& t) {
    return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0;
  };
  int64_t bytes = 0;
  for (int64_t l = 0; l < n_layers(); ++l) {
    const KvEntries& e = entries(l);
    bytes += bytes_of(e.keys) + bytes_of(e.values) + bytes_of(e.positions);
  }
  return bytes;
}

}  // namespace ttt
