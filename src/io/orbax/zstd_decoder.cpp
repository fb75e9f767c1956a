#include "io/orbax/zstd_decoder.h"

#include <zstd.h>

#include <algorithm>

#include "common/error.h"

namespace ttt::io::orbax {
namespace {

ZstdContextPtr new_context(const std::string& prefix) {
  ZstdContextPtr context(reinterpret_cast<ZstdContext*>(ZSTD_createDCtx()));
  require(context != nullptr, prefix + "cannot create a zstd decompression context");
  return context;
}

ZSTD_DCtx* raw(const ZstdContextPtr& context) { return reinterpret_cast<ZSTD_DCtx*>(context.get()); }

// One step of decompression; false once the current frame is complete and flushed.
bool step(const ZstdContextPtr& context, ZSTD_outBuffer& out, ZSTD_inBuffer& in, const std::string& prefix) {
  const size_t result = ZSTD_decompressStream(raw(context), &out, &in);
  require(!ZSTD_isError(result), prefix + "zstd data is corrupt (" + ZSTD_getErrorName(result) + ")");
  return result != 0;
}

}  // namespace

void ZstdContextDeleter::operator()(ZstdContext* context) const {
  ZSTD_freeDCtx(reinterpret_cast<ZSTD_DCtx*>(context));
}

ZstdDecoder::ZstdDecoder(char* out, uint64_t size, std::string prefix)
    : context_(new_context(prefix)), out_(out), size_(size), prefix_(std::move(prefix)) {}

void ZstdDecoder::feed(std::string_view compressed) {
  ZSTD_inBuffer in{compressed.data(), compressed.size(), 0};
  while (in.pos < in.size) {
    // Once the buffer is full, a one-byte spare catches any byte beyond it.
    char spare = 0;
    const bool full = produced_ == size_;
    ZSTD_outBuffer out = full ? ZSTD_outBuffer{&spare, 1, 0} : ZSTD_outBuffer{out_ + produced_, size_ - produced_, 0};
    frame_open_ = step(context_, out, in, prefix_);
    require(!full || out.pos == 0,
            prefix_ + "decompresses to more than the " + std::to_string(size_) + " bytes it should hold");
    if (!full) produced_ += out.pos;
  }
}

void ZstdDecoder::finish() const {
  require(!frame_open_ && produced_ == size_,
          prefix_ + "decompresses to " + (frame_open_ ? "an unfinished stream of " : "") + std::to_string(produced_) +
              " bytes instead of " + std::to_string(size_) + ": the data is truncated or corrupt");
}

std::string zstd_decompress(std::string_view compressed, uint64_t limit, const std::string& prefix) {
  // Frames without a declared size are common here (tree nodes): grow the output by doubling,
  // never past `limit`.
  const ZstdContextPtr context = new_context(prefix);
  std::string out(std::min<uint64_t>(limit, std::max<uint64_t>(4 * compressed.size(), 4096)), '\0');
  ZSTD_inBuffer in{compressed.data(), compressed.size(), 0};
  uint64_t produced = 0;
  bool frame_open = true;
  while (in.pos < in.size || frame_open) {
    if (produced == out.size()) {
      require(out.size() < limit,
              prefix + "decompresses to more than the limit of " + std::to_string(limit) + " bytes");
      out.resize(std::min<uint64_t>(limit, 2 * out.size()));
    }
    ZSTD_outBuffer buffer{out.data() + produced, out.size() - produced, 0};
    frame_open = step(context, buffer, in, prefix);
    produced += buffer.pos;
    // All input used inside a frame with room left to write: the stream is cut short.
    require(!(frame_open && in.pos == in.size && buffer.pos < buffer.size), prefix + "zstd stream is truncated");
  }
  out.resize(produced);
  return out;
}

}  // namespace ttt::io::orbax
